"""Backends of ``msa_conv2d``: one module per implementation, each with ``can_run(problem) -> None | reason``.

A backend is an object with

- ``name``: its registry key;
- ``layout``: the layout it computes in natively ('bhwd' or 'bhdhw'); the dispatcher hands it views in
  that layout and takes its output back, so a layer that already holds that layout pays no copy;
- ``can_run(problem)``: ``None`` when it can run this call, else a one-line reason;
- ``forward(q, k, v, extra_k, extra_v, problem)``: the output in its native layout, differentiable.

``BACKENDS`` lists them in order of preference: ``backend=None`` takes the first that can run.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .._checks import Problem
from . import cpu, portable, reference


class Backend(Protocol):
    name: str
    layout: str

    def can_run(self, pb: Problem) -> str | None: ...

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_k: torch.Tensor | None,
                extra_v: torch.Tensor | None, pb: Problem) -> torch.Tensor: ...


BACKENDS: dict[str, Backend] = {
    "cpu": cpu.BACKEND,
    "portable": portable.BACKEND,
    "reference": reference.BACKEND,
}


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
