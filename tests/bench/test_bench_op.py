"""`msaconv bench op` on a tiny sweep: records, context, skips with reasons, memory, table and plot."""

from __future__ import annotations

import json

import pytest
import torch

from msaconv.bench import common, op, report
from msaconv.cli import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "op.jsonl"
    code = main(["bench", "op", "--sizes", "6x7,8", "--kernels", "3", "--dilations", "1", "--runs", "2", "--warmup", "1",
                 "--backends", "cpu,portable,reference,sdpa_global,sdpa_masked,flex", "--batch", "1", "--heads", "2",
                 "--head-dim", "4", "--flex-compile", "none", "--output", str(out),
                 "--markdown", str(out.with_suffix(".md")), "--plot", str(out.with_suffix(".png"))])
    assert code == 0
    return out, list(common.read_jsonl(out))


def test_records_carry_context_and_timings(tiny_run):
    _, records = tiny_run
    roof = [r for r in records if r["kind"] == "roofline"]
    assert len(roof) == 1 and roof[0]["matmul_gflops"] > 0 and roof[0]["copy_gbs"] > 0
    ops = [r for r in records if r["kind"] == "op"]
    for r in records:
        for key in ("torch", "cpu", "threads", "git_commit", "command"):
            assert key in r, key
    assert records[0]["command"].startswith("msaconv bench op")
    timed = [r for r in ops if "median_ms" in r]
    assert {r["impl"] for r in timed} >= {"cpu", "portable", "reference", "sdpa_global", "sdpa_masked"}
    for r in timed:
        assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["ratio_to_bound"] == pytest.approx(r["median_ms"] / r["bound_ms"])
    assert {r["mode"] for r in timed} == {"fwd", "fwdbwd"}


def test_peers_that_cannot_run_say_why(tiny_run):
    _, records = tiny_run
    flex_bwd = [r for r in records if r["kind"] == "op" and r["impl"] == "flex" and r["mode"] == "fwdbwd"]
    assert flex_bwd and all("backward" in r["skipped"] for r in flex_bwd)


def test_bound_is_the_formula(tiny_run):
    _, records = tiny_run
    roof = next(r for r in records if r["kind"] == "roofline")
    r = next(r for r in records if r["kind"] == "op" and r["impl"] == "cpu" and r["mode"] == "fwdbwd")
    n, c = r["height"] * r["width"], r["heads"] * r["head_dim"]
    flops = 3.5 * 4 * r["batch"] * n * r["kernel"] ** 2 * c
    byts = 8 * r["batch"] * n * c * 4
    want = max(flops / (roof["matmul_gflops"] * 1e9), byts / (roof["copy_gbs"] * 1e9)) * 1e3
    assert r["bound_ms"] == pytest.approx(want)


def test_memory_is_measured_in_a_child(tiny_run):
    _, records = tiny_run
    mem = [r for r in records if r["kind"] == "memory"]
    assert mem and all("peak_bytes_above_inputs" in r and r["output_bytes"] > 0 for r in mem), mem
    assert {r["impl"] for r in mem} >= {"cpu", "portable"}


def test_child_rss_peak_sees_a_known_allocation():
    from msaconv.bench import memory

    if memory.supported() is not None:
        pytest.skip(memory.supported())
    res = memory.measure_in_child([{"target": "msaconv.bench.memory:allocation_probe", "kwargs": {"mb": 48}},
                                   {"target": "msaconv.bench.memory:no_such_function"}], threads=1)
    assert 0.9 * res[0]["expected_bytes"] <= res[0]["peak_bytes_above_inputs"] <= 1.3 * res[0]["expected_bytes"]
    assert "error" in res[1]


def test_table_and_plot_from_the_jsonl(tiny_run):
    out, records = tiny_run
    md = out.with_suffix(".md").read_text()
    assert "| map | k | d | bound ms |" in md and "6x7" in md and "Roofline measured in the same run" in md
    assert out.with_suffix(".png").stat().st_size > 1000
    again = report.markdown(common.read_jsonl(out))
    assert md.endswith(again)  # the table is a pure function of the JSON lines


def test_from_file_regenerates_without_running(tiny_run, tmp_path):
    out, _ = tiny_run
    md = tmp_path / "again.md"
    assert main(["bench", "op", "--from", str(out), "--markdown", str(md)]) == 0
    assert md.read_text().endswith(report.markdown(common.read_jsonl(out)))
    assert f"--from {out}" in md.read_text()


def test_skips_for_memory_and_slowness(tmp_path):
    cfg = op.OpBenchConfig(sizes=[(6, 6), (9, 9)], kernels=[3], dilations=[1], modes=["fwd"],
                           implementations=["reference", "sdpa_masked"], batch=1, heads=1, head_dim=2, runs=1,
                           warmup=1, max_call_s=0.0, max_mem_gb=1e-9, memory=False, roofline_matmul_n=256,
                           roofline_copy_mb=8)
    records = op.run_op_bench(cfg, command="test", log=lambda s: None)
    ops = [r for r in records if r["kind"] == "op"]
    assert all("GB" in r["skipped"] for r in ops), ops


def test_slow_peer_is_timed_once_then_skipped():
    cfg = op.OpBenchConfig(sizes=[(6, 6), (9, 9)], kernels=[3], dilations=[1], modes=["fwd"],
                           implementations=["portable"], batch=1, heads=1, head_dim=2, runs=2, warmup=1,
                           max_call_s=0.0, memory=False, roofline_matmul_n=256, roofline_copy_mb=8)
    ops = [r for r in op.run_op_bench(cfg, command="test", log=lambda s: None) if r["kind"] == "op"]
    assert ops[0]["runs"] == 1 and "timed once" in ops[0]["note"]
    assert "smaller case" in ops[1]["skipped"]


