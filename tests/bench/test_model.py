"""`msaconv bench model` on two tiny models at 32 px: timm benchmark.py's columns, GMACs, peak memory, errors."""

from __future__ import annotations

import pytest
import torch

from msaconv.bench import common
from msaconv.bench import model as bench_model
from msaconv.cli import main
from msaconv.models import count_flops, create_model

MODELS = ("tic_nano", "hier_nano_global")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_model") / "model.jsonl"
    code = main(["bench", "model", "--models", ",".join(MODELS), "--img-size", "32", "--batch-size", "2",
                 "--runs", "2", "--warmup", "1", "--threads", "1", "--output", str(out),
                 "--markdown", str(out.with_suffix(".md"))])
    assert code == 0
    return out, list(common.read_jsonl(out))


def test_records_have_timms_columns_and_context(tiny_run):
    _, records = tiny_run
    assert [r["model"] for r in records] == list(MODELS)
    for r in records:
        assert "error" not in r, r.get("error")
        for col in bench_model.COLUMNS:
            assert col in r, col
        for col in ("infer_samples_per_sec", "infer_step_time", "train_samples_per_sec", "train_step_time",
                    "param_count", "gmacs", "infer_peak_mb", "train_peak_mb", "infer_cpu_ms", "train_cpu_ms"):
            assert r[col] > 0, col
        assert r["batch_size"] == 2 and r["img_size"] == 32 and r["source"] == "msaconv"
        assert r["infer_samples_per_sec"] == pytest.approx(2 / (r["infer_step_time"] / 1e3))
        assert r["infer_step_time_p10"] <= r["infer_step_time"] <= r["infer_step_time_p90"]
        for key in ("torch", "cpu", "threads", "git_commit", "command", "time_utc"):
            assert key in r, key
        assert r["threads"] == 1
        assert r["command"].startswith("msaconv bench model")


def test_gmacs_and_params_are_count_flops(tiny_run):
    _, records = tiny_run
    for r in records:
        want = count_flops(create_model(r["model"]), (3, 32, 32))
        assert r["gmacs"] == pytest.approx(want["gmacs"])
        assert r["params"] == want["params"]
        assert r["param_count"] == pytest.approx(want["params"] / 1e6, abs=1e-3)
    assert records[0]["msa_core"] == "op formula"  # the custom op is in the count


def test_markdown_table_and_regeneration(tiny_run, tmp_path):
    out, _ = tiny_run
    text = out.with_suffix(".md").read_text()
    assert "| model | infer samples/s | infer step ms | train samples/s |" in text
    for name in MODELS:
        assert f"| {name} |" in text
    again = tmp_path / "again.md"
    assert main(["bench", "model", "--from", str(out), "--markdown", str(again)]) == 0
    assert again.read_text().split("\n", 3)[3] == text.split("\n", 3)[3]


def test_unknown_model_names_it_and_the_fix(capsys):
    assert main(["bench", "model", "--models", "tic_nanoo", "--no-memory"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'tic_nanoo'" in err and "did you mean 'tic_nano'" in err
    with pytest.raises(ValueError, match="unknown model 'not_a_model'"):
        bench_model.resolve("not_a_model")


@pytest.mark.skipif(bench_model.timm_problem() is None, reason="timm is installed here")
def test_timm_model_without_timm_says_install_it():
    with pytest.raises(ValueError, match=r"'timm:resnet50' needs timm.*pip install timm"):
        bench_model.resolve("timm:resnet50")
    with pytest.raises(ValueError, match=r"unknown model 'resnet50'.*pip install timm"):
        bench_model.resolve("resnet50")


@pytest.mark.timm
@pytest.mark.skipif(bench_model.timm_problem() is not None, reason="needs timm")
def test_timm_models_resolve_by_prefix_or_fallback():
    assert bench_model.resolve("timm:resnet50") == ("timm", "resnet50")
    assert bench_model.resolve("resnet50") == ("timm", "resnet50")
    assert bench_model.resolve("tic_nano") == ("msaconv", "tic_nano")


def test_bad_config_is_a_value_error():
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        bench_model.run_model_bench(bench_model.ModelBenchConfig(models=["tic_nano"], batch_size=0))


def test_memory_format_both_interleaves_nchw_and_channels_last(tmp_path):
    out = tmp_path / "cl.jsonl"
    code = main(["bench", "model", "--models", "tic_conv_nano", "--img-size", "16", "--batch-size", "2",
                 "--runs", "1", "--warmup", "1", "--threads", "1", "--no-memory", "--memory-format", "both",
                 "--output", str(out), "--markdown", str(out.with_suffix(".md"))])
    assert code == 0
    recs = list(common.read_jsonl(out))
    assert [(r["model"], r["channels_last"]) for r in recs] == [("tic_conv_nano", False), ("tic_conv_nano", True)]
    assert all("error" not in r and r["train_step_time"] > 0 for r in recs)
    assert "| tic_conv_nano (channels_last) |" in out.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="memory_format must be one of"):
        bench_model.run_model_bench(bench_model.ModelBenchConfig(models=["tic_nano"], memory_format="nhwc"))


def test_amp_bf16_runs_the_steps_under_autocast(tmp_path, monkeypatch):
    out = tmp_path / "bf16.jsonl"
    seen = []
    real = bench_model._steps

    def spy(*a, **kw):
        infer, train = real(*a, **kw)

        def infer_dtype():
            y = infer()
            seen.append(y.dtype)
            return y
        return infer_dtype, train

    monkeypatch.setattr(bench_model, "_steps", spy)
    code = main(["bench", "model", "--models", "convnet_nano", "--img-size", "16", "--batch-size", "2", "--runs", "1",
                 "--warmup", "1", "--threads", "1", "--no-memory", "--amp", "bf16", "--output", str(out),
                 "--markdown", str(out.with_suffix(".md"))])
    assert code == 0 and set(seen) == {torch.bfloat16}  # the linear head ran in bfloat16
    rec = next(iter(common.read_jsonl(out)))
    assert rec["amp"] == "bf16" and rec["train_step_time"] > 0 and rec["train_gflops"] > 0
    assert "| convnet_nano (bf16) |" in out.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="amp must be one of"):
        bench_model.run_model_bench(bench_model.ModelBenchConfig(models=["tic_nano"], amp="fp16"))


def test_amp_both_interleaves_float32_and_bf16(tmp_path):
    out = tmp_path / "ab.jsonl"
    assert main(["bench", "model", "--models", "convnet_nano", "--img-size", "16", "--batch-size", "2", "--runs", "1",
                 "--warmup", "1", "--threads", "1", "--no-memory", "--amp", "both", "--output", str(out)]) == 0
    assert [r["amp"] for r in common.read_jsonl(out)] == ["none", "bf16"]
