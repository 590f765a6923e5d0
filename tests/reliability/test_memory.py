"""Issue 9.7: resident memory stays flat over a few hundred training steps with an evaluation every epoch.

The run is a subprocess (its own session); its VmRSS is sampled from /proc while metrics.jsonl says which
step it is at. Growth = peak RSS over the last quarter of the steps / peak RSS over the second quarter (after
warm-up: first allocations, optimizer state, the first evaluation); the end of the run (final evaluation,
plots) is not part of the loop and is left out; both windows hold evaluations, so the
comparison is like for like, and peaks rather than single samples make it insensitive to the sampling moment.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from train_helpers import run_subprocess

TINY_MODEL = "model_kwargs={dims: [16, 32, 32], depths: [1, 1, 1], head_dim: 8}"
STEPS_PER_EPOCH, EPOCHS = 30, 10


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _last_step(metrics: Path) -> int:
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except ValueError:
            continue
    return 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read a process's RSS")
def test_rss_flat_over_training_with_evaluation(tmp_path):
    total = STEPS_PER_EPOCH * EPOCHS
    args = ["train", "--set", TINY_MODEL, "--set", "threads=1", "--set", "eval_sizes=[16]",
            "--set", "eval_batch_size=64", "--set", "log_every=5", "--set", "checkpoint_every=50",
            "--img-size", "16", "--limit-train", STEPS_PER_EPOCH * 16, "--limit-val", 128, "--batch-size", 16,
            "--epochs", EPOCHS, "--no-progress", "--output", tmp_path, "--name", "mem"]
    p = run_subprocess(args)
    metrics = tmp_path / "mem" / "metrics.jsonl"
    samples: list[tuple[int, int]] = []  # (step, rss KiB)
    t0 = time.time()
    try:
        while p.poll() is None:
            assert time.time() - t0 < 600, "training run did not finish in 600 s"
            rss = _rss_kib(p.pid)
            if rss is not None:
                samples.append((_last_step(metrics), rss))
            time.sleep(0.05)
        out = p.stdout.read()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, 9)
            p.wait()
    assert p.returncode == 0, out
    assert _last_step(metrics) == total
    evals = [json.loads(x) for x in metrics.read_text().splitlines() if '"type": "val"' in x]
    assert len(evals) == EPOCHS

    def peak(lo: float, hi: float) -> int:
        window = [r for s, r in samples if lo * total <= s < hi * total]
        assert len(window) >= 5, f"too few samples between {lo:.0%} and {hi:.0%} of the run: {len(window)}"
        return max(window)

    # step == total is the final evaluation and the plots (matplotlib's import): not the training loop
    print("RSS peak per tenth of the run (MiB):", [round(peak(i / 10, (i + 1) / 10) / 1024, 1) for i in range(10)])
    warm, late = peak(0.25, 0.5), peak(0.75, 1.0)
    growth = late / warm - 1
    print(f"RSS: peak {warm / 1024:.1f} MiB over steps {total // 4}-{total // 2}, {late / 1024:.1f} MiB over "
          f"steps {3 * total // 4}-{total - 1}: growth {100 * growth:+.2f}% ({len(samples)} samples, {total} steps, "
          f"{EPOCHS} evaluations)")
    assert growth <= 0.05, f"resident memory grew {100 * growth:.1f}% after warm-up"
