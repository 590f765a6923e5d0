"""Autograd for direct calls of a backend that computes its own gradients (``forward_with_stats`` and
``backward``); calls through ``msa_conv2d`` go through the custom op's own autograd instead."""

from __future__ import annotations

from typing import Any

import torch

from .._checks import Problem


class StatsBackwardFn(torch.autograd.Function):
    """``out`` of ``backend.forward_with_stats``; the backward hands the saved ``(out, stats)`` to ``backend.backward``."""

    @staticmethod
    def forward(ctx, backend: Any, q, k, v, extra_k, extra_v, pb: Problem):  # type: ignore[override]
        out, stats = backend.forward_with_stats(q, k, v, extra_k, extra_v, pb)
        ctx.backend, ctx.pb = backend, pb
        ctx.save_for_backward(q, k, v, extra_k, extra_v, out, stats)
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        q, k, v, extra_k, extra_v, out, stats = ctx.saved_tensors
        return (None, *ctx.backend.backward(dout, q, k, v, extra_k, extra_v, out, stats, ctx.pb), None)
