"""Issue 9.2 and 9.5: a checkpoint write that fails (disk full, read-only folder) and a loss that turns NaN/inf.
Both keep the last good checkpoint and say what happened, where, and at which step."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import pytest
import torch

from msaconv.train import checkpoint as ckpt
from msaconv.train import engine
from train_helpers import TINY, final_weights, run_cli

ARGS = [*TINY, "--set", "checkpoint_every=2", "--set", "eval_sizes=[16]"]  # 2 epochs x 6 steps


class _FullDisk:
    """A file object that accepts ``room`` bytes and then fails as a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            self.f.write(data[: self.room])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.f.name)
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False


def _fill_disk_after(monkeypatch, n_ok: int):
    """The first ``n_ok`` files written by the checkpoint module succeed, later ones hit a full disk."""
    count = {"n": 0}

    def fake_open(path, mode="r", *a, **kw):
        f = open(path, mode, *a, **kw)
        if "w" in mode:
            count["n"] += 1
            if count["n"] > n_ok:
                return _FullDisk(f, room=100)
        return f

    monkeypatch.setattr(ckpt, "open", fake_open, raising=False)
    return count


def _weights(n: float) -> dict:
    return {"w": torch.full((64, 64), n)}


def test_disk_full_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, "last", step=2, model_state=_weights(2.0), model_meta={"model": "x"})
    before = sorted(p.name for p in tmp_path.iterdir())
    for n_ok in (0, 1, 2):  # fails on the weights file, the state file, the pointer
        _fill_disk_after(monkeypatch, n_ok)
        with pytest.raises(ckpt.CheckpointWriteError) as e:
            ckpt.save_checkpoint(tmp_path, "last", step=4, model_state=_weights(4.0), model_meta={"model": "x"})
        msg = str(e.value)
        assert "No space left on device" in msg and str(tmp_path) in msg and "step 4" in msg, msg
        assert "'last.json'" in msg or "last.json" in msg
        assert "(step 2) is intact" in msg, msg
        assert e.value.errno == errno.ENOSPC and isinstance(e.value, ValueError)
        monkeypatch.undo()
        doc = ckpt.find_checkpoint(tmp_path, "last")
        assert doc["step"] == 2
        assert torch.equal(ckpt.load_weights(tmp_path / "last.json")[0]["w"], _weights(2.0)["w"])
        leftovers = sorted(p.name for p in tmp_path.iterdir())
        assert not [p for p in leftovers if ".tmp" in p], leftovers  # the failed temp file is removed
    # once space is back, the next save works and tidies the step files the failed saves left
    ckpt.save_checkpoint(tmp_path, "last", step=6, model_state=_weights(6.0), model_meta={"model": "x"})
    assert ckpt.find_checkpoint(tmp_path, "last")["step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [n.replace("00000002", "00000006") for n in before]


def test_read_only_run_folder(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, "last", step=2, model_state=_weights(2.0), model_meta={"model": "x"})
    if os.name == "posix" and os.geteuid() == 0:  # root ignores permissions: a writer that fails as they would

        def fake_open(path, mode="r", *a, **kw):
            if "w" in mode:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return open(path, mode, *a, **kw)

        monkeypatch.setattr(ckpt, "open", fake_open, raising=False)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ckpt.CheckpointWriteError) as e:
            ckpt.save_checkpoint(tmp_path, "last", step=4, model_state=_weights(4.0), model_meta={"model": "x"})
    finally:
        tmp_path.chmod(0o755)
        monkeypatch.undo()
    assert "Permission denied" in str(e.value) and str(tmp_path) in str(e.value) and "(step 2) is intact" in str(e.value)
    assert ckpt.find_checkpoint(tmp_path, "last")["step"] == 2


def test_training_run_with_full_disk_stops_with_clear_error(tmp_path, monkeypatch, capsys):
    # config.yaml, then the step-2 checkpoint (3 files) succeed; the step-4 checkpoint hits a full disk
    _fill_disk_after(monkeypatch, 4)
    rc = run_cli(["train", *ARGS, "--output", tmp_path, "--name", "full"])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = [x for x in err.splitlines() if "error:" in x]
    assert line and "No space left on device" in line[0] and "at step 4" in line[0], err
    assert "(step 2) is intact" in line[0] and "--resume auto" in line[0]
    monkeypatch.undo()
    assert ckpt.find_checkpoint(tmp_path / "full", "last")["step"] == 2
    # and the run resumes from it once space is back
    assert run_cli(["train", *ARGS, "--output", tmp_path, "--name", "full", "--resume", "auto"]) == 0
    assert ckpt.find_checkpoint(tmp_path / "full", "last")["step"] == 12


def _poison_at(monkeypatch, bad_forward: int, value: float):
    """Training forward number ``bad_forward`` (1-based; one per step here) returns ``value`` logits."""
    orig = engine.build_model
    calls = {"n": 0}

    def build(cfg, num_classes):
        model = orig(cfg, num_classes)

        def hook(module, inputs, out):
            if module.training:
                calls["n"] += 1
                if calls["n"] == bad_forward:
                    return out * value
            return out

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(engine, "build_model", build)


def test_nan_loss_stops_at_its_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    _poison_at(monkeypatch, 5, math.nan)
    rc = run_cli(["train", *ARGS, "--output", tmp_path, "--name", "nan"])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = next(x for x in err.splitlines() if "error:" in x)
    assert "loss is nan at step 5/12" in line and "nonfinite_loss=skip" in line, line
    assert "last good checkpoint" in line and "(step 4) is kept" in line, line
    doc = ckpt.find_checkpoint(tmp_path / "nan", "last")
    assert doc["step"] == 4
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path / "nan").values())
    recs = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert {"type": "nonfinite", "step": 5, "loss": "nan", "action": "stop"} in recs


def test_inf_loss_skip_option_skips_the_batch(tmp_path, monkeypatch, capsys):
    _poison_at(monkeypatch, 3, math.inf)
    rc = run_cli(["train", *ARGS, "--output", tmp_path, "--name", "inf", "--set", "nonfinite_loss=skip"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "at step 3/12" in err and "batch skipped" in err
    summary = json.loads((tmp_path / "inf" / "summary.json").read_text())
    assert summary["skipped_nonfinite_steps"] == 1 and summary["steps"] == 12
    w = final_weights(tmp_path / "inf")
    assert all(torch.isfinite(v).all() for v in w.values())
    # a skipped step leaves the weights as they were: the run differs from a clean one
    monkeypatch.undo()
    assert run_cli(["train", *ARGS, "--output", tmp_path, "--name", "clean"]) == 0
    clean = final_weights(tmp_path / "clean")
    assert any(not torch.equal(w[k], clean[k]) for k in w)


def test_nonfinite_loss_option_is_checked(capsys):
    assert run_cli(["train", *ARGS, "--set", "nonfinite_loss=ignore"]) == 2
    assert "nonfinite_loss='ignore' is not one of stop, skip" in capsys.readouterr().err
