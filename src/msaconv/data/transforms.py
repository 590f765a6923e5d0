"""Batch augmentation in plain torch (torchvision is not required): every op takes a ``uint8`` or float
batch ``[B, 3, H, W]`` and a ``torch.Generator``, so a step's augmentation is a pure function of the seed
derived from ``(seed, epoch, step, rank)`` -- what makes resumed runs bit-identical to uninterrupted ones.

- :func:`random_crop_flip`: pad-and-crop translation plus horizontal flip (the CIFAR standard).
- :func:`rand_augment`: a RandAugment-like policy (``n`` ops per image at magnitude ``m`` of 10), colour ops
  vectorised per sample and geometric ops as one batched ``affine_grid``.
- :func:`mixup_cutmix`: mixup or CutMix on the batch with soft targets.
- :func:`normalize`, :func:`resize`: to float, ImageNet-style mean/std; resize for other evaluation sizes.
- :func:`to_eval_size`: the two ways to show a model images of another size (``EVAL_PROTOCOLS``):
  ``'resize'`` scales the whole image (objects change scale, the map size follows), ``'canvas'`` keeps the
  training scale and changes the canvas (centre-crop when smaller, pad with the mean colour when larger:
  the same objects on a smaller or larger map).
- :func:`size_at`: the training size of one step drawn from a list, a pure function of the seed and step.
"""

from __future__ import annotations

import hashlib
import math
import random

import torch
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs, processes and platforms)."""
    h = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1] (float input is returned as it is)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def normalize(x: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    x = to_float(x)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float batch to ``size x size`` (bilinear, antialiased when shrinking); a no-op at that size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(to_float(x), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


EVAL_PROTOCOLS = ("resize", "canvas")


def to_eval_size(x: torch.Tensor, size: int, protocol: str, base: int) -> torch.Tensor:
    """A *normalised* float batch at ``base`` px (the training size) shown at ``size`` px by ``protocol``.

    ``'resize'``: :func:`resize` of the whole image. ``'canvas'``: the image stays at ``base`` px and is
    centre-cropped to ``size`` (smaller) or zero-padded to it (larger; zero is the mean colour after
    normalisation), the extra pixel of an odd difference going to the bottom / right.
    """
    if protocol == "resize":
        return resize(x, size)
    if protocol != "canvas":
        raise ValueError(f"to_eval_size: protocol={protocol!r} is unknown; choose one of {EVAL_PROTOCOLS}")
    x = resize(x, base)
    d = size - base
    if d >= 0:
        return F.pad(x, (d // 2, d - d // 2, d // 2, d - d // 2))
    top = (-d) // 2
    return x[..., top:top + size, top:top + size]


def size_at(sizes: list[int] | tuple[int, ...], seed: int, epoch: int, step: int) -> int:
    """The image size of training step ``step`` of ``epoch``: one of ``sizes``, drawn uniformly from a hash of
    ``(seed, epoch, step)`` (the same on every rank, and after a resume)."""
    return int(sizes[derive_seed(seed, epoch, step, 0x5123) % len(sizes)])


def random_crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4, flip: bool = True,
                     mode: str = "reflect") -> torch.Tensor:
    """Per-image random ``pad``-pixel translation (pad ``mode``: reflect|zeros) and horizontal flip."""
    B, C, H, W = x.shape
    if pad > 0:
        xp = F.pad(x.float() if mode == "reflect" else x, (pad, pad, pad, pad),
                   mode="reflect" if mode == "reflect" else "constant").to(x.dtype)
        oy = torch.randint(0, 2 * pad + 1, (B,), generator=g)
        ox = torch.randint(0, 2 * pad + 1, (B,), generator=g)
        iy = oy[:, None] + torch.arange(H)[None]  # [B, H]
        ix = ox[:, None] + torch.arange(W)[None]  # [B, W]
        b = torch.arange(B)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[b, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2).contiguous()  # [B,C,H,W]
    if flip:
        m = torch.rand(B, generator=g) < 0.5
        x = torch.where(m.view(B, 1, 1, 1), x.flip(-1), x)
    return x


# ---- RandAugment-like policy (float images in [0, 1]) ---------------------------------------------------

def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (b + f.view(-1, 1, 1, 1) * (a - b)).clamp_(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _signed(mag: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return mag * torch.where(torch.rand(mag.shape, generator=g) < 0.5, -1.0, 1.0)


def _color_op(name: str, x: torch.Tensor, m: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``m`` in [0, 1] per image (the magnitude / 10)."""
    if name == "brightness":
        return _blend(x, torch.zeros_like(x), 1 + _signed(0.9 * m, g))
    if name == "contrast":
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
        return _blend(x, mean, 1 + _signed(0.9 * m, g))
    if name == "color":
        return _blend(x, _gray(x).expand_as(x), 1 + _signed(0.9 * m, g))
    if name == "sharpness":
        k = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype) / 13
        blur = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3), groups=3)
        return _blend(x, blur, 1 + _signed(0.9 * m, g))
    if name == "posterize":
        bits = (8 - (m * 4).round()).clamp(4, 8).view(-1, 1, 1, 1)
        q = 2 ** (8 - bits)
        return torch.floor(x * 255 / q) * q / 255
    if name == "solarize":
        thr = (1 - m).view(-1, 1, 1, 1)
        return torch.where(x >= thr, 1 - x, x)
    if name == "autocontrast":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)
    if name == "equalize":  # per-channel histogram equalisation on 256 levels
        B, C, H, W = x.shape
        v = (x * 255).round().long().view(B * C, H * W)
        hist = torch.zeros(B * C, 256, dtype=torch.float32).scatter_add_(1, v, torch.ones_like(v, dtype=torch.float32))
        cdf = hist.cumsum(1)
        cmin = torch.where(hist > 0, cdf, torch.full_like(cdf, float("inf"))).amin(1, keepdim=True)
        lut = ((cdf - cmin) / (H * W - cmin).clamp_min(1) * 255).clamp(0, 255)
        return (lut.gather(1, v) / 255).view(B, C, H, W).to(x.dtype)
    if name == "invert":
        return 1 - x
    raise KeyError(name)


