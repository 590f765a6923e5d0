"""Fused CPU backend: C++/OpenMP kernels for the forward and the backward (``csrc/msa_conv_cpu.cpp``).

Channels-first (``'bhdhw'``, ``[B, heads, head_dim, H, W]``) and vectorised along W, reading q, k, v, dout and out
with any strides: msa_conv2d's default ``'bhwd'`` (seen through a permutation) and slices of channels-last maps
are transposed row by row into the kernel's buffers, never copied beforehand, and the outputs are written in
the caller's layout, so neither layout pays for a conversion. One task is one
query row of one (image, head) plane; its K x W logits stay in a small buffer, and the q.k and a.v loops
are register-blocked. No K-fold copy of k or v is ever made; the forward keeps only the per-query
log-sum-exp ``[B, heads, H_out, W_out]`` for the backward, which recomputes the weights. The backward
runs one plane per task, so every key/value gradient is summed by one thread in a fixed order:
the result is the same run to run.

Covers every kernel (even, strip), dilation, stride, border and extra keys; float32 and float64 natively;
bfloat16 (autocast's dtype on CPUs) read and written as it is and computed in float32, the rows converted
inside the kernels; float16 computed in float32 (converted on the way in and out). It declines attention dropout
(the portable backend runs it) and non-CPU tensors. The kernels are compiled on first use
(:mod:`._build`); without a compiler or ninja, ``can_run`` says so and ``backend=None`` moves on.
"""

from __future__ import annotations

import torch

from .._checks import Problem
from ._autograd import StatsBackwardFn
from . import _build

_BORDER_CODE = {"zeros": 0, "mask": 1, "clamp": 2, "circular": 3}  # enum Border of the C++ file


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels read and write: bfloat16 as it is (converted row by row inside), else the compute dtype."""
    return dtype if dtype == torch.bfloat16 else _compute_dtype(dtype)


def _planes(t: torch.Tensor, st: torch.dtype) -> torch.Tensor:
    """``t`` in the storage dtype ``st`` (no copy when it is in it already). The kernels read any strides in
    place, q of a channels-last qkv map included (each pixel holds every head's q, k and v): with prefetching,
    that beat copying to contiguous planes first on every shape measured
    (``benchmarks/op/probes/strided_inputs_avx512.md``)."""
    return t.to(st)


def _args(pb: Problem) -> tuple:
    w = pb.window
    return (w.kernel[0], w.kernel[1], w.dilation[0], w.dilation[1], w.stride[0], w.stride[1],
            _BORDER_CODE[w.border], float(pb.scale))


def _prepare(pb: Problem, extra_k, extra_v):
    """``(extension, storage dtype, extra_k, extra_v in the compute dtype)``; the extension must have built."""
    ext, reason = _build.extension()
    if ext is None:
        raise RuntimeError(f"msa_conv2d: backend 'cpu' is unavailable: {reason}")
    ct = _compute_dtype(pb.dtype)
    cast = (lambda t: None if t is None else t.to(ct))
    return ext, _storage_dtype(pb.dtype), cast(extra_k), cast(extra_v)


class CpuBackend:
    name = "cpu"
    layout = "bhdhw"

    def can_run(self, pb: Problem) -> str | None:
        if pb.device.type != "cpu":
            return f"runs on CPU tensors only, got device {pb.device}"
        if pb.dropout_p > 0:
            return "attention dropout is not fused (the portable backend runs it)"
        _, reason = _build.extension()
        return reason

    def forward_with_stats(self, q, k, v, extra_k, extra_v, pb: Problem) -> tuple[torch.Tensor, torch.Tensor]:
        """``(out [B,h,D,Ho,Wo] in q's dtype, lse [B,h,Ho,Wo] in the compute dtype)``; not differentiable."""
        ext, st, ek, ev = _prepare(pb, extra_k, extra_v)
        with torch.no_grad():
            out, lse = ext.forward(_planes(q, st), _planes(k, st), _planes(v, st), ek, ev, *_args(pb), pb.layout == "bhwd")
        return out.to(pb.dtype), lse

    def backward(self, dout, q, k, v, extra_k, extra_v, out, lse, pb: Problem):
        """Gradients ``(dq, dk, dv, d_extra_k | None, d_extra_v | None)`` from the saved ``out`` and ``lse``."""
        ext, st, ek, ev = _prepare(pb, extra_k, extra_v)
        with torch.no_grad():
            dq, dk, dv, dek, dev = ext.backward(_planes(dout, st), _planes(q, st), _planes(k, st), _planes(v, st), ek,
                                                ev, _planes(out, st), lse, *_args(pb), pb.layout == "bhwd")
        cast = (lambda t: t.to(pb.dtype))
        if extra_k is None:
            dek = dev = None
        else:
            dek, dev = cast(dek), cast(dev)
        return cast(dq), cast(dk), cast(dv), dek, dev

    def forward(self, q, k, v, extra_k, extra_v, pb: Problem):
        return StatsBackwardFn.apply(self, q, k, v, extra_k, extra_v, pb)

    def info(self) -> str:
        """What the kernels were built for (vector width), or why they are unavailable."""
        ext, reason = _build.extension()
        return ext.build_info() if ext is not None else f"unavailable: {reason}"


BACKEND = CpuBackend()
