"""Readers (directory, zip, tar agree), corrupt images (clear error / --skip-bad), batch augmentation."""

from __future__ import annotations

import io
import random
import tarfile
import zipfile

import pytest
import torch
from PIL import Image

from msaconv.data import (
    InMemoryImages,
    StreamingImages,
    collate_skip,
    embedded_path,
    generator,
    list_images,
    mixup_cutmix,
    rand_augment,
    random_crop_flip,
)
from train_helpers import TINY, run_cli


def _png(seed: int, size=(12, 12)) -> bytes:
    g = torch.Generator().manual_seed(seed)
    arr = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    buf = io.BytesIO()
    Image.frombytes("RGB", size, bytes(arr.flatten().tolist())).save(buf, format="PNG")
    return buf.getvalue()


def _tree(root, corrupt: bool = False):
    files = {}
    for c, cls in enumerate(("cat", "dog", "emu")):
        for i in range(4):
            files[f"{cls}/{i:04d}.png"] = _png(10 * c + i)
    if corrupt:
        files["dog/0002.png"] = b"\x89PNG\r\n\x1a\n" + b"not really a png"
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def test_dir_zip_tar_agree(tmp_path):
    files = _tree(tmp_path / "tree")
    with zipfile.ZipFile(tmp_path / "t.zip", "w") as z:
        for n, d in files.items():
            z.writestr(f"wrapped/{n}", d)  # one top folder, as archives often have
    with tarfile.open(tmp_path / "t.tar", "w") as t:
        t.add(tmp_path / "tree", arcname=".")
    loaded = [InMemoryImages.load(p) for p in (tmp_path / "tree", tmp_path / "t.zip", tmp_path / "t.tar")]
    for d in loaded:
        assert d.classes == ["cat", "dog", "emu"] and d.images.shape == (12, 3, 12, 12)
        assert d.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert torch.equal(d.images, loaded[0].images)
    # the streaming reader decodes the same pixels (evaluation transform at the stored size)
    s = StreamingImages(tmp_path / "t.tar", size=12, train=False, crop_pct=1.0)
    x, y = s[5]
    assert y == 1 and torch.equal(x, loaded[0].images[5])


def test_embedded_data_is_shipped_and_balanced():
    tr, te = list_images(embedded_path("train")), list_images(embedded_path("test"))
    assert len(tr) == 20000 and len(te) == 10000
    assert torch.bincount(torch.tensor(tr.labels)).tolist() == [2000] * 10
    assert tr.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    sub = list_images(embedded_path("test"), limit=50, seed=1)
    assert torch.bincount(torch.tensor(sub.labels)).tolist() == [5] * 10


def test_corrupt_image_named_or_skipped(tmp_path, capsys):
    _tree(tmp_path / "tree", corrupt=True)
    bad = str(tmp_path / "tree" / "dog" / "0002.png")
    with pytest.raises(ValueError, match=r"cannot decode image .*dog/0002\.png.*--skip-bad"):
        InMemoryImages.load(tmp_path / "tree")
    d = InMemoryImages.load(tmp_path / "tree", skip_bad=True)
    assert len(d) == 11 and d.skipped == [bad]
    s = StreamingImages(tmp_path / "tree", 8, train=True, skip_bad=True)
    x, y, nbad = collate_skip([s[i] for i in range(len(s))])
    assert nbad == 1 and x.shape == (11, 3, 8, 8)
    # through the CLI: one clear line naming the file, or a count in the log with --skip-bad
    args = ["train", *TINY, "--data", tmp_path / "tree", "--val-data", "none", "--output", tmp_path / "runs",
            "--epochs", "1", "--batch-size", "4", "--limit-train", "12"]
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert "msaconv train: error: data: cannot decode image" in err and bad in err
    assert run_cli([*args, "--skip-bad"]) == 0
    assert "skipped 1 bad image(s)" in capsys.readouterr().err


def test_missing_data_path(tmp_path):
    with pytest.raises(ValueError, match="does not exist; pass --data"):
        InMemoryImages.load(tmp_path / "nope")


def test_augmentation_is_a_function_of_the_seed():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(x, generator(1, 2, 3), pad=4)
    b = random_crop_flip(x, generator(1, 2, 3), pad=4)
    c = random_crop_flip(x, generator(1, 2, 4), pad=4)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.dtype == torch.uint8
    # a crop offset of (pad, pad) without flip is the identity: every output row is a shifted input row
    assert random_crop_flip(x, generator(0), pad=0, flip=False).equal(x)
    r1, r2 = rand_augment(x, generator(7), n=2, m=9), rand_augment(x, generator(7), n=2, m=9)
    assert torch.equal(r1, r2) and r1.shape == (16, 3, 32, 32) and 0 <= r1.min() and r1.max() <= 1
    y = torch.arange(16) % 10
    xm, t = mixup_cutmix(r1, y, 10, random.Random(0), mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    assert xm.shape == r1.shape and torch.allclose(t.sum(1), torch.ones(16))
    _, t0 = mixup_cutmix(r1, y, 10, random.Random(0), label_smoothing=0.1)
    assert torch.allclose(t0.max(1).values, torch.full((16,), 0.91))
