"""`msaconv experiment cost --smoke`: records, fitted exponents, skips with reasons, the rendered section."""

from __future__ import annotations

import argparse
import math

import pytest

from msaconv.bench import common
from msaconv.experiments import cost
from msaconv.models import count_flops, create_model


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cost.add_arguments(p)
    return p.parse_args(list(argv))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("cost") / "records.jsonl"
    path = cost.run(_args("--smoke", "--threads", "1", "--output", str(out)))
    assert path == out
    return out, list(common.read_jsonl(out))


def test_smoke_records(smoke):
    _, records = smoke
    assert {(r["model"], r["img_size"]) for r in records} == {(m, s) for m in cost.SMOKE_MODELS for s in cost.SMOKE_SIZES}
    for r in records:
        assert r["kind"] == "cost" and r["pixels"] == r["img_size"] ** 2 and r["batch_size"] == 1
        assert r["median_ms"] > 0 and r["cpu_ms"] > 0 and r["peak_mb"] >= 0 and r["clock"] == "cpu" and r["gmacs"] > 0 and r["params"] > 0
        for key in ("torch", "cpu", "threads", "git_commit", "command"):
            assert key in r, key
    glob = {r["model"]: r["global_attention"] for r in records}
    assert glob == {"tic_nano": False, "vit_nano_global": True}


def test_gmacs_counted_on_meta_equal_the_real_count(smoke):
    _, records = smoke
    r = next(r for r in records if r["model"] == "tic_nano" and r["img_size"] == 32)
    assert r["gmacs"] == pytest.approx(count_flops(create_model("tic_nano"), (3, 32, 32))["gmacs"])


def test_exponents_are_computed(smoke):
    _, records = smoke
    fits = cost.fit(records)
    for m in cost.SMOKE_MODELS:
        assert fits[m]["exponent"] is not None and math.isfinite(fits[m]["exponent"])
        assert fits[m]["sizes"] == list(cost.SMOKE_SIZES)
        assert fits[m]["gmacs_exponent"] > 0.9  # at least linear in pixels


def test_render_writes_tables_and_plot(smoke, tmp_path):
    _, records = smoke
    text = cost.render(records, tmp_path / "figs")
    assert "| size (px) | pixels |" in text and "| model | exponent |" in text
    for m in cost.SMOKE_MODELS:
        assert f"| {m} |" in text
    assert (tmp_path / "figs" / cost.FIGURE).stat().st_size > 0
    assert f"]({(tmp_path / 'figs').as_posix()}/{cost.FIGURE})" in text  # the link experiment report rewrites


def test_fit_uses_sizes_above_overhead():
    recs = [{"kind": "cost", "model": m, "img_size": s, "pixels": s * s, "batch_size": 1,
             "median_ms": 10.0 + (s * s) ** e * 1e-3, "gmacs": (s * s) ** e * 1e-6}
            for m, e in (("lin", 1), ("quad", 2)) for s in (64, 128, 256, 512, 1024)]
    fits = cost.fit(recs)
    assert fits["lin"]["exponent"] == pytest.approx(1.0, abs=0.1) and 64 not in fits["lin"]["sizes"]
    assert fits["quad"]["exponent"] == pytest.approx(2.0, abs=0.05)
    assert fits["quad"]["gmacs_exponent"] == pytest.approx(2.0)
    assert cost.predict([(1.0, 2.0), (2.0, 8.0)], 4.0) == pytest.approx(32.0)  # slope 2
    assert cost.predict([(1.0, 2.0), (2.0, 3.0)], 4.0) == pytest.approx(6.0)  # clamped up to 1
    assert cost.predict([], 4.0) is None


def test_over_budget_sizes_are_skipped_with_the_reason(tmp_path):
    out = tmp_path / "r.jsonl"
    cost.run(_args("--models", "tic_nano", "--sizes", "32,48,64", "--runs", "1", "--no-memory",
                   "--max-call-s", "1e-7", "--output", str(out)))
    recs = list(common.read_jsonl(out))
    assert "median_ms" in recs[0] and "skipped" not in recs[0]
    assert all("predicted" in r["skipped"] and "--max-call-s" in r["skipped"] for r in recs[1:])
    assert "skipped (1)" in cost.render(recs, tmp_path)


def test_unknown_model_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'tic_tinyy'.*did you mean 'tic_tiny'"):
        cost.run(_args("--models", "tic_tinyy", "--output", str(tmp_path / "x.jsonl")))
