"""Data: the embedded CIFAR-10 (JPEG copy) subset, ImageFolder readers (directory, zip, tar) and batch
augmentation in plain torch."""

from __future__ import annotations

from .embedded import CITATION, DESCRIPTION, embedded_path
from .readers import InMemoryImages, StreamingImages, collate_skip, list_images
from .transforms import (
    CIFAR10_MEAN,
    EVAL_PROTOCOLS,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    derive_seed,
    generator,
    mixup_cutmix,
    normalize,
    rand_augment,
    random_crop_flip,
    resize,
    size_at,
    to_eval_size,
)

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "EVAL_PROTOCOLS", "CITATION", "DESCRIPTION", "IMAGENET_MEAN", "IMAGENET_STD", "InMemoryImages",
    "StreamingImages", "collate_skip", "derive_seed", "embedded_path", "generator", "list_images",
    "mixup_cutmix", "normalize", "rand_augment", "random_crop_flip", "resize", "size_at", "to_eval_size",
]
