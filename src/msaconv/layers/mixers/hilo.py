"""``hilo``: HiLo attention, high/low-frequency head split (LITv2, Pan et al., NeurIPS'22).

Computation: the heads are split; ``l = int(alpha * heads)`` Lo-Fi heads and ``heads - l`` Hi-Fi heads
(``window_size = 1`` makes every head Lo-Fi: plain MHSA, as LITv2).

* Hi-Fi: ``q, k, v = Linear(x)`` on the Hi-Fi channels; multi-head self-attention inside each
  non-overlapping ``s x s`` window; a Linear projection.
* Lo-Fi: ``q = Linear(x)`` at every pixel; ``k, v = Linear(AvgPool_s(x))``; every query attends to all
  ``N / s^2`` pooled tokens; a Linear projection.
* The two outputs are concatenated along channels (Hi-Fi first).

Cost in N = H*W: Hi-Fi ``4 N s^2 C_hi`` FLOPs, Lo-Fi ``4 N (N / s^2) C_lo``, plus the projections
(``8 N C^2``-ish): quadratic in N but ``s^2`` times cheaper than MHSA on the Lo-Fi part.

New resolution: any H, W >= 1. LITv2's ``hilo.py`` reshapes and needs H, W divisible by ``s``; here the
map is zero-padded to multiples of ``s`` and cropped after. Padded keys are masked in the Hi-Fi windows,
and the Lo-Fi pooling averages only the real pixels of each window (no zero pixel enters a mean), so
results do not depend on the padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import (MultiHeadMixer, check_float, check_input, check_int, check_probability, default_heads,
                      pad_to_multiple, valid_mask)


def both_branch_heads(dim: int, alpha: float) -> int | None:
    """The smallest ``num_heads`` dividing ``dim`` with at least one Lo-Fi and one Hi-Fi head, or None."""
    for h in range(2, dim + 1):
        if dim % h == 0 and 0 < int(h * alpha) < h:
            return h
    return None


class HiLo2d(MultiHeadMixer):
    """LITv2 HiLo attention on a ``[B, C, H, W]`` map, padded and cropped for any size.

    Fidelity: LITv2 (Pan et al., NeurIPS'22) compared with the authors' ziplab/LITv2 ``hilo.py``
    (``HiLo``): matches (the head split ``int(h * alpha)``, window attention, pooled keys, ``ws = 1`` as
    MHSA, Hi-Fi first); differences kept: any H, W through padding with masked keys and real-pixel means
    (theirs needs multiples of the window), and a split that silently loses a branch raises here.
    """

    def __init__(self, dim: int, num_heads: int = 8, window_size: int = 2, alpha: float = 0.5,
                 qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0, device=None, dtype=None):
        cls = "HiLo2d"
        super().__init__(cls, dim, num_heads, attn_drop=attn_drop)
        self.window_size = check_int(cls, "window_size", window_size)
        self.alpha = check_float(cls, "alpha", alpha, 0.0, 1.0)
        self.l_heads = self.num_heads if self.window_size == 1 else int(self.num_heads * self.alpha)
        self.h_heads = self.num_heads - self.l_heads
        if self.window_size > 1 and 0.0 < self.alpha < 1.0 and (self.l_heads == 0 or self.h_heads == 0):
            gone = "Lo-Fi (global)" if self.l_heads == 0 else "Hi-Fi (window)"
            h = both_branch_heads(dim, self.alpha)
            fix = f"use num_heads={h}" if h is not None else f"no num_heads dividing dim={dim} gives both branches"
            raise ValueError(
                f"{cls}: alpha={alpha} with num_heads={num_heads} gives {self.l_heads} Lo-Fi and {self.h_heads} "
                f"Hi-Fi heads (int(num_heads * alpha) are Lo-Fi), so the {gone} branch vanishes; {fix}, or pass "
                f"alpha=0.0 (Hi-Fi only) or alpha=1.0 (Lo-Fi only) to ask for one branch")
        self.l_dim, self.h_dim = self.l_heads * self.head_dim, self.h_heads * self.head_dim
        dd = {"device": device, "dtype": dtype}
        if self.l_heads:
            self.l_q = self.qkv_layer(1, self.l_heads, bias=qkv_bias, **dd)
            self.l_kv = self.qkv_layer(2, self.l_heads, bias=qkv_bias, **dd)
            self.l_proj = self.proj_layer(self.l_heads, **dd)
        if self.h_heads:
            self.h_qkv = self.qkv_layer(3, self.h_heads, bias=qkv_bias, **dd)
            self.h_proj = self.proj_layer(self.h_heads, **dd)
        self.proj_drop = nn.Dropout(check_probability(cls, "proj_drop", proj_drop))

    def _hifi(self, x: torch.Tensor, valid: torch.Tensor, padded: bool) -> torch.Tensor:
        """``x [B, Hp, Wp, C]`` (padded), ``valid [Hp, Wp]`` -> ``[B, Hp, Wp, h_dim]``."""
        B, Hp, Wp, C = x.shape
        s = self.window_size
        nh, nw = Hp // s, Wp // s
        xw = x.reshape(B, nh, s, nw, s, C).transpose(2, 3).reshape(B, nh * nw, s * s, C)
        q, k, v = self.split_heads(self.h_qkv(xw), 3)                       # [B, nW, h, s*s, d]
        mask = None
        if padded:
            vk = valid.reshape(nh, s, nw, s).transpose(1, 2).reshape(1, nh * nw, 1, 1, s * s)
            mask = vk.expand(1, nh * nw, 1, s * s, s * s)                    # padded keys masked
        o = self.join_heads(self.sdpa(q, k, v, attn_mask=mask))             # [B, nW, s*s, h_dim]
        o = o.reshape(B, nh, nw, s, s, self.h_dim).transpose(2, 3).reshape(B, Hp, Wp, self.h_dim)
        return self.h_proj(o)

    def _lofi(self, x: torch.Tensor, valid: torch.Tensor, padded: bool) -> torch.Tensor:
        """``x [B, Hp, Wp, C]`` (padded, zeros outside), ``valid [Hp, Wp]`` -> ``[B, Hp, Wp, l_dim]``."""
        B, Hp, Wp, C = x.shape
        s = self.window_size
        (q,) = self.split_heads(self.l_q(x).reshape(B, Hp * Wp, self.l_dim), 1)  # [B, h, N, d]
        xc = x.permute(0, 3, 1, 2)
        if s > 1:
            pooled = F.avg_pool2d(xc, s, s)
            if padded:  # the mean of the real pixels of each s x s window (padding is zero: sum / count)
                pooled = pooled / F.avg_pool2d(valid[None, None].to(x.dtype), s, s)
        else:
            pooled = xc
        k, v = self.split_heads(self.l_kv(pooled.flatten(2).transpose(1, 2)), 2)  # [B, h, M, d] each
        o = self.join_heads(self.sdpa(q, k, v))                              # [B, N, l_dim]
        return self.l_proj(o.reshape(B, Hp, Wp, self.l_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = check_input("HiLo2d", x, self.dim)
        s = self.window_size
        xp, ph, pw = pad_to_multiple(x, s, s)
        valid = valid_mask(H, W, ph, pw, x.device)[0, 0]                    # [Hp, Wp]
        t = xp.permute(0, 2, 3, 1)                                           # [B, Hp, Wp, C]
        outs = []
        if self.h_heads:
            outs.append(self._hifi(t, valid, bool(ph or pw)))
        if self.l_heads:
            outs.append(self._lofi(t, valid, bool(ph or pw)))
        y = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        y = self.proj_drop(y)[:, :H, :W]
        return y.permute(0, 3, 1, 2).contiguous()

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, alpha={self.alpha}, "
                f"hifi_heads={self.h_heads}, lofi_heads={self.l_heads}")


@register_token_mixer("hilo", paper="LITv2 HiLo (Pan et al., NeurIPS'22)")
def hilo(dim: int, num_heads: int | None = None, **options) -> HiLo2d:
    """``num_heads=None``: the smallest head count dividing ``dim`` that gives both branches (2 for an even
    ``dim`` at ``alpha=0.5``), so that the registry's default is never plain window attention."""
    if num_heads is None:
        alpha = options.get("alpha", 0.5)
        h = None
        if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1 and isinstance(alpha, (int, float)):
            h = both_branch_heads(dim, float(alpha)) if 0.0 < alpha < 1.0 else default_heads(dim, 2)
        num_heads = h if h is not None else default_heads(dim, 2)
    return HiLo2d(dim, num_heads=num_heads, **options)
