"""``shsa``: single-head self-attention on a channel slice (SHViT, Yun & Ro, CVPR'24).

Computation: split ``x`` into ``x1`` (the first ``partial_dim`` channels, C/4 by default as SHViT-S1..S4's
32/64/96 of 128/256/384) and ``x2`` (the rest). ``x1 <- GroupNorm(1 group)(x1)``; one
Conv1x1+BatchNorm gives ``q, k`` (``qk_dim`` = 16 channels each) and ``v`` (``partial_dim``);
``A = softmax_m(q_n . k_m / sqrt(qk_dim))`` over all N tokens; ``x1' = A v``;
``y = Conv1x1+BN(ReLU(concat[x1', x2]))``. The untouched ``x2`` reaches the output only through that
projection: attention on a slice, a 1x1 mix of everything.

Deliberate difference: SHViT initialises the output BatchNorm's weight to 0 (the residual branch starts
as the identity, a training recipe of its blocks). Here ``zero_init=False`` by default so that the mixer
alone is not the constant 0 at init; pass ``zero_init=True`` for SHViT's init.

Cost in N = H*W: ``2 N^2 (qk_dim + partial_dim)`` FLOPs for the single head, plus ``2 N C_p (2 qk_dim + C_p)``
and ``2 N C^2`` for the projections: quadratic but thin (one head, 16-d logits).

New resolution: any H, W >= 1; no positional term. ``num_heads`` is accepted for the common contract and
ignored (single-head by design). BatchNorm: use ``.eval()`` for batch-independent outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import check_input, check_int


class ConvBN(nn.Sequential):
    """Conv2d (no bias) followed by BatchNorm2d (SHViT's Conv2d_BN)."""

    def __init__(self, cin: int, cout: int, bn_weight_init: float = 1.0, device=None, dtype=None):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, 1, bias=False, device=device, dtype=dtype))
        bn = nn.BatchNorm2d(cout, device=device, dtype=dtype)
        self.add_module("bn", bn)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)


class SHSA2d(nn.Module):
    """SHViT single-head attention on a ``[B, C, H, W]`` map.

    Fidelity: SHViT (Yun & Ro, CVPR'24) compared with the authors' ysj9909/SHViT ``model/shvit.py``
    (``SHSA``) and, numerically, with timm's port (tested): matches; one difference kept: the output
    BatchNorm starts at weight 1, not 0 (``zero_init=True`` is theirs), so the mixer alone is not 0 at init.
    """

    def __init__(self, dim: int, partial_dim: int | None = None, qk_dim: int = 16, zero_init: bool = False,
                 device=None, dtype=None):
        super().__init__()
        cls = "SHSA2d"
        self.dim = check_int(cls, "dim", dim)
        pdim = max(1, dim // 4) if partial_dim is None else partial_dim
        self.partial_dim = check_int(cls, "partial_dim", pdim)
        if self.partial_dim > dim:
            raise ValueError(f"{cls}: partial_dim={self.partial_dim} exceeds dim={dim}; use partial_dim <= dim "
                             f"(SHViT uses dim // 4)")
        self.qk_dim = check_int(cls, "qk_dim", qk_dim)
        self.scale = self.qk_dim ** -0.5
        dd = {"device": device, "dtype": dtype}
        self.pre_norm = nn.GroupNorm(1, self.partial_dim, **dd)
        self.qkv = ConvBN(self.partial_dim, 2 * self.qk_dim + self.partial_dim, **dd)
        self.proj = ConvBN(dim, dim, bn_weight_init=0.0 if zero_init else 1.0, **dd)
        self.zero_init = bool(zero_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = check_input("SHSA2d", x, self.dim)
        x1, x2 = torch.split(x, [self.partial_dim, C - self.partial_dim], dim=1)
        qkv = self.qkv(self.pre_norm(x1)).flatten(2)                          # [B, 2 qk + p, N]
        q, k, v = torch.split(qkv, [self.qk_dim, self.qk_dim, self.partial_dim], dim=1)
        o = F.scaled_dot_product_attention(q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None],
                                           v.transpose(1, 2)[:, None], scale=self.scale)  # [B, 1, N, p]
        x1 = o[:, 0].transpose(1, 2).reshape(B, self.partial_dim, H, W)
        return self.proj(F.relu(torch.cat([x1, x2], dim=1)))

    def extra_repr(self) -> str:
        s = f"dim={self.dim}, partial_dim={self.partial_dim}, qk_dim={self.qk_dim}"
        return s + (", zero_init=True" if self.zero_init else "")


@register_token_mixer("shsa", paper="SHViT (Yun & Ro, CVPR'24)")
def shsa(dim: int, num_heads: int = 1, **options) -> SHSA2d:
    return SHSA2d(dim, **options)
