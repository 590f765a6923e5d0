"""A mistake in the model's options fails at once, before any data is read."""

from __future__ import annotations

import time

import pytest

from train_helpers import run_cli


def test_model_key_typo_fails_before_the_data_with_did_you_mean(tmp_path, capsys, monkeypatch):
    import msaconv.train.engine as engine

    def no_data(*a, **k):
        raise AssertionError("data was read before the model config was checked")

    monkeypatch.setattr(engine, "load_split", no_data)
    t0 = time.perf_counter()
    rc = run_cli(["train", "--set", "model_kwargs.kernal_size=5", "--output", tmp_path, "--no-progress"])
    assert rc != 0 and time.perf_counter() - t0 < 5
    err = capsys.readouterr().err
    assert "kernal_size" in err and "did you mean 'kernel_size'" in err


@pytest.mark.parametrize("model", ["tic_nano", "tic_conv_nano"])
def test_bad_model_value_fails_before_the_data(tmp_path, capsys, monkeypatch, model):
    import msaconv.train.engine as engine

    monkeypatch.setattr(engine, "load_split", lambda *a, **k: (_ for _ in ()).throw(AssertionError("data read")))
    rc = run_cli(["train", "--model", model, "--set", "model_kwargs.border=zero", "--output", tmp_path,
                  "--no-progress"])
    assert rc != 0
    assert "border" in capsys.readouterr().err


def test_more_training_sizes_than_batchnorm_slots_is_refused_before_training(tmp_path, capsys):
    from train_helpers import run_cli

    args = ["train", "--model", "convnet_nano", "--train-sizes", "16,20,24,28,32", "--limit-train", "32",
            "--epochs", "1", "--no-progress", "--output", tmp_path, "--name", "r"]
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert "train_sizes: 5 sizes (16, 20, 24, 28, 32)" in err and "size_bn=4" in err and "model_kwargs.size_bn=5" in err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # nothing was trained
