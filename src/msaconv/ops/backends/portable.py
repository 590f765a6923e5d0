"""Memory-light MSA-Conv in plain PyTorch: any device, any option, never K copies of k or v.

The forward walks the K window slots one at a time: slot ``n`` gathers one ``[B, heads, P, D]`` slice of
k (and later of v) by its flat key index, reduces it against q to one column of logits, and drops it.
Only q, k, v and the ``[B, heads, P, K+M]`` weights are kept for the backward, which walks the slots
again and scatters the key and value gradients back with ``index_add_``. Memory beyond the inputs is
``O(P*(K+M)*heads + P*D*heads)``, against ``O(P*K*D*heads)`` for an unfold.
"""

from __future__ import annotations

import torch

from .. import shapes
from .._attn import dropout_keep, safe_softmax
from .._checks import Problem


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


class _Plan:
    """Per-call constants: flat key index and validity of each slot, and what the border does."""

    def __init__(self, pb: Problem, device: torch.device):
        w = pb.window
        self.index, valid = shapes.slot_index(pb.height, pb.width, w.kernel, w.dilation, w.stride, w.border, device)
        self.valid_t = valid.t().contiguous()  # [P, K]
        self.any_invalid = bool((~valid).any())
        self.border = w.border
        self.K = w.size
        self.scale = pb.scale
        self.Ho, self.Wo = pb.out_size
        self.stride = w.stride


def _logits(qs: torch.Tensor, kf: torch.Tensor, plan: _Plan, extra_k: torch.Tensor | None) -> torch.Tensor:
    """``[B, h, P, K+M]`` logits with the border rule applied (pure function, differentiable)."""
    cols = [torch.linalg.vecdot(qs, kf.index_select(2, plan.index[n])) for n in range(plan.K)]
    logits = torch.stack(cols, dim=-1) * plan.scale
    if plan.any_invalid:
        fill = 0.0 if plan.border == "zeros" else float("-inf")
        logits = logits.masked_fill(~plan.valid_t, fill)
    if extra_k is not None:
        logits = torch.cat([logits, (qs @ extra_k.transpose(-1, -2)) * plan.scale], dim=-1)
    return logits


class _PortableMSAConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qs, kf, vf, extra_k, extra_v, plan: _Plan, dropout_p: float):
        # qs [B,h,P,D] strided queries; kf, vf [B,h,N,D]; extra_* [B,h,M,D]
        attn = safe_softmax(_logits(qs, kf, plan, extra_k))  # [B,h,P,K+M]
        keep = None
        if dropout_p > 0:
            keep = dropout_keep(tuple(attn.shape), dropout_p, attn.device).to(attn.dtype)
        a = attn * keep if keep is not None else attn
        a_win = a[..., : plan.K]
        if plan.any_invalid:  # outside slots hold zero values ('zeros') or zero weight ('mask')
            a_win = a_win.masked_fill(~plan.valid_t, 0.0)
        out = torch.zeros_like(qs)
        for n in range(plan.K):
            out.addcmul_(a_win[..., n : n + 1], vf.index_select(2, plan.index[n]))
        if extra_v is not None:
            out = out + a[..., plan.K :] @ extra_v
        ctx.plan = plan
        ctx.save_for_backward(qs, kf, vf, extra_k, extra_v, attn, keep)
        return out

    @staticmethod
    def backward(ctx, dout):
        qs, kf, vf, extra_k, extra_v, attn, keep = ctx.saved_tensors
        return (*_backward(ctx.plan, qs, kf, vf, extra_k, extra_v, attn, keep, dout), None, None)


def _backward(plan: _Plan, qs, kf, vf, extra_k, extra_v, attn, keep, dout):
    """``(dq, dk, dv, d_extra_k, d_extra_v)`` from the weights before dropout (``attn``) and its keep-mask."""
    K = plan.K
    dout = dout.contiguous()
    # d(weights actually applied) then through dropout: dA = keep * <dout, v>
    dA = torch.stack([torch.linalg.vecdot(dout, vf.index_select(2, plan.index[n])) for n in range(K)], dim=-1)
    if extra_v is not None:
        dA = torch.cat([dA, dout @ extra_v.transpose(-1, -2)], dim=-1)
    if plan.any_invalid:
        dA[..., :K] = dA[..., :K].masked_fill(~plan.valid_t, 0.0)
    a = attn if keep is None else attn * keep
    if keep is not None:
        dA = dA * keep
    dlogits = attn * (dA - (attn * dA).sum(dim=-1, keepdim=True))  # softmax backward
    if plan.any_invalid and plan.border == "zeros":
        dlogits[..., :K] = dlogits[..., :K].masked_fill(~plan.valid_t, 0.0)  # constant logit 0
    dlogits = dlogits * plan.scale
    a_win = a[..., :K]
    if plan.any_invalid:
        a_win = a_win.masked_fill(~plan.valid_t, 0.0)
    dq = torch.zeros_like(qs)
    dk = torch.zeros_like(kf)
    dv = torch.zeros_like(vf)
    for n in range(K):
        idx = plan.index[n]
        g = dlogits[..., n : n + 1]
        dq.addcmul_(g, kf.index_select(2, idx))
        dk.index_add_(2, idx, g * qs)
        dv.index_add_(2, idx, a_win[..., n : n + 1] * dout)
    dek = dev = None
    if extra_k is not None:
        de = dlogits[..., K:]  # [B,h,P,M]
        dq = dq + de @ extra_k
        dek = de.transpose(-1, -2) @ qs
        dev = a[..., K:].transpose(-1, -2) @ dout
    return dq, dk, dv, dek, dev


