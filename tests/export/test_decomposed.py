"""The export-time decomposition of msa_conv2d against the reference backend, every option."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from msaconv.export import adaptive_avg_pool2d_decomposition
from msaconv.ops import msa_conv2d
from msaconv.ops.decomposed import msa_conv2d_decomposed

CASES = list(itertools.product(["zeros", "mask", "clamp", "circular"], [(3, 3), (2, 3)], [(1, 1), (2, 1)],
                               [(1, 1), (2, 2)], [0, 2], ["bhwd", "bhdhw"]))


@pytest.mark.parametrize("border", ["zeros", "mask", "clamp", "circular"])
def test_decomposed_matches_reference(border):
    gen = torch.Generator().manual_seed(0)
    for b, kernel, dil, stride, M, layout in CASES:
        if b != border:
            continue
        B, h, H, W, D = 2, 2, 9, 7, 4
        shp = (B, h, H, W, D) if layout == "bhwd" else (B, h, D, H, W)
        q, k, v = (torch.randn(shp, dtype=torch.float64, generator=gen) for _ in range(3))
        ek = ev = None
        if M:
            ek, ev = (torch.randn(B, h, M, D, dtype=torch.float64, generator=gen) for _ in range(2))
        ref = msa_conv2d(q, k, v, kernel, dil, stride, border, None, ek, ev, backend="reference", layout=layout)
        got = msa_conv2d_decomposed(q, k, v, ek, ev, kernel, dil, stride, border, D ** -0.5, layout)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12,
                                   msg=f"{border} k{kernel} d{dil} s{stride} M{M} {layout}")


@pytest.mark.parametrize("size,out", [((7, 9), (4, 4)), ((8, 8), (3, 5)), ((5, 3), (5, 3)), ((13, 6), (4, 2))])
def test_adaptive_pool_decomposition_is_exact(size, out):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(adaptive_avg_pool2d_decomposition(x, out), F.adaptive_avg_pool2d(x, out))
