"""``cam``: channel attention module (DANet, Fu et al., CVPR'19; as in multi-scale self-guided attention, Sinha & Dolz 2020).

Computation: with ``X in R^{C x N}`` the flattened map, ``E = X X^T`` (C x C channel similarities),
``A = softmax(max_row(E) - E)`` (DANet's trick: subtracting from the row maximum makes *dissimilar*
channels weigh more and keeps the softmax stable), ``out = gamma * (A X)`` with a learnable scalar ``gamma``
initialised to 0. No projections: ``gamma`` is the only parameter.

Deliberate difference: DANet returns ``gamma * (A X) + x``; here the block owns the residual, so the
default is ``gamma * (A X)``; ``residual=True`` gives the paper's module.

Cost in N = H*W: ``4 N C^2`` FLOPs: linear in N.

New resolution: any H, W >= 1. ``num_heads`` is accepted for the common contract and ignored.
"""

from __future__ import annotations

import torch

from ..registry import register_token_mixer
from ._common import GammaGated, check_input


class ChannelAttentionModule2d(GammaGated):
    """DANet channel attention on a ``[B, C, H, W]`` map.

    Fidelity: DANet (Fu et al., CVPR'19) compared with the authors' junfu1115/DANet
    ``encoding/nn/da_att.py`` (``CAM_Module``): matches (``max - E`` energies, softmax, zero-init
    ``gamma``); one difference kept: no residual by default (the block owns it; ``residual=True`` is theirs).
    """

    def __init__(self, dim: int, residual: bool = False, device=None, dtype=None):
        super().__init__("ChannelAttentionModule2d", dim, residual)
        self.gamma = self.zero_gate(device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = check_input("ChannelAttentionModule2d", x, self.dim)
        X = x.flatten(2)                                                       # [B, C, N]
        E = X @ X.transpose(1, 2)                                              # [B, C, C]
        A = (E.amax(dim=-1, keepdim=True) - E).softmax(dim=-1)
        return self.gate((A @ X).reshape(B, C, H, W), x)


@register_token_mixer("cam", paper="DANet CAM (Fu et al., CVPR'19)")
def cam(dim: int, num_heads: int = 1, **options) -> ChannelAttentionModule2d:
    return ChannelAttentionModule2d(dim, **options)
