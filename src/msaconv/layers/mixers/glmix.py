"""``glmix``: soft-clustered slots with MHSA plus a convolution branch (GLMix / GLNet, Zhu et al., NeurIPS'24).

Computation (the mixing part of GLNet's block, without its norms, residuals and MLP):

* initial slots: ``AdaptiveAvgPool(x)`` to ``sqrt(S) x sqrt(S)``, i.e. S slot vectors (S = 64 by default);
* ``L = tau * normalize(slots) normalize(x)^T`` (cosine similarities, ``[S, N]``), ``tau`` learnable,
  initialised to ``C^-1/2``;
* soft clustering ``slots = softmax_N(L) x``; multi-head self-attention among the S slots;
* soft dispatch ``out = softmax_S(L^T) slots`` (each pixel takes a mixture of slots);
* plus a local branch ``Conv1x1 -> DWConv k x k (k = 5) -> Conv1x1`` on ``x``; the two are added.

Cost in N = H*W: ``4 N S C`` FLOPs for clustering and dispatch, ``4 S^2 C + 8 S C^2`` for the slot MHSA,
``2 N k^2 C + 4 N C^2`` for the conv branch: linear in N.

Initial slots: GLNet pools them from the block's input *before* its norm (and before its convolutional
position embedding), while the clustering, the slot MHSA and the local branch see the normalised map.
A token mixer here receives only the normalised map, so by default the slots are pooled from it;
``forward(x, slot_source=u)`` pools them from ``u`` instead (a block passes its pre-norm input to
reproduce GLNet exactly).

New resolution: any H, W >= 1: slots come from adaptive pooling (a map smaller than ``sqrt(S)`` repeats
pixels into slots). ``num_slots`` must be a square number (GLNet's adaptive-pool init).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import MultiHeadMixer, check_input, check_int, conv1x1, isqrt_exact


class GLMix2d(MultiHeadMixer):
    """GLNet's GLMix token mixer on a ``[B, C, H, W]`` map.

    Fidelity: GLMix / GLNet (Zhu et al., NeurIPS'24) compared with the authors' rayleizhu/GLMix
    ``models/glnet.py`` (``GLMixBlock._forward_relation``): matches (cosine logits with a learnable
    ``C^-1/2`` scale, soft clustering, ``nn.MultiheadAttention``-equivalent slot MHSA with biases, soft
    dispatch, the 1x1-DW5x5-1x1 branch). One difference by contract: the initial slots are pooled from
    the normalised input unless ``forward(..., slot_source=pre_norm_input)`` is used, as their block does.
    Their ``slot_init='param'`` variant (learned slots) is not provided.
    """

    def __init__(self, dim: int, num_heads: int = 8, num_slots: int = 64, local_kernel: int = 5,
                 learnable_scale: bool = True, device=None, dtype=None):
        cls = "GLMix2d"
        super().__init__(cls, dim, num_heads)
        self.num_slots = check_int(cls, "num_slots", num_slots)
        side = isqrt_exact(self.num_slots)
        if side is None:
            r = int(self.num_slots ** 0.5)
            raise ValueError(f"{cls}: num_slots={num_slots} is not a square number (slots come from a sqrt(S) x sqrt(S) "
                             f"adaptive pool); use num_slots={r * r} or {(r + 1) ** 2}")
        self.pool_size = side
        self.local_kernel = check_int(cls, "local_kernel", local_kernel)
        if self.local_kernel % 2 == 0:
            raise ValueError(f"{cls}: local_kernel must be odd to keep the size, got {local_kernel}; use 5")
        dd = {"device": device, "dtype": dtype}
        scale = torch.tensor(dim ** -0.5, **dd)
        if learnable_scale:
            self.slot_scale = nn.Parameter(scale)
        else:
            self.register_buffer("slot_scale", scale)
        self.slot_qkv = self.qkv_layer(bias=True, **dd)
        self.slot_proj = self.proj_layer(**dd)
        k = self.local_kernel
        self.local = nn.Sequential(
            conv1x1(dim, dim, **dd),
            nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, **dd),
            conv1x1(dim, dim, **dd),
        )

    def logits(self, x: torch.Tensor, slot_source: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, S, N]`` slot-to-pixel cosine logits (initial slots pooled from ``slot_source``, default ``x``)."""
        src = x if slot_source is None else slot_source
        slots = F.adaptive_avg_pool2d(src, self.pool_size).flatten(2).transpose(1, 2)  # [B, S, C]
        t = x.flatten(2).transpose(1, 2)                                                 # [B, N, C]
        return F.normalize(slots, dim=-1) @ (self.slot_scale * F.normalize(t, dim=-1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, slot_source: torch.Tensor | None = None) -> torch.Tensor:
        """``slot_source``: the map the initial slots are pooled from (GLNet: the block's pre-norm input)."""
        B, C, H, W = check_input("GLMix2d", x, self.dim)
        if slot_source is not None:
            check_input("GLMix2d", slot_source, self.dim)
            if slot_source.shape[0] != B:
                raise ValueError(f"GLMix2d: slot_source has batch {slot_source.shape[0]}, x has {B}; pass the "
                                 f"pre-norm input of the same batch")
        t = x.flatten(2).transpose(1, 2)                                                 # [B, N, C]
        L = self.logits(x, slot_source)                                                  # [B, S, N]
        slots = L.softmax(dim=-1) @ t                                                    # [B, S, C]
        slots = self.sdpa(*self.split_heads(self.slot_qkv(slots), 3))                   # [B, h, S, d]
        slots = self.slot_proj(self.join_heads(slots))
        out = L.transpose(1, 2).softmax(dim=-1) @ slots                                  # [B, N, C]
        return out.transpose(1, 2).reshape(B, C, H, W) + self.local(x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, num_slots={self.num_slots}, local_kernel={self.local_kernel}"


@register_token_mixer("glmix", paper="GLMix / GLNet (Zhu et al., NeurIPS'24)")
def glmix(dim: int, num_heads: int = 1, **options) -> GLMix2d:
    return GLMix2d(dim, num_heads=num_heads, **options)
