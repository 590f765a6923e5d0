"""``gpsa``: gated positional self-attention (ConViT, d'Ascoli et al., ICML'21).

Computation, per head ``i`` and for tokens ``n, m`` at pixel positions ``p_n, p_m``:

* content scores ``S = softmax_m(q_n . k_m / sqrt(d))``;
* positional scores ``P = softmax_m(W_pos r_nm)`` with ``r_nm = (dx, dy, dx^2 + dy^2)``,
  ``(dx, dy) = p_m - p_n`` (column and row offsets) and ``W_pos: 3 -> heads`` (a Linear with bias);
* ``A = (1 - sigmoid(lambda_i)) S + sigmoid(lambda_i) P``, renormalised over ``m``; output ``A v`` per head,
  heads concatenated, then a Linear projection. ``lambda_i`` starts at 1.

``local_init=True`` (default, ConViT's init): ``W_v = I`` and head ``i`` gets
``W_pos[i] = alpha * (2 dx_i, 2 dy_i, -1)`` for the offsets ``(dx_i, dy_i)`` of a ``sqrt(h) x sqrt(h)`` grid
around 0, so ``W_pos r = -alpha |p_m - p_n - delta_i|^2 + const``: each head starts as a Gaussian centred
on its own offset, i.e. a soft convolution (``alpha = locality_strength``). With a non-square number of
heads the first ``floor(sqrt(h))^2`` heads get offsets and the rest keep their default init (as ConViT).

Cost in N = H*W: ``O(N^2 C)`` like MHSA plus ``O(h N^2)`` for the positional scores; the attention map is
materialised (two softmaxes are mixed), so memory is ``O(h N^2)``.

New resolution: ``W_pos`` has no N dependence; the relative offsets are rebuilt from (H, W) in every call,
non-square maps included (ConViT's ``get_rel_indices`` assumes a square N; its model also keeps an
absolute position embedding, which this mixer does not have).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import MultiHeadMixer, check_float, check_input, check_probability, mean_distance


def rel_indices(H: int, W: int, device=None, dtype=None) -> torch.Tensor:
    """``[N, N, 3]`` with ``(dx, dy, dx^2+dy^2)`` from token n (row) to token m (column), tokens row-major."""
    ys, xs = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    ys, xs = ys.flatten().to(dtype or torch.get_default_dtype()), xs.flatten().to(dtype or torch.get_default_dtype())
    dx = xs[None, :] - xs[:, None]
    dy = ys[None, :] - ys[:, None]
    return torch.stack([dx, dy, dx * dx + dy * dy], dim=-1)


class GPSA2d(MultiHeadMixer):
    """ConViT's gated positional self-attention on a ``[B, C, H, W]`` map.

    Fidelity: ConViT (d'Ascoli et al., ICML'21) compared with the authors' facebookresearch/convit
    ``convit.py`` (``GPSA``) and, numerically, with timm's port (tested): matches at square maps, the
    locality init included. Differences kept: relative offsets are rebuilt for non-square maps (theirs
    assume a square N) and the other Linear layers keep PyTorch's default init where ConViT draws
    trunc-normal(0.02) weights and zero biases (a model-level init; theirs applies it before the locality init).
    """

    def __init__(self, dim: int, num_heads: int = 4, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, locality_strength: float = 1.0, local_init: bool = True,
                 device=None, dtype=None):
        cls = "GPSA2d"
        super().__init__(cls, dim, num_heads, attn_drop=attn_drop)
        self.locality_strength = check_float(cls, "locality_strength", locality_strength, 0.0, math.inf)
        dd = {"device": device, "dtype": dtype}
        self.qk = self.qkv_layer(2, bias=qkv_bias, **dd)
        self.v = self.qkv_layer(1, bias=qkv_bias, **dd)
        self.pos_proj = nn.Linear(3, self.num_heads, **dd)
        self.gating_param = nn.Parameter(torch.ones(self.num_heads, **dd))
        self.proj = self.proj_layer(**dd)
        self.proj_drop = nn.Dropout(check_probability(cls, "proj_drop", proj_drop))
        self.local_init_done = bool(local_init)
        if local_init:
            self.local_init()

    @torch.no_grad()
    def local_init(self) -> None:
        """ConViT's locality init: ``W_v = I``; head i a Gaussian at offset i of a sqrt(h) x sqrt(h) grid."""
        self.v.weight.copy_(torch.eye(self.dim, dtype=self.v.weight.dtype, device=self.v.weight.device))
        k = int(self.num_heads ** 0.5)
        center = (k - 1) / 2
        for i in range(k):        # row offset index
            for j in range(k):    # column offset index
                h = i + k * j
                self.pos_proj.weight[h, 0] = 2 * (j - center)   # dx (column offset)
                self.pos_proj.weight[h, 1] = 2 * (i - center)   # dy (row offset)
                self.pos_proj.weight[h, 2] = -1
        self.pos_proj.weight *= self.locality_strength

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)  # [B, N, C]

    def positional_scores(self, H: int, W: int, device=None, dtype=None) -> torch.Tensor:
        """``[h, N, N]`` positional attention ``softmax_m(W_pos r_nm)``."""
        r = rel_indices(H, W, device=device, dtype=dtype)
        return self.pos_proj(r).permute(2, 0, 1).softmax(dim=-1)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The gated, renormalised attention ``[B, h, N, N]`` (before dropout)."""
        H, W = x.shape[-2:]
        q, k = self.split_heads(self.qk(self._tokens(x)), 2)                 # [B, h, N, d] each
        content = (q @ k.transpose(-1, -2) * self.scale).softmax(dim=-1)
        pos = self.positional_scores(H, W, x.device, x.dtype)[None]
        g = torch.sigmoid(self.gating_param).view(1, -1, 1, 1)
        a = (1.0 - g) * content + g * pos
        return a / a.sum(dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = check_input("GPSA2d", x, self.dim)
        a = F.dropout(self.attention(x), self.attn_drop, self.training)
        (v,) = self.split_heads(self.v(self._tokens(x)), 1)                  # [B, h, N, d]
        out = self.proj_drop(self.proj(self.join_heads(a @ v)))
        return out.transpose(1, 2).reshape(B, C, H, W)

    @torch.no_grad()
    def attention_distance(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head mean attention distance in pixels (ConViT's non-locality readout), ``[h]``."""
        check_input("GPSA2d", x, self.dim)
        return mean_distance(self.attention(x), x.shape[-2], x.shape[-1])

    def extra_repr(self) -> str:
        s = (f"dim={self.dim}, num_heads={self.num_heads}, locality_strength={self.locality_strength}, "
             f"local_init={self.local_init_done}")
        return s + (f", attn_drop={self.attn_drop}" if self.attn_drop else "")


@register_token_mixer("gpsa", paper="ConViT (d'Ascoli et al., ICML'21)")
def gpsa(dim: int, num_heads: int = 1, **options) -> GPSA2d:
    return GPSA2d(dim, num_heads=num_heads, **options)
