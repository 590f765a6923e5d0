"""`msaconv export` argument handling and the export functions' ValueErrors (no export is run)."""

from __future__ import annotations

import argparse

import pytest
import torch

from msaconv.cli import main
from msaconv.cli.export import _size
from msaconv.export import export_onnx, export_program


def test_size_parsing():
    assert _size("224") == (224, 224)
    assert _size("28x30") == (28, 30)
    with pytest.raises(argparse.ArgumentTypeError, match="expected a size like 224 or 224x192"):
        _size("2x3x4")


def test_cli_rejects_unknown_checkpoint_format(tmp_path, capsys):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"")
    rc = main(["export", "--model", "tic_nano", "--checkpoint", str(bad), "--output", str(tmp_path / "m.onnx")])
    assert rc == 2
    assert "neither .safetensors nor .pt/.pth" in capsys.readouterr().err


def test_cli_loads_a_pt_state_dict_before_exporting(tmp_path, capsys):
    import msaconv

    path = tmp_path / "w.pt"
    torch.save({"model": {"not_a_key": torch.zeros(1)}}, path)  # wrong keys: load_state_dict must complain
    with pytest.raises(RuntimeError, match="not_a_key"):
        main(["export", "--model", "tic_nano", "--checkpoint", str(path), "--output", str(tmp_path / "m.onnx")])
    assert msaconv.create_model("tic_nano") is not None


def test_export_onnx_errors(tmp_path):
    m = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"opset must be >= 18, got 17; use opset=18"):
        export_onnx(m, tmp_path / "x.onnx", (8, 8), opset=17)
    with pytest.raises(ValueError, match=r"img_size must be \(H, W\)"):
        export_onnx(m, tmp_path / "x.onnx", (8,))
    with pytest.raises(ValueError, match="batch must be >= 2, got 1"):
        export_onnx(m, tmp_path / "x.onnx", (8, 8), batch=1, dynamic=True)


def test_export_program_rejects_non_image_example():
    with pytest.raises(ValueError, match=r"example must be a \[B, C, H, W\] tensor, got \(3, 8\)"):
        export_program(torch.nn.Identity(), torch.zeros(3, 8))
