"""``msa_conv2d`` as a ``torch.library`` custom op, so that ``torch.compile(fullgraph=True)`` sees one node.

Two ops, both wrapping the whole backend dispatch:

- ``msaconv::msa_conv2d(q, k, v, extra_k?, extra_v?, kernel_size, dilation, stride, border, scale, layout,
  backend, chosen=False) -> (out, stats)``: ``out`` in the caller's layout (contiguous), ``stats``
  ``[B, heads, H_out, W_out]`` per-query statistics the backend keeps for its backward (the log-sum-exp
  for ``cpu``);
- ``msaconv::msa_conv2d_backward(dout, q, k, v, extra_k?, extra_v?, out, stats, ...) -> (dq, dk, dv, dek,
  dev)``, a separate op, so a compiled backward graph calls it as one node too. ``dek``/``dev`` are empty
  when there are no extra keys.

Each has a fake (meta) implementation for tracing, the forward has its autograd formula
(``register_autograd``) and both a FLOP formula for ``torch.utils.flop_counter``:
``4*B*heads*P*(K+M)*head_dim`` for the forward (q.k and a.v), twice that for the backward.

The arguments are :func:`msaconv.ops.msa_conv2d`'s, checked and normalised there; the ops check nothing
again. ``backend`` is the backend to run: with ``chosen=True`` the one ``msa_conv2d`` chose for this call
(eagerly), run as it is; with ``chosen=False`` a request (``''`` = automatic, or a name) the op resolves
when it runs, for code ``torch.compile`` traces (the sizes may still be symbolic there, and the fused
kernels not built yet). The backward gets the forward's ``backend`` and ``chosen`` and so, in eager mode,
runs the backend the forward chose without choosing again.

The op path serves the backends that have an explicit backward (``forward_with_stats`` and ``backward``,
e.g. ``cpu`` and ``portable``) and calls without dropout; :func:`msaconv.ops.msa_conv2d` calls the other
backends (the autograd-only ``reference``) and dropout directly.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import backends as _backends
from ._checks import Problem, Window, problem_of

OP_NAME = "msaconv::msa_conv2d"
BACKWARD_OP_NAME = "msaconv::msa_conv2d_backward"
_FN = "msa_conv2d"


def _to_layout(t: Tensor, src: str, dst: str) -> Tensor:
    """A view of a 5-D q/k/v/out tensor in another layout (no copy)."""
    if src == dst:
        return t
    if src == "bhdhw":  # [B,h,D,H,W] -> [B,h,H,W,D]
        return t.permute(0, 1, 3, 4, 2)
    return t.permute(0, 1, 4, 2, 3)  # [B,h,H,W,D] -> [B,h,D,H,W]


def _problem(q, k, v, extra_k, extra_v, kernel_size, dilation, stride, border, scale, layout) -> Problem:
    win = Window((kernel_size[0], kernel_size[1]), (dilation[0], dilation[1]), (stride[0], stride[1]), border)
    return problem_of(win, layout, q, k, v, extra_k, extra_v, scale)


def _op_backend(pb: Problem, backend: str, chosen: bool) -> _backends.Backend:
    """The backend ``msa_conv2d`` chose (``chosen``), or the op's own choice for a request (``''`` = automatic)."""
    if chosen:
        return _backends.BACKENDS[backend]
    return _backends.choose_backend(pb, backend or None, _FN, explicit_backward=True)


