"""``global_gate``: a depthwise-conv mixer with a global channel gate (DWFormer in MPGNet, under-display-camera restoration, 2022).

Computation (DWFormer's mixer): ``Conv1x1 -> DWConv5x5 -> ReLU -> Global_Block -> Conv1x1``. The
Global_Block pools a global context vector and gates the channels with it, GCNet/SE-style:
``c = sum_n softmax_n(Conv1x1_{C->1}(u))_n u_n`` (attention pooling over the pixels),
``g = sigmoid(W_2 ReLU(W_1 c))`` (an SE-MLP, reduction 4), ``u <- u * g``.

``pooling='sum'`` reproduces a quirk of the released code (MPGNet ``models/DWFormer.py``): its softmax is
taken over an axis of size 1, so every weight is 1 and the context is a plain *sum* over pixels. The
default ``'softmax'`` is the attention pooling the paper describes; ``'sum'`` exists for comparison (its
context grows with N, so it is not resolution-robust).

Cost in N = H*W: ``4 N C^2 + 50 N C + 2 N C`` FLOPs plus ``O(C^2 / 4)`` for the SE-MLP: linear in N.

New resolution: any H, W >= 1. ``num_heads`` is accepted for the common contract and ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import check_choice, check_input, check_int, conv1x1

POOLINGS = ("softmax", "sum")


class GlobalGate2d(nn.Module):
    """DWFormer's DW-conv mixer with a global (GCNet-like) channel gate."""

    def __init__(self, dim: int, kernel_size: int = 5, reduction: int = 4, pooling: str = "softmax",
                 device=None, dtype=None):
        super().__init__()
        cls = "GlobalGate2d"
        self.dim = check_int(cls, "dim", dim)
        self.kernel_size = check_int(cls, "kernel_size", kernel_size)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"{cls}: kernel_size must be odd to keep the size, got {kernel_size}; use 5")
        self.reduction = check_int(cls, "reduction", reduction)
        self.pooling = check_choice(cls, "pooling", pooling, POOLINGS)
        dd = {"device": device, "dtype": dtype}
        k = self.kernel_size
        self.pw1 = conv1x1(dim, dim, **dd)
        self.dw = nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, **dd)
        self.context = conv1x1(dim, 1, **dd) if pooling == "softmax" else None
        hidden = max(1, dim // self.reduction)
        self.fc1 = conv1x1(dim, hidden, **dd)
        self.fc2 = conv1x1(hidden, dim, **dd)
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
        check_input("GlobalGate2d", x, self.dim)
        u = F.relu(self.dw(self.pw1(x)))
        return self.pw2(u * self.gate(u))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}, reduction={self.reduction}, pooling={self.pooling!r}"


@register_token_mixer("global_gate", paper="DWFormer / MPGNet (UDC restoration, 2022)")
def global_gate(dim: int, num_heads: int = 1, **options) -> GlobalGate2d:
    return GlobalGate2d(dim, **options)