def test_window_mask_is_border_mask():
    """sdpa_masked's boolean mask computes exactly border='mask'."""
    from msaconv.ops import msa_conv2d

    case = op.Case(7, 9, 5, 2, batch=1, heads=2, head_dim=3, dtype="float64")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 63, 3, generator=g, dtype=torch.float64) for _ in range(3))
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=op.window_mask(case))
    to5 = lambda t: t.reshape(1, 2, 7, 9, 3)  # noqa: E731
    ours = msa_conv2d(to5(q), to5(k), to5(v), 5, dilation=2, border="mask", backend="reference")
    torch.testing.assert_close(dense.reshape(1, 2, 7, 9, 3), ours)


def test_unknown_implementation_is_a_clear_error(capsys):
    assert main(["bench", "op", "--backends", "cpu,sdpa_globl", "--no-memory"]) == 2
    assert "did you mean 'sdpa_global'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, said", [
    (["--sizes", "0"], "--sizes entries must be >= 1, got 0"), (["--kernels", "3,0"], "--kernels entries must be >= 1"),
    (["--dilations", "0"], "--dilations entries must be >= 1"), (["--batch", "0"], "--batch must be >= 1, got 0"),
    (["--heads", "-1"], "--heads must be >= 1, got -1"), (["--head-dim", "0"], "--head-dim must be >= 1"),
    (["--runs", "0"], "--runs must be >= 1, got 0; e.g. --runs 5"), (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--threads", "0"], "--threads must be >= 1")])
def test_bad_sweep_options_fail_before_measuring(argv, said, capsys, monkeypatch):
    monkeypatch.setattr(common, "measure_roofline", lambda *a: pytest.fail("measured before checking the options"))
    assert main(["bench", "op", "--no-memory", *argv]) == 2
    err = capsys.readouterr().err
    assert said in err and "e.g." in err


def test_percentile_and_jsonl_roundtrip(tmp_path):
    assert common.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 10) == pytest.approx(1.4)
    common.write_jsonl(tmp_path / "x.jsonl", [{"a": 1}, {"b": [1, 2]}], append=False)
    assert list(common.read_jsonl(tmp_path / "x.jsonl")) == [{"a": 1}, {"b": [1, 2]}]
    assert json.loads((tmp_path / "x.jsonl").read_text().splitlines()[0]) == {"a": 1}


def test_global_sdpa_keeps_being_timed_while_the_prediction_allows():
    """The peer the targets are stated against is timed once per size instead of being skipped."""
    kw = dict(sizes=[(6, 6), (9, 9)], kernels=[3], dilations=[1], modes=["fwd"], implementations=["sdpa_global"],
              batch=1, heads=1, head_dim=2, runs=2, warmup=1, max_call_s=0.0, memory=False, roofline_matmul_n=256,
              roofline_copy_mb=8)
    ops = [r for r in op.run_op_bench(op.OpBenchConfig(**kw), command="t", log=lambda s: None) if r["kind"] == "op"]
    assert [r["runs"] for r in ops] == [1, 1]
    kw["max_predicted_s"] = 0.0
    ops = [r for r in op.run_op_bench(op.OpBenchConfig(**kw), command="t", log=lambda s: None) if r["kind"] == "op"]
    assert ops[0]["runs"] == 1 and "predicted" in ops[1]["skipped"]


def test_roofline_per_case_gives_a_local_bound():
    cfg = op.OpBenchConfig(sizes=[(6, 6)], kernels=[3], dilations=[1], modes=["fwd"], implementations=["cpu"],
                           batch=1, heads=1, head_dim=2, runs=2, warmup=1, memory=False, roofline_matmul_n=256,
                           roofline_copy_mb=8, roofline_per_case=True)
    records = op.run_op_bench(cfg, command="t", log=lambda s: None)
    roofs = [r for r in records if r["kind"] == "roofline"]
    assert [r["case"] for r in roofs] == [None, "6x6-k3-d1"]
    rec = next(r for r in records if r["kind"] == "op")
    if "median_ms" in rec:
        assert rec["ratio_to_local_bound"] == pytest.approx(rec["median_ms"] / rec["local_bound_ms"])
    assert "Roofline re-measured before each of 1 cases" in report.markdown(records)


def test_a_backend_in_another_layout_is_its_own_row():
    """``cpu@bhwd`` times the cpu backend called in msa_conv2d's default layout, recorded under its own name and
    layout."""
    cfg = op.OpBenchConfig(sizes=[(6, 7)], kernels=[3], dilations=[1], modes=["fwd", "fwdbwd"],
                           implementations=["portable", "portable@bhdhw"], batch=1, heads=2, head_dim=3, runs=2,
                           warmup=1, memory=False, roofline_matmul_n=256, roofline_copy_mb=8)
    ops = [r for r in op.run_op_bench(cfg, command="t", log=lambda s: None) if r["kind"] == "op"]
    assert {(r["impl"], r["layout"]) for r in ops} == {("portable", "bhwd"), ("portable@bhdhw", "bhdhw")}
    assert all("median_ms" in r for r in ops)
    case = op.Case(6, 7, 3, 1, batch=1, heads=2, head_dim=3, dtype="float64")
    native, _ = op.setup("portable", case, "fwd")
    other, _ = op.setup("portable@bhdhw", case, "fwd")
    assert native().shape == (1, 2, 6, 7, 3) and other().shape == (1, 2, 3, 6, 7)
    assert "portable@bhdhw" in report.markdown(ops)


def test_a_layout_that_does_not_exist_is_a_clear_error(capsys):
    assert main(["bench", "op", "--backends", "cpu@bhdw", "--no-memory"]) == 2
    assert "cpu@bhwd" in capsys.readouterr().err
