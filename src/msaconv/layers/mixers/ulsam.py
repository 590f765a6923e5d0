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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import check_heads, check_input, check_int


class ULSAM2d(nn.Module):
    """ULSAM subspace attention on a ``[B, C, H, W]`` map."""

    def __init__(self, dim: int, num_heads: int = 4, device=None, dtype=None):
        super().__init__()
        cls = "ULSAM2d"
        self.dim = check_int(cls, "dim", dim)
        self.groups = check_heads(cls, dim, num_heads)
        dd = {"device": device, "dtype": dtype}
        self.dw = nn.Conv2d(dim, dim, 1, groups=dim, **dd)
        self.bn_dw = nn.BatchNorm2d(dim, **dd)
        self.pw = nn.Conv2d(dim, self.groups, 1, groups=self.groups, **dd)
        self.bn_pw = nn.BatchNorm2d(self.groups, **dd)

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
        return f"dim={self.dim}, groups={self.groups}"


@register_token_mixer("ulsam", paper="ULSAM (Saini et al., WACV'20)")
def ulsam(dim: int, num_heads: int = 1, **options) -> ULSAM2d:
    return ULSAM2d(dim, num_heads=num_heads, **options)
