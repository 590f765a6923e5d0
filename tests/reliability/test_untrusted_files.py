"""Issue 9.3: files from elsewhere cannot run code and damaged ones fail with a line naming them.

- a pickle-based .pt whose unpickling would call ``os.mkdir`` is refused by every loading path, and the
  directory it would create never appears (the payload is shown to be a real code-running pickle by
  disassembling it, never by running it);
- truncated and bit-flipped safetensors, a checkpoint of another architecture (names and shapes listed);
- configs with unknown keys, wrong types and YAML tags that would construct Python objects: clear errors,
  config text never evaluated.
"""

from __future__ import annotations

import io
import os
import pickletools
from pathlib import Path

import pytest
import torch

from msaconv import create_model
from msaconv.train import checkpoint as ckpt
from msaconv.train.config import resolve
from train_helpers import run_cli

SMALL = dict(dims=(16, 32, 32), depths=(1, 1, 1), head_dim=8, num_classes=10)


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: the classic code-execution pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _evil_pt(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Payload(str(marker))}, path)
    # the file really holds a call of os.mkdir (posix.mkdir) on unpickling: read the opcodes, never run them
    import zipfile

    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    text = io.StringIO()
    pickletools.dis(data, out=text)
    assert "mkdir" in text.getvalue() and "REDUCE" in text.getvalue()
    return path, marker


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tic_nano", **SMALL)


def test_code_running_pickle_is_refused_without_running(tmp_path, model, capsys):
    path, marker = _evil_pt(tmp_path)
    with pytest.raises(ValueError, match="weights_only=True") as e:
        ckpt.load_weights(path)
    assert str(path) in str(e.value)
    with pytest.raises(ValueError, match="never unpickles") as e:
        create_model("tic_nano", checkpoint_path=str(path), **SMALL)
    assert str(path) in str(e.value)
    assert run_cli(["eval", "--checkpoint", path, "--model", "tic_nano", "--limit-val", "8"]) == 2
    assert str(path) in capsys.readouterr().err
    assert not marker.exists(), "the pickle payload ran"


def _saved(tmp_path: Path, model) -> Path:
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p))
    return p


@pytest.mark.parametrize("damage", ["truncated", "header-bitflip", "length-bitflip", "empty"])
def test_damaged_safetensors_named_in_error(tmp_path, model, damage):
    p = _saved(tmp_path, model)
    data = bytearray(p.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "header-bitflip":  # inside the JSON header: a quote becomes another byte
        data[8 + data[8:].index(b'"')] ^= 0x01
    elif damage == "length-bitflip":  # the 8-byte header length says more than the file holds
        data[5] ^= 0x40
    else:
        data = bytearray()
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a readable safetensors file") as e:
        ckpt.load_weights(p)
    assert str(p) in str(e.value)
    with pytest.raises(ValueError, match="not a readable safetensors file") as e:
        create_model("tic_nano", checkpoint_path=str(p), **SMALL)
    assert str(p) in str(e.value)


def test_damaged_resume_checkpoint_is_not_used(tmp_path):
    """A run folder whose last checkpoint was cut (size differs from the pointer's) is not resumed from."""
    w = {"w": torch.arange(8.0)}
    ckpt.save_checkpoint(tmp_path, "last", step=3, model_state=w, model_meta={"model": "x"})
    doc = ckpt.find_checkpoint(tmp_path, "last")
    f = tmp_path / doc["weights"]
    f.write_bytes(f.read_bytes()[:-4])
    assert ckpt.find_checkpoint(tmp_path, "last") is None
    with pytest.raises(ValueError, match="no complete checkpoint"):
        ckpt.load_weights(tmp_path / "last.json")


def test_wrong_architecture_lists_names_and_shapes(tmp_path, model):
    p = _saved(tmp_path, model)
    with pytest.raises(ValueError) as e:  # another head size: the shape mismatch is named
        create_model("tic_nano", checkpoint_path=str(p), **{**SMALL, "num_classes": 7})
    msg = str(e.value)
    assert str(p) in msg and "shape mismatches" in msg and "(10, 32) vs model (7, 32)" in msg, msg
    with pytest.raises(ValueError) as e:  # another depth: missing / unexpected keys are listed
        create_model("tic_nano", checkpoint_path=str(p), **{**SMALL, "depths": (1, 2, 1)})
    msg = str(e.value)
    assert "missing keys: ['stages.1.blocks.1." in msg or "missing keys" in msg and "stages.1" in msg, msg
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(3, 3)}, str(other))
    with pytest.raises(ValueError, match="unexpected keys: \\['fc.weight'\\]"):
        create_model("tic_nano", checkpoint_path=str(other), **SMALL)


def test_config_unknown_keys_wrong_types_and_code_are_refused(tmp_path):
    marker = tmp_path / "yaml_ran"
    cases = {
        "unknown.yaml": ("lr: 0.1\nlearnign_rate_x: 3\n", "unknown config key 'learnign_rate_x'"),
        "typo.yaml": ("epoch: 3\n", "did you mean 'epochs'?"),
        "type.yaml": ("epochs: three\n", "epochs must be a int, got 'three'"),
        "list.yaml": ("- lr\n- 0.1\n", "must hold a mapping"),
        "tag.yaml": (f"lr: !!python/object/apply:os.mkdir ['{marker}']\n", "is not valid YAML"),
        "tag2.yaml": (f"name: !!python/object/new:os.system ['touch {marker}']\n", "is not valid YAML"),
        "code.yaml": ("lr: __import__('os').mkdir('x')\n", "lr must be a float"),
    }
    for name, (text, expected) in cases.items():
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(ValueError) as e:
            resolve(str(p))
        assert expected in str(e.value), (name, str(e.value))
    # --set values are YAML scalars too: no evaluation
    with pytest.raises(ValueError, match="epochs must be a int"):
        resolve(sets=["epochs=__import__('os').getpid()"])
    with pytest.raises(ValueError, match="not valid YAML|must be a int"):
        resolve(sets=[f"epochs=!!python/object/apply:os.mkdir ['{marker}']"])
    assert not marker.exists() and not Path("x").exists()


def test_bitflip_in_checkpoint_tensor_data_is_detected(tmp_path, capsys):
    """safetensors has no checksum: a flipped bit inside tensor data loads silently unless the pointer's
    SHA-256 is checked, which loading and resuming do."""
    from train_helpers import TINY

    args = ["train", *TINY, "--epochs", "1", "--output", tmp_path, "--name", "r", "--set", "checkpoint_every=2"]
    assert run_cli(args) == 0
    doc = ckpt.find_checkpoint(tmp_path / "r", "last")
    f = tmp_path / "r" / doc["weights"]
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's bytes: same size, header intact
    f.write_bytes(bytes(data))
    ckpt.load_tensors(f)  # the format itself cannot tell
    with pytest.raises(ValueError, match="does not match the SHA-256") as e:
        ckpt.load_weights(tmp_path / "r" / "last.json")
    assert str(f) in str(e.value)
    capsys.readouterr()
    assert run_cli([*args, "--epochs", "2", "--resume", "auto"]) == 2
    assert "does not match the SHA-256" in capsys.readouterr().err
