"""Functional ops: stateless tensor -> tensor, no parameters."""

from __future__ import annotations

import torch

from ._checks import BORDERS, LAYOUTS, Problem, check_msa_conv2d
from .msa_conv import available_backends, choose_backend, msa_conv2d, msa_conv2d_weights
from .shapes import output_size, window_offsets

__all__ = [
    "BORDERS",
    "LAYOUTS",
    "Problem",
    "available_backends",
    "backend_report",
    "check_msa_conv2d",
    "choose_backend",
    "merge_heads",
    "msa_conv2d",
    "msa_conv2d_weights",
    "output_size",
    "prepare",
    "split_heads",
    "window_offsets",
]


def prepare(background: bool = False) -> str | None:
    """Build (first use: ~40 s, then cached) and load the fused CPU kernels now rather than at the first call.

    Returns None when they are ready, or the reason they cannot run here (``backend=None`` then uses the
    other backends). ``background=True`` starts the build in a daemon thread and returns None at once, so a
    compile overlaps other start-up work (``msaconv train`` loads its data meanwhile); the first call of the
    operator then waits for it.
    """
    from .backends import _build

    if background:
        _build.build_in_background()
        return None
    return _build.extension()[1]


def backend_report() -> str:
    """One line for a log: which backend ``msa_conv2d(backend=None)`` runs on CPU tensors here and, when it is
    not the fused kernels ('cpu'), why (no ninja, no compiler, a compile error's first line, ...).

    It loads the fused kernels first: it waits for a build in progress (``prepare(background=True)``) and,
    on first use, builds them (see :func:`prepare`).
    """
    from . import backends
    from ._checks import check_msa_conv2d
    from .backends import dense

    q = torch.zeros(1, 1, 16, 16, 8)  # a typical map: 256 keys, past the whole-map 'dense' backend's range
    pb = check_msa_conv2d("backend_report", q, q, q, 3, 1, 1, "zeros", None, None, None, "bhwd")
    if backends.autotune.enabled():
        return _measured_report(pb)
    try:
        chosen = choose_backend(pb, None, "backend_report").name
    except ValueError as e:
        return f"msa_conv2d on CPU: no backend can run ({e})"
    small = (f" ('dense' on maps of {dense.MIN_KEYS} to {dense.MAX_KEYS} pixels)"
             if "dense" in backends.BACKENDS and chosen != "dense" else "")
    if chosen == "cpu":
        return f"msa_conv2d on CPU: backend 'cpu', the fused C++/OpenMP kernels{small}"
    cpu = backends.BACKENDS.get("cpu")
    reason = backends.auto_reason(cpu, pb) if cpu is not None else "not registered"
    why = (f"the fused kernels ('cpu') are unavailable: {reason}" if reason is not None
           else "registered ahead of the fused kernels ('cpu')")
    return f"msa_conv2d on CPU: backend {chosen!r}{small}; {why}"


def _measured_report(pb) -> str:
    """backend_report's line when ``backend=None`` measures: the fused backends it chooses among, and why the
    fused kernels ('cpu') are missing when they are."""
    from . import backends

    fused = list(backends.fused_candidates(pb))
    cpu = backends.BACKENDS.get("cpu")
    reason = cpu.can_run(pb) if cpu is not None else "not registered"
    among = ", ".join(repr(n) for n in fused) if fused else "none (the fixed order: 'portable')"
    line = (f"msa_conv2d on CPU: backend=None measures each shape's first call and keeps the fastest of {among} "
            f"(MSACONV_AUTOTUNE=0: the fixed order)")
    return line if reason is None else f"{line}; the fused kernels ('cpu') are unavailable: {reason}"


def split_heads(x: torch.Tensor, num_heads: int, layout: str = "bhwd") -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, heads, H, W, C/heads]`` ('bhwd') or a free view ``[B, heads, C/heads, H, W]``."""
    if x.dim() != 4 or x.shape[1] % num_heads:
        raise ValueError(
            f"split_heads: x must be [B, C, H, W] with C divisible by num_heads={num_heads}, got shape "
            f"{tuple(x.shape)}; choose num_heads dividing C"
        )
    B, C, H, W = x.shape
    t = x.reshape(B, num_heads, C // num_heads, H, W)
    return t if layout == "bhdhw" else t.permute(0, 1, 3, 4, 2)


def merge_heads(t: torch.Tensor, layout: str = "bhwd") -> torch.Tensor:
    """The inverse of :func:`split_heads`: back to ``[B, C, H, W]``."""
    if layout == "bhwd":
        t = t.permute(0, 1, 4, 2, 3)
    B, h, D, H, W = t.shape
    return t.reshape(B, h * D, H, W)
