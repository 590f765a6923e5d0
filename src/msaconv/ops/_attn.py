"""Pieces of the attention arithmetic that every backend must share bit for bit."""

from __future__ import annotations

import torch


def safe_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis where a row of only ``-inf`` gives zeros instead of NaN.

    With ``border='mask'`` and no extra keys, a query whose whole window lies outside the image (possible
    with even kernels and dilation on a tiny map) has nothing to attend to: its output is zero.
    """
    m = logits.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(logits - m)
    s = e.sum(dim=-1, keepdim=True)
    return e / torch.where(s > 0, s, torch.ones_like(s))


def dropout_keep(shape: tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """The keep-mask of attention dropout, already scaled by ``1/(1-p)``.

    Every backend draws it the same way (one float32 Bernoulli draw of the full ``[B, heads, P, K+M]``
    shape from the global generator), so two backends seeded alike drop the same weights.
    """
    keep = torch.empty(shape, dtype=torch.float32, device=device).bernoulli_(1.0 - p)
    return keep.div_(1.0 - p)
