"""Argument normalisation and validation for the functional ops.

Every user-facing ``ValueError`` text of :mod:`msaconv.ops` lives here, so each message names the
argument, the value it got and the fix, and each has one ``pytest.raises(..., match=...)`` test.
An op calls :func:`check_msa_conv2d` once, at its public boundary, then dispatches on the :class:`Problem` it
returns; code below it builds a Problem with :func:`problem_of`, which checks nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .._errors import check_choice, check_probability, did_you_mean, pair, unknown_name  # noqa: F401
from . import shapes

BORDERS: tuple[str, ...] = ("zeros", "mask", "clamp", "circular")
LAYOUTS: tuple[str, ...] = ("bhwd", "bhdhw")
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

_LAYOUT_AXES = {"bhwd": "[B, heads, H, W, head_dim]", "bhdhw": "[B, heads, head_dim, H, W]"}


def check_border(fn: str, border: object) -> str:
    return check_choice(fn, "border", border, BORDERS)


def check_layout(fn: str, layout: object) -> str:
    return check_choice(fn, "layout", layout, LAYOUTS)


@dataclass(frozen=True)
class Window:
    """The geometry of an MSA-Conv window: kernel, dilation, stride and border, each normalised."""

    kernel: tuple[int, int]
    dilation: tuple[int, int]
    stride: tuple[int, int]
    border: str

    @property
    def size(self) -> int:
        """K, the number of window slots."""
        return self.kernel[0] * self.kernel[1]

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        return shapes.output_size(height, width, self.stride)


def make_window(fn: str, kernel_size: object, dilation: object, stride: object, border: object) -> Window:
    return Window(
        kernel=pair(fn, "kernel_size", kernel_size),
        dilation=pair(fn, "dilation", dilation),
        stride=pair(fn, "stride", stride),
        border=check_border(fn, border),
    )


def check_window_fits(fn: str, win: Window, height: int, width: int) -> None:
    """``border='clamp'`` needs every dilation group of each axis to hold a whole window."""
    if win.border != "clamp":
        return
    for axis, size, k, d in (("H", height, win.kernel[0], win.dilation[0]), ("W", width, win.kernel[1], win.dilation[1])):
        if size < k * d:
            raise ValueError(
                f"{fn}: border='clamp' needs {axis} >= kernel_size*dilation along each axis "
                f"(NATTEN's rule), got {axis}={size} < {k}*{d}={k * d}; reduce kernel_size or "
                f"dilation, or use border='zeros', 'mask' or 'circular'"
            )


@dataclass(frozen=True)
class Problem:
    """One validated ``msa_conv2d`` call: geometry, sizes, dtype and layout."""

    window: Window
    batch: int
    heads: int
    height: int
    width: int
    head_dim: int
    extra: int  # M, the number of extra keys (0 when none)
    scale: float
    dtype: torch.dtype
    device: torch.device
    layout: str
    dropout_p: float
    needs_grad: bool

    @property
    def out_size(self) -> tuple[int, int]:
        return self.window.out_size(self.height, self.width)


def _shape_5d(fn: str, name: str, t: object, layout: str) -> tuple[int, ...]:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}; pass a tensor {_LAYOUT_AXES[layout]}")
    if t.dim() != 5:
        raise ValueError(
            f"{fn}: {name} must be a 5-D tensor {_LAYOUT_AXES[layout]} (layout={layout!r}), got shape "
            f"{tuple(t.shape)} with {t.dim()} dims; split a [B, C, H, W] map into heads with "
            f"msaconv.ops.split_heads(x, num_heads, layout={layout!r})"
        )
    return tuple(t.shape)


def check_msa_conv2d(
    fn: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    kernel_size: object,
    dilation: object,
    stride: object,
    border: object,
    scale: object,
    extra_k: torch.Tensor | None,
    extra_v: torch.Tensor | None,
    layout: object,
    dropout_p: object = 0.0,
) -> Problem:
    """Validate every argument of ``msa_conv2d`` (``v`` may be None for the weights-only op)."""
    layout = check_layout(fn, layout)
    win = make_window(fn, kernel_size, dilation, stride, border)
    named = [("q", q), ("k", k)] + ([("v", v)] if v is not None else [])
    q_shape = _shape_5d(fn, "q", q, layout)
    for name, t in named[1:]:
        if _shape_5d(fn, name, t, layout) != q_shape:
            raise ValueError(
                f"{fn}: {name} has shape {tuple(t.shape)} but q has shape {q_shape}; q, k and v must "
                f"have the same shape {_LAYOUT_AXES[layout]}"
            )
    for name, t in named:
        if t.dtype not in DTYPES:
            raise ValueError(
                f"{fn}: {name} has dtype {t.dtype}; use float32, float64, bfloat16 or float16 "
                f"(e.g. {name}.float())"
            )
        if t.dtype != q.dtype:
            raise ValueError(f"{fn}: {name} has dtype {t.dtype} but q has {q.dtype}; cast it with {name}.to(q.dtype)")
        if t.device != q.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but q is on {q.device}; move it with {name}.to(q.device)")
    if layout == "bhwd":
        batch, heads, height, width, head_dim = q_shape
    else:
        batch, heads, head_dim, height, width = q_shape
    for axis, size in (("heads", heads), ("H", height), ("W", width), ("head_dim", head_dim)):
        if size < 1:
            raise ValueError(f"{fn}: q has {axis}={size} in shape {q_shape}; every axis but the batch must be >= 1")
    check_window_fits(fn, win, height, width)

    if (extra_k is None) != (extra_v is None) and v is not None:
        given, missing = ("extra_k", "extra_v") if extra_v is None else ("extra_v", "extra_k")
        raise ValueError(f"{fn}: {given} was given without {missing}; pass both extra_k and extra_v, or neither")
    if extra_k is not None:
        want = (batch, heads, "M", head_dim)
        pairs: tuple[tuple[str, object], ...] = (("extra_k", extra_k), ("extra_v", extra_v))
        for name, e in pairs:
            if e is None:
                continue
            if not isinstance(e, torch.Tensor) or e.dim() != 4 or (e.shape[0], e.shape[1], e.shape[3]) != (batch, heads, head_dim):
                got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
                raise ValueError(
                    f"{fn}: {name} must have shape [B, heads, M, head_dim] = {want} in either layout, got {got}; "
                    f"pool keys to a grid and flatten it, e.g. (B, heads, M, head_dim)"
                )
            if e.dtype != q.dtype or e.device != q.device:
                raise ValueError(
                    f"{fn}: {name} is {e.dtype} on {e.device} but q is {q.dtype} on {q.device}; "
                    f"use {name}.to(q)"
                )
        if extra_v is not None and extra_v.shape[2] != extra_k.shape[2]:
            raise ValueError(
                f"{fn}: extra_k has M={extra_k.shape[2]} keys but extra_v has M={extra_v.shape[2]}; "
                f"give one value per extra key"
            )

    if scale is None:
        scale_f = head_dim ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(float(scale)):
        raise ValueError(f"{fn}: scale must be a finite float or None, got {scale!r}; None uses head_dim**-0.5")
    else:
        scale_f = float(scale)
    p = check_probability(fn, "dropout_p", dropout_p)
    return problem_of(win, layout, q, k, v, extra_k, extra_v, scale_f, p)


def problem_of(win: Window, layout: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None,
               extra_k: torch.Tensor | None, extra_v: torch.Tensor | None, scale: float | None,
               dropout_p: float = 0.0) -> Problem:
    """The :class:`Problem` of arguments that are already checked, read off the tensors without validating
    anything: for code below the public boundary (the custom op gets checked, normalised arguments)."""
    if layout == "bhwd":
        batch, heads, height, width, head_dim = q.shape
    else:
        batch, heads, head_dim, height, width = q.shape
    tensors = [t for t in (q, k, v, extra_k, extra_v) if t is not None]
    return Problem(
        window=win,
        batch=batch,
        heads=heads,
        height=height,
        width=width,
        head_dim=head_dim,
        extra=int(extra_k.shape[2]) if extra_k is not None else 0,
        scale=head_dim ** -0.5 if scale is None else float(scale),
        dtype=q.dtype,
        device=q.device,
        layout=layout,
        dropout_p=dropout_p,
        needs_grad=torch.is_grad_enabled() and any(t.requires_grad for t in tensors),
    )
