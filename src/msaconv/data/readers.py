"""Readers for an ImageFolder tree (``<class>/<file>``) held in a directory, a zip or a tar.

``list_images(path)`` indexes the source (sorted class names -> label ids, sorted member names) without
decoding. Two datasets sit on top:

- :class:`InMemoryImages` decodes every image once into one ``uint8 [N, 3, H, W]`` tensor (small sets such
  as CIFAR-10, the embedded default): batches are then slices, augmented on the batch in plain torch.
- :class:`StreamingImages` decodes per item (a ``torch.utils.data.Dataset`` for DataLoader workers), for sets
  too big for memory such as ImageNet-1K; each item is resized/cropped to a fixed size so batches stack.

A corrupt image raises a ValueError naming the file; ``skip_bad=True`` leaves it out and counts it instead.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .transforms import derive_seed

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class _Source:
    """Random access to the bytes of the members of a directory, zip or tar (thread/worker-safe reopen)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.is_dir():
            self.kind = "dir"
        elif zipfile.is_zipfile(self.path):
            self.kind = "zip"
        elif self.path.is_file() and tarfile.is_tarfile(self.path):
            self.kind = "tar"
        elif not self.path.exists():
            raise ValueError(f"data: {str(self.path)!r} does not exist; pass --data DIR|FILE.zip|FILE.tar "
                             "holding <class>/<image> files, or 'embedded' for the shipped CIFAR-10 subset")
        else:
            raise ValueError(f"data: {str(self.path)!r} is neither a directory, a zip nor a tar; pass an "
                             "ImageFolder directory (<class>/<image>) or a zip/tar of one")
        self._local = threading.local()
        self._pid = None
        self._tar_offsets: dict[str, tuple[int, int]] = {}

    def names(self) -> list[str]:
        if self.kind == "dir":
            out = []
            for root, _dirs, files in os.walk(self.path, followlinks=True):
                for f in files:
                    if _is_image(f):
                        out.append(Path(root, f).relative_to(self.path).as_posix())
            return out
        if self.kind == "zip":
            with zipfile.ZipFile(self.path) as zf:
                return [i.filename for i in zf.infolist() if not i.is_dir() and _is_image(i.filename)]
        with tarfile.open(self.path) as tf:
            out = []
            for m in tf:
                if m.isfile() and _is_image(m.name):
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    self._tar_offsets[name] = (m.offset_data, m.size)
                    out.append(name)
            return out

    def _handle(self):
        # one open handle per process and thread (DataLoader workers fork; zipfile objects are not shareable)
        if self._pid != os.getpid():
            self._local = threading.local()
            self._pid = os.getpid()
        h = getattr(self._local, "h", None)
        if h is None:
            h = zipfile.ZipFile(self.path) if self.kind == "zip" else open(self.path, "rb")
            self._local.h = h
        return h

    def read(self, name: str) -> bytes:
        if self.kind == "dir":
            return (self.path / name).read_bytes()
        h = self._handle()
        if self.kind == "zip":
            return h.read(name)
        off, size = self._tar_offsets[name]
        h.seek(off)
        return h.read(size)

    def describe(self, name: str) -> str:
        return str(self.path / name) if self.kind == "dir" else f"{self.path}:{name}"

    def __getstate__(self):  # picklable for DataLoader workers (spawn); handles are reopened lazily
        d = dict(self.__dict__)
        d["_local"] = None
        d["_pid"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._local = threading.local()


@dataclass
class ImageIndex:
    """The sorted members of an ImageFolder source: ``names[i]`` has label ``labels[i]`` (index into ``classes``)."""

    source: _Source
    names: list[str]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.names)


