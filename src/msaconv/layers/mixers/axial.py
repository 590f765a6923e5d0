"""``axial``: row attention, then column attention (Axial Attention, Ho et al., arXiv 1912.12180).

Computation: multi-head self-attention along each row (the W pixels of a row attend to each other), then
along each column (H pixels), each with its own 1x1 qkv and output projections:
``y = col_attn(row_attn(x))`` (``mode='sequential'``, default). ``mode='sum'`` is the parallel variant
``y = row_attn(x) + col_attn(x)``. Unmasked (the paper's causal masks serve autoregressive generation).

Receptive field: after one sequential mixer every output already depends on every pixel (a column of
row-mixed pixels); with ``mode='sum'`` one layer sees the pixel's row and column (a cross) and two layers
see the whole map -- the paper's "global after two layers".

Cost in N = H*W: ``O(N (H + W) C)``: ``4 N W C`` FLOPs for the rows, ``4 N H C`` for the columns,
plus ``16 N C^2`` for the two sets of projections; sub-quadratic (``O(N^1.5 C)`` on a square map).

New resolution: any H, W >= 1; no positional term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import check_choice, check_heads, check_input, check_int, check_probability, conv1x1

MODES = ("sequential", "sum")


class _AxisAttention(nn.Module):
    """Multi-head attention along one axis of ``[B, C, H, W]`` (``axis=-1``: rows; ``axis=-2``: columns)."""

    def __init__(self, dim: int, num_heads: int, axis: int, qkv_bias: bool, attn_drop: float, dd: dict):
        super().__init__()
        self.num_heads, self.head_dim, self.axis, self.attn_drop = num_heads, dim // num_heads, axis, attn_drop
        self.qkv = conv1x1(dim, 3 * dim, bias=qkv_bias, **dd)
        self.proj = conv1x1(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(B, 3, h, d, H, W)
        if self.axis == -1:   # rows: sequences of length W, one per (B, row)
            qkv = qkv.permute(1, 0, 4, 2, 5, 3)        # [3, B, H, h, W, d]
        else:                 # columns: sequences of length H, one per (B, column)
            qkv = qkv.permute(1, 0, 5, 2, 4, 3)        # [3, B, W, h, H, d]
        q, k, v = qkv.unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        if self.axis == -1:
            o = o.permute(0, 2, 4, 1, 3)               # [B, h, d, H, W]
        else:
            o = o.permute(0, 2, 4, 3, 1)               # [B, h, d, H, W]
        return self.proj(o.reshape(B, C, H, W))


class AxialAttention2d(nn.Module):
    """Row-then-column (or row-plus-column) multi-head attention on a ``[B, C, H, W]`` map.

    Fidelity: Axial Attention (Ho et al., arXiv 1912.12180); the authors' code (Google's TensorFlow
    Axial Transformer) is not available to us, so this was checked against the paper's equations only:
    row then column attention, each with its own projections, matches; differences kept: no causal masks
    (they serve autoregressive generation, not a vision backbone) and a ``mode='sum'`` parallel variant.
    """

    def __init__(self, dim: int, num_heads: int = 8, mode: str = "sequential", qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, device=None, dtype=None):
        super().__init__()
        cls = "AxialAttention2d"
        self.dim = check_int(cls, "dim", dim)
        self.num_heads = check_heads(cls, dim, num_heads)
        self.mode = check_choice(cls, "mode", mode, MODES)
        p = check_probability(cls, "attn_drop", attn_drop)
        dd = {"device": device, "dtype": dtype}
        self.row = _AxisAttention(dim, self.num_heads, -1, qkv_bias, p, dd)
        self.col = _AxisAttention(dim, self.num_heads, -2, qkv_bias, p, dd)
        self.proj_drop = nn.Dropout(check_probability(cls, "proj_drop", proj_drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("AxialAttention2d", x, self.dim)
        y = self.col(self.row(x)) if self.mode == "sequential" else self.row(x) + self.col(x)
        return self.proj_drop(y)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, mode={self.mode!r}"


@register_token_mixer("axial", paper="Axial Attention (Ho et al., arXiv 2019)")
def axial(dim: int, num_heads: int = 1, **options) -> AxialAttention2d:
    return AxialAttention2d(dim, num_heads=num_heads, **options)