class PortableBackend:
    name = "portable"
    layout = "bhwd"

    def can_run(self, pb: Problem) -> str | None:
        return None  # plain PyTorch ops: every option, dtype and device

    def forward(self, q, k, v, extra_k, extra_v, pb: Problem):
        ct = _compute_dtype(pb.dtype)
        plan = _Plan(pb, q.device)
        B, h, H, W, D = q.shape
        sh, sw = pb.window.stride
        qs = q[:, :, ::sh, ::sw].to(ct).reshape(B, h, plan.Ho * plan.Wo, D)
        kf = k.to(ct).reshape(B, h, H * W, D)
        vf = v.to(ct).reshape(B, h, H * W, D)
        ek = None if extra_k is None else extra_k.to(ct)
        ev = None if extra_v is None else extra_v.to(ct)
        out = _PortableMSAConv.apply(qs, kf, vf, ek, ev, plan, pb.dropout_p)
        return out.reshape(B, h, plan.Ho, plan.Wo, D).to(pb.dtype)

    def forward_with_stats(self, q, k, v, extra_k, extra_v, pb: Problem):
        """``(out, stats)`` without autograd, for the custom op (no dropout there); ``stats`` is unused
        ``[B, heads, H_out, W_out]`` zeros (the backward recomputes the weights from q and k)."""
        with torch.no_grad():
            out = self.forward(q, k, v, extra_k, extra_v, pb)
        return out, q.new_zeros((pb.batch, pb.heads) + pb.out_size, dtype=_compute_dtype(pb.dtype))

    def backward(self, dout, q, k, v, extra_k, extra_v, out, stats, pb: Problem):
        """Gradients ``(dq, dk, dv, d_extra_k | None, d_extra_v | None)`` of a call without dropout."""
        ct = _compute_dtype(pb.dtype)
        plan = _Plan(pb, q.device)
        B, h, H, W, D = q.shape
        sh, sw = pb.window.stride
        with torch.no_grad():
            qs = q[:, :, ::sh, ::sw].to(ct).reshape(B, h, plan.Ho * plan.Wo, D)
            kf = k.to(ct).reshape(B, h, H * W, D)
            vf = v.to(ct).reshape(B, h, H * W, D)
            ek = None if extra_k is None else extra_k.to(ct)
            ev = None if extra_v is None else extra_v.to(ct)
            attn = safe_softmax(_logits(qs, kf, plan, ek))
            g = dout.to(ct).reshape(B, h, plan.Ho * plan.Wo, D)
            dqs, dk, dv, dek, dev = _backward(plan, qs, kf, vf, ek, ev, attn, None, g)
            dq = torch.zeros((B, h, H, W, D), dtype=ct, device=q.device)
            dq[:, :, ::sh, ::sw] = dqs.reshape(B, h, plan.Ho, plan.Wo, D)
        cast = (lambda t: None if t is None else t.to(pb.dtype))
        return cast(dq), cast(dk.reshape(B, h, H, W, D)), cast(dv.reshape(B, h, H, W, D)), cast(dek), cast(dev)

    def weights(self, q, k, extra_k, pb: Problem):
        """Differentiable window weights ``[B, heads, H_out, W_out, K+M]`` without K copies of k."""
        ct = _compute_dtype(pb.dtype)
        plan = _Plan(pb, q.device)
        B, h, H, W, D = q.shape
        sh, sw = pb.window.stride
        qs = q[:, :, ::sh, ::sw].to(ct).reshape(B, h, plan.Ho * plan.Wo, D)
        kf = k.to(ct).reshape(B, h, H * W, D)
        attn = safe_softmax(_logits(qs, kf, plan, None if extra_k is None else extra_k.to(ct)))
        return attn.reshape(B, h, plan.Ho, plan.Wo, -1).to(pb.dtype)


BACKEND = PortableBackend()