def _stats_shape(q: Tensor, layout: str, stride: list[int]) -> tuple[int, ...]:
    if layout == "bhwd":
        B, h, H, W, _ = q.shape
    else:
        B, h, _, H, W = q.shape
    return (B, h, (H - 1) // stride[0] + 1, (W - 1) // stride[1] + 1)


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


@torch.library.custom_op(OP_NAME, mutates_args=())
def msa_conv2d_op(q: Tensor, k: Tensor, v: Tensor, extra_k: Optional[Tensor], extra_v: Optional[Tensor],
                  kernel_size: list[int], dilation: list[int], stride: list[int], border: str, scale: float,
                  layout: str, backend: str, chosen: bool = False) -> tuple[Tensor, Tensor]:
    pb = _problem(q, k, v, extra_k, extra_v, kernel_size, dilation, stride, border, scale, layout)
    be = _op_backend(pb, backend, chosen)
    n = be.layout
    out, stats = be.forward_with_stats(_to_layout(q, layout, n), _to_layout(k, layout, n), _to_layout(v, layout, n),  # type: ignore[attr-defined]
                                       extra_k, extra_v, pb)
    return _to_layout(out, n, layout).contiguous(), stats.contiguous()


@msa_conv2d_op.register_fake
def _msa_conv2d_fake(q, k, v, extra_k, extra_v, kernel_size, dilation, stride, border, scale, layout, backend,
                     chosen=False):
    B, h, Ho, Wo = _stats_shape(q, layout, stride)
    D = q.shape[4] if layout == "bhwd" else q.shape[2]
    shape = (B, h, Ho, Wo, D) if layout == "bhwd" else (B, h, D, Ho, Wo)
    return q.new_empty(shape), q.new_empty((B, h, Ho, Wo), dtype=_stats_dtype(q.dtype))


@torch.library.custom_op(BACKWARD_OP_NAME, mutates_args=())
def msa_conv2d_backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, extra_k: Optional[Tensor],
                           extra_v: Optional[Tensor], out: Tensor, stats: Tensor, kernel_size: list[int],
                           dilation: list[int], stride: list[int], border: str, scale: float, layout: str,
                           backend: str, chosen: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    pb = _problem(q, k, v, extra_k, extra_v, kernel_size, dilation, stride, border, scale, layout)
    be = _op_backend(pb, backend, chosen)
    n = be.layout
    t = lambda x: _to_layout(x, layout, n)  # noqa: E731
    dq, dk, dv, dek, dev = be.backward(t(dout), t(q), t(k), t(v), extra_k, extra_v, t(out), stats, pb)  # type: ignore[attr-defined]  # checked by has_explicit_backward
    back = lambda x: _to_layout(x, n, layout).contiguous()  # noqa: E731
    return (back(dq), back(dk), back(dv), q.new_empty((0,)) if dek is None else dek.contiguous(),
            q.new_empty((0,)) if dev is None else dev.contiguous())


@msa_conv2d_backward_op.register_fake
def _msa_conv2d_backward_fake(dout, q, k, v, extra_k, extra_v, out, stats, kernel_size, dilation, stride, border,
                              scale, layout, backend, chosen=False):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            q.new_empty((0,)) if extra_k is None else extra_k.new_empty(extra_k.shape),
            q.new_empty((0,)) if extra_v is None else extra_v.new_empty(extra_v.shape))


def _setup_context(ctx, inputs, output):
    q, k, v, extra_k, extra_v, kernel_size, dilation, stride, border, scale, layout, backend, chosen = inputs
    out, stats = output
    ctx.save_for_backward(q, k, v, extra_k, extra_v, out, stats)
    ctx.args = (list(kernel_size), list(dilation), list(stride), border, scale, layout, backend, chosen)  # the forward's backend


def _backward(ctx, dout, dstats):
    q, k, v, extra_k, extra_v, out, stats = ctx.saved_tensors
    dq, dk, dv, dek, dev = torch.ops.msaconv.msa_conv2d_backward(dout, q, k, v, extra_k, extra_v, out, stats, *ctx.args)
    has_extra = extra_k is not None
    return (dq, dk, dv, dek if has_extra else None, dev if has_extra else None,
            None, None, None, None, None, None, None, None)


torch.library.register_autograd(OP_NAME, _backward, setup_context=_setup_context)


def _dims(q_shape, extra_shape, kernel_size, layout) -> tuple[int, int, int, int]:
    """``(B, heads, head_dim, K + M)`` of a call, from shapes."""
    if layout == "bhwd":
        B, h, _, _, D = q_shape
    else:
        B, h, D, _, _ = q_shape
    M = extra_shape[2] if extra_shape is not None else 0
    return B, h, D, kernel_size[0] * kernel_size[1] + M


def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.msaconv.msa_conv2d)
    def _fwd_flops(q_shape, k_shape, v_shape, ek_shape, ev_shape, kernel_size, dilation, stride, border, scale,
                   layout, backend, *args, out_shape=None, **kwargs) -> int:
        B, h, D, KM = _dims(q_shape, ek_shape, kernel_size, layout)
        _, _, Ho, Wo = out_shape[1]  # stats [B, heads, H_out, W_out]
        return 4 * B * h * Ho * Wo * KM * D

    @register_flop_formula(torch.ops.msaconv.msa_conv2d_backward)
    def _bwd_flops(dout_shape, q_shape, k_shape, v_shape, ek_shape, ev_shape, out_shape_, stats_shape, kernel_size,
                   dilation, stride, border, scale, layout, backend, *args, out_shape=None, **kwargs) -> int:
        B, h, D, KM = _dims(q_shape, ek_shape, kernel_size, layout)
        _, _, Ho, Wo = stats_shape
        return 8 * B * h * Ho * Wo * KM * D


_register_flop_formulas()


def msa_conv2d_custom(q, k, v, extra_k, extra_v, pb: Problem, backend: str, chosen: bool) -> Tensor:
    """Run the custom op for a checked problem: ``backend`` chosen for it (``chosen``), or a request."""
    w = pb.window
    out, _ = torch.ops.msaconv.msa_conv2d(q, k, v, extra_k, extra_v, list(w.kernel), list(w.dilation),
                                          list(w.stride), w.border, float(pb.scale), pb.layout, backend, chosen)
    return out
