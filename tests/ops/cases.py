"""Replayable random cases for msa_conv2d: every option of the spec, with readable ids.

``random_cases(n, seed)`` always returns the same list for the same arguments; a failing id such as
``case7-H13W9-k5x1-d2x1-s1x3-h3D4-clamp-M0`` names everything needed to replay it by hand.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

BORDERS = ("zeros", "mask", "clamp", "circular")


@dataclass(frozen=True)
class Case:
    index: int
    batch: int
    heads: int
    height: int
    width: int
    head_dim: int
    kernel: tuple[int, int]
    dilation: tuple[int, int]
    stride: tuple[int, int]
    border: str
    extra: int
    seed: int

    @property
    def id(self) -> str:
        (kh, kw), (dh, dw), (sh, sw) = self.kernel, self.dilation, self.stride
        return (f"case{self.index}-H{self.height}W{self.width}-k{kh}x{kw}-d{dh}x{dw}-s{sh}x{sw}-"
                f"h{self.heads}D{self.head_dim}-{self.border}-M{self.extra}")

    def kwargs(self) -> dict:
        return dict(kernel_size=self.kernel, dilation=self.dilation, stride=self.stride, border=self.border)

    def tensors(self, dtype=torch.float64, requires_grad=True, layout="bhwd"):
        """q, k, v, extra_k, extra_v (extras None when M == 0), drawn from the case's own seed."""
        g = torch.Generator().manual_seed(self.seed)
        shape = (self.batch, self.heads, self.height, self.width, self.head_dim)
        q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
        if layout == "bhdhw":
            q, k, v = (t.permute(0, 1, 4, 2, 3).contiguous() for t in (q, k, v))
        ek = ev = None
        if self.extra:
            ek, ev = (torch.randn(self.batch, self.heads, self.extra, self.head_dim, generator=g, dtype=torch.float64)
                      for _ in range(2))
        out = []
        for t in (q, k, v, ek, ev):
            if t is not None:
                t = t.to(dtype).requires_grad_(requires_grad)
            out.append(t)
        return out


_KERNELS = [1, 2, 3, 4, 5, 7, 9, (5, 1), (1, 5), (3, 5), (2, 3), (9, 1), (1, 9)]
_MAPS = [(13, 9), (9, 13), (8, 8), (7, 11), (16, 5), (1, 6), (3, 3), (12, 12), (57, 43)]


def random_cases(n: int, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        i = len(cases)
        H, W = rng.choice(_MAPS)
        k = rng.choice(_KERNELS)
        kernel = (k, k) if isinstance(k, int) else k
        dilation = (rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2, 3]))
        stride = (rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2, 3]))
        border = BORDERS[i % 4]
        if border == "clamp" and (H < kernel[0] * dilation[0] or W < kernel[1] * dilation[1]):
            dilation = (1, 1)
            if H < kernel[0] or W < kernel[1]:
                border = "zeros"
        big = H * W > 1000
        heads = rng.choice([1, 2] if big else [1, 2, 3, 4, 8])
        head_dim = rng.choice([1, 2, 3] if big else [1, 2, 4, 5, 8])
        extra = rng.choice([0, 0, 1, 4])
        batch = 1 if big else rng.choice([1, 2])
        cases.append(Case(i, batch, heads, H, W, head_dim, kernel, dilation, stride, border, extra, seed * 100003 + i))
    return cases
