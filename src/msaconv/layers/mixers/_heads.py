"""The head-structured mixer protocol that the ``moh`` and ``kdgqa`` wrappers build on.

Multi-head attention is a sum over heads, ``y = sum_i H_i W_O^i + b`` (MoH, arXiv 2410.11842, eq. 2), and
the head outputs ``H_i`` come from per-head queries, keys and values. A mixer is *head-structured* when it
splits its forward into three public steps::

    q, k, v = m.qkv_heads(x)                # each with the head axis at dim 1, layout private to the mixer
    o = m.attend_heads(q, k, v, (H, W))     # [B, heads, head_dim, H, W]: one output map per head
    y = m.merge_heads(o)                    # [B, C, H, W]: the output projection, linear in o

with ``m.forward(x) == m.merge_heads(m.attend_heads(*m.qkv_heads(x), x.shape[-2:]))`` and the attributes
``num_heads`` and ``head_dim``. ``attend_heads`` must accept keys/values whose head axis was re-indexed
(GQA repeats one key/value head for several query heads), and ``merge_heads`` must be linear plus a bias,
so that scaling head ``i`` of ``o`` by ``g_i`` gives ``sum_i g_i H_i W_O^i + b``.

:class:`msaconv.layers.mixers.global_attn.GlobalAttention2d` implements the protocol directly.
:class:`msaconv.layers.MSAttention2d` implements it too, its MDCSM shift and IPM pooling included
(they act per head or head group inside ``attend_heads``).
"""

from __future__ import annotations

from typing import Protocol, TypeGuard, runtime_checkable

import torch
from torch import nn

from ..registry import get_token_mixer

_METHODS = ("qkv_heads", "attend_heads", "merge_heads")


@runtime_checkable
class HeadStructured(Protocol):
    num_heads: int
    head_dim: int

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def attend_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor: ...

    def merge_heads(self, o: torch.Tensor) -> torch.Tensor: ...


def is_head_structured(m: object) -> TypeGuard[HeadStructured]:
    return all(callable(getattr(m, a, None)) for a in _METHODS) and hasattr(m, "num_heads")


def as_head_structured(m: nn.Module, wrapper: str) -> HeadStructured:
    """``m`` itself if it implements the protocol and keeps the map size, else a ValueError."""
    from ..msa_conv import MSAttention2d

    if isinstance(m, MSAttention2d) and tuple(m.attn.attn_stride) != (1, 1):
        raise ValueError(f"{wrapper}: the inner msa_conv has stride={m.attn.attn_stride}; a wrapped mixer must keep "
                         f"the size, use stride=1")
    if is_head_structured(m):
        return m
    raise ValueError(
        f"{wrapper}: inner mixer {type(m).__name__} is not head-structured (it needs qkv_heads, attend_heads and "
        f"merge_heads, see msaconv.layers.mixers._heads); use inner='global' or inner='msa_conv'"
    )


HEAD_STRUCTURED_NAMES = ("global", "msa_conv")


def build_inner(wrapper: str, inner, dim: int, num_heads: int, options: dict, device=None, dtype=None) -> nn.Module:
    """The wrapped mixer: a registered name (built with ``options``) or an existing module."""
    if isinstance(inner, nn.Module):
        if options:
            raise ValueError(f"{wrapper}: options {sorted(options)} only apply when inner is a name; "
                             f"configure the module you pass instead")
        return inner
    if not isinstance(inner, str):
        raise ValueError(f"{wrapper}: inner must be a mixer name or an nn.Module, got {inner!r}; use inner='global'")
    if inner in ("moh", "kdgqa"):
        raise ValueError(f"{wrapper}: inner={inner!r} is itself a wrapper; wrap one of {HEAD_STRUCTURED_NAMES}")
    kw = dict(options)
    if device is not None:
        kw["device"] = device
    if dtype is not None:
        kw["dtype"] = dtype
    return get_token_mixer(inner, dim, num_heads=num_heads, **kw)
