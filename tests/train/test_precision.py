"""amp='auto': bfloat16 autocast where the device computes it natively, float32 elsewhere, said at start."""

from __future__ import annotations

import json

import pytest
import torch

from msaconv.train import distributed as D
from msaconv.train.config import TrainConfig
from msaconv.train.evaluate import amp_mode, autocast, native_bf16

from train_helpers import run_cli


def _cpu(monkeypatch, avx512_bf16: bool, amx: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize("bf16, amx, want", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "none")])
def test_auto_follows_the_cpu(monkeypatch, bf16, amx, want):
    _cpu(monkeypatch, bf16, amx)
    info = D.DistInfo()
    assert amp_mode(TrainConfig(amp="auto"), info) == want
    assert (native_bf16(torch.device("cpu")) is not None) == (want == "bf16")
    with autocast(TrainConfig(amp="auto"), info):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == (torch.bfloat16 if want == "bf16" else torch.float32)
    # an explicit choice is kept whatever the CPU
    assert amp_mode(TrainConfig(amp="none"), info) == "none" and amp_mode(TrainConfig(amp="bf16"), info) == "bf16"


@pytest.mark.parametrize("bf16", [True, False])
def test_the_run_says_and_records_its_precision(monkeypatch, tmp_path, tiny_args, capsys, bf16):
    _cpu(monkeypatch, bf16)
    assert run_cli(["train", *tiny_args, "--epochs", "1", "--set", "amp=auto", "--output", tmp_path, "--name", "r"]) == 0
    err = capsys.readouterr().err
    line = next(s for s in err.splitlines() if s.startswith("precision:"))
    assert ("bfloat16 autocast (amp=auto: a CPU with AVX512_BF16" in line) if bf16 else ("float32 (amp=auto: this "
                                                                                           "device has no native" in line)
    first = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["amp"] == ("bf16" if bf16 else "none")


def test_a_wrong_amp_names_the_choices(tmp_path, tiny_args, capsys):
    assert run_cli(["train", *tiny_args, "--set", "amp=fp8", "--output", tmp_path]) == 2
    err = capsys.readouterr().err
    assert "amp" in err and "auto" in err and "fp8" in err
