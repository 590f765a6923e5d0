"""Memory-light MSA-Conv in plain PyTorch: any device, any option, never K copies of k or v.

The forward walks the K window slots one at a time. Slot ``n`` reads one ``[B, heads, H_out, W_out, D]``
tile of k, reduces it against q to one column of logits, and drops it; a second walk accumulates the
weighted tiles of v. For 'zeros', 'mask' and 'circular' the tiles are strided *views* of k and v padded
once (with zeros, or by wrapping around), so a slot costs no copy; for 'clamp', whose window is not a
shift of the query grid, a tile is gathered by its flat key index. Only q, k, v and the
``[B, heads, H_out, W_out, K+M]`` weights are kept for the backward, which walks the slots again and
adds the key and value gradients back into the padded (or flat) buffers. Memory beyond the inputs is
``O(P*(K+M)*heads + N*D*heads)``, against ``O(P*K*D*heads)`` for an unfold.
"""

from __future__ import annotations

import typing

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import shapes
from .._attn import dropout_keep, safe_softmax
from .._checks import Problem


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


class _Plan:
    """Per-call constants: how slot ``n`` reads its tile, which slots are outside, what the border does."""

    def __init__(self, pb: Problem, device: torch.device):
        w = pb.window
        (kh, kw), (dh, dw) = w.kernel, w.dilation
        self.border = w.border
        self.K = w.size
        self.scale = pb.scale
        self.H, self.W = pb.height, pb.width
        self.Ho, self.Wo = pb.out_size
        self.stride = w.stride
        index, valid = shapes.slot_index(pb.height, pb.width, w.kernel, w.dilation, w.stride, w.border, device)
        self.any_invalid = bool((~valid).any())
        self.valid = valid.t().reshape(self.Ho, self.Wo, self.K)  # [Ho, Wo, K]
        self.shifted = w.border != "clamp"
        if self.shifted:  # slot (i, j) = the padded map's strided window starting at (i*dh, j*dw)
            top, left = shapes.pad_before(kh, dh), shapes.pad_before(kw, dw)
            self.pad = (top, dh * (kh - 1) - top, left, dw * (kw - 1) - left)  # top, bottom, left, right
            self.starts = [(i * dh, j * dw) for i in range(kh) for j in range(kw)]
            if w.border == "circular":
                self.rows = torch.arange(-top, pb.height + self.pad[1], device=device) % pb.height
                self.cols = torch.arange(-left, pb.width + self.pad[3], device=device) % pb.width
        else:
            self.index = index  # [K, P] flat key positions


class _Tiles:
    """Slot tiles ``[B, h, Ho, Wo, D]`` of one ``[B, h, H, W, D]`` tensor."""

    def __init__(self, t: torch.Tensor, plan: _Plan):
        self.plan = plan
        B, h, H, W, D = t.shape
        if not plan.shifted:
            self.src = t.reshape(B, h, H * W, D)
        elif plan.border == "circular":
            self.src = t.index_select(2, plan.rows).index_select(3, plan.cols)
        else:
            top, bottom, left, right = plan.pad
            self.src = F.pad(t, (0, 0, left, right, top, bottom)) if any(plan.pad) else t

    def __getitem__(self, n: int) -> torch.Tensor:
        p = self.plan
        if not p.shifted:
            B, h, _, D = self.src.shape
            return self.src.index_select(2, p.index[n]).view(B, h, p.Ho, p.Wo, D)
        (r0, c0), (sh, sw) = p.starts[n], p.stride
        return self.src[:, :, r0 : r0 + sh * (p.Ho - 1) + 1 : sh, c0 : c0 + sw * (p.Wo - 1) + 1 : sw]


class _TileGrads:
    """Accumulates the gradient of each slot tile back into a ``[B, h, H, W, D]`` gradient."""

    def __init__(self, shape: tuple[int, ...], plan: _Plan, dtype: torch.dtype, device: torch.device):
        self.plan = plan
        B, h, H, W, D = shape
        self.shape = shape
        if not plan.shifted:
            self.buf = torch.zeros((B, h, H * W, D), dtype=dtype, device=device)
        else:
            top, bottom, left, right = plan.pad
            self.buf = torch.zeros((B, h, H + top + bottom, W + left + right, D), dtype=dtype, device=device)

    def add(self, n: int, g: torch.Tensor) -> None:
        p = self.plan
        if not p.shifted:
            self.buf.index_add_(2, p.index[n], g.flatten(2, 3))
            return
        (r0, c0), (sh, sw) = p.starts[n], p.stride
        self.buf[:, :, r0 : r0 + sh * (p.Ho - 1) + 1 : sh, c0 : c0 + sw * (p.Wo - 1) + 1 : sw].add_(g)

    def result(self) -> torch.Tensor:
        p = self.plan
        B, h, H, W, D = self.shape
        if not p.shifted:
            return self.buf.view(B, h, H, W, D)
        if p.border == "circular":  # fold the wrapped border back onto the map
            rows = torch.zeros((B, h, H, self.buf.shape[3], D), dtype=self.buf.dtype, device=self.buf.device)
            rows.index_add_(2, p.rows, self.buf)
            out = torch.zeros(self.shape, dtype=self.buf.dtype, device=self.buf.device)
            return out.index_add_(3, p.cols, rows)
        top, _, left, _ = p.pad
        return self.buf[:, :, top : top + H, left : left + W]


