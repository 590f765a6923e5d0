"""Shared helpers for the training tests: a tiny TiC model on a few embedded images, one thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until ``run``'s last complete checkpoint is at ``step`` or later (``proc`` must stay alive)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        doc = find_checkpoint(run, "last")
        if doc is not None and doc["step"] >= step:
            return
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at step {step} after {timeout}s")


def kill_at_step(args: list, run: Path, step: int) -> None:
    """Run ``msaconv args`` in a subprocess and SIGKILL it once ``run`` has a checkpoint at ``step``."""
    p = run_subprocess(args)
    wait_for_step(run, step, p)
    p.send_signal(signal.SIGKILL)
    p.wait()


def run_to_end(args: list) -> str:
    """Run ``msaconv args`` in a subprocess to its end; its output (it must succeed)."""
    p = run_subprocess(args)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    return out


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    doc = find_checkpoint(run_dir, "last")
    assert doc is not None, f"no complete last checkpoint in {run_dir}"
    return load_tensors(Path(doc["_dir"]) / doc["weights"])[0]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"

