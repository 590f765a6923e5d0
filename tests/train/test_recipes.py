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


def test_imagenet_recipes_use_the_full_toolbox():
    for name in ("tic_tiny", "tic_small", "tic_base"):
        cfg = C.resolve(name)
        assert cfg.optimizer == "adamw" and cfg.schedule == "cosine" and cfg.warmup_epochs > 0
        assert cfg.mixup > 0 and cfg.cutmix > 0 and cfg.rand_augment_n > 0 and cfg.label_smoothing > 0
        assert cfg.model_kwargs["drop_path_rate"] > 0 and cfg.ema_decay > 0 and cfg.amp == "bf16"
        assert cfg.grad_accum > 1 and cfg.channels_last and cfg.data_mode == "stream"
