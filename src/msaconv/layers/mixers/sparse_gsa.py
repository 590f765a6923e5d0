"""``sparse_gsa``: sparse global self-attention with ReLU channel maps (DLGSANet, Li et al., ICCV'23).

Computation (a Restormer MDTA variant): ``q, k, v = DWConv3x3(Conv1x1(x))``; per head (``d = C / heads``
channels) ``q`` and ``k`` are L2-normalised over the N pixels; ``A = ReLU(tau_h q k^T)`` is a ``d x d`` map
over *channels* (ReLU instead of softmax: negative similarities are dropped, which is the "sparse" part,
and rows are not renormalised); ``out = A v``; heads concatenated; a 1x1 projection. ``tau_h`` is a
learnable per-head temperature initialised to 1.

Cost in N = H*W: ``4 N C d`` FLOPs for the map and its application, ``18 N C`` for the depthwise conv,
``8 N C^2`` for the 1x1 projections: linear in N.

New resolution: any H, W >= 1 (DLGSANet tiles 48-pixel crops at test time only to bound memory).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import check_heads, check_input, check_int, conv1x1


class SparseGSA2d(nn.Module):
    """DLGSANet SparseGSA on a ``[B, C, H, W]`` map.

    Fidelity: DLGSANet (Li et al., ICCV'23) compared with the authors' NeonLeexiang/DLGSANet
    ``basicsr/archs/dlgsanet_arch.py`` (``SparseAttention``): matches (1x1 + DW3x3 qkv, L2-normalised q
    and k, per-head temperature, ReLU map); one difference kept: no test-time tiling into 48-pixel crops
    (their TLC path bounds memory at evaluation; the layer itself is the same).
    """

    def __init__(self, dim: int, num_heads: int = 4, bias: bool = False, device=None, dtype=None):
        super().__init__()
        cls = "SparseGSA2d"
        self.dim = check_int(cls, "dim", dim)
        self.num_heads = check_heads(cls, dim, num_heads)
        dd = {"device": device, "dtype": dtype}
        self.temperature = nn.Parameter(torch.ones(self.num_heads, 1, 1, **dd))
        self.qkv = conv1x1(dim, 3 * dim, bias=bias, **dd)
        self.qkv_dw = nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim, bias=bias, **dd)
        self.proj = conv1x1(dim, dim, bias=bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = check_input("SparseGSA2d", x, self.dim)
        qkv = self.qkv_dw(self.qkv(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = qkv.unbind(1)                                                # [B, h, d, N]
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = F.relu(q @ k.transpose(-1, -2) * self.temperature)              # [B, h, d, d]
        return self.proj((attn @ v).reshape(B, C, H, W))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


@register_token_mixer("sparse_gsa", paper="DLGSANet (Li et al., ICCV'23)")
def sparse_gsa(dim: int, num_heads: int = 1, **options) -> SparseGSA2d:
    return SparseGSA2d(dim, num_heads=num_heads, **options)
