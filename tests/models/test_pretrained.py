"""The weights that ship inside the package: checksum, loading with pretrained=True, the committed run's top-1."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import msaconv
from msaconv.models import get_pretrained_cfg
from msaconv.models._builder import shipped_weights

MAIN = "tic_conv_nano"


def test_the_main_job_model_ships_weights_with_a_matching_sha256():
    assert MAIN in msaconv.list_pretrained()
    cfg = get_pretrained_cfg(MAIN)
    path = Path(cfg["file"])
    assert path.is_file() and path.suffix == ".safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == cfg["sha256"]
    # the run folder that produced them is committed beside them, without optimizer state
    run = path.parent
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob("*.state.safetensors"))


def test_pretrained_loads_and_runs_at_other_sizes():
    model = msaconv.create_model(MAIN, pretrained=True).eval()
    ref = msaconv.create_model(MAIN, checkpoint_path=get_pretrained_cfg(MAIN)["file"]).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
        for size in (24, 48):
            out = model(torch.randn(2, 3, size, size))
            assert out.shape == (2, 10) and torch.isfinite(out).all()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == 10 and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == pytest.approx((0.4914, 0.4822, 0.4465)) and cfg["interpolation"] in ("bilinear", "bicubic")


def test_damaged_weights_are_refused(tmp_path):
    cfg = dict(get_pretrained_cfg(MAIN))
    bad = tmp_path / "w.safetensors"
    data = bytearray(Path(cfg["file"]).read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"SHA-256 .* not the recorded .*damaged"):
        shipped_weights(MAIN, {**cfg, "file": str(bad)})


@pytest.mark.heavy  # all 10,000 test images: CI's third stage
def test_pretrained_gives_the_committed_runs_top1(tmp_path, capsys):
    from msaconv.cli import main

    cfg = get_pretrained_cfg(MAIN)
    summary = json.loads((Path(cfg["file"]).parent / "summary.json").read_text())
    want = next(r for r in summary["final"] if r["img_size"] == 32 and r.get("protocol", "resize") == "resize")
    assert main(["eval", "--checkpoint", cfg["file"], "--img-size", "32", "--json", str(tmp_path / "e.json")]) == 0
    got = json.loads((tmp_path / "e.json").read_text())["results"][0]
    assert got["images"] == want["images"] == 10000
    assert abs(got["top1"] - want["top1"]) <= 0.05  # at most 5 of 10,000 images, from thread-count rounding