def _logits(qs: torch.Tensor, kt: _Tiles, plan: _Plan, extra_k: torch.Tensor | None) -> torch.Tensor:
    """``[B, h, Ho, Wo, K+M]`` logits with the border rule applied (pure function, differentiable)."""
    logits = torch.stack([torch.einsum("bhywd,bhywd->bhyw", qs, kt[n]) for n in range(plan.K)], dim=-1)
    logits = logits * plan.scale
    if plan.any_invalid:
        fill = 0.0 if plan.border == "zeros" else float("-inf")
        logits = logits.masked_fill(~plan.valid, fill)
    if extra_k is not None:
        B, h, Ho, Wo, D = qs.shape
        ex = (qs.reshape(B, h, Ho * Wo, D) @ extra_k.transpose(-1, -2)).view(B, h, Ho, Wo, -1)
        logits = torch.cat([logits, ex * plan.scale], dim=-1)
    return logits


def _window_weights(a: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """The weights applied to the window values: outside slots hold zero values ('zeros') or no weight."""
    a_win = a[..., : plan.K]
    return a_win.masked_fill(~plan.valid, 0.0) if plan.any_invalid else a_win


def _forward(plan: _Plan, qs: Tensor, k: Tensor, v: Tensor, extra_k: Tensor | None, extra_v: Tensor | None,
             keep: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(out [B,h,Ho,Wo,D], attn [B,h,Ho,Wo,K+M])``; ``attn`` is before dropout."""
    attn = safe_softmax(_logits(qs, _Tiles(k, plan), plan, extra_k))
    a = attn * keep if keep is not None else attn
    a_win = _window_weights(a, plan)
    vt = _Tiles(v, plan)
    out = torch.zeros_like(qs)
    for n in range(plan.K):
        out.addcmul_(a_win[..., n : n + 1], vt[n])
    if extra_v is not None:
        B, h, Ho, Wo, D = qs.shape
        out = out + (a[..., plan.K :].reshape(B, h, Ho * Wo, -1) @ extra_v).view(B, h, Ho, Wo, D)
    return out, attn


def _backward(plan: _Plan, qs, k, v, extra_k, extra_v, attn, keep, dout):
    """``(dqs, dk, dv, d_extra_k, d_extra_v)`` from the weights before dropout (``attn``) and its keep-mask."""
    K = plan.K
    B, h, Ho, Wo, D = qs.shape
    dout = dout.contiguous()
    kt, vt = _Tiles(k, plan), _Tiles(v, plan)
    # gradient of the weights actually applied: <dout, v_n> (zero for the zero values outside the image)
    dA = torch.stack([torch.einsum("bhywd,bhywd->bhyw", dout, vt[n]) for n in range(K)], dim=-1)
    if extra_v is not None:
        ex = (dout.reshape(B, h, Ho * Wo, D) @ extra_v.transpose(-1, -2)).view(B, h, Ho, Wo, -1)
        dA = torch.cat([dA, ex], dim=-1)
    if plan.any_invalid:
        dA[..., :K] = dA[..., :K].masked_fill(~plan.valid, 0.0)
    a = attn if keep is None else attn * keep
    if keep is not None:
        dA = dA * keep
    dlogits = attn * (dA - (attn * dA).sum(dim=-1, keepdim=True))  # softmax backward
    if plan.any_invalid and plan.border == "zeros":
        dlogits[..., :K] = dlogits[..., :K].masked_fill(~plan.valid, 0.0)  # a constant logit 0
    dlogits = dlogits * plan.scale
    a_win = _window_weights(a, plan)
    dq = torch.zeros_like(qs)
    dk = _TileGrads(tuple(k.shape), plan, qs.dtype, qs.device)
    dv = _TileGrads(tuple(v.shape), plan, qs.dtype, qs.device)
    for n in range(K):
        g = dlogits[..., n : n + 1]
        dq.addcmul_(g, kt[n])
        dk.add(n, g * qs)
        dv.add(n, a_win[..., n : n + 1] * dout)
    dek = dev = None
    if extra_k is not None:
        de = dlogits[..., K:].reshape(B, h, Ho * Wo, -1)  # [B, h, P, M]
        qf, gf = qs.reshape(B, h, Ho * Wo, D), dout.reshape(B, h, Ho * Wo, D)
        dq = dq + (de @ extra_k).view(B, h, Ho, Wo, D)
        dek = de.transpose(-1, -2) @ qf
        dev = a[..., K:].reshape(B, h, Ho * Wo, -1).transpose(-1, -2) @ gf
    return dq, dk.result(), dv.result(), dek, dev


class _PortableMSAConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qs, k, v, extra_k, extra_v, plan: _Plan, dropout_p: float):
        # qs [B,h,Ho,Wo,D] strided queries; k, v [B,h,H,W,D]; extra_* [B,h,M,D]
        keep = None
        if dropout_p > 0:
            shape = (qs.shape[0], qs.shape[1], plan.Ho * plan.Wo, plan.K + (0 if extra_k is None else extra_k.shape[2]))
            keep = dropout_keep(shape, dropout_p, qs.device).to(qs.dtype).view(*qs.shape[:4], -1)
        out, attn = _forward(plan, qs, k, v, extra_k, extra_v, keep)
        ctx.plan = plan
        ctx.save_for_backward(qs, k, v, extra_k, extra_v, attn, keep)
        return out

    @staticmethod
    def backward(ctx, dout):
        qs, k, v, extra_k, extra_v, attn, keep = ctx.saved_tensors
        return (*_backward(ctx.plan, qs, k, v, extra_k, extra_v, attn, keep, dout), None, None)


def _prepare(q: Tensor, k: Tensor, v: Tensor | None, extra_k: Tensor | None, extra_v: Tensor | None,
             pb: Problem) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    ct = _compute_dtype(pb.dtype)
    sh, sw = pb.window.stride
    qs = q[:, :, ::sh, ::sw].to(ct)

    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(ct)

    return qs, k.to(ct), cast(v), cast(extra_k), cast(extra_v)


class PortableBackend:
    name = "portable"
    fallback = True  # backend=None takes it only where no fused backend can run
    layout = "bhwd"

    def can_run(self, pb: Problem) -> str | None:
        return None  # plain PyTorch ops: every option, dtype and device

    def forward(self, q, k, v, extra_k, extra_v, pb: Problem):
        plan = _Plan(pb, q.device)
        out = _PortableMSAConv.apply(*_prepare(q, k, v, extra_k, extra_v, pb), plan, pb.dropout_p)
        return out.to(pb.dtype)

    def forward_with_stats(self, q, k, v, extra_k, extra_v, pb: Problem):
        """``(out, stats)`` without autograd, for the custom op (no dropout there); ``stats`` is unused
        ``[B, heads, H_out, W_out]`` zeros (the backward recomputes the weights from q and k)."""
        plan = _Plan(pb, q.device)
        with torch.no_grad():
            qs, kc, vc, ek, ev = _prepare(q, k, v, extra_k, extra_v, pb)
            out, _ = _forward(plan, qs, kc, typing.cast(Tensor, vc), ek, ev, None)  # v given: vc is a tensor
        return out.to(pb.dtype), q.new_zeros((pb.batch, pb.heads) + pb.out_size, dtype=_compute_dtype(pb.dtype))

    def backward(self, dout, q, k, v, extra_k, extra_v, out, stats, pb: Problem):
        """Gradients ``(dq, dk, dv, d_extra_k | None, d_extra_v | None)`` of a call without dropout."""
        plan = _Plan(pb, q.device)
        B, h, H, W, D = q.shape
        sh, sw = pb.window.stride
        with torch.no_grad():
            qs, kc, vc, ek, ev = _prepare(q, k, v, extra_k, extra_v, pb)
            attn = safe_softmax(_logits(qs, _Tiles(kc, plan), plan, ek))
            dqs, dk, dv, dek, dev = _backward(plan, qs, kc, vc, ek, ev, attn, None, dout.to(qs.dtype))
            dq = torch.zeros((B, h, H, W, D), dtype=qs.dtype, device=q.device)
            dq[:, :, ::sh, ::sw] = dqs
        cast = (lambda t: None if t is None else t.to(pb.dtype))
        return cast(dq), cast(dk), cast(dv), cast(dek), cast(dev)

    def weights(self, q, k, extra_k, pb: Problem):
        """Differentiable window weights ``[B, heads, H_out, W_out, K+M]`` without K copies of k."""
        plan = _Plan(pb, q.device)
        qs, kc, _, ek, _ = _prepare(q, k, None, extra_k, None, pb)
        return safe_softmax(_logits(qs, _Tiles(kc, plan), plan, ek)).to(pb.dtype)


BACKEND = PortableBackend()
