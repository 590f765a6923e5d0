"""``lowtention``: attention at a lower resolution (LowFormer, Nottebaum et al., WACV'25).

Computation: a depthwise ``k x k`` convolution with stride ``s`` (and BatchNorm) shrinks the map to
``ceil(H/s) x ceil(W/s)``; a 1x1 convolution gives q, k, v; multi-head SDPA runs at that resolution; then
the map is brought back up and cropped to H x W:

* ``upsampler='depthwise'`` (default, LowFormer's unfused block): a 1x1 output projection, then a
  depthwise transposed convolution -- kernel ``2s``, stride ``s``, padding ``s // 2`` for ``s > 1``, and
  a *centred* 3x3 kernel with padding 1 at ``s = 1`` (an impulse stays centred: tested);
* ``upsampler='fused'`` (LowFormer's ``fastit`` models b0-b3): no output projection; one dense transposed
  convolution (every channel to every channel) with the same kernel, stride and padding.

``up_bias`` gives the upsampler a bias, as the released code has (default False here: it keeps the
parameters of models trained before; ``preset`` turns it on). ``preset='lowformer'`` is the released
unfused block (depthwise upsampler with bias), ``preset='lowformer_fused'`` the released ``fastit``
block (fused upsampler with bias); explicit ``upsampler=`` / ``up_bias=`` override a preset.

The released configurations use this attention only in stages 3 and 4: ``s / k = 2 / 5`` in stage 3 (our
default) and ``1 / 3`` in stage 4 (pass ``stride=1, kernel_size=3``); the ``4 / 7`` branch of their code
for earlier stages is never reached by a released model.

Cost in N = H*W: ``4 (N/s^2)^2 C`` FLOPs for the attention, ``8 (N/s^2) C^2`` for the projections,
``2 N k^2 C / s^2`` for the downsampling and about ``2 N (2s)^2 C / s^2`` (``18 N C`` at ``s = 1``) for a
depthwise upsampling (times C for the fused one): still quadratic in N but ``s^4`` times cheaper than MHSA.

New resolution: any H, W >= 1; the strided convolution pads by ``k // 2`` and the upsampled map is cropped.
BatchNorm: use ``.eval()`` for batch-independent outputs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import MultiHeadMixer, check_choice, check_input, check_int

UPSAMPLERS = ("depthwise", "fused")
PRESETS: dict[str, dict[str, Any]] = {
    "lowformer": {"upsampler": "depthwise", "up_bias": True},
    "lowformer_fused": {"upsampler": "fused", "up_bias": True},
}


def upsampler_geometry(stride: int) -> tuple[int, int]:
    """``(kernel, padding)`` of the transposed convolution that undoes a stride-``stride`` downsampling."""
    return (3, 1) if stride == 1 else (2 * stride, stride // 2)


class Lowtention2d(MultiHeadMixer):
    """LowFormer's downsample -> attention -> upsample token mixer.

    Fidelity: LowFormer (Nottebaum et al., WACV'25) compared with the authors' altair199797/LowFormer
    ``lowformer/models/nn/ops.py`` (``ConvAttention``) and ``lowformer/models/lowformer/backbone.py``:
    matches with ``preset='lowformer'`` / ``'lowformer_fused'``; the defaults differ in the upsampler's
    bias (off, for checkpoint compatibility), the caller choosing ``num_heads`` (theirs is
    ``max(1, C // 30)``, and half-width heads in ``fastit`` stages over 80 channels, not reproduced) and
    the q/k/v channel order of the 1x1 projection (grouped here, interleaved per head there: a fixed
    permutation of its outputs, the same function class).
    """

    layout = "map"

    def __init__(self, dim: int, num_heads: int = 8, stride: int = 2, kernel_size: int = 5, qkv_bias: bool = False,
                 attn_drop: float = 0.0, upsampler: str | None = None, up_bias: bool | None = None,
                 preset: str | None = None, device=None, dtype=None):
        cls = "Lowtention2d"
        super().__init__(cls, dim, num_heads, attn_drop=attn_drop)
        self.stride = check_int(cls, "stride", stride)
        self.kernel_size = check_int(cls, "kernel_size", kernel_size)
        self.preset = None if preset is None else check_choice(cls, "preset", preset, tuple(PRESETS))
        base: dict[str, Any] = PRESETS[self.preset] if self.preset else {"upsampler": "depthwise", "up_bias": False}
        self.upsampler = check_choice(cls, "upsampler", base["upsampler"] if upsampler is None else upsampler,
                                      UPSAMPLERS)
        up_bias = base["up_bias"] if up_bias is None else up_bias
        if not isinstance(up_bias, bool):
            raise ValueError(f"{cls}: up_bias must be True or False, got {up_bias!r}")
        self.up_bias = up_bias
        s, k = self.stride, self.kernel_size
        dd = {"device": device, "dtype": dtype}
        self.down = nn.Sequential(
            nn.Conv2d(dim, dim, k, s, k // 2, groups=dim, bias=False, **dd),
            nn.BatchNorm2d(dim, **dd),
        )
        self.qkv = self.qkv_layer(bias=qkv_bias, **dd)
        uk, up = upsampler_geometry(s)
        if self.upsampler == "depthwise":
            self.proj: nn.Module = self.proj_layer(**dd)
            self.up = nn.ConvTranspose2d(dim, dim, uk, s, padding=up, groups=dim, bias=up_bias, **dd)
        else:
            self.proj = nn.Identity()
            self.up = nn.ConvTranspose2d(dim, dim, uk, s, padding=up, bias=up_bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, H, W = check_input("Lowtention2d", x, self.dim)
        y = self.down(x)
        o = self.sdpa(*self.split_map_heads(self.qkv(y), 3))                  # [B, heads, n, d]
        o = self.proj(self.join_map_heads(o, (y.shape[-2], y.shape[-1])))
        o = self.up(o)
        if o.shape[-2] < H or o.shape[-1] < W:  # cannot happen with these paddings; kept as a guard
            o = F.pad(o, (0, max(0, W - o.shape[-1]), 0, max(0, H - o.shape[-2])))
        return o[:, :, :H, :W]

    def extra_repr(self) -> str:
        s = f"dim={self.dim}, num_heads={self.num_heads}, stride={self.stride}, kernel_size={self.kernel_size}"
        s += f", upsampler={self.upsampler!r}, up_bias={self.up_bias}"
        return s + (f", preset={self.preset!r}" if self.preset else "")


@register_token_mixer("lowtention", paper="LowFormer (Nottebaum et al., WACV'25)")
def lowtention(dim: int, num_heads: int = 1, **options) -> Lowtention2d:
    return Lowtention2d(dim, num_heads=num_heads, **options)