def _strip_common_root(names: list[str]) -> tuple[str, list[str]]:
    """Archives often wrap the tree in one top folder (``cifar/train/<class>/x.jpg``); find the class level."""
    prefix = ""
    while names and all("/" in n for n in names):
        heads = {n.split("/", 1)[0] for n in names}
        depth2 = all(n.count("/") >= 2 for n in names)
        if len(heads) == 1 and depth2:
            head = heads.pop()
            prefix += head + "/"
            names = [n.split("/", 1)[1] for n in names]
        else:
            break
    return prefix, names


def list_images(path: str | os.PathLike, limit: int | None = None, seed: int = 0) -> ImageIndex:
    """Index an ImageFolder source; ``limit`` keeps a class-balanced, seeded subset of that many images."""
    src = _Source(Path(path))
    all_names = sorted(src.names())
    if not all_names:
        raise ValueError(f"data: no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) found in {str(path)!r}; "
                         "expected the ImageFolder layout <class>/<image>")
    prefix, rel = _strip_common_root(all_names)
    if not all("/" in n for n in rel):
        bad = next(n for n in rel if "/" not in n)
        raise ValueError(f"data: {src.describe(prefix + bad)!r} is not inside a class folder; expected the "
                         "ImageFolder layout <class>/<image>")
    classes = sorted({n.split("/", 1)[0] for n in rel})
    if src.kind == "dir":  # a class folder without images would silently shift every later label
        root = src.path / prefix
        empty = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                       and d.name not in classes)
        if empty:
            raise ValueError(f"data: class folder(s) {', '.join(repr(str(root / e)) for e in empty[:5])}"
                             f"{' ...' if len(empty) > 5 else ''} hold no images ({', '.join(IMAGE_EXTENSIONS[:4])}, "
                             "...); add images or remove the folder(s)")
    cidx = {c: i for i, c in enumerate(classes)}
    names = [prefix + n for n in rel]
    labels = [cidx[n.split("/", 1)[0]] for n in rel]
    if limit is not None and limit < len(names):
        names, labels = balanced_subset(names, labels, len(classes), limit, seed)
    return ImageIndex(src, names, labels, classes)


def balanced_subset(names: list[str], labels: list[int], num_classes: int, limit: int, seed: int):
    """``limit`` items taking classes in turn (a seeded shuffle within each class), in the original order."""
    if limit < 1:
        raise ValueError(f"data: limit must be a positive number of images, got {limit}")
    g = torch.Generator().manual_seed(seed)
    per_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, y in enumerate(labels):
        per_class[y].append(i)
    per_class = [[c[j] for j in torch.randperm(len(c), generator=g).tolist()] for c in per_class]
    keep: list[int] = []
    r = 0
    while len(keep) < limit:
        for c in per_class:
            if r < len(c) and len(keep) < limit:
                keep.append(c[r])
        r += 1
    keep.sort()
    return [names[i] for i in keep], [labels[i] for i in keep]


def decode_image(data: bytes, what: str):
    """Bytes -> RGB PIL image; a ValueError naming ``what`` if the file is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        img: Image.Image = Image.open(io.BytesIO(data))
        img.load()
        if img.mode.startswith("I;16") or img.mode == "I":
            # 16-bit grayscale: convert("RGB") would clip every value above 255 to white; keep the top 8 bits
            img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
        return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"data: cannot decode image {what!r} ({type(e).__name__}: {e}); replace or delete "
                         "the file, or pass --skip-bad to leave bad images out") from None


def _to_chw(img) -> torch.Tensor:
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return t.view(img.size[1], img.size[0], 3).permute(2, 0, 1).contiguous()


@dataclass
class InMemoryImages:
    """Every image decoded once: ``images uint8 [N, 3, H, W]``, ``labels int64 [N]``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    @classmethod
    def load(cls, path: str | os.PathLike, limit: int | None = None, skip_bad: bool = False, seed: int = 0,
             size: int | None = None) -> InMemoryImages:
        """Decode ``path`` into memory. Images of differing sizes need ``size`` (each is resized to it)."""
        index = list_images(path, limit, seed)
        src = index.source

        def decode(name: str):
            what = src.describe(name)
            try:
                img = decode_image(src.read(name), what)
            except ValueError as e:
                return what, e
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), resample=3)  # bicubic
            return what, img

        # Pillow releases the GIL while decoding: a few threads decode in parallel, results stay in order
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            decoded = list(pool.map(decode, index.names, chunksize=256))
        imgs, labels, skipped = [], [], []
        first_size = None
        for (what, img), y in zip(decoded, index.labels):
            if isinstance(img, ValueError):
                if not skip_bad:
                    raise img
                skipped.append(what)
                continue
            if first_size is None:
                first_size = img.size
            elif img.size != first_size:
                raise ValueError(f"data: {what!r} is {img.size[0]}x{img.size[1]} but earlier images are "
                                 f"{first_size[0]}x{first_size[1]}; in-memory data needs one size: set "
                                 "data_mode=stream (resizes per image) for mixed sizes")
            imgs.append(_to_chw(img))
            labels.append(y)
        if not imgs:
            raise ValueError(f"data: every image in {str(path)!r} failed to decode ({len(skipped)} skipped)")
        return cls(torch.stack(imgs), torch.tensor(labels, dtype=torch.int64), index.classes, str(path), skipped)


