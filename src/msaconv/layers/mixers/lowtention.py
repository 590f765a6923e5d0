"""``lowtention``: attention at a lower resolution (LowFormer, Nottebaum et al., WACV'25).

Computation: a depthwise ``k x k`` convolution with stride ``s`` (and BatchNorm) shrinks the map to
``ceil(H/s) x ceil(W/s)``; a 1x1 convolution gives q, k, v; multi-head SDPA runs at that resolution; a
1x1 output projection; a depthwise transposed convolution (kernel ``2s``, stride ``s``) brings it back up
and the result is cropped to H x W. LowFormer uses ``s / k`` = 4/7 (stages 1-2), 2/5 (stage 3), 1/3
(stage 4); the default here is 2/5.

Cost in N = H*W: ``4 (N/s^2)^2 C`` FLOPs for the attention, ``8 (N/s^2) C^2`` for the projections,
``2 N k^2 C / s^2`` for the downsampling and ``2 N (2s)^2 C / s^2``-ish for the upsampling: still
quadratic in N but ``s^4`` times cheaper than MHSA.

New resolution: any H, W >= 1; the strided convolution pads by ``k // 2`` and the upsampled map is cropped.
BatchNorm: use ``.eval()`` for batch-independent outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import check_heads, check_input, check_int, check_probability, conv1x1


class Lowtention2d(nn.Module):
    """LowFormer's downsample -> attention -> upsample token mixer."""

    def __init__(self, dim: int, num_heads: int = 8, stride: int = 2, kernel_size: int = 5, qkv_bias: bool = False,
                 attn_drop: float = 0.0, device=None, dtype=None):
        super().__init__()
        cls = "Lowtention2d"
        self.dim = check_int(cls, "dim", dim)
        self.num_heads = check_heads(cls, dim, num_heads)
        self.head_dim = dim // self.num_heads
        self.stride = check_int(cls, "stride", stride)
        self.kernel_size = check_int(cls, "kernel_size", kernel_size)
        self.attn_drop = check_probability(cls, "attn_drop", attn_drop)
        s, k = self.stride, self.kernel_size
        dd = {"device": device, "dtype": dtype}
        self.down = nn.Sequential(
            nn.Conv2d(dim, dim, k, s, k // 2, groups=dim, bias=False, **dd),
            nn.BatchNorm2d(dim, **dd),
        )
        self.qkv = conv1x1(dim, 3 * dim, bias=qkv_bias, **dd)
        self.proj = conv1x1(dim, dim, **dd)
        self.up = nn.ConvTranspose2d(dim, dim, 2 * s, s, padding=s // 2, groups=dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = check_input("Lowtention2d", x, self.dim)
        y = self.down(x)
        h, w = y.shape[-2:]
        qkv = self.qkv(y).reshape(B, 3, self.num_heads, self.head_dim, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(1)                                               # [B, heads, n, d]
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        o = self.proj(o.transpose(-1, -2).reshape(B, C, h, w))
        o = self.up(o)
        if o.shape[-2] < H or o.shape[-1] < W:  # cannot happen with padding s // 2; kept as a guard
            o = F.pad(o, (0, max(0, W - o.shape[-1]), 0, max(0, H - o.shape[-2])))
        return o[:, :, :H, :W]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, stride={self.stride}, kernel_size={self.kernel_size}"


@register_token_mixer("lowtention", paper="LowFormer (Nottebaum et al., WACV'25)")
def lowtention(dim: int, num_heads: int = 1, **options) -> Lowtention2d:
    return Lowtention2d(dim, num_heads=num_heads, **options)
