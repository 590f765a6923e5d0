"""Issue 9.4: images and folders as users really have them. Grayscale, palette, RGBA and 16-bit images are
converted to RGB (16-bit keeps its top 8 bits rather than clipping to white); corrupt, truncated, empty,
mislabelled and decompression-bomb files are refused with the file named, or skipped and counted with
--skip-bad; non-image files are ignored; an empty class folder and a one-class dataset are refused."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msaconv.data import InMemoryImages, StreamingImages
from train_helpers import run_cli


def _png(img: Image.Image) -> bytes:
    b = io.BytesIO()
    img.save(b, format="PNG")
    return b.getvalue()


def _bomb_png(w: int = 20000, h: int = 20000) -> bytes:
    """A valid PNG header claiming w x h pixels (400M, over Pillow's 2x bomb limit) with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


RGB = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
GOOD = {  # name -> (bytes, expected RGB array)
    "rgb.png": (_png(Image.fromarray(RGB)), RGB),
    "gray.png": (_png(Image.fromarray(np.full((8, 8), 100, np.uint8))), np.full((8, 8, 3), 100, np.uint8)),
    "rgba.png": (_png(Image.fromarray(np.dstack([RGB, np.full((8, 8), 7, np.uint8)]))), RGB),
    "palette.gif": (None, None),  # filled below
    "gray16.png": (_png(Image.fromarray(np.full((8, 8), 51200, np.uint16))), np.full((8, 8, 3), 200, np.uint8)),
    "rgb.jpg": (None, None),
}
_p = Image.fromarray(RGB).convert("P")
_g = io.BytesIO()
_p.save(_g, format="GIF")
GOOD["palette.gif"] = (_g.getvalue(), np.asarray(_p.convert("RGB")))
_j = io.BytesIO()
Image.fromarray(RGB).save(_j, format="JPEG", quality=95)
GOOD["rgb.jpg"] = (_j.getvalue(), None)  # lossy: checked for shape only

BAD = {
    "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "truncated.png": GOOD["rgb.png"][0][: len(GOOD["rgb.png"][0]) // 2],
    "empty.jpg": b"",
    "text-named-as.jpg": b"this is not a picture\n",
    "huge.png": _bomb_png(),
}


def _tree(root: Path, bad: bool) -> Path:
    for cls in ("a", "b"):
        d = root / cls
        d.mkdir(parents=True)
        for name, (data, _) in GOOD.items():
            (d / name).write_bytes(data)
        (d / "notes.txt").write_text("not an image: ignored")
        (d / "labels.csv").write_text("x,y\n")
    if bad:
        for name, data in BAD.items():
            (root / "b" / name).write_bytes(data)
    return root


def test_modes_are_converted_to_rgb(tmp_path):
    d = InMemoryImages.load(_tree(tmp_path / "data", bad=False))
    assert d.classes == ["a", "b"] and d.images.shape == (2 * len(GOOD), 3, 8, 8)  # .txt/.csv ignored
    names = sorted(GOOD)  # members are sorted within a class
    for i, name in enumerate(names):
        expected = GOOD[name][1]
        got = d.images[i].permute(1, 2, 0).numpy()
        if expected is not None:
            assert np.array_equal(got, expected), name


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_bad_files_named_or_skipped_and_counted(tmp_path, mode):
    root = _tree(tmp_path / "data", bad=True)
    if mode == "memory":
        with pytest.raises(ValueError) as e:
            InMemoryImages.load(root)
        assert str(root / "b") in str(e.value) and "--skip-bad" in str(e.value)
        d = InMemoryImages.load(root, skip_bad=True)
        assert sorted(Path(s).name for s in d.skipped) == sorted(BAD)
        assert len(d) == 2 * len(GOOD)
    else:
        s = StreamingImages(root, 8, train=False)
        bad_idx = [i for i, n in enumerate(s.names) if Path(n).name in BAD]
        assert len(bad_idx) == len(BAD)
        for i in bad_idx:
            with pytest.raises(ValueError) as e:
                s[i]
            assert s.names[i] in str(e.value), str(e.value)
        s = StreamingImages(root, 8, train=True, skip_bad=True)
        assert [i for i in range(len(s)) if s[i] is None] == bad_idx
    # the bomb is refused from its header (no 400M-pixel allocation), by name
    with pytest.raises(ValueError, match=r"huge\.png.*DecompressionBombError"):
        from msaconv.data.readers import decode_image

        decode_image(BAD["huge.png"], "huge.png")


def test_training_skips_bad_images_with_a_count(tmp_path, capsys):
    root = _tree(tmp_path / "data", bad=True)
    args = ["train", "--data", root, "--set", "data_mode=memory", "--set", "val_data=none",
            "--set", "model_kwargs={dims: [16, 32, 32], depths: [1, 1, 1], head_dim: 8}", "--set", "threads=1",
            "--img-size", "16", "--batch-size", "4", "--epochs", "1", "--no-progress", "--output", tmp_path]
    assert run_cli(args + ["--name", "strict"]) == 2
    err = capsys.readouterr().err
    assert "cannot decode image" in err and str(root / "b") in err
    assert run_cli(args + ["--name", "skip", "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert f"skipped {len(BAD)} bad image(s)" in err


def test_empty_class_folder_and_one_class_refused(tmp_path, capsys):
    root = _tree(tmp_path / "data", bad=False)
    (root / "c_empty").mkdir()
    (root / "c_empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="c_empty.*hold no images"):
        InMemoryImages.load(root)
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    for name, (data, _) in GOOD.items():
        (one / "only" / name).write_bytes(data)
    assert run_cli(["train", "--data", one, "--set", "val_data=none", "--epochs", "1", "--no-progress",
                    "--output", tmp_path]) == 2
    err = capsys.readouterr().err
    assert "one class folder ('only')" in err and str(one) in err


def test_images_outside_class_folders_and_no_images(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.png").write_bytes(GOOD["rgb.png"][0])
    (flat / "y.png").write_bytes(GOOD["rgb.png"][0])
    with pytest.raises(ValueError, match="is not inside a class folder"):
        InMemoryImages.load(flat)
    none = tmp_path / "none"
    (none / "a").mkdir(parents=True)
    (none / "a" / "x.txt").write_text("")
    with pytest.raises(ValueError, match="no images"):
        InMemoryImages.load(none)