class StreamingImages(torch.utils.data.Dataset):
    """Decode on demand (DataLoader workers): item ``i`` -> ``(uint8 [3, size, size], label)``.

    Training items get a random-resized crop (scale 0.08-1, ratio 3/4-4/3) drawn from a generator seeded by
    ``(seed, epoch, i)``, so the result does not depend on the worker that decodes it; evaluation items are
    resized (shorter side to ``size / crop_pct``) and centre-cropped. A bad file raises a ValueError naming
    it, or with ``skip_bad`` yields ``None`` (dropped by :func:`collate_skip`, counted by the loop).
    """

    def __init__(self, path: str | os.PathLike, size: int, train: bool, limit: int | None = None,
                 skip_bad: bool = False, seed: int = 0, crop_pct: float = 0.875):
        index = list_images(path, limit, seed)
        self.source, self.names, self.classes = index.source, index.names, index.classes
        self.labels = torch.tensor(index.labels, dtype=torch.int64)
        self.size, self.train, self.skip_bad, self.seed, self.crop_pct = size, train, skip_bad, seed, crop_pct
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.names)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int):
        name = self.names[i]
        try:
            img = decode_image(self.source.read(name), self.source.describe(name))
        except ValueError:
            if self.skip_bad:
                return None
            raise
        W, H = img.size
        s = self.size
        if self.train:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, i))
            box = _random_resized_box(W, H, g)
            img = img.resize((s, s), resample=2, box=box)  # bilinear
        else:
            short = s / self.crop_pct
            scale = short / min(W, H)
            nw, nh = max(s, round(W * scale)), max(s, round(H * scale))
            img = img.resize((nw, nh), resample=2)
            left, top = (nw - s) // 2, (nh - s) // 2
            img = img.crop((left, top, left + s, top + s))
        return _to_chw(img), int(self.labels[i])


def _random_resized_box(W: int, H: int, g: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    import math

    area = W * H
    logr = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=g).tolist()
        a = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        r = math.exp(logr[0] + u[1] * (logr[1] - logr[0]))
        w, h = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if 0 < w <= W and 0 < h <= H:
            x0, y0 = int(u[2] * (W - w + 1)), int(u[3] * (H - h + 1))
            return (x0, y0, x0 + w, y0 + h)
    s = min(W, H)  # fallback: central square
    return ((W - s) // 2, (H - s) // 2, (W - s) // 2 + s, (H - s) // 2 + s)


def collate_skip(batch):
    """Stack ``(image, label)`` items, dropping ``None`` (skipped bad files); returns (x, y, n_skipped)."""
    good = [b for b in batch if b is not None]
    n_bad = len(batch) - len(good)
    if not good:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), n_bad
    return torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]), n_bad
