"""Multi-size training (``--train-sizes``), the two evaluation protocols and flip TTA."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from msaconv.data import size_at, to_eval_size
from msaconv.train.checkpoint import find_checkpoint
from train_helpers import TINY, assert_same_weights, final_weights, kill_at_step, run_cli, run_to_end

MULTI = [*TINY, "--train-sizes", "16,20,24", "--set", "checkpoint_every=2"]


def test_size_schedule_is_a_function_of_seed_and_step_and_uses_every_size():
    sizes = [24, 32, 40]
    a = [size_at(sizes, 0, e, s) for e in range(3) for s in range(100)]
    assert a == [size_at(sizes, 0, e, s) for e in range(3) for s in range(100)]
    assert a != [size_at(sizes, 1, e, s) for e in range(3) for s in range(100)]
    counts = Counter(a)
    assert set(counts) == set(sizes) and min(counts.values()) > 60  # ~100 each of 300


def test_canvas_protocol_keeps_the_scale_and_resize_changes_it():
    x = torch.randn(2, 3, 32, 32)
    big = to_eval_size(x, 40, "canvas", 32)
    assert big.shape[-2:] == (40, 40)
    torch.testing.assert_close(big[..., 4:36, 4:36], x)  # the image itself, unscaled, centred
    assert big[..., :4, :].abs().sum() == 0 and big[..., :, 36:].abs().sum() == 0  # mean-colour padding
    small = to_eval_size(x, 24, "canvas", 32)
    torch.testing.assert_close(small, x[..., 4:28, 4:28])
    odd = to_eval_size(x, 35, "canvas", 32)
    torch.testing.assert_close(odd[..., 1:33, 1:33], x)
    assert to_eval_size(x, 24, "resize", 32).shape[-2:] == (24, 24)
    torch.testing.assert_close(to_eval_size(x, 32, "resize", 32), x)
    with pytest.raises(ValueError, match=r"protocol='pad'.*resize"):
        to_eval_size(x, 24, "pad", 32)


def test_multisize_run_is_deterministic_resumes_after_kill9_and_reports_both_protocols(tmp_path):
    common = [*MULTI, "--output", tmp_path, "--seed", "3", "--tta", "both",
              "--set", "eval_protocols=[resize, canvas]"]
    assert run_cli(["train", *common, "--name", "ref"]) == 0
    assert run_cli(["train", *common, "--name", "again"]) == 0
    assert_same_weights(final_weights(tmp_path / "ref"), final_weights(tmp_path / "again"))
    # the sizes changed between steps (the run saw more than one size): a fixed-size run ends elsewhere
    assert run_cli(["train", *TINY, "--set", "checkpoint_every=2", "--output", tmp_path, "--seed", "3",
                    "--name", "fixed"]) == 0
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "fixed")
    assert any(not torch.equal(a[k], b[k]) for k in a)

    run = tmp_path / "killed"
    args = ["train", *common, "--name", "killed", "--resume", "auto"]
    kill_at_step(args, run, 4)
    run_to_end(args)
    assert_same_weights(final_weights(tmp_path / "ref"), final_weights(run))

    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    rows = {(r["img_size"], r["protocol"]) for r in summary["final"]}
    # eval_sizes 16, 24: both protocols at 24, resize only at the training size 16 (the same images)
    assert rows == {(16, "resize"), (24, "resize"), (24, "canvas")}
    assert all("top1_flip" in r and 0 <= r["top1_flip"] <= 100 for r in summary["final"])


def test_eval_cli_reports_flip_and_protocols(tmp_path, capsys):
    assert run_cli(["train", *TINY, "--output", tmp_path, "--name", "r", "--epochs", "1"]) == 0
    capsys.readouterr()
    assert run_cli(["eval", "--checkpoint", tmp_path / "r", "--img-size", "16", "20", "--limit-val", "32",
                    "--tta", "both", "--protocol", "resize", "canvas", "--json", tmp_path / "e.json"]) == 0
    out = capsys.readouterr().out
    assert "top1_flip" in out and "canvas" in out
    doc = json.loads((tmp_path / "e.json").read_text())
    assert [(r["img_size"], r["protocol"]) for r in doc["results"]] == [(16, "resize"), (20, "resize"),
                                                                         (16, "canvas"), (20, "canvas")]
    # at the training size the canvas protocol shows exactly the training-size images
    r16 = [r for r in doc["results"] if r["img_size"] == 16]
    assert r16[0]["top1"] == r16[1]["top1"] and r16[0]["top1_flip"] == r16[1]["top1_flip"]


def test_bad_train_sizes_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(["train", *TINY, "--train-sizes", "24,x"])
    assert "comma-separated" in capsys.readouterr().err
    assert run_cli(["train", *TINY, "--set", "train_sizes=[0, 16]", "--output", tmp_path]) != 0
    assert "train_sizes" in capsys.readouterr().err


def test_per_size_batchnorm_run_resumes_after_kill9_with_its_statistics(tmp_path):
    """convnet_nano with per-size BatchNorm: the slots' statistics are part of the checkpoint, so a run killed
    mid-way and resumed ends with the weights *and* the per-size statistics of an uninterrupted one."""
    conv = ["--model", "convnet_nano", "--set", "model_kwargs={stem_width: 8, dims: [8, 8, 8], depths: [1, 1, 1]}",
            "--set", "threads=1", "--set", "eval_sizes=[16, 24]", "--set", "eval_batch_size=64", "--img-size", "16",
            "--limit-train", "96", "--limit-val", "64", "--batch-size", "16", "--epochs", "2", "--no-progress",
            "--train-sizes", "16,20,24", "--set", "checkpoint_every=2", "--output", tmp_path, "--seed", "4"]
    assert run_cli(["train", *conv, "--name", "ref"]) == 0
    ref = final_weights(tmp_path / "ref")
    held = {tuple(hw) for hw, n in zip(ref["stem.1.slot_hw"].tolist(), ref["stem.1.slot_batches"].tolist()) if n}
    assert held == {(16, 16), (20, 20), (24, 24)} and int(ref["stem.1.slot_batches"].sum()) == 12  # 2 x 6 steps
    run = tmp_path / "killed"
    args = ["train", *conv, "--name", "killed", "--resume", "auto"]
    kill_at_step(args, run, 6)
    run_to_end(args)
    assert_same_weights(ref, final_weights(run))
