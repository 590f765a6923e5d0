"""``channel``: channel-group attention (DaViT, Ding et al., ECCV'22).

Computation: ``q, k, v = W_qkv x`` (a Linear on each token); the C channels are split into ``G = num_heads``
groups of ``d`` channels. Per group the *channels* are the tokens: with ``q, k, v in R^{N x d}``,
``A = softmax((d^-1/2 K)^T V) in R^{d x d}`` (softmax over the last axis), ``out = (A Q^T)^T``; groups
concatenated, then a Linear projection. Note DaViT's operand roles: K and V build the map, Q reads it.

Cost in N = H*W: ``4 N C d`` FLOPs for the map and its application plus ``8 N C^2`` for the projections:
linear in N (every channel token spans the whole image, so the mixing is global).

New resolution: any H, W >= 1; nothing depends on N except the (unnormalised) size of ``K^T V``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_token_mixer
from ._common import MultiHeadMixer, check_input, check_probability


class ChannelAttention2d(MultiHeadMixer):
    """DaViT channel-group attention on a ``[B, C, H, W]`` map.

    Fidelity: DaViT (Ding et al., ECCV'22) compared with the authors' dingmyu/davit
    ``timm/models/davit.py`` (``ChannelAttention``) and, numerically, with timm's port (tested): matches.
    Their models pass ``qkv_bias=True`` (the class default, kept here, is False): pass ``qkv_bias=True``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, proj_drop: float = 0.0,
                 device=None, dtype=None):
        cls = "ChannelAttention2d"
        super().__init__(cls, dim, num_heads)
        dd = {"device": device, "dtype": dtype}
        self.qkv = self.qkv_layer(bias=qkv_bias, **dd)
        self.proj = self.proj_layer(**dd)
        self.proj_drop = nn.Dropout(check_probability(cls, "proj_drop", proj_drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = check_input("ChannelAttention2d", x, self.dim)
        t = x.flatten(2).transpose(1, 2)                                             # [B, N, C]
        q, k, v = self.split_heads(self.qkv(t), 3)                                   # [B, G, N, d]
        attn = ((k * self.scale).transpose(-1, -2) @ v).softmax(dim=-1)             # [B, G, d, d]
        out = (attn @ q.transpose(-1, -2)).transpose(-1, -2)                         # [B, G, N, d]
        out = self.proj_drop(self.proj(self.join_heads(out)))
        return out.transpose(1, 2).reshape(B, C, H, W)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


@register_token_mixer("channel", paper="DaViT (Ding et al., ECCV'22)")
def channel(dim: int, num_heads: int = 1, **options) -> ChannelAttention2d:
    return ChannelAttention2d(dim, num_heads=num_heads, **options)
