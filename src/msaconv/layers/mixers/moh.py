"""``moh``: Mixture-of-Head routing over any head-structured mixer (MoH, Jin et al., ICML'25, arXiv 2410.11842).

Computation: multi-head attention is a sum over heads, ``y = sum_i H_i W_O^i``. MoH makes it a per-token
weighted sum ``y = sum_i g_i H_i W_O^i`` with the heads split into ``shared_heads`` always-on heads and
``h - shared_heads`` routed heads, of which each token keeps its ``top_k``:

* routed gates: ``p = softmax(W_r x)``; keep the top-k, renormalise them to sum 1, times ``top_k``;
* shared gates: ``softmax(W_s x)`` times ``shared_heads`` (all 1 with one shared head);
* a two-way mix ``[a_1, a_2] = 2 softmax(W_h x)`` scales shared and routed gates.

``shared_heads == num_heads`` shares every head: no router, no top-k, gates ``h softmax(W_s x)`` (the
authors' ``routed_head=0``, used in stages 1-2 of their MoH-ViT models). One routed head is refused: a
softmax over one head is the constant 1 and its router would never learn. The default ``shared_heads``
is ``h // 2``, or 0 when that would leave a single routed head (``h = 2``).

A router is a 1x1 map of the token (no bias), as MoH's ``Linear`` layers. With uniform router outputs
every gate is 1, so MoH with all heads active and zeroed routers is exactly the wrapped mixer (tested).
The load-balance loss of the routed heads, ``E^2 mean_i(f_i P_i)`` (``f_i``: fraction of tokens that kept
head i, ``P_i``: its mean router probability, E: routed heads), is computed in training forwards and
exposed as ``.aux_loss`` and ``.load_balance_loss()``. :func:`auxiliary_losses` collects it from every MoH
layer of a model (the mean over the routing layers, as the authors' training loop); add
``MOH_LOAD_BALANCE_WEIGHT * loss`` (the paper's ``beta = 0.01``) to the task loss.

The inner mixer follows the protocol of :mod:`msaconv.layers.mixers._heads` (``global``, ``msa_conv``).
Cost: the inner mixer's (every head is still computed densely: real savings need per-token sparse head
kernels) plus ``2 N C h`` FLOPs for the routers. New resolution: as the inner mixer; routers are per token.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_token_mixer
from ._common import check_choice, check_input, check_int, default_heads
from ._heads import HeadStructured, as_head_structured, build_inner


# the paper's default weight of the load-balance loss: L = L_task + beta * L_b with beta = 0.01 (MoH,
# arXiv 2410.11842, eq. 8 and the text after it; the authors' MoH-ViT/engine.py uses 0.01 as well)
MOH_LOAD_BALANCE_WEIGHT = 0.01


class MoHWrapper(nn.Module):
    """Mixture-of-Head routing around a head-structured token mixer.

    Fidelity: MoH (Jin et al., ICML'25, arXiv 2410.11842) compared with the authors' SkyworkAI/MoH
    ``MoH-ViT/attention.py`` (``Attention``, gates and ``l_aux``) and ``MoH-ViT/engine.py`` (the loss
    weight): matches -- gates, top-k renormalisation, the shared/routed mix and the loss formula;
    ``shared_heads == num_heads`` is their ``routed_head=0`` (stages 1-2 of MoH-ViT). Differences kept: the
    routers are 1x1 convolutions on ``[B, C, H, W]`` (their ``Linear`` on tokens: the same map); the
    inner attention is ours (their MoH-ViT wraps TransNeXt's attention); one routed head (a constant
    router) is refused where their code would build it.
    """

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
        # default: half the heads shared, unless that leaves a single routed head (h = 2: all routed)
        shared = (h // 2 if h - h // 2 >= 2 else 0) if shared_heads is None else shared_heads
        self.shared_heads = check_int(cls, "shared_heads", shared, minimum=0)
        if self.shared_heads > h:
            raise ValueError(f"{cls}: shared_heads={self.shared_heads} exceeds num_heads={h}; use shared_heads <= {h} "
                             f"(shared_heads={h}: every head shared and soft-weighted, no router)")
        self.routed_heads = h - self.shared_heads
        if self.routed_heads == 1:
            raise ValueError(f"{cls}: shared_heads={self.shared_heads} leaves 1 routed head out of num_heads={h}; a "
                             f"router over one head is the constant 1 (it never learns), so use shared_heads={h} "
                             f"(all heads shared) or shared_heads <= {h - 2}")
        if self.routed_heads == 0:
            if top_k not in (None, 0):
                raise ValueError(f"{cls}: top_k={top_k} with shared_heads={h} (every head shared): there is no "
                                 f"routed head to pick; leave top_k unset or use shared_heads <= {h - 2}")
            self.top_k = 0
        else:
            k = max(1, self.routed_heads // 2) if top_k is None else top_k
            self.top_k = check_int(cls, "top_k", k)
            if self.top_k > self.routed_heads:
                raise ValueError(f"{cls}: top_k={self.top_k} exceeds the {self.routed_heads} routed heads; "
                                 f"use top_k <= {self.routed_heads}")
        dd = {"device": device, "dtype": dtype}
        self.router = nn.Conv2d(dim, self.routed_heads, 1, bias=False, **dd) if self.routed_heads else None
        self.shared_router = nn.Conv2d(dim, self.shared_heads, 1, bias=False, **dd) if self.shared_heads > 1 else None
        both = self.shared_heads > 0 and self.routed_heads > 0
        self.mix_router = nn.Conv2d(dim, 2, 1, bias=False, **dd) if both else None
        self.aux_loss: torch.Tensor | None = None

    def _shared_gates(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, shared, H, W]``: ``shared * softmax(W_s x)`` (all ones for one shared head)."""
        if self.shared_router is not None:
            return self.shared_router(x).softmax(dim=1) * self.shared_heads
        return x.new_ones(x.shape[0], 1, x.shape[2], x.shape[3])

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token head gates ``[B, h, H, W]`` (shared heads first); sets ``aux_loss`` when training."""
        self.aux_loss = None
        if self.router is None:                                            # every head shared, no routing
            return self._shared_gates(x)
        probs = self.router(x).softmax(dim=1)                              # [B, E, H, W]
        top = probs.topk(self.top_k, dim=1).indices
        mask = torch.zeros_like(probs).scatter_(1, top, 1.0)
        if self.training:
            E = self.routed_heads
            f = mask.mean(dim=(0, 2, 3))                                   # fraction of tokens keeping head i
            P = probs.mean(dim=(0, 2, 3))                                  # mean router probability of head i
            self.aux_loss = (f * P).mean() * E * E
        routed = probs * mask
        routed = routed / routed.sum(dim=1, keepdim=True).clamp_min(torch.finfo(routed.dtype).eps) * self.top_k
        if self.shared_heads == 0:
            return routed
        assert self.mix_router is not None  # built whenever there are shared and routed heads
        a = self.mix_router(x).softmax(dim=1) * 2                           # [B, 2, H, W]
        return torch.cat([self._shared_gates(x) * a[:, :1], routed * a[:, 1:]], dim=1)

    def load_balance_loss(self) -> torch.Tensor:
        """The load-balance loss of the last forward if it was a training forward with routed heads, else 0."""
        if self.aux_loss is None:
            return next(self.parameters()).new_zeros(())
        return self.aux_loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("MoHWrapper", x, self.dim)
        hs = self._heads
        o = hs.attend_heads(*hs.qkv_heads(x), (x.shape[-2], x.shape[-1]))  # [B, h, d, H, W]
        return hs.merge_heads(o * self.gates(x)[:, :, None])

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, shared_heads={self.shared_heads}, top_k={self.top_k}"


def auxiliary_losses(model: nn.Module, reduction: str = "mean") -> dict[str, torch.Tensor]:
    """The auxiliary losses the mixers inside ``model`` computed in its last forward, by name.

    Today one key: ``"moh_load_balance"``, the load-balance loss of the :class:`MoHWrapper` layers that
    route (``shared_heads < num_heads``), present whenever ``model`` contains a MoH layer; an empty dict
    when it contains none. Add ``MOH_LOAD_BALANCE_WEIGHT * losses["moh_load_balance"]`` (the paper's
    ``beta = 0.01``) to the task loss after a training forward; after an evaluation forward it is 0.

    ``reduction='mean'`` (default) averages over the routing layers, as the authors' training loop does
    (``0.01 * sum(losses) / len(losses)``, MoH-ViT/engine.py), so the weight means the same at any
    depth; ``'sum'`` adds them up. Each layer keeps only its last forward's loss: call this once per
    training forward, before the next one.
    """
    reduction = check_choice("auxiliary_losses", "reduction", reduction, ("mean", "sum"))
    layers = [m for m in model.modules() if isinstance(m, MoHWrapper)]
    if not layers:
        return {}
    routed = [m.load_balance_loss() for m in layers if m.routed_heads > 0]
    if not routed:
        return {"moh_load_balance": layers[0].load_balance_loss()}
    total = torch.stack([loss.float() for loss in routed]).sum()
    return {"moh_load_balance": total / len(routed) if reduction == "mean" else total}


@register_token_mixer("moh", paper="MoH (Jin et al., ICML'25)")
def moh(dim: int, num_heads: int | None = None, **options) -> MoHWrapper:
    """``num_heads=None``: the smallest head count >= 4 dividing ``dim`` (2 shared, 2 routed, top-1 at 4)."""
    return MoHWrapper(dim, num_heads=default_heads(dim, 4) if num_heads is None else num_heads, **options)
