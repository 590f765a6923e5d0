"""``msa_conv2d`` as plain aten ops (gather + einsum + softmax), for export.

:func:`msa_conv2d_decomposed` computes exactly what the custom op ``msaconv::msa_conv2d`` computes, from
tensor arithmetic alone: the window tables are built with ``arange`` on the (possibly symbolic) sizes,
k and v are gathered with one ``index_select`` each, and the softmax is the same ``-inf``-safe softmax
every backend uses. Nothing reads a Python int off a tensor, so a graph traced with symbolic H and W
keeps them symbolic for every border mode (zeros, mask, clamp, circular), stride, dilation and extra
keys. The ONNX exporter (:mod:`msaconv.export`) swaps it in for the custom op, so the ONNX graph holds
standard ops only (Range, Gather, Einsum/MatMul, Where, Exp, ReduceSum...).

It materialises the ``K`` windows (``[B, heads, K, P, head_dim]``), which is fine for inference
graphs; training keeps using the fused backends through the custom op.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ._attn import safe_softmax


def _axis_table(length: int | torch.SymInt, kernel: int, dilation: int, stride: int, border: str,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """``(index [kernel, L_out] long, valid [kernel, L_out] bool)`` for one axis (see :mod:`.shapes`).

    Written with tensor arithmetic on ``length`` so that it stays symbolic under tracing.
    """
    n_out = (length - 1) // stride + 1
    y = torch.arange(n_out, device=device) * stride  # [L_out] query positions
    # the length as a 0-d tensor: exporters translate tensor-tensor arithmetic, not symbolic scalars
    lt = torch.ones(length, dtype=torch.long, device=device).sum()
    slots = torch.arange(kernel, device=device)[:, None]  # [k, 1]
    if border == "clamp":
        r = torch.remainder(y, dilation)
        g = torch.div(y, dilation, rounding_mode="floor")
        group_len = torch.div(lt - r + (dilation - 1), dilation, rounding_mode="floor")  # [L_out]
        start = torch.minimum((g - (kernel - 1) // 2).clamp(min=0), group_len - kernel)
        pos = (start[None, :] + slots) * dilation + r[None, :]
        return pos, torch.ones_like(pos, dtype=torch.bool)
    pos = y[None, :] + slots * dilation - dilation * (kernel - 1) // 2  # [k, L_out]
    if border == "circular":
        return torch.remainder(pos, lt), torch.ones_like(pos, dtype=torch.bool)
    valid = (pos >= 0) & (pos < lt)
    return torch.minimum(pos.clamp(min=0), lt - 1), valid


def msa_conv2d_decomposed(q: Tensor, k: Tensor, v: Tensor, extra_k: Optional[Tensor], extra_v: Optional[Tensor],
                          kernel_size: Sequence[int], dilation: Sequence[int], stride: Sequence[int], border: str,
                          scale: float, layout: str) -> Tensor:
    """The output of ``msaconv::msa_conv2d`` (arguments as the op's; no stats), from aten ops only.

    ``q, k, v`` are ``[B, heads, H, W, D]`` (``layout='bhwd'``) or ``[B, heads, D, H, W]``; the result is
    in the same layout. The arguments are assumed already checked (the op's caller did).
    """
    if layout == "bhdhw":  # [B,h,D,H,W] -> [B,h,H,W,D]
        q, k, v = (t.permute(0, 1, 3, 4, 2) for t in (q, k, v))
    B, h, H, W, D = q.shape
    (kh, kw), (dh, dw), (sh, sw) = tuple(kernel_size), tuple(dilation), tuple(stride)
    ct = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    dev = q.device
    ri, rv = _axis_table(H, kh, dh, sh, border, dev)  # [kh, Ho]
    ci, cv = _axis_table(W, kw, dw, sw, border, dev)  # [kw, Wo]
    Ho, Wo = ri.shape[1], ci.shape[1]
    index = (ri[:, None, :, None] * W + ci[None, :, None, :]).reshape(-1)  # [kh*kw*Ho*Wo]
    valid = (rv[:, None, :, None] & cv[None, :, None, :]).reshape(kh * kw, -1).t()  # [P, K]
    qs = q[:, :, ::sh, ::sw].to(ct).reshape(B, h, -1, D)  # [B, h, P, D]
    kf = k.to(ct).reshape(B, h, -1, D)  # [B, h, N, D]
    vf = v.to(ct).reshape(B, h, -1, D)
    K = kh * kw
    k_win = kf.index_select(2, index).reshape(B, h, K, -1, D)  # [B, h, K, P, D]
    logits = torch.einsum("bhpd,bhkpd->bhpk", qs, k_win) * scale  # [B, h, P, K]
    if border == "zeros":  # an outside key is a zero vector: logit 0, still in the softmax
        logits = torch.where(valid, logits, torch.zeros_like(logits))
    elif border == "mask":  # an outside slot is left out of the softmax
        logits = logits.masked_fill(~valid, float("-inf"))
    if extra_k is not None:
        ek = extra_k.to(ct)
        logits = torch.cat([logits, (qs @ ek.transpose(-1, -2)) * scale], dim=-1)  # [B, h, P, K+M]
    attn = safe_softmax(logits)
    a_win = attn[..., :K]
    if border in ("zeros", "mask"):
        a_win = torch.where(valid, a_win, torch.zeros_like(a_win))  # outside values are zero
    v_win = vf.index_select(2, index).reshape(B, h, K, -1, D)  # [B, h, K, P, D]
    out = torch.einsum("bhpk,bhkpd->bhpd", a_win, v_win)  # [B, h, P, D]
    if extra_v is not None:
        out = out + attn[..., K:] @ extra_v.to(ct)
    out = out.reshape(B, h, Ho, Wo, D).to(q.dtype)
    if layout == "bhdhw":
        out = out.permute(0, 1, 4, 2, 3)
    return out.contiguous()


def msa_conv2d_op_decomposition(q: Tensor, k: Tensor, v: Tensor, extra_k: Optional[Tensor],
                                extra_v: Optional[Tensor], kernel_size: Sequence[int], dilation: Sequence[int],
                                stride: Sequence[int], border: str, scale: float, layout: str,
                                backend: str, chosen: bool = False) -> tuple[Tensor, Tensor]:
    """A decomposition of the whole custom op ``(out, stats)``: ``stats`` is zeros (only backwards read it)."""
    out = msa_conv2d_decomposed(q, k, v, extra_k, extra_v, kernel_size, dilation, stride, border, scale, layout)
    B, h = q.shape[0], q.shape[1]
    Ho, Wo = (out.shape[2], out.shape[3]) if layout == "bhwd" else (out.shape[3], out.shape[4])
    st = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    return out, q.new_zeros((B, h, Ho, Wo), dtype=st)


def decomposition_table() -> dict:
    """``{op overload: decomposition}`` for ``ExportedProgram.run_decompositions``: the msaconv custom op
    as aten ops (add it to ``torch.export.default_decompositions()``)."""
    from . import library  # noqa: F401  (registers the op)

    return {torch.ops.msaconv.msa_conv2d.default: msa_conv2d_op_decomposition}
