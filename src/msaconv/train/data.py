"""The engine's data: where the splits live, how they are read, and the batches one rank sees each step.

Every random choice is a pure function of ``(seed, epoch, step, micro-batch, rank)``: the epoch's permutation,
each batch's crop / flip / RandAugment / mixup and its training size. A run resumed at any step therefore
reads and augments exactly the images an uninterrupted one would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import InMemoryImages, StreamingImages, collate_skip, embedded_path
from ..data import transforms as T
from . import distributed as D
from .config import TrainConfig


@dataclass
class Split:
    """A dataset in memory (``images``/``labels``) or streamed (``stream``)."""

    classes: list[str]
    source: str
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    stream: StreamingImages | None = None
    skipped: int = 0

    def __len__(self) -> int:
        if self.stream is not None:
            return len(self.stream)
        assert self.images is not None  # a split holds either a stream or images
        return self.images.shape[0]


def resolve_data_paths(cfg: TrainConfig) -> tuple[str, str | None]:
    """(training path, validation path or None) from ``cfg.data`` / ``cfg.val_data``: the embedded set, a
    folder with ``train`` and ``val`` / ``validation`` / ``test`` inside, or one path for training only."""
    if cfg.data == "embedded":
        train = str(embedded_path("train"))
        val = str(embedded_path("test")) if cfg.val_data == "auto" else cfg.val_data
    else:
        p = Path(cfg.data)
        train, val = cfg.data, None
        if p.is_dir() and (p / "train").is_dir():
            train = str(p / "train")
            for name in ("val", "validation", "test"):
                if (p / name).is_dir():
                    val = str(p / name)
                    break
        if cfg.val_data != "auto":
            val = cfg.val_data
    if val in ("none", "", None):
        val = None
    return train, val


def _memory_mode(cfg: TrainConfig, path: str) -> bool:
    if cfg.data_mode != "auto":
        return cfg.data_mode == "memory"
    p = Path(path)
    size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return size < 500e6  # compressed bytes: CIFAR-size sets decode to well under a few GB


def load_split(cfg: TrainConfig, path: str, train: bool, limit: int | None, log) -> Split:
    """Read the split at ``path``, in memory when it is small, streamed otherwise.

    A limited training set is a subset chosen by the run's seed; a limited validation set is always the same
    subset (seed 0), so ``msaconv eval --limit-val N`` sees the images the run was evaluated on. Images in
    memory keep their stored size; they are augmented, then resized to the training size batch by batch.
    """
    seed = cfg.seed if train else 0
    if _memory_mode(cfg, path):
        d = InMemoryImages.load(path, limit=limit, skip_bad=cfg.skip_bad, seed=seed)
        if d.skipped:
            log(f"data: skipped {len(d.skipped)} bad image(s) in {path} (first: {d.skipped[0]})")
        return Split(d.classes, path, d.images, d.labels, skipped=len(d.skipped))
    s = StreamingImages(path, cfg.img_size, train=train, limit=limit, skip_bad=cfg.skip_bad, seed=seed)
    return Split(s.classes, path, stream=s)


def check_splits(tr: Split, va: Split | None, train_path: str) -> None:
    """Fail before training when the splits cannot make a classifier: differing classes, or only one."""
    if va is not None and va.classes != tr.classes:
        raise ValueError(f"data: validation classes {va.classes[:5]}... differ from training classes "
                         f"{tr.classes[:5]}...; both need the same <class> folders")
    if len(tr.classes) < 2:
        raise ValueError(f"data: {train_path!r} holds one class folder ({tr.classes[0]!r}); a classifier needs at "
                         "least two <class> folders")


def batches(split: Split, order: torch.Tensor, batch_size: int, cfg: TrainConfig, epoch: int):
    """Yield ``(uint8 images, labels, n_bad)`` for consecutive ``batch_size`` chunks of ``order``."""
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if split.stream is None:
        images, labels = split.images, split.labels
        assert images is not None and labels is not None  # a split holds either a stream or images and labels
        for idx in chunks:
            yield images[idx], labels[idx], 0
        return
    split.stream.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(split.stream, batch_sampler=[c.tolist() for c in chunks],
                                         num_workers=cfg.workers, collate_fn=collate_skip,
                                         persistent_workers=False, prefetch_factor=4 if cfg.workers else None)
    yield from loader


def epoch_order(n_images: int, cfg: TrainConfig, info: D.DistInfo, epoch: int, images_per_epoch: int,
                skip: int) -> torch.Tensor:
    """This rank's image indices for ``epoch``: the seeded permutation, sharded over ranks, cut to
    ``images_per_epoch`` (whole steps), less the first ``skip`` (the steps a resumed run has done)."""
    order = torch.randperm(n_images, generator=T.generator(cfg.seed, epoch, 0xDA7A))
    return D.shard(order, info)[:images_per_epoch][skip:]


def train_size(cfg: TrainConfig, epoch: int, it: int) -> int:
    """The image size of step ``it`` of ``epoch``: drawn from ``train_sizes`` when set, else ``img_size``."""
    return T.size_at(cfg.train_sizes, cfg.seed, epoch, it) if cfg.train_sizes else cfg.img_size


def augment(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: TrainConfig, epoch: int, it: int, m: int,
            rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised images, soft targets) of micro-batch ``m`` of step ``it``: crop / flip, RandAugment,
    resize to the step's size, then mixup / CutMix and label smoothing, each seeded by its position."""
    gen = T.generator(cfg.seed, epoch, it, m, rank)
    if cfg.crop_pad or cfg.hflip:
        x = T.random_crop_flip(x, gen, cfg.crop_pad, cfg.hflip)
    if cfg.rand_augment_n:
        x = T.rand_augment(x, gen, cfg.rand_augment_n, cfg.rand_augment_m)
    x = T.normalize(T.resize(x, train_size(cfg, epoch, it)), cfg.mean, cfg.std)
    return T.mixup_cutmix(x, y, num_classes, random.Random(T.derive_seed(cfg.seed, epoch, it, m, rank, 7)),
                          cfg.mixup, cfg.cutmix, cfg.mix_prob, label_smoothing=cfg.label_smoothing)


def epoch_eval_indices(cfg: TrainConfig, va: Split | None) -> torch.Tensor | None:
    """A fixed, seeded subset of ``epoch_eval_images`` validation images for the per-epoch check (None: all)."""
    if va is None or not cfg.epoch_eval_images:
        return None
    n_val = len(va) if cfg.limit_val is None else min(cfg.limit_val, len(va))
    if cfg.epoch_eval_images >= n_val:
        return None
    perm = torch.randperm(n_val, generator=T.generator(cfg.seed, 0xE7A1))
    return perm[: cfg.epoch_eval_images].sort().values
