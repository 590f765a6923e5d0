"""``pam``: position attention module (DANet, Fu et al., CVPR'19; as in multi-scale self-guided attention, Sinha & Dolz 2020).

Computation: ``q = Conv1x1(x)``, ``k = Conv1x1(x)`` with ``C / reduction`` channels (8 by default),
``v = Conv1x1(x)`` with C channels; ``A = softmax_m(q_n . k_m)`` over all N pixels (no 1/sqrt(d) scale, as
DANet); ``out = gamma * (A v)`` with a learnable scalar ``gamma`` initialised to 0, so the module starts as
a no-op and learns how much global context to mix in.

Deliberate difference: DANet's module returns ``gamma * (A v) + x``. In this library the block owns the
residual, so the mixer returns ``gamma * (A v)`` by default; ``residual=True`` gives the paper's module.

Cost in N = H*W: ``2 N^2 (C / reduction + C)`` FLOPs plus ``2 N C^2 (1 + 2 / reduction)`` for the
projections: quadratic in N, single head.

New resolution: any H, W >= 1; no positional term. ``num_heads`` is accepted for the common contract and
ignored (single-head by design).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register_token_mixer
from ._common import GammaGated, check_input, check_int, conv1x1


class PositionAttention2d(GammaGated):
    """DANet position (spatial) attention on a ``[B, C, H, W]`` map.

    Fidelity: DANet (Fu et al., CVPR'19) compared with the authors' junfu1115/DANet
    ``encoding/nn/da_att.py`` (``PAM_Module``): matches (C/8 query and key, unscaled softmax, zero-init
    ``gamma``); differences kept: no residual by default (the block owns it; ``residual=True`` is theirs)
    and ``max(1, C // reduction)`` query/key channels, so ``C < 8`` still works where theirs gets 0.
    """

    def __init__(self, dim: int, reduction: int = 8, residual: bool = False, device=None, dtype=None):
        cls = "PositionAttention2d"
        super().__init__(cls, dim, residual)
        self.reduction = check_int(cls, "reduction", reduction)
        self.qk_dim = max(1, dim // self.reduction)
        dd = {"device": device, "dtype": dtype}
        self.query = conv1x1(dim, self.qk_dim, **dd)
        self.key = conv1x1(dim, self.qk_dim, **dd)
        self.value = conv1x1(dim, dim, **dd)
        self.gamma = self.zero_gate(**dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = check_input("PositionAttention2d", x, self.dim)
        q = self.query(x).flatten(2).transpose(1, 2)[:, None]                  # [B, 1, N, c]
        k = self.key(x).flatten(2).transpose(1, 2)[:, None]
        v = self.value(x).flatten(2).transpose(1, 2)[:, None]                  # [B, 1, N, C]
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)[:, 0]           # [B, N, C]
        return self.gate(o.transpose(1, 2).reshape(B, C, H, W), x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, reduction={self.reduction}, residual={self.residual}"


@register_token_mixer("pam", paper="DANet PAM (Fu et al., CVPR'19)")
def pam(dim: int, num_heads: int = 1, **options) -> PositionAttention2d:
    return PositionAttention2d(dim, **options)
