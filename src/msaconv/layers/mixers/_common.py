"""Helpers shared by the token mixers: config checks with fixable messages, input checks, padding.

Every mixer checks its config in ``__init__`` with these helpers (a ``ValueError`` naming the argument,
the value and the fix) and its input in ``forward`` with :func:`check_input`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..._errors import unknown_name
from .._checks import check_heads, check_input, check_int  # noqa: F401  (re-exported for the mixers)


def check_float(cls: str, arg: str, value: object, low: float, high: float, *, high_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)  # type: ignore[arg-type]  # an int or float: checked above
        ok = low <= v < high if high_open else low <= v <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{cls}: {arg} must be a number in [{low}, {high}{bracket}, got {value!r}; "
                         f"pass a value in that range")
    return float(value)  # type: ignore[arg-type]  # checked to be an int or float above


def check_probability(cls: str, arg: str, value: object) -> float:
    return check_float(cls, arg, value, 0.0, 1.0, high_open=True)


def check_choice(cls: str, arg: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise unknown_name(cls, arg, value, choices)
    return str(value)


def check_pair(cls: str, arg: str, value: object) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise ValueError(f"{cls}: {arg} must be a positive int or a pair (H, W) of positive ints, got {value!r}; "
                         f"use e.g. {arg}=(14, 14)")
    return int(value[0]), int(value[1])


def pad_to_multiple(x: torch.Tensor, mh: int, mw: int) -> tuple[torch.Tensor, int, int]:
    """Zero-pad ``x [..., H, W]`` at the bottom/right up to multiples of ``(mh, mw)``; returns (x, pad_h, pad_w)."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % mh, (-W) % mw
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, ph, pw


def valid_mask(H: int, W: int, ph: int, pw: int, device, dtype=torch.bool) -> torch.Tensor:
    """``[1, 1, H+ph, W+pw]``: True on the image, False on the padding added by :func:`pad_to_multiple`."""
    m = torch.ones(1, 1, H, W, device=device, dtype=dtype)
    return F.pad(m, (0, pw, 0, ph)) if (ph or pw) else m


def conv1x1(cin: int, cout: int, bias: bool = True, device=None, dtype=None, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=bias, groups=groups, device=device, dtype=dtype)


def init_linear_like(module: nn.Module) -> None:
    """ViT-style init (truncated normal std 0.02, zero bias) for every Linear and 1x1 Conv2d in ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def mean_distance(attn: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Per-head mean attention distance (ConViT): ``sum_ij A_ij * |p_i - p_j| / N`` for ``attn [B, h, N, N]``."""
    ys, xs = torch.meshgrid(torch.arange(H, device=attn.device), torch.arange(W, device=attn.device), indexing="ij")
    p = torch.stack([ys.flatten(), xs.flatten()], -1).to(attn.dtype)
    d = torch.cdist(p, p)  # [N, N]
    return (attn * d).sum(-1).mean(-1).mean(0)


def default_heads(dim: object, minimum: int) -> int:
    """A registry default for ``num_heads``: the smallest divisor of ``dim`` that is ``>= minimum``.

    Used by the factories of mixers whose structure needs several heads (HiLo's two branches, MoH's
    routed heads, KDGQA's groups), so that ``get_token_mixer(name, dim)`` never builds a degenerate one.
    Falls back to ``dim`` (its largest divisor) when no divisor is that large, and returns 1 for an
    invalid ``dim`` so that the mixer's own check reports it.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        return 1
    for h in range(max(1, minimum), dim + 1):
        if dim % h == 0:
            return h
    return dim


def isqrt_exact(n: int) -> int | None:
    r = math.isqrt(n)
    return r if r * r == n else None
