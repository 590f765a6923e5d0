"""Smoke versions of every experiment, end to end through the CLI into tmp_path, then ``report`` on them.

One module-scoped run chain (ablation -> mixers -> resolution -> erf -> report, each reusing the previous
checkpoints as the real runs do); the tests then check the records and the markdown.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pytest

from msaconv.cli import main
from msaconv.experiments import EXPERIMENTS, get_experiment
from msaconv.experiments import _common as C

TIC_NANO_PARAMS = 1_422_986


def _cli(monkeypatch, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["msaconv", *argv])
    assert main(argv) == 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("exp")
    res, scratch = root / "results", root / "scratch"
    common = ["--smoke", "--scratch", str(scratch)]
    out = {n: res / n / "records.jsonl" for n in ("ablation", "mixers", "resolution", "erf")}
    try:
        _cli(mp, ["experiment", "ablation", *common, "--output", str(out["ablation"])])
        _cli(mp, ["experiment", "mixers", *common, "--output", str(out["mixers"])])
        _cli(mp, ["experiment", "resolution", *common, "--output", str(out["resolution"]),
                  "--ablation-records", str(out["ablation"]), "--mixers-records", str(out["mixers"])])
        _cli(mp, ["experiment", "erf", *common, "--output", str(out["erf"]), "--sizes", "32",
                  "--ablation-records", str(out["ablation"])])
        md = root / "docs" / "results.md"
        _cli(mp, ["experiment", "report", "--results", str(res), "--output", str(md)])
    finally:
        mp.undo()
    recs = {n: C.read_records(p) for n, p in out.items()}
    return {"root": root, "res": res, "md": md, "recs": recs, "scratch": scratch}


def test_ablation_records(smoke):
    recs = smoke["recs"]["ablation"]
    runs = {r["config"]: r for r in recs if "top1" in r}
    assert set(runs) == {"default", "mdcsm_ipm_off"}
    for r in runs.values():
        assert 0 <= r["top1"] <= r["top5"] <= 100
        assert r["params"] == TIC_NANO_PARAMS and r["seed"] == 0 and r["smoke"] is True
        assert r["train_images"] == C.SMOKE["limit_train"] and r["val_images"] == C.SMOKE["limit_val"]
        assert r["img_per_s"] > 0 and r["train_seconds"] > 0 and Path(r["checkpoint"]).is_dir()
        assert r["env"]["torch"] and r["env"]["command"].startswith("msaconv experiment ablation --smoke")
        assert len(r["train_sha256"]) == 64 and len(r["val_sha256"]) == 64
        assert r["train_sha256"] == hashlib.sha256(Path(r["train_data"]).read_bytes()).hexdigest()
    # "off" must reach the model (None would be dropped by create_model and silently keep the default)
    assert runs["mdcsm_ipm_off"]["model_kwargs"] == {"shift": False, "inter_pool": False}
    assert runs["default"]["loss"] != runs["mdcsm_ipm_off"]["loss"]
    clamp = next(r for r in recs if r["config"] == "border_clamp_k3")
    assert "minimum input size 48x48" in clamp["error"] and clamp["min_input_size"] == 48


def test_ablation_variants_build_what_they_say():
    from msaconv.experiments.ablation import CONFIGS
    from msaconv.models import create_model, plain_overrides

    seen = set()
    for name, (_group, kw, _desc) in CONFIGS.items():
        a = create_model("tic_nano", num_classes=10, **plain_overrides(kw)).stages[1].blocks[1].mixer.attn
        key = (a.kernel_size, a.dilation, a.num_heads, a.border, a.shift and a.shift.mode,
               a.inter_pool and a.inter_pool.mode)
        assert key not in seen, f"{name} builds the same mixer as another variant"
        seen.add(key)


def test_mixers_records(smoke):
    recs = smoke["recs"]["mixers"]
    train = {r["config"]: r for r in recs if r.get("kind") == "train"}
    timing = {r["config"]: r for r in recs if r.get("kind") == "timing"}
    assert set(train) == set(timing) == {"tic_nano", "msa_conv", "global"}
    # the reference is the ablation's default run, reused, not trained twice
    assert train["tic_nano"]["reused_checkpoint"] is True
    for name, r in train.items():
        assert abs(r["params"] - TIC_NANO_PARAMS) / TIC_NANO_PARAMS < 0.02, (name, r["params"])
        assert 0 <= r["top1"] <= 100
        t = timing[name]
        assert t["gmacs"] > 0 and t["infer_img_s"] > 0 and t["train_img_s"] > 0


def test_resolution_records(smoke):
    recs = smoke["recs"]["resolution"]
    models = {r["config"] for r in recs}
    assert models == {"tic_nano", "msa_conv", "global", "vit_nano_global", "vit_nano_abspe"}
    by = {(r["config"], r["img_size"]): r for r in recs}
    for m in models:
        for s in (16, 32, 48):
            assert 0 <= by[(m, s)]["top1"] <= 100, (m, s)
    # below the total stride: the model appears with the reason, not silently dropped
    assert "minimum input size 16x16" in by[("tic_nano", 8)]["error"]
    assert by[("tic_nano", 32)]["source"].startswith("ablation")
    assert by[("msa_conv", 32)]["source"].startswith("mixers")


def test_erf_records(smoke):
    recs = smoke["recs"]["erf"]
    erf = [r for r in recs if r["kind"] == "erf"]
    dist = [r for r in recs if r["kind"] == "distance"]
    assert {(r["config"], r["state"]) for r in erf} == {(c, s) for c in ("default", "mdcsm_ipm_off")
                                                          for s in ("trained", "init")}
    for r in erf:
        assert 0 < r["radius50"] <= r["radius90"]
        if "map" in r:
            assert abs(sum(map(sum, r["map"])) - 1) < 1e-2
    d = {(r["config"], r["state"]): [] for r in dist}
    for r in dist:
        d[(r["config"], r["state"])].append(r["distance_px"])
    # MDCSM's roll and IPM's pooled cells reach further than a plain 3x3 window, by construction
    assert sum(d[("default", "init")]) > sum(d[("mdcsm_ipm_off", "init")])


def test_report(smoke):
    md = smoke["md"].read_text()
    for title in ("## Ablation", "## Mixers", "## Resolution", "## ERF"):
        assert title in md
    assert "`cost` (`msaconv experiment cost`)" in md  # missing experiments are named
    assert "msaconv experiment ablation --smoke" in md and "Smoke records" in md
    assert "nan" not in md.lower().replace("nano", "")
    links = [line.split("](", 1)[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(links) >= 4
    for link in links:
        assert (smoke["md"].parent / link).resolve().is_file(), link
    assert "| default |" in md and "minimum input size 48x48" in md


def test_registry_contract():
    """Every registered experiment imports (an ImportError fails here: none has an optional dependency at
    import time, they keep torch and matplotlib inside their functions) and has the four names."""
    assert set(EXPERIMENTS) >= {"ablation", "mixers", "resolution", "cost", "erf"}
    for name in EXPERIMENTS:
        mod = get_experiment(name)
        assert isinstance(mod.HELP, str) and mod.HELP, name
        for attr in ("add_arguments", "run", "render"):
            assert callable(getattr(mod, attr, None)), (name, attr)
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        assert "--smoke" in p.format_help()
    with pytest.raises(ValueError, match="did you mean 'ablation'"):
        get_experiment("ablaton")


def test_helpers():
    s = C.mean_spread([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == 1.0 and (s["min"], s["max"], s["n"]) == (1.0, 3.0, 3)
    assert C.mean_spread([5.0])["std"] == 0.0
    t = C.md_table(["a", "b"], [["x|y", 1]])
    assert t.splitlines()[1] == "| --- | ---: |" and "x\\|y" in t
    recs = [{"config": "a", "seed": 0, "v": 1}, {"config": "a", "seed": 0, "v": 2}]
    assert C.latest_batch(recs, lambda r: (r["config"], r["seed"])) == [recs[1]]


def test_data_that_cannot_be_found_is_an_error_never_a_fallback(tmp_path):
    missing = tmp_path / "no" / "train.zip"
    with pytest.raises(ValueError, match="does not exist") as e:
        C.Budget(data=str(missing)).as_dict()
    assert str(missing) in str(e.value) and "--data embedded" in str(e.value)
    assert main(["experiment", "ablation", "--data", str(missing), "--configs", "default", "--seeds", "1",
                 "--output", str(tmp_path / "r.jsonl")]) == 2
    assert not (tmp_path / "r.jsonl").exists()
    assert C.Budget().resolved_data() == "embedded"


def test_cli_lists_experiments(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    out = capsys.readouterr().out
    for name in ("ablation", "mixers", "resolution", "erf", "report"):
        assert name in out


def test_records_are_json_lines(smoke):
    for p in smoke["res"].glob("*/records.jsonl"):
        for line in p.read_text().splitlines():
            assert isinstance(json.loads(line), dict)
