"""Fused GPU backend: ``msa_conv2d`` forward and backward as Triton kernels (:mod:`._triton_kernels`).

Every option of the operator but attention dropout: each border mode, dilation, stride, rectangular and
even kernels, extra keys in the same softmax, layouts 'bhwd' and 'bhdhw' (read through their strides, no
copy), float32 / bfloat16 / float16 inputs with float32 accumulation (float64 too, under the interpreter
only, for gradient checks), head_dim 1 to 128 (padded to a power of two, at least 16, inside the kernel).
The forward keeps the per-query log-sum-exp ``[B, heads, H_out, W_out]`` for the backward, which
recomputes the weights. A query tile's logits against the keys its windows cover are one ``tl.dot``
(tensor cores), so the forward reads q, k and v about once from memory; it never materialises a window.

The backward computes dq per query tile, and dk, dv one of two ways:

- deterministic (no atomics): one program per tile of key positions gathers the gradient from every query
  that sees it, always in the same order, so two runs give the same bits;
- atomic: the dq kernel scatters dk and dv into float32 buffers with ``atomic_add`` (one pass less, not
  bit-reproducible).

:attr:`TritonBackend.deterministic` chooses: ``True`` / ``False``, or ``None`` (default) to follow
``torch.are_deterministic_algorithms_enabled()`` (PyTorch's switch for this trade).

``triton`` is imported only when a call can run here (a CUDA tensor, or a CPU tensor under
``TRITON_INTERPRET=1``, Triton's interpreter, which is how the CPU test suite runs these kernels); ``import
msaconv`` never imports it and a torch-only install keeps working. ``backend=None`` prefers this backend
on CUDA; on the CPU it declines (the interpreter is a test harness), and ``can_run`` says why it cannot
run anywhere else.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Any, Optional

import torch
from torch import Tensor

from .. import shapes
from .._checks import Problem
from ._autograd import StatsBackwardFn

#: the largest head_dim the kernels take (the accumulators of a tile live in registers)
MAX_HEAD_DIM = 128
#: queries per program (a tile of output positions) and keys per ``tl.dot`` chunk
QUERY_TILE = 64
KEY_CHUNK = 64
#: how float32 dot products use the tensor cores: 'tf32x3' (three TF32 products, about float32's accuracy:
#: ~1e-6 relative) or 'ieee' (CUDA-core FMAs: exact float32, large register tiles that spill on sm_90)
FLOAT32_DOT = "tf32x3"
#: warps per program; None picks 4, or 8 for float32 and head_dim > 64 (benchmarks/gpu sweeps it)
NUM_WARPS: int | None = None

_KERNELS: ModuleType | None = None
_IMPORT_ERROR: str | None = None


def installed() -> bool:
    """Whether a ``triton`` package is installed (found without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def unavailable_reason() -> str | None:
    """Why this backend cannot run in this process at all (None if it can run somewhere): no Triton, or a
    CPU-only torch without the interpreter. Imports nothing and touches no GPU driver."""
    if not installed():
        return "Triton is not installed (pip install triton; CUDA builds of torch bring it)"
    if torch.version.cuda is None and torch.version.hip is None and not _interpreting():
        return ("this torch build has no CUDA; CPU tensors run the kernels only under Triton's interpreter "
                "(TRITON_INTERPRET=1, set before msaconv is imported)")
    return None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels() -> tuple[ModuleType | None, str | None]:
    """``(kernel module, None)`` or ``(None, why it cannot be imported)``; imports triton on first use."""
    global _KERNELS, _IMPORT_ERROR
    if _KERNELS is None and _IMPORT_ERROR is None:
        if not installed():
            _IMPORT_ERROR = "Triton is not installed (pip install triton; CUDA builds of torch bring it)"
        else:
            try:
                from . import _triton_kernels

                _KERNELS = _triton_kernels
            except Exception as e:  # a broken install: say what failed
                _IMPORT_ERROR = f"importing Triton failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return _KERNELS, _IMPORT_ERROR


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tile(rows: int, cols: int, target: int) -> tuple[int, int]:
    """A power-of-two ``(TH, TW)`` tile of about ``target`` positions over a ``rows x cols`` grid, >= 16."""
    tw = min(_pow2(cols), 16, target)
    th = min(_pow2(rows), max(1, target // tw))
    return max(th, max(1, 16 // tw)), tw


def _chunk(row_span: int, col_span: int, target: int) -> tuple[int, int]:
    """A power-of-two ``(rows, cols)`` chunk of about ``target`` keys (>= 16, a ``tl.dot`` minimum)."""
    kc = min(_pow2(col_span), target)
    kr = min(_pow2(row_span), max(1, target // kc))
    return max(kr, max(1, 16 // kc)), kc


class _Geometry:
    """Per-call constants of the kernels (constexprs and the circular wrap ranges)."""

    def __init__(self, pb: Problem, kern: Any):
        w = pb.window
        (self.kh, self.kw), (self.dh, self.dw), (self.sh, self.sw) = w.kernel, w.dilation, w.stride
        self.ph, self.pw = shapes.pad_before(self.kh, self.dh), shapes.pad_before(self.kw, self.dw)
        self.border = kern.BORDER_CODE[w.border]
        self.H, self.W = pb.height, pb.width
        self.Ho, self.Wo = pb.out_size
        self.D, self.BD = pb.head_dim, max(16, _pow2(pb.head_dim))
        # 'circular': a multiple of H past the furthest reach before row 0, so (v + off) % H >= 0
        self.off_h = self.H * (self.ph // self.H + 1)
        self.off_w = self.W * (self.pw // self.W + 1)
        self.acc = _acc_dtype(pb.dtype)
        tl = kern.tl
        self.ACC = tl.float64 if self.acc == torch.float64 else tl.float32
        dot = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
               torch.bfloat16: tl.bfloat16}[pb.dtype]
        if pb.dtype == torch.bfloat16 and kern.INTERPRETED:
            dot = tl.float32  # the interpreter's tl.dot reads bfloat16 as raw uint16
        self.DT = dot
        self.PREC = {torch.float32: FLOAT32_DOT, torch.float64: "ieee"}.get(pb.dtype, "tf32")  # tf32: unused by halves
        hi = float(torch.tensor(pb.scale, dtype=torch.float32))
        self.scale = (hi, float(pb.scale) - hi)

    def const(self) -> dict:
        return dict(D=self.D, BD=self.BD, KH=self.kh, KW=self.kw, DH=self.dh, DW=self.dw, SH=self.sh, SW=self.sw,
                    PH=self.ph, PW=self.pw, BORDER=self.border, DT=self.DT, ACC=self.ACC, PREC=self.PREC,
                    num_warps=self.warps)

    @property
    def warps(self) -> int:
        """8 warps where a tile's registers need them (float32's split tf32x3 operands, head_dim > 64): at 4,
        ptxas for sm_90 reports 255 registers and spills there; 4 elsewhere."""
        if NUM_WARPS is not None:
            return NUM_WARPS
        return 8 if self.acc == torch.float64 or self.DT == self.ACC or self.BD > 64 else 4

    def query_tiles(self) -> dict:
        """Tile of output positions and chunk of keys for the forward and dq kernels."""
        th, tw = _tile(self.Ho, self.Wo, QUERY_TILE)
        row_span = self.sh * (th - 1) + (self.kh - 1) * self.dh + 1
        col_span = self.sw * (tw - 1) + (self.kw - 1) * self.dw + 1
        kr, kc = _chunk(row_span, col_span, KEY_CHUNK)
        return dict(TH=th, TW=tw, KR=kr, KC=kc)

    def query_grid(self, tiles: dict, maps: int) -> tuple[int, int]:
        """The launch grid of the forward and dq kernels: one program per query tile of each of ``maps`` maps."""
        return triton_cdiv(self.Ho, tiles["TH"]) * triton_cdiv(self.Wo, tiles["TW"]), maps

    def key_tiles(self) -> dict:
        """Tile of key positions and chunk of queries for the deterministic dk/dv kernel."""
        th, tw = _tile(self.H, self.W, QUERY_TILE)
        rows = (th + (self.kh - 1) * self.dh) // self.sh + 1
        cols = (tw + (self.kw - 1) * self.dw) // self.sw + 1
        qr, qc = _chunk(rows, cols, KEY_CHUNK)
        return dict(TH=th, TW=tw, QR=qr, QC=qc)

    def wraps(self) -> tuple[int, int, int, int]:
        """``(MR_LO, MR_HI, MC_LO, MC_HI)``: the virtual images ``r + m*H`` of a key that windows can read."""
        if self.border != 3:
            return 0, 0, 0, 0
        lo_h, hi_h = -self.ph, (self.Ho - 1) * self.sh - self.ph + (self.kh - 1) * self.dh
        lo_w, hi_w = -self.pw, (self.Wo - 1) * self.sw - self.pw + (self.kw - 1) * self.dw
        return lo_h // self.H, hi_h // self.H, lo_w // self.W, hi_w // self.W


def _strides5(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.stride())


def _strides4(t: Tensor | None) -> tuple[int, ...]:
    return (0, 0, 0, 0) if t is None else tuple(int(s) for s in t.stride())


def _empty_like_layout(t: Tensor, shape: tuple[int, int, int, int, int], dtype: torch.dtype, zero: bool) -> Tensor:
    """A ``[B, h, H, W, D]`` tensor laid out like ``t`` (channels-first when t is), so that the caller's
    layout conversion costs no copy."""
    B, h, H, W, D = shape
    alloc = torch.zeros if zero else torch.empty
    if D > 1 and t.stride(4) != 1:
        return alloc((B, h, D, H, W), dtype=dtype, device=t.device).permute(0, 1, 3, 4, 2)
    return alloc(shape, dtype=dtype, device=t.device)


_Extra = Optional[Tensor]


def _prepare(pb: Problem, extra_k: _Extra, extra_v: _Extra) -> tuple[Any, _Geometry, _Extra, _Extra]:
    """``(kernel module, the call's geometry, extra_k, extra_v)``, the extras None when there are none."""
    kern, reason = kernels()
    if kern is None:
        raise RuntimeError(f"msa_conv2d: backend 'triton' is unavailable: {reason}")
    ek, ev = (extra_k, extra_v) if pb.extra else (None, None)
    return kern, _Geometry(pb, kern), ek, ev


def _device_guard(t: Tensor) -> Any:
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    import contextlib

    return contextlib.nullcontext()


class TritonBackend:
    name = "triton"
    layout = "bhwd"
    #: backward without atomics: True, False, or None to follow torch.are_deterministic_algorithms_enabled()
    deterministic: bool | None = None

    def can_run(self, pb: Problem) -> str | None:
        if pb.dropout_p > 0:
            return "attention dropout is not fused (the portable backend runs it)"
        if pb.head_dim > MAX_HEAD_DIM:
            return f"head_dim {pb.head_dim} > {MAX_HEAD_DIM} (the kernels keep a tile's accumulators in registers)"
        dev = pb.device.type
        if dev == "cpu":
            if not _interpreting():
                return "CPU tensors run only under Triton's interpreter (TRITON_INTERPRET=1, for tests)"
        elif dev != "cuda":
            return f"runs on CUDA tensors (or CPU ones under TRITON_INTERPRET=1), got device {pb.device}"
        if pb.dtype == torch.float64 and not _interpreting():
            return "float64 runs only under Triton's interpreter (the GPU kernels take float32, bfloat16, float16)"
        kern, reason = kernels()
        if kern is None:
            return reason
        if dev == "cpu" and not kern.INTERPRETED:
            return "the Triton kernels were loaded without TRITON_INTERPRET=1, so they cannot take CPU tensors"
        if dev == "cuda" and not kern.INTERPRETED and pb.dtype == torch.bfloat16:
            major, _ = torch.cuda.get_device_capability(pb.device)
            if major < 8 and torch.version.hip is None:
                return f"bfloat16 needs compute capability 8.0+, {torch.cuda.get_device_name(pb.device)} has {major}.x"
        return None

    def declines(self, pb: Problem) -> str | None:
        """``backend=None`` takes it on CUDA only: on the CPU the interpreter is a test harness."""
        if pb.device.type == "cpu":
            return "CPU tensors run under Triton's interpreter, a test harness (name backend='triton' to force it)"
        return None

    def _deterministic(self) -> bool:
        if self.deterministic is not None:
            return bool(self.deterministic)
        return torch.are_deterministic_algorithms_enabled()

    def forward_with_stats(self, q, k, v, extra_k, extra_v, pb: Problem) -> tuple[Tensor, Tensor]:
        """``(out [B,h,Ho,Wo,D] in q's dtype, lse [B,h,Ho,Wo] in the accumulation dtype)``; not differentiable."""
        kern, g, ek, ev = _prepare(pb, extra_k, extra_v)
        B, h = pb.batch, pb.heads
        with torch.no_grad():
            out = _empty_like_layout(q, (B, h, g.Ho, g.Wo, g.D), pb.dtype, zero=False)
            lse = torch.empty((B, h, g.Ho, g.Wo), dtype=g.acc, device=q.device)
            tiles = g.query_tiles()
            with _device_guard(q):
                kern._fwd[g.query_grid(tiles, B * h)](
                    q, k, v, q if ek is None else ek, q if ev is None else ev, out, lse,
                    *_strides5(q), *_strides5(k), *_strides5(v), *_strides4(ek), *_strides4(ev), *_strides5(out),
                    g.H, g.W, g.Ho, g.Wo, h, pb.extra, g.off_h, g.off_w, *g.scale,
                    **g.const(), **tiles, BM=_extra_block(pb.extra), HAS_EXTRA=ek is not None)
        return out, lse

    def backward(self, dout, q, k, v, extra_k, extra_v, out, lse, pb: Problem):
        """Gradients ``(dq, dk, dv, d_extra_k | None, d_extra_v | None)`` from the saved ``out`` and ``lse``."""
        kern, g, ek, ev = _prepare(pb, extra_k, extra_v)
        B, h = pb.batch, pb.heads
        atomic = not self._deterministic()
        with torch.no_grad(), _device_guard(q):
            delta = (dout.to(g.acc) * out.to(g.acc)).sum(-1).contiguous()  # [B, h, Ho, Wo]
            lse = lse.contiguous()
            shape = (B, h, g.H, g.W, g.D)
            dq = _empty_like_layout(q, shape, pb.dtype, zero=(g.sh, g.sw) != (1, 1))
            if atomic:
                dk = torch.zeros(shape, dtype=g.acc, device=q.device)
                dv = torch.zeros(shape, dtype=g.acc, device=q.device)
            else:
                dk = _empty_like_layout(k, shape, pb.dtype, zero=False)
                dv = _empty_like_layout(k, shape, pb.dtype, zero=False)  # the same strides as dk
            tiles = g.query_tiles()
            kern._bwd_dq[g.query_grid(tiles, B * h)](
                q, k, v, q if ek is None else ek, q if ev is None else ev, dout, lse, delta, dq, dk, dv,
                *_strides5(q), *_strides5(k), *_strides5(v), *_strides4(ek), *_strides4(ev), *_strides5(dout),
                *_strides5(dk), *_strides5(dq), g.H, g.W, g.Ho, g.Wo, h, pb.extra, g.off_h, g.off_w, *g.scale,
                **g.const(), **tiles, BM=_extra_block(pb.extra), HAS_EXTRA=ek is not None, ATOMIC=atomic)
            if not atomic:
                kt = g.key_tiles()
                grid = (triton_cdiv(g.H, kt["TH"]) * triton_cdiv(g.W, kt["TW"]), B * h)
                kern._bwd_dkv[grid](
                    q, k, v, dout, lse, delta, dk, dv,
                    *_strides5(q), *_strides5(k), *_strides5(v), *_strides5(dout), *_strides5(dk),
                    g.H, g.W, g.Ho, g.Wo, h, *g.wraps(), *g.scale, **g.const(), **kt)
            dek = dev = None
            if ek is not None and ev is not None:
                dek, dev = self._extra_grads(kern, g, q, ek, ev, dout, lse, delta, pb)
        if atomic:
            dk, dv = dk.to(pb.dtype), dv.to(pb.dtype)
        return dq, dk, dv, dek, dev

    def _extra_grads(self, kern, g: _Geometry, q, ek, ev, dout, lse, delta, pb: Problem):
        B, h, M = pb.batch, pb.heads, pb.extra
        P = g.Ho * g.Wo
        bm, bq = _extra_block(M), 64
        m_blocks = triton_cdiv(M, bm)
        # enough programs to fill a GPU, each over a fixed slice of the queries (a fixed summation order)
        nsplit = max(1, min(triton_cdiv(P, bq), 512 // max(1, B * h * m_blocks)))
        per_split = triton_cdiv(triton_cdiv(P, nsplit), bq) * bq
        nsplit = triton_cdiv(P, per_split)
        part_k = torch.empty((B * h, nsplit, M, g.D), dtype=g.acc, device=q.device)
        part_v = torch.empty_like(part_k)
        kern._bwd_extra[(m_blocks, nsplit, B * h)](
            q, ek, ev, dout, lse, delta, part_k, part_v,
            *_strides5(q), *_strides4(ek), *_strides4(ev), *_strides5(dout),
            g.Ho, g.Wo, h, M, per_split, nsplit, *g.scale,
            D=g.D, BD=g.BD, SH=g.sh, SW=g.sw, BQ=bq, BM=bm, DT=g.DT, ACC=g.ACC, PREC=g.PREC, num_warps=g.warps)
        dek = part_k.sum(1).view(B, h, M, g.D).to(pb.dtype)
        dev = part_v.sum(1).view(B, h, M, g.D).to(pb.dtype)
        return dek, dev

    def forward(self, q, k, v, extra_k, extra_v, pb: Problem):
        return StatsBackwardFn.apply(self, q, k, v, extra_k, extra_v, pb)

    def info(self) -> str:
        """Which Triton is used, or why it is unavailable."""
        kern, reason = kernels()
        if kern is None:
            return f"unavailable: {reason}"
        return f"triton {kern.triton.__version__}{' (interpreter)' if kern.INTERPRETED else ''}"


def triton_cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _extra_block(m: int) -> int:
    return max(16, min(64, _pow2(max(1, m))))


BACKEND = TritonBackend()
