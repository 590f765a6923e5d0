"""Every shipped recipe, proven by a short smoke run on the embedded data (its own model and options:
AdamW/cosine/warm-up, mixup/CutMix, RandAugment-like policy, drop path, EMA, bf16 autocast, gradient
accumulation, channels_last, streaming through DataLoader workers)."""

from __future__ import annotations

import json

import pytest

from msaconv.train import config as C
from train_helpers import run_cli

SMOKE = ["--data", "embedded", "--img-size", "32", "--limit-train", "8", "--limit-val", "8", "--epochs", "1",
         "--batch-size", "2", "--no-progress", "--set", "eval_sizes=[32]", "--set", "eval_batch_size=16",
         "--set", "threads=1", "--set", "workers=1", "--set", "warmup_epochs=0.5"]


# the 28M/51M-parameter models write ~1 GB of checkpoints (weights, AdamW state, EMA): marked slow
_SLOW = {"tic_small", "tic_base"}


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=pytest.mark.slow) if r in _SLOW else r
                                    for r in C.list_recipes()])
def test_recipe_smoke(recipe, tmp_path):
    cfg = C.resolve(recipe)
    rc = run_cli(["train", "--config", recipe, *SMOKE, "--output", tmp_path, "--name", "r"])
    assert rc == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["model"] == cfg.model and summary["status"] == "finished"
    # grad_accum 4 x batch 2 = 8 images per optimizer step
    assert summary["steps"] == max(1, 8 // (2 * cfg.grad_accum))
    assert summary["final"][0]["images"] == 8
    recs = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in recs if r["type"] == "train")  # no NaN


@pytest.mark.parametrize("name", ["tic_tiny", "tic_small", "tic_base"])
def test_imagenet_recipes_build_the_full_toolbox(name):
    """What the engine builds from each ImageNet recipe, not the YAML read back: drop path in the model,
    AdamW without decay on norms and biases, a warm-up then cosine schedule to its floor, soft targets from
    mixup / CutMix with label smoothing, an EMA, and 1024 images per optimizer step."""
    import torch

    from msaconv.train.data import augment
    from msaconv.train.ema import ModelEma
    from msaconv.train.engine import build_model, make_optimizer
    from msaconv.train.schedule import lr_at

    cfg = C.resolve(name)
    with torch.device("meta"):
        model = build_model(cfg, 1000)
    rates = [m.p for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(cfg.model_kwargs["drop_path_rate"])
    opt = make_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == cfg.lr
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == cfg.weight_decay > 0 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    total, warm = 1000, 50
    lrs = [lr_at(s, cfg.schedule, cfg.lr, warm, total, cfg.min_lr_ratio) for s in (0, warm // 2, warm, total)]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(cfg.lr) and lrs[3] == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 4
    _, soft = augment(x, y, 1000, cfg, epoch=0, it=0, m=0, rank=0)
    assert soft.shape == (8, 1000) and torch.allclose(soft.sum(1), torch.ones(8))
    assert (soft > 0).sum(1).min() > 2  # label smoothing spreads mass; mixup / CutMix mixes two classes
    src = torch.nn.Linear(2, 2)
    ema = ModelEma(src, cfg.ema_decay)
    before = ema.module.weight.clone()
    with torch.no_grad():
        src.weight.add_(1.0)
    ema.update(src)
    assert torch.allclose(ema.module.weight, before + (1 - cfg.ema_decay)) and 0 < cfg.ema_decay < 1
    assert cfg.batch_size * cfg.grad_accum * 2 == 1024  # the recipes are written for 2 processes
    assert cfg.amp == "bf16" and cfg.channels_last and cfg.data_mode == "stream" and cfg.rand_augment_n > 0
