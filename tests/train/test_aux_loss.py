"""The trainer adds the mixers' auxiliary losses (MoH's load balance) to the objective and logs them."""

from __future__ import annotations

import json

import torch

from train_helpers import TINY, final_weights, run_cli

MOH = [*TINY,
    "--model", "hier_nano_moh", "--set", "model_kwargs={dims: [16, 32, 32], depths: [1, 1, 1], head_dim: 4}",
    "--epochs", "1"]


def _train_recs(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["type"] == "train"]


def test_moh_load_balance_is_logged_and_changes_the_training(tmp_path):
    assert run_cli(["train", *MOH, "--output", tmp_path, "--name", "moh"]) == 0
    recs = _train_recs(tmp_path / "moh")
    assert recs and all(r["moh_load_balance"] > 0 for r in recs)
    assert run_cli(["train", *MOH, "--set", "aux_loss_weight=0", "--output", tmp_path, "--name", "off"]) == 0
    a, b = final_weights(tmp_path / "moh"), final_weights(tmp_path / "off")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the weight reaches the gradients


def test_models_without_aux_losses_log_none(tmp_path):
    assert run_cli(["train", *TINY, "--epochs", "1", "--output", tmp_path, "--name", "plain"]) == 0
    assert all("moh_load_balance" not in r for r in _train_recs(tmp_path / "plain"))
