"""Helpers shared by the token mixers: config checks with fixable messages, input checks, padding, and the
multi-head set-up (:class:`MultiHeadMixer`) and DANet's zero-initialised gate (:class:`GammaGated`).

Every mixer checks its config in ``__init__`` with these helpers (a ``ValueError`` naming the argument,
the value and the fix) and its input in ``forward`` with :func:`check_input`.
"""

from __future__ import annotations

import math
from typing import ClassVar

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


class MultiHeadMixer(nn.Module):
    """The set-up every multi-head token mixer repeats (as timm's attention layers share theirs).

    It owns ``dim``, ``num_heads`` and ``head_dim = dim // num_heads`` (checked: a ``ValueError`` listing
    the divisors), the logit ``scale`` (``head_dim ** -0.5`` unless given), the attention dropout
    probability ``attn_drop`` (checked), the shapes of the q/k/v and output projections
    (:meth:`qkv_layer`, :meth:`proj_layer`), the head split and join of tokens (:meth:`split_heads`,
    :meth:`join_heads`) and of maps (:meth:`split_map_heads`, :meth:`join_map_heads`) and the SDPA call
    (:meth:`sdpa`). A subclass calls ``super().__init__`` first and
    then builds its layers in its own order under its own names (so parameter creation order, seeds and
    state_dict keys are its own).

    ``layout`` says what the projections act on: ``"tokens"`` (``nn.Linear`` on ``[..., N, C]``) or
    ``"map"`` (a 1x1 ``nn.Conv2d`` on ``[B, C, H, W]``).
    """

    layout: ClassVar[str] = "tokens"

    def __init__(self, cls: str, dim: int, num_heads: int, *, scale: float | None = None, attn_drop: float = 0.0):
        super().__init__()
        self.dim = check_int(cls, "dim", dim)
        self.num_heads = check_heads(cls, dim, num_heads)
        self.head_dim = dim // self.num_heads
        self.attn_drop = check_probability(cls, "attn_drop", attn_drop)
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0):
            raise ValueError(f"{cls}: scale must be a positive number or None (head_dim**-0.5), got {scale!r}")
        # what F.scaled_dot_product_attention gets: None lets it compute its default 1/sqrt(head_dim), which
        # can differ from head_dim ** -0.5 in the last bit, so outputs stay those of SDPA's own default
        self.sdpa_scale = scale
        self.scale = self.head_dim ** -0.5 if scale is None else scale

    def _width(self, heads: int | None) -> int:
        return (self.num_heads if heads is None else heads) * self.head_dim

    def _layer(self, cin: int, cout: int, bias: bool, device, dtype) -> nn.Linear | nn.Conv2d:
        if self.layout == "map":
            return conv1x1(cin, cout, bias=bias, device=device, dtype=dtype)
        return nn.Linear(cin, cout, bias=bias, device=device, dtype=dtype)

    def qkv_layer(self, parts: int = 3, heads: int | None = None, *, bias: bool,
                  device=None, dtype=None) -> nn.Linear | nn.Conv2d:
        """``dim`` channels to ``parts`` groups (3: q, k, v; 2: k, v or q, k; 1: one of them) of ``heads``
        heads (default: all), laid out ``[parts, heads, head_dim]`` as :meth:`split_heads` / :meth:`split_map_heads` read them."""
        return self._layer(self.dim, parts * self._width(heads), bias, device, dtype)

    def proj_layer(self, heads: int | None = None, *, device=None, dtype=None) -> nn.Linear | nn.Conv2d:
        """The output projection (with a bias) of ``heads`` joined heads (default: all) to as many channels."""
        w = self._width(heads)
        return self._layer(w, w, True, device, dtype)

    def split_heads(self, t: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """Tokens ``t [..., N, parts * heads * head_dim]`` (a ``"tokens"`` :meth:`qkv_layer` output) to
        ``parts`` views ``[..., heads, N, head_dim]`` (heads read off the width)."""
        *lead, N, c = t.shape
        L = len(lead)
        t = t.reshape(*lead, N, parts, c // (parts * self.head_dim), self.head_dim)
        return t.permute(L + 1, *range(L), L + 2, L, L + 3).unbind(0)

    def split_map_heads(self, t: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """A map ``t [B, parts * heads * head_dim, H, W]`` (a ``"map"`` :meth:`qkv_layer` output) to
        ``parts`` views ``[B, heads, H * W, head_dim]``."""
        B, c, H, W = t.shape
        d = self.head_dim
        return t.reshape(B, parts, c // (parts * d), d, H * W).transpose(-1, -2).unbind(1)

    def join_heads(self, o: torch.Tensor) -> torch.Tensor:
        """Heads ``o [..., heads, N, head_dim]`` side by side as tokens ``[..., N, heads * head_dim]``."""
        *lead, h, N, d = o.shape
        return o.transpose(-3, -2).reshape(*lead, N, h * d)

    def join_map_heads(self, o: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Heads ``o [B, heads, H * W, head_dim]`` side by side as a map ``[B, heads * head_dim, H, W]``."""
        B, h, _, d = o.shape
        return o.transpose(-1, -2).reshape(B, h * d, *size)

    def sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``F.scaled_dot_product_attention`` with this mixer's scale and (in training) ``attn_drop``."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                              dropout_p=self.attn_drop if self.training else 0.0,
                                              scale=self.sdpa_scale)


class GammaGated(nn.Module):
    """What DANet's two modules (``cam``, ``pam``) share: ``dim``, a learnable scalar gate ``gamma``
    initialised to 0 (the module starts as a no-op and learns how much context to mix in) and the paper's
    residual, off by default because the block owns it (``residual=True`` gives the paper's module)."""

    gamma: nn.Parameter

    def __init__(self, cls: str, dim: int, residual: bool):
        super().__init__()
        self.dim = check_int(cls, "dim", dim)
        self.residual = bool(residual)

    @staticmethod
    def zero_gate(device=None, dtype=None) -> nn.Parameter:
        """A fresh ``gamma``: one learnable zero (a subclass assigns it where its parameter order wants it)."""
        return nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def gate(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``gamma * o``, plus ``x`` with ``residual=True``."""
        o = self.gamma * o
        return o + x if self.residual else o

    def extra_repr(self) -> str:
        return f"dim={self.dim}, residual={self.residual}"
