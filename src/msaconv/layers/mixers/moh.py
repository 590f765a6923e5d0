"""``moh``: Mixture-of-Head routing over any head-structured mixer (MoH, Jin et al., ICML'25, arXiv 2410.11842).

Computation: multi-head attention is a sum over heads, ``y = sum_i H_i W_O^i``. MoH makes it a per-token
weighted sum ``y = sum_i g_i H_i W_O^i`` with the heads split into ``shared_heads`` always-on heads and
``h - shared_heads`` routed heads, of which each token keeps its ``top_k``:

* routed gates: ``p = softmax(W_r x)``; keep the top-k, renormalise them to sum 1, times ``top_k``;
* shared gates: ``softmax(W_s x)`` times ``shared_heads`` (all 1 with one shared head);
* a two-way mix ``[a_1, a_2] = 2 softmax(W_h x)`` scales shared and routed gates.

A router is a 1x1 map of the token (no bias), as MoH's ``Linear`` layers. With uniform router outputs
every gate is 1, so MoH with all heads active and zeroed routers is exactly the wrapped mixer (tested).
The load-balance loss of the routed heads, ``E^2 mean_i(f_i P_i)`` (``f_i``: fraction of tokens that kept
head i, ``P_i``: its mean router probability, E: routed heads), is computed in training forwards and
exposed as ``.aux_loss`` and ``.load_balance_loss()``; add ``weight * m.load_balance_loss()`` to the loss.

The inner mixer follows the protocol of :mod:`msaconv.layers.mixers._heads` (``global``, ``msa_conv``).
Cost: the inner mixer's (every head is still computed densely: real savings need per-token sparse head
kernels) plus ``2 N C h`` FLOPs for the routers. New resolution: as the inner mixer; routers are per token.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_token_mixer
from ._common import check_input, check_int
from ._heads import HeadStructured, as_head_structured, build_inner


class MoHWrapper(nn.Module):
    """Mixture-of-Head routing around a head-structured token mixer."""

    _heads: HeadStructured  # set with object.__setattr__ (not a registered submodule)

    def __init__(self, dim: int, num_heads: int = 8, inner="global", shared_heads: int | None = None,
                 top_k: int | None = None, device=None, dtype=None, **inner_options):
        super().__init__()
        cls = "MoHWrapper"
        self.dim = check_int(cls, "dim", dim)
        self.inner = build_inner(cls, inner, dim, num_heads, inner_options, device, dtype)
        heads = as_head_structured(self.inner, cls)
        object.__setattr__(self, "_heads", heads)   # a plain reference, not a second registered module
        h = self.num_heads = heads.num_heads
        if h < 2:
            raise ValueError(f"{cls}: routing needs at least 2 heads, the inner mixer has num_heads={h}; "
                             f"use num_heads >= 2")
        shared = h // 2 if shared_heads is None else shared_heads
        self.shared_heads = check_int(cls, "shared_heads", shared, minimum=0)
        if self.shared_heads >= h:
            raise ValueError(f"{cls}: shared_heads={self.shared_heads} leaves no routed head out of num_heads={h}; "
                             f"use shared_heads <= {h - 1}")
        self.routed_heads = h - self.shared_heads
        k = max(1, self.routed_heads // 2) if top_k is None else top_k
        self.top_k = check_int(cls, "top_k", k)
        if self.top_k > self.routed_heads:
            raise ValueError(f"{cls}: top_k={self.top_k} exceeds the {self.routed_heads} routed heads; "
                             f"use top_k <= {self.routed_heads}")
        dd = {"device": device, "dtype": dtype}
        self.router = nn.Conv2d(dim, self.routed_heads, 1, bias=False, **dd)
        self.shared_router = nn.Conv2d(dim, self.shared_heads, 1, bias=False, **dd) if self.shared_heads > 1 else None
        self.mix_router = nn.Conv2d(dim, 2, 1, bias=False, **dd) if self.shared_heads > 0 else None
        self.aux_loss: torch.Tensor | None = None

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token head gates ``[B, h, H, W]`` (shared heads first); sets ``aux_loss`` when training."""
        probs = self.router(x).softmax(dim=1)                              # [B, E, H, W]
        top = probs.topk(self.top_k, dim=1).indices
        mask = torch.zeros_like(probs).scatter_(1, top, 1.0)
        self.aux_loss = None
        if self.training:
            E = self.routed_heads
            f = mask.mean(dim=(0, 2, 3))                                   # fraction of tokens keeping head i
            P = probs.mean(dim=(0, 2, 3))                                  # mean router probability of head i
            self.aux_loss = (f * P).mean() * E * E
        routed = probs * mask
        routed = routed / routed.sum(dim=1, keepdim=True).clamp_min(torch.finfo(routed.dtype).eps) * self.top_k
        if self.shared_heads == 0:
            return routed
        if self.shared_router is not None:
            shared = self.shared_router(x).softmax(dim=1) * self.shared_heads
        else:
            shared = torch.ones_like(routed[:, :1])
        assert self.mix_router is not None  # built whenever shared_heads > 0
        a = self.mix_router(x).softmax(dim=1) * 2                           # [B, 2, H, W]
        return torch.cat([shared * a[:, :1], routed * a[:, 1:]], dim=1)

    def load_balance_loss(self) -> torch.Tensor:
        """The load-balance loss of the last forward if it was a training forward, else 0."""
        if self.aux_loss is None:
            return self.router.weight.new_zeros(())
        return self.aux_loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("MoHWrapper", x, self.dim)
        hs = self._heads
        o = hs.attend_heads(*hs.qkv_heads(x), (x.shape[-2], x.shape[-1]))  # [B, h, d, H, W]
        return hs.merge_heads(o * self.gates(x)[:, :, None])

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, shared_heads={self.shared_heads}, top_k={self.top_k}"


@register_token_mixer("moh", paper="MoH (Jin et al., ICML'25)")
def moh(dim: int, num_heads: int = 1, **options) -> MoHWrapper:
    return MoHWrapper(dim, num_heads=num_heads, **options)
