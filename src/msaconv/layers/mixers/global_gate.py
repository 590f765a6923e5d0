"""``global_gate``: a depthwise-conv mixer with a global channel gate (DWFormer in MPGNet, under-display-camera restoration, 2022).

Computation (DWFormer's mixer): ``Conv1x1 -> DWConv5x5 -> ReLU -> Global_Block -> Conv1x1``. The
Global_Block pools a global context vector and gates the channels with it, GCNet/SE-style:
``c = sum_n softmax_n(Conv1x1_{C->1}(u))_n u_n`` (attention pooling over the pixels),
``g = sigmoid(W_2 ReLU(W_1 c))`` (an SE-MLP, reduction 4), ``u <- u * g``.

``pooling='sum'`` reproduces a quirk of the released code (MPGNet ``models/DWFormer.py``): its softmax is
taken over an axis of size 1, so every weight is 1 and the context is a plain *sum* over pixels. The
default ``'softmax'`` is the attention pooling the paper describes; ``'sum'`` exists for comparison (its
context grows with N, so it is not resolution-robust).

The released DWFormer builds the gate with ``se_ratio=1`` (``reduction=1``), bias-free SE layers
(``gate_bias=False``) and a reflect-padded depthwise convolution (``padding_mode='reflect'``, which needs
maps of at least ``kernel_size // 2 + 1`` pixels a side). Our defaults (reduction 4, biased SE layers,
zero padding) keep the mixer cheap and defined on any map; ``preset='mpgnet'`` sets all four released
choices (``reduction=1, gate_bias=False, padding_mode='reflect', pooling='sum'``), explicit arguments
override it.

Cost in N = H*W: ``4 N C^2 + 50 N C + 2 N C`` FLOPs plus ``O(C^2 / r)`` for the SE-MLP: linear in N.

New resolution: any H, W >= 1 (zero padding). ``num_heads`` is accepted for the common contract and ignored.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import check_choice, check_input, check_int, conv1x1

POOLINGS = ("softmax", "sum")
PADDINGS = ("zeros", "reflect")
PRESETS: dict[str, dict[str, Any]] = {
    "mpgnet": {"reduction": 1, "gate_bias": False, "padding_mode": "reflect", "pooling": "sum"},
}
_DEFAULTS: dict[str, Any] = {"reduction": 4, "gate_bias": True, "padding_mode": "zeros", "pooling": "softmax"}


class GlobalGate2d(nn.Module):
    """DWFormer's DW-conv mixer with a global (GCNet-like) channel gate.

    Fidelity: DWFormer in MPGNet (under-display-camera restoration, 2022) compared with the released
    SummerParadise-0922/MPGNet ``models/DWFormer.py`` (``Global_Block``, ``Block.inter``): the layer order
    matches; the defaults differ -- softmax attention pooling (theirs is a sum, the softmax being over an
    axis of size 1), SE reduction 4 with biases (theirs ``se_ratio=1``, no bias) and zero padding (theirs
    reflect) -- kept so the gate is resolution-robust, cheap and defined on any map;
    ``preset='mpgnet'`` reproduces the released block.
    """

    def __init__(self, dim: int, kernel_size: int = 5, reduction: int | None = None, pooling: str | None = None,
                 gate_bias: bool | None = None, padding_mode: str | None = None, preset: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        cls = "GlobalGate2d"
        self.dim = check_int(cls, "dim", dim)
        self.kernel_size = check_int(cls, "kernel_size", kernel_size)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"{cls}: kernel_size must be odd to keep the size, got {kernel_size}; use 5")
        self.preset = None if preset is None else check_choice(cls, "preset", preset, tuple(PRESETS))
        base = PRESETS[self.preset] if self.preset else _DEFAULTS
        self.reduction = check_int(cls, "reduction", base["reduction"] if reduction is None else reduction)
        self.pooling = check_choice(cls, "pooling", base["pooling"] if pooling is None else pooling, POOLINGS)
        gate_bias = base["gate_bias"] if gate_bias is None else gate_bias
        if not isinstance(gate_bias, bool):
            raise ValueError(f"{cls}: gate_bias must be True or False, got {gate_bias!r}")
        self.gate_bias = gate_bias
        self.padding_mode = check_choice(cls, "padding_mode",
                                         base["padding_mode"] if padding_mode is None else padding_mode, PADDINGS)
        dd = {"device": device, "dtype": dtype}
        k = self.kernel_size
        self.pw1 = conv1x1(dim, dim, **dd)
        pad_mode = cast(Literal["zeros", "reflect"], self.padding_mode)
        self.dw = nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, padding_mode=pad_mode, **dd)
        self.context = conv1x1(dim, 1, **dd) if self.pooling == "softmax" else None
        hidden = max(1, dim // self.reduction)
        self.fc1 = conv1x1(dim, hidden, bias=gate_bias, **dd)
        self.fc2 = conv1x1(hidden, dim, bias=gate_bias, **dd)
        self.pw2 = conv1x1(dim, dim, **dd)

    def gate(self, u: torch.Tensor) -> torch.Tensor:
        """Channel gate ``[B, C, 1, 1]`` from the global context of ``u``."""
        B, C, H, W = u.shape
        if self.context is not None:
            w = self.context(u).flatten(2).softmax(dim=-1)                     # [B, 1, N]
            c = (u.flatten(2) * w).sum(-1)                                     # [B, C]
        else:
            c = u.flatten(2).sum(-1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(c[:, :, None, None]))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = check_input("GlobalGate2d", x, self.dim)
        p = self.kernel_size // 2
        if self.padding_mode == "reflect" and min(H, W) <= p:
            raise ValueError(f"GlobalGate2d: padding_mode='reflect' needs maps of at least {p + 1}x{p + 1} pixels "
                             f"(kernel_size={self.kernel_size}), got {H}x{W}; use padding_mode='zeros' for small maps")
        u = F.relu(self.dw(self.pw1(x)))
        return self.pw2(u * self.gate(u))

    def extra_repr(self) -> str:
        s = f"dim={self.dim}, kernel_size={self.kernel_size}, reduction={self.reduction}, pooling={self.pooling!r}"
        if not self.gate_bias:
            s += ", gate_bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + (f", preset={self.preset!r}" if self.preset else "")


@register_token_mixer("global_gate", paper="DWFormer / MPGNet (UDC restoration, 2022)")
def global_gate(dim: int, num_heads: int = 1, **options) -> GlobalGate2d:
    return GlobalGate2d(dim, **options)
