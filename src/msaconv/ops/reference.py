"""The oracle: MSA-Conv written the obvious way, slow on purpose.

It materialises every window (``[B, heads, P, K, head_dim]``, K times the size of k), builds its key
positions from the definition with its own code (not :mod:`msaconv.ops.shapes`, so that a mistake there
shows up as a disagreement), and lets autograd do the backward. Any float dtype; bfloat16/float16 are
computed in float32. Every fast backend is tested against this file.
"""

from __future__ import annotations

import torch

from ._attn import dropout_keep, safe_softmax
from ._checks import Problem


def _axis_positions(length: int, out: int, kernel: int, dilation: int, stride: int, border: str):
    """Key position and validity for each (output position, slot) of one axis: ``[out, kernel]`` each."""
    rows = []
    for o in range(out):
        y = o * stride
        if border == "clamp":
            # NATTEN's neighbourhood: stay inside y's dilation group, slide inward at the border.
            r, g = y % dilation, y // dilation
            members = list(range(r, length, dilation))
            start = min(max(g - (kernel - 1) // 2, 0), len(members) - kernel)
            rows.append([(members[start + i], True) for i in range(kernel)])
            continue
        reach = (dilation * (kernel - 1)) // 2
        row = []
        for i in range(kernel):
            p = y - reach + i * dilation
            if border == "circular":
                row.append((p % length, True))
            else:
                row.append((min(max(p, 0), length - 1), 0 <= p < length))
        rows.append(row)
    pos = torch.tensor([[p for p, _ in row] for row in rows], dtype=torch.long)
    ok = torch.tensor([[v for _, v in row] for row in rows], dtype=torch.bool)
    return pos, ok


def window_logits_and_values(q, k, v, pb: Problem, extra_k=None):
    """Materialised windows: ``(logits [B,h,P,K+M], v_win [B,h,P,K,D] or None, valid [P,K])``."""
    win = pb.window
    (kh, kw), (dh, dw), (sh, sw) = win.kernel, win.dilation, win.stride
    B, h, H, W, D = q.shape
    Ho, Wo = pb.out_size
    rp, rv = _axis_positions(H, Ho, kh, dh, sh, win.border)  # [Ho, kh]
    cp, cv = _axis_positions(W, Wo, kw, dw, sw, win.border)  # [Wo, kw]
    flat = (rp[:, None, :, None] * W + cp[None, :, None, :]).reshape(Ho * Wo, kh * kw).to(q.device)  # [P, K]
    valid = (rv[:, None, :, None] & cv[None, :, None, :]).reshape(Ho * Wo, kh * kw).to(q.device)
    qs = q[:, :, ::sh, ::sw].reshape(B, h, Ho * Wo, D)  # [B, h, P, D]
    k_win = k.reshape(B, h, H * W, D)[:, :, flat]  # [B, h, P, K, D]
    logits = torch.einsum("bhpd,bhpkd->bhpk", qs, k_win) * pb.scale
    if win.border == "zeros":  # an outside key is a zero vector: logit 0, still in the softmax
        logits = torch.where(valid, logits, torch.zeros_like(logits))
    elif win.border == "mask":  # an outside slot is left out of the softmax
        logits = logits.masked_fill(~valid, float("-inf"))
    if extra_k is not None:
        logits = torch.cat([logits, torch.einsum("bhpd,bhmd->bhpm", qs, extra_k) * pb.scale], dim=-1)
    v_win = None
    if v is not None:
        v_win = v.reshape(B, h, H * W, D)[:, :, flat]
        v_win = torch.where(valid[..., None], v_win, torch.zeros_like(v_win))
    return logits, v_win, valid


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.bfloat16, torch.float16) else t.dtype


def msa_conv2d_reference(q, k, v, pb: Problem, extra_k=None, extra_v=None, training_dropout: bool = True):
    """``out [B, heads, H_out, W_out, D]`` in layout 'bhwd' (the dispatcher converts layouts)."""
    ct = _compute_dtype(q)
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    extra_k = None if extra_k is None else extra_k.to(ct)
    extra_v = None if extra_v is None else extra_v.to(ct)
    B, h, _, _, D = q.shape
    Ho, Wo = pb.out_size
    K = pb.window.size
    logits, v_win, _ = window_logits_and_values(q, k, v, pb, extra_k)
    attn = safe_softmax(logits)
    if pb.dropout_p > 0 and training_dropout:
        attn = attn * dropout_keep(tuple(attn.shape), pb.dropout_p, q.device).to(ct)
    out = torch.einsum("bhpk,bhpkd->bhpd", attn[..., :K], v_win)
    if extra_v is not None:
        out = out + attn[..., K:] @ extra_v
    return out.reshape(B, h, Ho, Wo, D).to(pb.dtype)


def msa_conv2d_weights_reference(q, k, pb: Problem, extra_k=None):
    """Window weights ``[B, heads, H_out, W_out, K+M]`` (no dropout)."""
    ct = _compute_dtype(q)
    logits, _, _ = window_logits_and_values(q.to(ct), k.to(ct), None, pb,
                                            None if extra_k is None else extra_k.to(ct))
    B, h = q.shape[:2]
    Ho, Wo = pb.out_size
    return safe_softmax(logits).reshape(B, h, Ho, Wo, -1).to(pb.dtype)
