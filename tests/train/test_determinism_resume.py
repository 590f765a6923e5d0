"""Bit-identical weights for a seed; kill -9 at any point then --resume auto ends where an uninterrupted run
ends; SIGTERM saves and exits cleanly; a half-written checkpoint is never picked up."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from msaconv.train.checkpoint import find_checkpoint, save_checkpoint
from train_helpers import (TINY, assert_same_weights, final_weights, kill_at_step, run_cli, run_subprocess, run_to_end,
                           wait_for_step)

RESUMABLE = [*TINY, "--set", "checkpoint_every=2"]  # 2 epochs x 6 steps, a checkpoint every 2 steps


def _reference(tmp_path: Path) -> Path:
    assert run_cli(["train", *RESUMABLE, "--output", tmp_path, "--name", "ref", "--seed", "5"]) == 0
    return tmp_path / "ref"


def test_same_seed_same_weights_and_kill9_resume(tmp_path):
    ref = _reference(tmp_path)
    # determinism: a second run with the same seed
    assert run_cli(["train", *RESUMABLE, "--output", tmp_path, "--name", "again", "--seed", "5"]) == 0
    assert_same_weights(final_weights(ref), final_weights(tmp_path / "again"))
    # another seed gives other weights (the comparison above is not vacuous)
    assert run_cli(["train", *RESUMABLE, "--output", tmp_path, "--name", "other", "--seed", "6"]) == 0
    a, b = final_weights(ref), final_weights(tmp_path / "other")
    assert any(not (a[k] == b[k]).all() for k in a)

    # kill -9 twice: mid-epoch 1 (after the step-4 checkpoint) and mid-epoch 2, resume each time with 'auto'
    args = ["train", *RESUMABLE, "--output", tmp_path, "--name", "killed", "--seed", "5", "--resume", "auto"]
    run = tmp_path / "killed"
    for kill_after in (4, 8):
        kill_at_step(args, run, kill_after)
        assert find_checkpoint(run, "last")["step"] < 12
    assert "resume:" in run_to_end(args)
    assert_same_weights(final_weights(ref), final_weights(run))
    # the metrics file holds each step once, as if never interrupted
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 12


def _sigterm_after_step_2(tmp_path: Path, name: str) -> tuple[list, Path, str]:
    """A resumable run started, sent SIGTERM once it passed step 2: (its arguments, its folder, its output)."""
    args = ["train", *RESUMABLE, "--output", tmp_path, "--name", name, "--seed", "5", "--resume", "auto"]
    run = tmp_path / name
    p = run_subprocess(args)
    wait_for_step(run, 2, p)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, out
    return args, run, out


def test_sigterm_saves_and_resume_finishes(tmp_path):
    args, run, out = _sigterm_after_step_2(tmp_path, "term")
    assert "SIGTERM: saved" in out and "--resume" in out
    first = find_checkpoint(run, "last")
    step = first["step"]
    assert 2 <= step < 12
    p = run_subprocess(args)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    last = find_checkpoint(run, "last")
    assert last["step"] == 12
    # the training time and images carry over the resume: the summary counts the whole training
    assert first["train_seconds"] > 0 and first["train_images_seen"] * 12 == last["train_images_seen"] * step
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == step and summary["train_seconds"] > first["train_seconds"]
    assert abs(summary["img_per_s"] * summary["train_seconds"] - last["train_images_seen"]) < 1e-6 * last["train_images_seen"]
    assert "train_seconds_partial" not in summary


def test_resume_from_a_checkpoint_without_the_training_time_says_its_time_is_partial(tmp_path):
    args, run, _ = _sigterm_after_step_2(tmp_path, "old")
    # a checkpoint written before checkpoints carried the training time
    pointer = run / "last.json"
    doc = json.loads(pointer.read_text())
    del doc["train_seconds"], doc["train_images_seen"]
    pointer.write_text(json.dumps(doc))
    assert run_cli(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == doc["step"] and summary["train_seconds_partial"] is True


def test_incomplete_checkpoint_is_ignored(tmp_path):
    import torch

    w = {"w": torch.arange(4.0)}
    save_checkpoint(tmp_path, "last", step=3, model_state=w, model_meta={"model": "x"})
    # a save cut short by kill -9: the step files of step 5 exist, its pointer was never renamed into place
    (tmp_path / "last-00000005.safetensors").write_bytes(b"partial")
    (tmp_path / ".last.json.tmp123").write_text("{")
    assert find_checkpoint(tmp_path, "last")["step"] == 3
    # a pointer whose files were truncated is not complete either
    doc = json.loads((tmp_path / "last.json").read_text())
    (tmp_path / doc["weights"]).write_bytes(b"x")
    assert find_checkpoint(tmp_path, "last") is None
    # the next save removes the leftovers
    save_checkpoint(tmp_path, "last", step=7, model_state=w, model_meta={"model": "x"})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["last-00000007.safetensors", "last-00000007.state.safetensors", "last.json"]
