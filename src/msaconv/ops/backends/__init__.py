"""Backends of ``msa_conv2d``: one module per implementation, each with ``can_run(problem) -> None | reason``.

A backend is an object with

- ``name``: its registry key;
- ``layout``: the layout it computes in natively ('bhwd' or 'bhdhw'); the dispatcher hands it views in
  that layout and takes its output back, so a layer that already holds that layout pays no copy;
- ``can_run(problem)``: ``None`` when it can run this call, else a one-line reason;
- ``forward(q, k, v, extra_k, extra_v, problem)``: the output in its native layout, differentiable.

Optionally, a backend that computes its own gradients also has

- ``forward_with_stats(q, k, v, extra_k, extra_v, problem) -> (out, stats)``: not differentiable; ``stats``
  is ``[B, heads, H_out, W_out]`` (compute dtype) of whatever it keeps for its backward;
- ``backward(dout, q, k, v, extra_k, extra_v, out, stats, problem) -> (dq, dk, dv, d_extra_k, d_extra_v)``.

Such backends run inside the ``msaconv::msa_conv2d`` custom op (:mod:`msaconv.ops.library`), which is what
``torch.compile`` sees; ``backend=None`` picks among them. The others (``reference``) are called directly.

A backend may also have ``declines(problem) -> None | reason``: ``backend=None`` passes over it where
it gives a reason (it runs there when named, but another backend is faster), as ``dense`` does on
maps outside 3x3 to 5x5 (9 to 25 pixels); and ``workspace_bytes(problem) -> int``, the temporaries one call
allocates: ``backend=None`` neither measures nor takes it where that is more than
``autotune.MAX_WORKSPACE_BYTES`` (``dense``'s logits grow as batch x heads x pixels squared).

``backend=None`` measures (:mod:`.autotune`): the first call of each shape times the fused backends that
can run it (those with an explicit backward, less the ``fallback`` ones) and keeps the fastest. With the
measurement off (``MSACONV_AUTOTUNE=0``), or where no fused backend can run, it takes the first backend in
``BACKENDS``' order of preference that can run and does not decline.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .._checks import Problem, did_you_mean
from . import autotune, cpu, dense, portable, reference
from . import triton as _triton  # the backend module; it imports the triton package only when a call needs it


class Backend(Protocol):
    name: str
    layout: str

    def can_run(self, pb: Problem) -> str | None: ...

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_k: torch.Tensor | None,
                extra_v: torch.Tensor | None, pb: Problem) -> torch.Tensor: ...


BACKENDS: dict[str, Backend] = {
    "dense": dense.BACKEND,
    "cpu": cpu.BACKEND,
    # the fused GPU kernels: listed where they can run in this process (Triton installed, and a CUDA/ROCm
    # build of torch or TRITON_INTERPRET=1); backend=None passes over them on CPU tensors
    **({"triton": _triton.BACKEND} if _triton.unavailable_reason() is None else {}),
    "portable": portable.BACKEND,
    "reference": reference.BACKEND,
}

#: backends this install lacks, with the reason (``available_backends`` and a named backend report it)
UNAVAILABLE: dict[str, str] = {name: reason for name, reason in (("triton", _triton.unavailable_reason()),)
                               if reason is not None}


def register_backend(backend: Backend, first: bool = False) -> None:
    """Add a backend; ``first=True`` puts it ahead of the others in ``backend=None``'s choice."""
    global BACKENDS
    if first:
        BACKENDS = {backend.name: backend, **{k: v for k, v in BACKENDS.items() if k != backend.name}}
    else:
        BACKENDS[backend.name] = backend


def backend_reasons(pb: Problem) -> dict[str, str | None]:
    """Every backend's answer to ``can_run`` for this problem (None means it can run)."""
    return {name: be.can_run(pb) for name, be in BACKENDS.items()}


def _unfit_reason(be: Backend, pb: Problem) -> str | None:
    """Why ``backend=None`` may not take ``be`` for this problem, declines aside: it cannot run it, or its
    temporaries would pass ``autotune.MAX_WORKSPACE_BYTES``; else None."""
    return be.can_run(pb) or autotune.workspace_reason(be, pb)


def auto_reason(be: Backend, pb: Problem) -> str | None:
    """Why ``backend=None`` passes over ``be`` for this problem (it cannot run it, or declines it), or None."""
    reason = _unfit_reason(be, pb)
    declines = getattr(be, "declines", None)
    return declines(pb) if reason is None and declines is not None else reason


def has_explicit_backward(be: object) -> bool:
    """Whether a backend can run inside the custom op (it computes its own gradients)."""
    return callable(getattr(be, "forward_with_stats", None)) and callable(getattr(be, "backward", None))


def fused_candidates(pb: Problem) -> dict[str, Backend]:
    """The backends ``backend=None`` measures for ``pb``: those with an explicit backward that can run it, less
    the ``fallback`` ones and those whose temporaries would pass ``autotune.MAX_WORKSPACE_BYTES``; those that
    would not decline it (the likely fastest) first."""
    fused = {name: be for name, be in BACKENDS.items()
             if has_explicit_backward(be) and not getattr(be, "fallback", False) and _unfit_reason(be, pb) is None}

    def declines(be: Backend) -> bool:
        rule = getattr(be, "declines", None)
        return rule is not None and rule(pb) is not None

    return dict(sorted(fused.items(), key=lambda item: declines(item[1])))


def _named_backend(pb: Problem, backend: str, fn: str, explicit_backward: bool) -> Backend:
    table = BACKENDS
    if backend not in table and backend in UNAVAILABLE:
        raise ValueError(f"{fn}: backend {backend!r} cannot run here: {UNAVAILABLE[backend]}; "
                         f"use backend=None to pick one that can")
    if backend not in table:
        raise ValueError(
            f"{fn}: unknown backend {backend!r};{did_you_mean(str(backend), list(table))} "
            f"choose one of {', '.join(repr(n) for n in table)} or None (automatic)"
        )
    reason = table[backend].can_run(pb)
    if reason is not None:
        raise ValueError(f"{fn}: backend {backend!r} cannot run this call: {reason}; use backend=None to pick one that can")
    if explicit_backward and not has_explicit_backward(table[backend]):
        raise ValueError(f"{fn}: backend {backend!r} has no explicit backward and cannot run inside the "
                         f"custom op; call it with torch.compile disabled or use backend=None")
    return table[backend]


def choose_backend(pb: Problem, backend: str | None, fn: str = "msa_conv2d", explicit_backward: bool = False) -> Backend:
    """The named backend if it can run (else a ValueError with its reason), or the first that can.

    ``explicit_backward=True`` (what runs inside the custom op) takes only a backend that computes its own
    gradients (:func:`has_explicit_backward`)."""
    if backend is not None:
        return _named_backend(pb, backend, fn, explicit_backward)
    if autotune.enabled():
        fused = fused_candidates(pb)
        if fused and autotune.may_measure():
            return BACKENDS[autotune.choose(pb, fused)]
        known = autotune.known(pb, fused) if fused else None  # tracing or counting: a choice made before holds
        if known is not None:
            return BACKENDS[known]
    reasons = []
    for name, be in BACKENDS.items():
        reason = auto_reason(be, pb)
        if reason is None and explicit_backward and not has_explicit_backward(be):
            reason = "autograd-only backend"
        if reason is None:
            return be
        reasons.append(f"{name}: {reason}")
    raise ValueError(f"{fn}: no backend can run this call; " + "; ".join(reasons))
