"""The experiments: smoke versions end to end through the CLI into tmp_path, then ``report`` on them; the
no-op refusal of ablation arms; the report's tables and paired differences on synthetic records.

One module-scoped run chain (ablation -> ablation again (all skipped) -> mixers -> resolution -> erf -> report,
each reusing the run folders of the previous ones as the real runs do); the tests then check the records and the
markdown.
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
from msaconv.experiments import ablation, report

TIC_NANO_PARAMS = 1_422_986
TIC_CONV_NANO_PARAMS = 378_858


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
        n_first = len(C.read_records(out["ablation"]))
        _cli(mp, ["experiment", "ablation", *common, "--output", str(out["ablation"])])  # resumes: nothing to do
        n_second = len(C.read_records(out["ablation"]))
        _cli(mp, ["experiment", "mixers", *common, "--output", str(out["mixers"])])
        _cli(mp, ["experiment", "resolution", *common, "--output", str(out["resolution"])])
        erf = ["experiment", "erf", *common, "--output", str(out["erf"]), "--sizes", "32",
               "--ablation-records", str(out["ablation"])]
        _cli(mp, erf)
        n_erf = len(C.read_records(out["erf"]))
        _cli(mp, erf)  # resumes: every (arm, seed, state, size) is analysed already
        assert len(C.read_records(out["erf"])) == n_erf
        md = root / "docs" / "results.md"
        _cli(mp, ["experiment", "report", "--results", str(res), "--output", str(md)])
    finally:
        mp.undo()
    recs = {n: C.read_records(p) for n, p in out.items()}
    return {"root": root, "res": res, "md": md, "recs": recs, "scratch": scratch, "rerun": (n_first, n_second)}


def _pairs(rec: dict) -> set[tuple[int, str]]:
    return {(e["img_size"], e["protocol"]) for e in rec["evals"]}


def test_ablation_records(smoke):
    recs = smoke["recs"]["ablation"]
    runs = {r["config"]: r for r in recs if "top1" in r}
    assert set(runs) == {"default", "mdcsm_kv"}
    params = {r["params"] for r in runs.values()}
    for r in runs.values():
        assert 0 <= r["top1"] <= r["top5"] <= 100 and r["mode"] == "fixed" and r["train_sizes"] is None
        assert r["seed"] == 0 and r["smoke"] is True and r["budget"]["recipe"] == "tic_conv_nano"
        assert r["train_images"] == C.SMOKE["limit_train"] and r["val_images"] == C.SMOKE["limit_val"]
        assert r["img_per_s"] > 0 and r["train_seconds"] > 0 and Path(r["checkpoint"]).is_dir()
        assert r["env"]["torch"] and r["env"]["command"].startswith("msaconv experiment ablation --smoke")
        assert len(r["train_sha256"]) == 64 and len(r["val_sha256"]) == 64
        assert r["train_sha256"] == hashlib.sha256(Path(r["train_data"]).read_bytes()).hexdigest()
        # the run's own final evaluations at every size, both protocols ('canvas' at 32 px is 'resize')
        assert _pairs(r) == {(s, p) for s in C.SMOKE_EVAL_SIZES for p in C.PROTOCOLS} - {(32, "canvas")}
        assert r["evals_from_weights"] == 0
        assert next(e for e in r["evals"] if (e["img_size"], e["protocol"]) == (32, "resize"))["top1"] == r["top1"]
    assert params == {TIC_CONV_NANO_PARAMS}  # head dim 16 and MDCSM add no weights
    # the arm that is a no-op where it is on is recorded with its reason and never trained
    refused = [r for r in recs if r.get("refused")]
    assert [r["config"] for r in refused] == ["mdcsm_kv_all"]
    assert "stage 2 conv 1 (4x4 map" in refused[0]["refused"] and "twice the window" in refused[0]["refused"]
    assert smoke["rerun"][0] == smoke["rerun"][1]  # the second run skipped every recorded arm


def test_mechanism_check_refuses_an_arm_that_is_a_noop_where_it_is_on():
    # MDCSM 'kv' in every stage: stage 2's last conv reads a 4x4 map at 32 px, less than twice its 3x3 window
    arm = {"head_dim": 16, "shift": "kv"}
    check = ablation.mechanism_check("tic_conv_nano", arm, 32)
    assert len(check["problems"]) == 1 and check["problems"][0].startswith("stage 2 conv 1 (4x4 map, 3x3 window")
    assert ablation.mechanism_check("tic_conv_nano", arm, 64)["problems"] == []  # 8x8 there: alive
    # IPM 'grid' at a map no larger than its grid passes the raw map: global attention, not pooling
    grid = ablation.mechanism_check("tic_conv_nano", {"inter_pool": "grid"}, 32)
    assert any("raw map" in p for p in grid["problems"])
    # the registered arms: refused with their reason; the live ones are not
    why = ablation.refusals(32)
    assert set(why) == {"mdcsm_kv_all", "ipm_grid_all", "mdcsm_kv_8dir", "mdcsm_kv_h32"}
    assert "same mechanism as `mdcsm_kv`" in why["mdcsm_kv_8dir"]  # too few heads for more than one direction group
    assert "needs num_heads >= 2" in why["mdcsm_kv_h32"]
    for name in ("mdcsm_kv", "mdcsm_input", "mdcsm_input_8dir", "ipm_grid", "ipm_local", "mdcsm_ipm"):
        assert ablation.mechanism_check("tic_conv_nano", ablation.CONFIGS[name][1], 32)["notes"], name


def test_mechanism_check_reads_the_maps_the_layers_read():
    import torch

    from msaconv.layers import MSAConv2d
    from msaconv.models import create_model_from_config

    arm = ablation.CONFIGS["mdcsm_ipm"][1]
    m = create_model_from_config("tic_conv_nano", arm, 10).eval()
    seen: list[int] = []
    hooks = [x.register_forward_pre_hook(lambda mod, a: seen.append(a[0].shape[-1]))
             for x in m.modules() if isinstance(x, MSAConv2d)]
    with torch.no_grad():
        m(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert seen == [16, 16, 8, 8, 4]
    notes = ablation.mechanism_check("tic_conv_nano", arm, 32)["notes"]
    assert [n.split(" (")[1].split(" map")[0] for n in notes[::2]] == ["16x16", "16x16", "8x8"]


def test_refused_arm_is_recorded_without_training(tmp_path):
    out, scratch = tmp_path / "r.jsonl", tmp_path / "scratch"
    assert main(["experiment", "ablation", "--configs", "mdcsm_kv_all,ipm_grid_all", "--output", str(out),
                 "--scratch", str(scratch)]) == 0
    recs = C.read_records(out)
    assert {r["config"] for r in recs} == {"mdcsm_kv_all", "ipm_grid_all"} and all(r["refused"] for r in recs)
    assert all("top1" not in r and r["budget"]["epochs"] == C.DEFAULT_EPOCHS for r in recs)
    assert not scratch.exists()  # nothing trained


def test_ablation_variants_build_what_they_say():
    from msaconv.models import create_model_from_config

    seen = set()
    refused = ablation.refusals(32)
    for name, (_group, kw, _desc) in ablation.CONFIGS.items():
        if name in refused or name in ablation.TRAINING:  # a recipe arm builds the default's model on purpose
            continue
        m = create_model_from_config("tic_conv_nano", kw, 10)
        a = m.stages[1][1].conv
        a = a[0] if hasattr(a, "__getitem__") else a
        at = a.attn
        key = (at.kernel_size, at.dilation, at.num_heads, at.border, at.shift and at.shift,
               at.inter_pool and at.inter_pool.mode)
        assert key not in seen, f"{name} builds the same mixer as another arm"
        seen.add(key)


def test_budget_is_the_main_recipe_scaled():
    recipe = C.recipe_values()
    b = C.Budget()
    assert (b.recipe, b.epochs, b.limit_train, b.limit_val, b.batch_size) == (
        "tic_conv_nano", C.DEFAULT_EPOCHS, None, None, C.BATCH)
    args = argparse.Namespace(scratch="runs/x", smoke=False, fresh=False)
    fixed = C.make_job("t", "a", "tic_conv_nano", {}, 1, b, args, "fixed", C.EVAL_SIZES)
    multi = C.make_job("t", "a", "tic_conv_nano", {}, 1, b, args, "multi", [32], ["resize"])
    cf, cm = C.train_config(fixed), C.train_config(multi)
    for k in ("optimizer", "nesterov", "lr", "momentum", "weight_decay", "schedule", "label_smoothing", "crop_pad",
              "hflip"):
        assert getattr(cf, k) == recipe[k], k
    # the experiments keep their own batch (256: every record comparable), not the main job's 128
    assert cf.batch_size == b.batch_size == C.BATCH
    E = C.DEFAULT_EPOCHS
    assert cf.epochs == E and cf.warmup_epochs == pytest.approx(E * recipe["warmup_epochs"] / recipe["epochs"])
    assert cf.limit_train is None and cf.limit_val is None and cf.data == "embedded" and cf.tta == "none"
    assert cf.train_sizes is None and cm.train_sizes == [24, 32, 40]
    assert cf.eval_sizes == list(C.EVAL_SIZES) and cf.eval_protocols == ["resize", "canvas"]
    # one run per training: the evaluations asked for do not rename it, the training mode and seed do
    other_eval = C.make_job("u", "b", "tic_conv_nano", {}, 1, b, args, "fixed", [32], ["resize"])
    assert C.train_config(other_eval).name == cf.name != cm.name
    assert C.train_config({**fixed, "seed": 2}).name != cf.name
    # the recipe's memory layout does not rename a run: runs made before it was channels-last are reused
    assert cf.channels_last is True
    from msaconv.train.config import apply_overrides

    assert C.run_name(fixed, apply_overrides(cf, {"channels_last": False}, "t")) == cf.name



@pytest.mark.parametrize("model", ["tic_nano", "vit_nano_global", "hier_nano_gpsa"])
def test_transformers_train_with_the_transformer_recipe(model):
    # SGD at lr 0.2 (the ConvNets' recipe) sends tic_nano's loss to NaN in its first epoch: the transformers
    # train with tic_nano.yaml (AdamW) at the same budget (epochs, images, batch)
    conv, tr = C.recipe_values(C.RECIPE), C.recipe_values(C.TRANSFORMER_RECIPE)
    b = C.Budget()
    assert b.recipe_for("tic_conv_nano") == b.recipe_for("convnet_nano") == "tic_conv_nano"
    assert b.recipe_for(model) == "tic_nano"
    args = argparse.Namespace(scratch="runs/x", smoke=False, fresh=False)
    cfg = C.train_config(C.make_job("t", "a", model, {}, 0, b, args, "fixed", [32]))
    for k in ("optimizer", "lr", "weight_decay", "schedule", "label_smoothing", "crop_pad", "hflip"):
        assert getattr(cfg, k) == tr[k], k
    assert cfg.optimizer == "adamw" != conv["optimizer"]
    assert cfg.batch_size == b.batch_size == C.BATCH and cfg.epochs == b.epochs
    assert cfg.warmup_epochs == pytest.approx(b.epochs * tr["warmup_epochs"] / tr["epochs"])
    # one recipe for all is a flag away, and a different budget
    one = C.Budget(transformer_recipe="tic_conv_nano")
    assert one.recipe_for(model) == "tic_conv_nano" and C.budget_key(one.as_dict()) != C.budget_key(b.as_dict())
    # records made before the field existed (no transformer trained then) stay at the default budget
    old = {k: v for k, v in b.as_dict().items() if k != "transformer_recipe"}
    assert C.budget_key(old) == C.budget_key(b.as_dict())


def test_recipe_arms_change_one_training_choice():
    from msaconv.experiments import ablation

    b = C.Budget()
    args = argparse.Namespace(scratch="runs/x", smoke=False, fresh=False)
    base = C.train_config(C.make_job("ablation", "default", ablation.MODEL, {}, 0, b, args, "fixed", [32]))
    assert set(ablation.TRAINING) == {n for n, (g, _kw, _d) in ablation.CONFIGS.items() if g == "recipe"}
    names = {base.name}
    for arm, changes in ablation.TRAINING.items():
        job = C.make_job("ablation", arm, ablation.MODEL, {}, 0, b, args, "fixed", [32],
                         train_overrides=changes)
        cfg = C.train_config(job)
        for k, v in changes.items():
            assert getattr(cfg, k) == v, (arm, k)
        same = {k for k in ("optimizer", "lr", "label_smoothing", "batch_size", "ema_decay", "weight_decay",
                            "epochs", "warmup_epochs", "model_kwargs") if k not in changes}
        assert all(getattr(cfg, k) == getattr(base, k) for k in same), arm
        assert job["extra"]["train_overrides"] == changes  # the record says what the arm changed
        names.add(cfg.name)
    assert len(names) == len(ablation.TRAINING) + 1  # every arm is its own run; default is the ablation's own
    assert not set(ablation.TRAINING) & set(ablation.refusals(32))

def test_mixers_records(smoke):
    recs = smoke["recs"]["mixers"]
    train = {r["config"]: r for r in recs if r.get("kind") == "train"}
    timing = {r["config"]: r for r in recs if r.get("kind") == "timing"}
    assert set(train) == set(timing) == {"tic_nano", "tic_conv_nano", "convnet_nano", "global"}
    # tic_conv_nano is the ablation's default run, reused, not trained twice
    assert train["tic_conv_nano"]["reused_checkpoint"] is True
    assert train["tic_conv_nano"]["checkpoint"] == next(r["checkpoint"] for r in smoke["recs"]["ablation"]
                                                        if r.get("config") == "default")
    for name in ("tic_nano", "global"):
        r = train[name]
        assert abs(r["params"] - TIC_NANO_PARAMS) / TIC_NANO_PARAMS < 0.02, (name, r["params"])
    for name, r in train.items():
        assert 0 <= r["top1"] <= 100 and _pairs(r) == {(32, "resize")}
        t = timing[name]
        assert t["gmacs"] > 0 and t["infer_img_s"] > 0 and t["train_img_s"] > 0 and C.is_current(t)


def test_resolution_records(smoke):
    recs = smoke["recs"]["resolution"]
    by = {(r["config"], r["mode"]): r for r in recs}
    assert set(by) == {(a, m) for a in ("tic_conv_nano", "tic_nano") for m in ("fixed", "multi")}
    for (arm, mode), r in by.items():
        assert r["train_sizes"] == (None if mode == "fixed" else [24, 32, 40])
        assert {(16, "resize"), (48, "canvas"), (32, "resize")} <= _pairs(r)
        for e in r["evals"]:
            assert 0 <= e["top1"] <= 100 and e["images"] == C.SMOKE["limit_val"]
            # every evaluation also with BatchNorm statistics re-estimated at its size (the smoke's 192 images);
            # tic_nano has no BatchNorm (LayerNorm): its figures are the plain ones, copied, from no images
            assert 0 <= e["top1_recal"] <= 100
            if arm == "tic_nano":
                assert e["recal_images"] == 0 and e["top1_recal"] == e["top1"] and e["loss_recal"] == e["loss"]
            else:
                assert e["recal_images"] == C.SMOKE["limit_train"]
        assert r["bn_recalibrate"] == C.RECAL_IMAGES
        assert C.top1_at(r, 48, "canvas+bn") is not None and C.top1_at(r, 32, "canvas+bn") == C.top1_at(r, 32, "resize+bn")
    # below tic_nano's total stride: the size is recorded with its reason, not silently dropped
    assert "minimum input size 16x16" in by[("tic_nano", "multi")]["eval_errors"]["8"]
    assert (8, "resize") not in _pairs(by[("tic_nano", "fixed")])
    assert (8, "resize") in _pairs(by[("tic_conv_nano", "fixed")])
    # the fixed tic_conv_nano run is the ablation's default, reused; the ablation did not recalibrate, so all its
    # evaluations (the 8 px ones it never had too) come from its weights
    r = by[("tic_conv_nano", "fixed")]
    assert r["reused_checkpoint"] is True and r["evals_from_weights"] == len(r["evals"])
    assert by[("tic_conv_nano", "multi")]["reused_checkpoint"] is False


def test_vit_abspe_interpolates_its_position_embedding():
    import torch

    from msaconv.experiments import resolution
    from msaconv.models import create_model_from_config

    model, _ = resolution.ARMS["vit_nano_abspe"]
    m = create_model_from_config(model, {}, 10).eval()  # registered by msaconv.experiments._models
    with torch.no_grad():
        for s in (16, 32, 64):
            assert m(torch.zeros(2, 3, s, s)).shape == (2, 10)
    assert tuple(m.pos_embed.shape[-2:]) == (8, 8)
    assert set(resolution.ARMS) >= {"tic_conv_nano", "tic_nano", "convnet_nano", "vit_nano_global", "vit_nano_abspe"}
    assert len(resolution.ZOO) >= 3


def test_erf_records(smoke):
    recs = smoke["recs"]["erf"]
    erf = [r for r in recs if r["kind"] == "erf"]
    assert {(r["config"], r["state"]) for r in erf} == {(c, s) for c in ("default", "mdcsm_kv")
                                                          for s in ("trained", "init")}
    for r in erf:
        assert 0 < r["radius50"] <= r["radius90"] and C.is_current(r)
        if "map" in r:
            assert abs(sum(map(sum, r["map"])) - 1) < 1e-2
    assert not [r for r in recs if r["kind"] == "distance"]  # a ConvNet's MSAConv2d exposes no window weights
    assert {r["checkpoint"] for r in erf if r["state"] == "trained"} == {
        r["checkpoint"] for r in smoke["recs"]["ablation"] if "top1" in r}


def test_report(smoke):
    md = smoke["md"].read_text()
    for title in ("## Ablation", "## Mixers", "## Resolution", "## ERF"):
        assert title in md
    assert "`cost` (no records" in md  # missing experiments are named
    assert "msaconv experiment ablation --smoke" in md and "Smoke records" in md
    assert "nan" not in md.lower().replace("nano", "")
    links = [line.split("](", 1)[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(links) >= 4
    for link in links:
        assert (smoke["md"].parent / link).resolve().is_file(), link
    assert "| default |" in md and "stage 2 conv 1 (4x4 map" in md
    assert "below the 70% bar" in md  # a smoke run is far below it
    assert "| convnet_nano (other skeleton) |" in md and "Protocol `canvas`" in md


# ---------------------------------------------------------------------------------- synthetic records


def _budget(**kw) -> dict:
    return {**C.Budget().as_dict(), **kw}


def _run(exp: str, config: str, seed: int, top1: float, mode: str = "fixed", evals: dict | None = None, **extra) -> dict:
    ev = [{"img_size": s, "protocol": p, "top1": v, "top5": 99.0, "loss": 1.0, "images": 10000, "seconds": 6.0}
          for (s, p), v in (evals or {(32, "resize"): top1}).items()]
    return {"experiment": exp, "smoke": False, "env": {"command": f"msaconv experiment {exp} --data embedded"},
            "config": config, "mode": mode, "seed": seed, "model": "m", "model_kwargs": {}, "top1": top1,
            "top5": 99.0, "loss": 1.0, "val_images": 10000, "evals": ev, "eval_errors": {}, "train_images": 20000,
            "epochs": C.DEFAULT_EPOCHS, "steps": 78 * C.DEFAULT_EPOCHS, "train_seconds": 600.0, "eval_seconds": 60.0, "img_per_s": 130.0,
            "params": 300000, "threads": 1, "budget": _budget(), **extra}


def _write(path: Path, recs: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_report_on_synthetic_records(tmp_path):
    res = tmp_path / "results"
    legacy = {"experiment": "ablation", "config": "default", "seed": 0, "top1": 28.0, "steps": 62,
              "budget": {"epochs": 1, "limit_train": 8000, "batch_size": 128},
              "env": {"command": "msaconv experiment ablation --limit-train 8000 --epochs 1"}}
    abl = [legacy]
    for s, (d, k, i) in enumerate([(60.0, 63.0, 60.5), (61.0, 64.0, 61.5), (62.0, 65.0, 62.5)]):
        sizes = {(32, "resize"): d, (64, "resize"): d / 2, (64, "canvas"): d - 10}
        abl += [_run("ablation", "default", s, d, evals=sizes, group="default", description="the default"),
                _run("ablation", "mdcsm_kv", s, k, group="mdcsm", description="kv"),
                _run("ablation", "ipm_grid", s, i, group="ipm", description="grid")]
    abl.append({"experiment": "ablation", "config": "mdcsm_kv_all", "group": "mdcsm", "description": "all",
                "seed": None, "refused": "refused at 32 px: stage 2 conv 1 (4x4 map) ...", "budget": _budget()})
    _write(res / "ablation" / "records.jsonl", abl)
    resol = []
    for s in range(3):
        for arm, t32, t64 in (("tic_conv_nano", 80.0 + s, 60.0 + s), ("convnet_nano", 82.0 + s, 41.0 + s / 2)):
            resol.append(_run("resolution", arm, s, t32, evals={(32, "resize"): t32, (64, "resize"): t64,
                                                               (64, "canvas"): t64}))
    _write(res / "resolution" / "records.jsonl", resol)
    mix = [_run("mixers", c, s, v + s, kind="train", match="reference" if c == "tic_nano" else
                ("other skeleton" if c == "convnet_nano" else "params"), target_params=1_400_000)
           for s in range(2) for c, v in (("tic_nano", 70.0), ("global", 66.0), ("convnet_nano", 75.0))]
    _write(res / "mixers" / "records.jsonl", mix)
    md_path = tmp_path / "docs" / "results.md"
    md, done, missing = report.build(res, md_path)
    # the budget and the default's measured top-1, against the bar
    E = C.DEFAULT_EPOCHS  # 78 steps of 256 per epoch of 20,000 images (the last partial batch dropped)
    assert f"{E} epoch(s) of 20,000 training images" in md and f"{78 * E} optimizer steps" in md
    assert "top-1 61.00 ± 1.00 % (3 seed(s)) at 32 px, **below the 70% bar**" in md
    # paired differences: +3 every seed (real: noise 1.00 = the default's std), +0.5 (within it)
    assert "+3.00 ± 0.00 (n 3; noise 1.00: **real**)" in md
    assert "+0.50 ± 0.00 (n 3; noise 1.00: within noise)" in md
    # other sizes of the ablation arms: both protocols
    assert "protocol 'resize'" in md and "protocol 'canvas'" in md and "| default | 61.0 | 30.5 |" in md
    # the refused arm and the superseded record, apart from the tables
    assert "`mdcsm_kv_all` (all): refused at 32 px" in md
    sup = md.split("### Superseded: budget too small to decide", 1)
    assert len(sup) == 2 and "62 optimizer steps" in sup[1] and "| default | 1 | 28.00 |" in sup[1]
    assert "28.00" not in sup[0]
    # resolution: the ConvNet row, both protocols, keep = top-1 at 64 / top-1 at 32, paired difference of keep
    assert "| convnet_nano | fixed | 3 | 83.00 ± 1.00 | 41.5 (0.50) |" in md
    assert "| tic_conv_nano | fixed | 3 | 81.00 ± 1.00 | 61.0 (0.75) |" in md
    keep = [line for line in md.splitlines() if line.startswith("| resize | tic_conv_nano − convnet_nano | fixed |")]
    assert keep and "**real**" in keep[0] and "+0.2" in keep[0]
    assert "keeps more (real) than: convnet_nano at 64 px (+0.253)" in md
    # mixers: paired against tic_nano, the ConvNet row
    assert "| convnet_nano (other skeleton) | 75.50 ± 0.71 | 2 | +5.00 ± 0.00" in md
    assert "| global | 66.50 ± 0.71 | 2 | -4.00 ± 0.00" in md
    # what has no records says so, never a number
    assert "erf" in missing and "`erf` (no records" in md
    assert "**Not run yet**: arms head_dim16, mdcsm_kv_8dir" in md and "vs head_dim16: control not run yet" in md
    assert "(not run yet: no timing record at this budget)" in md



def test_claims_verdicts_on_synthetic_records(tmp_path):
    from msaconv.experiments import claims

    res = tmp_path / "results"
    abl = []
    for s in range(3):
        d = 70.0 + s  # the default; head_dim16 its level too
        abl += [_run("ablation", "default", s, d), _run("ablation", "head_dim16", s, d - 1.0),
                _run("ablation", "mdcsm_kv", s, d + 2.5), _run("ablation", "mdcsm_input", s, d + 0.2),
                _run("ablation", "ipm_grid", s, d - 3.0), _run("ablation", "ipm_local", s, d)]
    _write(res / "ablation" / "records.jsonl", abl)
    resol = []
    for s in range(3):
        for arm, t32, t48 in (("tic_conv_nano", 80.0 + s, 70.0 + s), ("convnet_nano", 80.5 + s, 50.0 + s),
                              ("tic_nano", 70.0 + s, 60.0 + s)):
            resol.append(_run("resolution", arm, s, t32, evals={(32, "resize"): t32, (48, "resize"): t48,
                                                               (48, "canvas"): t48 - 5.0}))
    _write(res / "resolution" / "records.jsonl", resol)
    md = claims.render(res)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    # +2.5 points over its control at every seed, beyond twice the noise (1.0, the control's spread over seeds)
    assert "**supported**: mdcsm_kv − head_dim16" in rows["MDCSM helps (top-1 at 32 px, paired)"]
    # a verdict names the comparisons that decided it and those within the noise
    assert ("**against**: ipm_grid − default (within the noise: ipm_local − default)"
            in rows["IPM helps (top-1 at 32 px, paired)"])
    # the resolution claim waits for its other pair (tic_nano against the ViT with the learned embedding)
    res_row = next(v for k, v in rows.items() if k.startswith("Any resolution"))
    assert "undecided: 3 seed(s) so far; not run yet: tic_nano − vit_nano_abspe" in res_row
    assert "tic_conv_nano − convnet_nano, resize: 48 px +0.251 ± 0.003* (n 3; noise 0.006)" in res_row
    acc = next(v for k, v in rows.items() if k.startswith("Accuracy comparable"))
    assert "**supported**: no difference within the noise" in acc and "-0.500" in acc  # -0.5 at noise 1.0
    cost_row = next(v for k, v in rows.items() if k.startswith("Cheaper"))
    assert "undecided: not run yet" in cost_row
    # a further MDCSM arm is shown, and joins the verdict only with 3 seeds
    _write(res / "ablation" / "records.jsonl", abl + [_run("ablation", "mdcsm_kv_8dir", 0, 60.0, group="mdcsm")])
    mdcsm = next(line for line in claims.render(res).splitlines() if line.startswith("| MDCSM helps"))
    assert "**supported**: mdcsm_kv − head_dim16 (within the noise: mdcsm_input − default) |" in mdcsm
    assert "mdcsm_kv_8dir − head_dim16 (top-1 points; not in the verdict until it has 3 seeds) -9.00" in mdcsm
    eight = [_run("ablation", "mdcsm_kv_8dir", s, 60.0 + s, group="mdcsm") for s in range(3)]
    _write(res / "ablation" / "records.jsonl", abl + eight)
    mdcsm = next(line for line in claims.render(res).splitlines() if line.startswith("| MDCSM helps"))
    assert "**against**: mdcsm_kv_8dir − head_dim16 (for: mdcsm_kv − head_dim16" in mdcsm
    _write(res / "ablation" / "records.jsonl", abl)
    # with the ViT's runs the claim is decided: one sentence per comparison, the sizes grouped by protocol
    resol += [_run("resolution", "vit_nano_abspe", s, 60.0 + s, evals={(32, "resize"): 60.0 + s,
                   (48, "resize"): 57.0 + s, (48, "canvas"): 40.0 + s}) for s in range(3)]
    _write(res / "resolution" / "records.jsonl", resol)
    res_row = next(line for line in claims.render(res).splitlines() if line.startswith("| Any resolution"))
    assert ("**against**: tic_nano keeps less than vit_nano_abspe at 48 px (resize) "
            "(for: tic_conv_nano keeps more than convnet_nano at 48 px (resize), 48 px (canvas); "
            "tic_nano keeps more than vit_nano_abspe at 48 px (canvas))") in res_row
    assert "resize+bn" not in res_row  # no record re-estimated BatchNorm: those protocols would repeat 'resize'
    # global attention in tic_nano's body: printed as the body's control, kept out of the verdict
    resol += [_run("resolution", "global", s, 70.0 + s, evals={(32, "resize"): 70.0 + s, (48, "resize"): 61.0 + s,
                                                              (48, "canvas"): 56.0 + s}) for s in range(3)]
    _write(res / "resolution" / "records.jsonl", resol)
    row = next(line for line in claims.render(res).splitlines() if line.startswith("| Any resolution"))
    assert row.split(" | ")[1] == res_row.split(" | ")[1]  # the same verdict
    assert "control, not in the verdict (global attention in tic_nano's own body): tic_nano − global, resize: 48 px" in row
    assert "multi-size" not in row  # no arm of a pair trained at several sizes yet
    # multi-size training: judged beside the fixed-size verdict, which it does not change
    resol += [_run("resolution", arm, s, 75.0 + s, mode="multi", evals={(32, "resize"): 75.0 + s, (48, "resize"): k + s,
                   (48, "canvas"): 60.0 + s}) for s in range(3) for arm, k in (("tic_conv_nano", 74.0), ("convnet_nano", 70.0))]
    _write(res / "resolution" / "records.jsonl", resol)
    row = next(line for line in claims.render(res).splitlines() if line.startswith("| Any resolution"))
    assert row.split(" | ")[1] == (res_row.split(" | ")[1] + "; with multi-size training: undecided: 3 seed(s) so far; "
                                   "not run yet: tic_nano − vit_nano_abspe")
    assert "multi-size training: tic_conv_nano − convnet_nano, resize: 48 px +0.053 ± 0.0" in row
    assert row.count("* real: beyond twice the noise") == 1

def test_a_run_resumed_after_its_last_step_has_no_training_time(tmp_path):
    from msaconv.experiments import ablation

    # seed 1 was resumed from a checkpoint written after the last step, before checkpoints carried the
    # training time: its process trained nothing, so its record has no rate and says nothing of the time
    runs = [_run("ablation", "default", 0, 70.0), {**_run("ablation", "default", 1, 71.0), "img_per_s": None,
                                                  "train_seconds": 0.0002}]
    row = ablation.summarise(runs)[0]
    assert row["train_min"]["n"] == 1 and row["train_min"]["mean"] == 10.0 and row["img_per_s"]["n"] == 1
    # resumed midway from such a checkpoint: the time counts only the part after the resume
    assert C.train_minutes({**runs[0], "train_seconds_partial": True}) is None and C.train_minutes(runs[0]) == 10.0
    md = ablation.render([{**runs[1], "group": "default", "description": "d"}], tmp_path)
    assert "| 0.300 | - | - |" in md  # params, then no rate and no minutes


def test_report_says_when_the_default_reaches_the_bar(tmp_path):
    res = tmp_path / "results"
    _write(res / "ablation" / "records.jsonl",
           [_run("ablation", "default", s, 71.0 + s, group="default", description="d") for s in range(3)])
    md, _, _ = report.build(res, tmp_path / "r.md")
    assert "top-1 72.00 ± 1.00 % (3 seed(s)) at 32 px, at or above the 70% bar" in md and "below the" not in md
    # the cost of a run of the default's network over every ablation arm, per CPU (the recipe's arms change steps)
    recs = [_run("ablation", "default", s, 71.0 + s, group="default", description="d", train_seconds=60.0 * (s + 1),
                 env={"cpu": "CPU A"}) for s in range(3)]
    recs += [_run("ablation", "batch64", 0, 72.0, group="recipe", train_seconds=6000.0, env={"cpu": "CPU A"}),
             _run("ablation", "ipm_grid", 0, 72.0, group="ipm", train_seconds=30.0, env={"cpu": "CPU B"})]
    _write(res / "ablation" / "records.jsonl", recs)
    md, _, _ = report.build(res, tmp_path / "r.md")
    assert ("CPU A: 3 runs, training median 2.0 min (fastest 1.0), evaluation median 1.0 min; "
            "CPU B: 1 run, training median 0.5 min (fastest 0.5)") in md


def test_report_without_new_records_says_not_run_yet(tmp_path):
    res = tmp_path / "results"
    _write(res / "ablation" / "records.jsonl", [{"experiment": "ablation", "config": "default", "seed": 0, "top1": 28.0,
                                                "budget": {"epochs": 1, "limit_train": 8000}}])
    md, _, _ = report.build(res, tmp_path / "r.md")
    assert "**Default arm** (`tic_conv_nano`, fixed 32 px, the ablation's `default`): not run yet" in md
    assert "`ablation` (only superseded records" in md and "**Not run yet** at the budget" in md


# ---------------------------------------------------------------------------------------- plumbing


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
    assert C.paired({0: 3.0, 1: 5.0, 2: 1.0}, {0: 1.0, 1: 2.0}) == [2.0, 3.0]
    v = C.verdict([2.0, 3.0], base_std=0.1, floor=0.2)
    assert v["noise"] == pytest.approx(0.7071, abs=1e-4) and v["real"] is True
    assert C.verdict([2.0], floor=0.1)["real"] is False  # one seed decides nothing
    assert C.binomial_se(50.0, 10000) == pytest.approx(0.5)
    new, old = {"budget": C.Budget().as_dict()}, {"budget": {"epochs": 1, "limit_train": 8000}}
    other = {"budget": {**C.Budget().as_dict(), "epochs": 8}}
    assert C.is_current(new) and not C.is_current(old) and not C.is_current({})
    assert C.split_budgets([old, new, other]) == ([other], [new], [old])


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


def test_a_killed_run_continues_from_its_last_checkpoint(tmp_path):
    """A run folder with checkpoints but no summary (killed midway) is resumed, not restarted; a finished one is
    reused as it is."""
    args = argparse.Namespace(scratch=str(tmp_path), smoke=True, fresh=False)
    job = C.make_job("t", "default", "convnet_nano", {}, 0, C.Budget(**{**C.SMOKE, "epochs": 2}), args,
                     sizes=[32], protocols=["resize"])
    first = C.train_job(job)
    run_dir = Path(first["checkpoint"])
    assert first["reused_checkpoint"] is False and first["steps"] == 6
    assert C.train_job(job)["reused_checkpoint"] is True
    (run_dir / "summary.json").unlink()  # as if killed during the final evaluations
    again = C.train_job(job)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert again["reused_checkpoint"] is False and summary["resumed_from"] == 6 and again["top1"] == first["top1"]



def test_a_failure_followed_by_a_success_is_not_listed():
    recs = [{"config": "a", "seed": 0, "error": "NonFiniteLossError: nan"}, {"config": "a", "seed": 0, "top1": 70.0},
            {"config": "b", "seed": 0, "top1": 70.0}, {"config": "b", "seed": 0, "error": "killed"},
            {"config": "c", "seed": 1, "error": "x"}]
    open_ = C.open_failures(recs, lambda r: (r["config"], r["seed"]))
    assert [(r["config"], r["error"]) for r in open_] == [("b", "killed"), ("c", "x")]


def test_one_seed_gets_no_verdict():
    """A paired difference of one seed has no spread: it is printed without a verdict, never as 'within noise'."""
    one = C.verdict([-16.59], base_std=0.6)
    assert not one["real"]
    assert C.fmt_verdict(one) == "-16.59 ± 0.00 (n 1; noise 0.60: one seed, no verdict)"
    two = C.verdict([-0.5, -0.7], base_std=0.6)
    assert C.fmt_verdict(two) == "-0.60 ± 0.14 (n 2; noise 0.60: within noise)"
    assert C.fmt_verdict(C.verdict([-16.5, -16.7], base_std=0.6)).endswith("**real**)")


def test_window_coverage_names_the_maps_a_window_covers():
    from msaconv.experiments.resolution import window_coverage

    # tic_nano at 32 px: stages on 8x8, 4x4 and 2x2 maps; a 3x3 window reaches every pixel of a 2x2 map, and
    # IPM's 4x4 grid is the raw map on 4x4 and 2x2 maps
    at32 = window_coverage("tic_nano", 32)
    assert "maps 8x8 (1), 4x4 (2), 2x2 (1), 3x3 windows" in at32
    assert "on the 2x2 maps each window covers the whole map" in at32
    assert "IPM 'grid' passes the raw 4x4 and 2x2 maps" in at32
    # at 64 px the smallest map is 4x4: no window covers its map any more
    at64 = window_coverage("tic_nano", 64)
    assert "16x16 (1), 8x8 (2), 4x4 (1)" in at64 and "covers the whole map" not in at64
    # tic_conv_nano's smallest map at 32 px (4x4) is larger than a 3x3 window's reach; no MSA-Conv: nothing to say
    assert "covers" not in window_coverage("tic_conv_nano", 32)
    assert window_coverage("convnet_nano", 32) is None
