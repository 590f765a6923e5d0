"""``ulsam``: ultra-lightweight subspace attention (ULSAM, Saini et al., WACV'20).

Computation: the C channels are split into ``g = num_heads`` subspaces. For each subspace ``F_i``:
``m_i = softmax_HW(ReLU(BN(Conv1x1_{->1}(MaxPool3x3(ReLU(BN(DWConv1x1(F_i))))))))`` -- one spatial attention
map per subspace, normalised over all pixels -- and ``out_i = F_i * m_i + F_i``; subspaces concatenated.
(Implemented with grouped convolutions: a depthwise 1x1, and a 1x1 from each subspace to its own map.)

Cost in N = H*W: ``O(N C)`` (about ``6 N C`` FLOPs plus a 3x3 max-pool): linear in N, no channel mixing
across subspaces. Note that a softmax over N pixels gives weights near ``1/N``, so at large maps the
module stays close to the identity -- that is the paper's design, not a bug.

New resolution: any H, W >= 1 (ULSAM's ``h, w`` constructor arguments are unused in its code).
``num_heads`` is the number of subspaces and must divide ``dim``. BatchNorm: use ``.eval()`` for
batch-independent outputs.

BatchNorm momentum (``bn_momentum``, default 0.1, PyTorch's ``running <- (1 - m) running + m batch``):
the authors' code is PyTorch and passes ``momentum=0.9``, so its running statistics are 90% the last
batch. That value reads like Keras' convention (Keras ``momentum=0.9`` is PyTorch ``momentum=0.1``, the
default here), but in PyTorch it means the other thing; ``bn_momentum=0.9`` reproduces the released code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import check_float, check_heads, check_input, check_int


class ULSAM2d(nn.Module):
    """ULSAM subspace attention on a ``[B, C, H, W]`` map.

    Fidelity: ULSAM (Saini et al., WACV'20) compared with the authors' Nandan91/ULSAM ``ulsam.py``
    (``SubSpace``, ``ULSAM``): matches (biased depthwise 1x1, BN, ReLU, 3x3 max-pool, biased 1x1 to one
    map, BN, ReLU, spatial softmax, ``x * m + x``; grouped convolutions here instead of a loop over
    subspaces: the same maps). One difference: BatchNorm momentum 0.1 where theirs is PyTorch 0.9
    (``bn_momentum=0.9`` reproduces it; kept because 0.9 is most likely a Keras-convention slip).
    """

    def __init__(self, dim: int, num_heads: int = 4, bn_momentum: float = 0.1, device=None, dtype=None):
        super().__init__()
        cls = "ULSAM2d"
        self.dim = check_int(cls, "dim", dim)
        self.groups = check_heads(cls, dim, num_heads)
        self.bn_momentum = check_float(cls, "bn_momentum", bn_momentum, 0.0, 1.0)
        dd = {"device": device, "dtype": dtype}
        self.dw = nn.Conv2d(dim, dim, 1, groups=dim, **dd)
        self.bn_dw = nn.BatchNorm2d(dim, momentum=self.bn_momentum, **dd)
        self.pw = nn.Conv2d(dim, self.groups, 1, groups=self.groups, **dd)
        self.bn_pw = nn.BatchNorm2d(self.groups, momentum=self.bn_momentum, **dd)

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """The per-subspace attention maps ``[B, g, H, W]`` (each sums to 1 over H, W)."""
        B, C, H, W = x.shape
        a = F.relu(self.bn_dw(self.dw(x)))
        a = F.max_pool2d(a, 3, 1, 1)
        a = F.relu(self.bn_pw(self.pw(a)))
        return a.flatten(2).softmax(dim=-1).reshape(B, self.groups, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = check_input("ULSAM2d", x, self.dim)
        m = self.maps(x).repeat_interleave(C // self.groups, dim=1)
        return x * m + x

    def extra_repr(self) -> str:
        s = f"dim={self.dim}, groups={self.groups}"
        return s + (f", bn_momentum={self.bn_momentum}" if self.bn_momentum != 0.1 else "")


@register_token_mixer("ulsam", paper="ULSAM (Saini et al., WACV'20)")
def ulsam(dim: int, num_heads: int = 1, **options) -> ULSAM2d:
    return ULSAM2d(dim, num_heads=num_heads, **options)