_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
_COLOR = ("brightness", "contrast", "color", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
RAND_AUGMENT_OPS = ("identity",) + _GEOMETRIC + _COLOR


def _affine(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One batched affine warp; ``op[b]`` indexes ``_GEOMETRIC`` (or -1 for none) per image."""
    B = x.shape[0]
    s = _signed(m, g)
    theta = torch.zeros(B, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    ang = s * math.radians(30)
    rot = op == 0
    theta[rot, 0, 0] = torch.cos(ang[rot]).to(x.dtype)
    theta[rot, 0, 1] = -torch.sin(ang[rot]).to(x.dtype)
    theta[rot, 1, 0] = torch.sin(ang[rot]).to(x.dtype)
    theta[rot, 1, 1] = torch.cos(ang[rot]).to(x.dtype)
    theta[op == 1, 0, 1] = (0.3 * s[op == 1]).to(x.dtype)
    theta[op == 2, 1, 0] = (0.3 * s[op == 2]).to(x.dtype)
    theta[op == 3, 0, 2] = (0.45 * s[op == 3]).to(x.dtype)  # grid units: 0.45 moves by 22.5% of the width
    theta[op == 4, 1, 2] = (0.45 * s[op == 4]).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    fill = 0.5
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return torch.where((op >= 0).view(B, 1, 1, 1), out, x)


def rand_augment(x: torch.Tensor, g: torch.Generator, n: int = 2, m: float = 9.0, m_std: float = 0.5,
                 ops: tuple[str, ...] = RAND_AUGMENT_OPS) -> torch.Tensor:
    """``n`` ops per image drawn uniformly from ``ops``, magnitude ~ N(m, m_std) clipped to [0, 10]."""
    x = to_float(x).clone()
    B = x.shape[0]
    names = list(ops)
    for _ in range(n):
        choice = torch.randint(0, len(names), (B,), generator=g)
        mag = ((m + m_std * torch.randn(B, generator=g)).clamp(0, 10) / 10).to(x.dtype)
        geo = torch.full((B,), -1, dtype=torch.long)
        for j, name in enumerate(names):
            if name in _GEOMETRIC:
                geo[choice == j] = _GEOMETRIC.index(name)
        if (geo >= 0).any():
            x = _affine(x, geo, mag, g)
        for j, name in enumerate(names):
            if name in _COLOR:
                sel = (choice == j).nonzero().flatten()
                if sel.numel():
                    x[sel] = _color_op(name, x[sel], mag[sel], g)
    return x


def mixup_cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, rng: random.Random, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, prob: float = 1.0, switch_prob: float = 0.5,
                 label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mixup/CutMix with the flipped batch as partner; returns ``(x, soft targets [B, classes])``."""
    off = label_smoothing / num_classes
    t = torch.full((y.shape[0], num_classes), off, dtype=torch.float32)
    t.scatter_(1, y.view(-1, 1), 1 - label_smoothing + off)
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or rng.random() >= prob:
        return x, t
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    lam = rng.betavariate(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.betavariate(mixup_alpha, mixup_alpha)
    xf = x.flip(0)
    if use_cutmix:
        H, W = x.shape[-2:]
        r = math.sqrt(1 - lam)
        ch, cw = int(H * r), int(W * r)
        cy, cx = rng.randrange(H), rng.randrange(W)
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = xf[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        x = x * lam + xf * (1 - lam)
    return x, t * lam + t.flip(0) * (1 - lam)
