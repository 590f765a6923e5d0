"""Shared helpers for the training tests: a tiny TiC model on a few embedded images, one thread."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from msaconv.cli import main
from msaconv.train.checkpoint import find_checkpoint, load_tensors

TINY = [
    "--model", "tic_nano",
    "--set", "model_kwargs={dims: [16, 32, 32], depths: [1, 1, 1], head_dim: 8}",
    "--set", "threads=1", "--set", "eval_sizes=[16, 24]", "--set", "eval_batch_size=64",
    "--img-size", "16", "--limit-train", "96", "--limit-val", "64", "--batch-size", "16", "--epochs", "2",
    "--no-progress",
]


def run_cli(args: list[str]) -> int:
    return main([str(a) for a in args])


def run_subprocess(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "msaconv", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    doc = find_checkpoint(run_dir, "last")
    assert doc is not None, f"no complete last checkpoint in {run_dir}"
    return load_tensors(Path(doc["_dir"]) / doc["weights"])[0]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"

