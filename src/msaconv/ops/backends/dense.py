"""Small-map MSA-Conv as dense attention over the whole map, weighted by exact window counts.

On a map of ``N = H*W`` keys, the window of query ``p`` is a multiset of key positions (outside slots
aside). Every border mode and stride is then one count matrix ``[P, N]``: how many window slots of query
``p`` land on key ``n`` (0 for a key outside the window; 2 where 'circular' wraps a small map onto the
same key twice), and its softmax weight is ``count * exp(logit)``. Under ``border='zeros'`` the window's
outside slots add ``#outside * exp(0)`` (zero keys, zero values) to the denominator. The attention is
then batched matrix products, forward and backward, the backward recomputing the weights from the saved
log-sum-exp like the fused kernel's.

That costs ``N`` keys per query instead of ``K``, so it only pays where the map is small: there the
window kernels spend their time on per-row set-up and half-empty vectors, while a batched GEMM on
``16 x 16`` tiles runs well. ``backend=None`` takes it for maps of
:data:`MIN_KEYS` to :data:`MAX_KEYS` keys (3x3 to 5x5; tic_nano's 4x4 stage at 32 px); a name forces it
for any map up to :data:`FORCED_MAX_KEYS` keys.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .. import shapes
from .._checks import Problem
from ._autograd import StatsBackwardFn

#: ``backend=None`` picks this backend for maps of ``MIN_KEYS`` to ``MAX_KEYS`` keys (``H*W``): measured
#: against the fused kernel (training step, 2 cores) it runs a 4x4 map in 0.55-0.9 of the time, 5x5 in 0.8,
#: but 6x6 in 1.3; on a 2x2 map the two are even (a batched GEMM of 2x2 tiles is all overhead).
MIN_KEYS, MAX_KEYS = 9, 25
#: ``backend='dense'`` runs maps of at most this many keys (the ``[P, N]`` logits per plane grow as ``N**2``).
FORCED_MAX_KEYS = 1024


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


#: exponents are clamped here from below: ``exp`` of far-negative floats leaves ATen's vector path (up to
#: 10x slower) and ``exp(-80) ~ 2e-35`` is nothing next to the row's largest weight, 1. (From above at 0.)
_EXP_FLOOR = -80.0


# one entry per map size and window: two [P, N] tensors, up to 8 MB each at FORCED_MAX_KEYS in float64
@functools.lru_cache(maxsize=32)
def _geometry(height: int, width: int, kernel: tuple[int, int], dilation: tuple[int, int], stride: tuple[int, int],
              border: str, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(count [P, N], mask [P, N], outside [P] | None)``: how many window slots of query ``p`` land on key
    ``n``; 0 where that is at least one, else ``-inf`` (for the row maxima); for 'zeros', how many slots
    fall outside the map (zero keys of logit 0)."""
    index, valid = shapes.slot_index(height, width, kernel, dilation, stride, border, device)  # [K, P]
    K, P = index.shape
    count = torch.zeros(P, height * width, dtype=dtype, device=device)
    rows = torch.arange(P, device=device).expand(K, P)
    count.index_put_((rows[valid], index[valid]), torch.ones((), dtype=dtype, device=device), accumulate=True)
    mask = torch.zeros_like(count).masked_fill_(count == 0, float("-inf"))
    outside = None
    if border == "zeros":
        n_out = (~valid).sum(0)
        if bool((n_out > 0).any()):
            outside = n_out.to(dtype)
    return count, mask, outside


class _Plane:
    """The per-call views: ``[B*h, D, .]`` planes of q (at the output positions), k, v and the geometry."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, extra_k: Tensor | None, extra_v: Tensor | None, pb: Problem):
        ct = _compute_dtype(pb.dtype)
        w = pb.window
        B, h, D, H, W = q.shape
        self.shape = (B, h, D, H, W)
        self.Ho, self.Wo = pb.out_size
        self.stride = w.stride
        self.scale = pb.scale
        self.ct = ct
        sh, sw = w.stride
        qs = q if (sh, sw) == (1, 1) else q[:, :, :, ::sh, ::sw]
        self.qs = qs.to(ct).reshape(B * h, D, self.Ho * self.Wo)
        self.k = k.to(ct).reshape(B * h, D, H * W)
        self.v = v.to(ct).reshape(B * h, D, H * W)
        self.ek = None if extra_k is None else extra_k.to(ct).reshape(B * h, -1, D)  # [BH, M, D]
        self.ev = None if extra_v is None else extra_v.to(ct).reshape(B * h, -1, D)
        self.count, self.mask, self.outside = _geometry(H, W, w.kernel, w.dilation, w.stride, w.border, q.device, ct)

    def logits(self) -> tuple[Tensor, Tensor | None]:
        """Scaled logits of every query against every key of the map ``[BH, P, N]`` and the extra keys ``[BH, P, M]``."""
        qt = self.qs.transpose(1, 2)
        s = torch.bmm(qt, self.k).mul_(self.scale)
        e = None if self.ek is None else torch.bmm(qt, self.ek.transpose(1, 2)).mul_(self.scale)
        return s, e

    def weights(self, s: Tensor, e: Tensor | None, m: Tensor) -> tuple[Tensor, Tensor | None]:
        """``count * exp(s - m)`` and ``exp(e - m)`` for row offsets ``m [BH, P]`` (in place on s, e)."""
        m = m.unsqueeze(-1)
        # ``m`` bounds the logits of the window's keys only: a key outside the window may lie far above it,
        # and exp would overflow to inf (inf * count 0 = NaN); the cap at 0 is exact for every counted key
        a = s.sub_(m).clamp_(_EXP_FLOOR, 0.0).exp_().mul_(self.count)
        return a, None if e is None else e.sub_(m).clamp_(_EXP_FLOOR, 0.0).exp_()


def _finite_or_zero(t: Tensor) -> Tensor:
    """Rows without any key (``-inf``) get the offset 0: their weights are all 0 anyway."""
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))


def _forward(pl: _Plane) -> tuple[Tensor, Tensor]:
    s, e = pl.logits()
    m = (s + pl.mask).amax(-1)  # [BH, P], the largest logit of the window's keys
    if e is not None:
        m = torch.maximum(m, e.amax(-1))
    if pl.outside is not None:  # the zero keys' logit 0, where the window has any
        m = torch.maximum(m, torch.zeros_like(pl.outside).masked_fill_(pl.outside == 0, float("-inf")))
    m = _finite_or_zero(m)
    a, ae = pl.weights(s, e, m)
    denom = a.sum(-1)
    if ae is not None:
        denom += ae.sum(-1)
    if pl.outside is not None:
        denom += pl.outside * m.neg().clamp_(_EXP_FLOOR, 0.0).exp()  # exact where outside > 0 (then m >= 0)
    lse = m + denom.log()  # -inf for a row without any key
    inv = denom.reciprocal().nan_to_num_(posinf=0.0).unsqueeze(-1)  # such a row's weights stay 0
    a.mul_(inv)
    out = torch.bmm(pl.v, a.transpose(1, 2))  # [BH, D, P]
    if ae is not None and pl.ev is not None:
        out.baddbmm_(pl.ev.transpose(1, 2), ae.mul_(inv).transpose(1, 2))
    return out, lse


def _backward(pl: _Plane, dout: Tensor, out: Tensor, lse: Tensor):
    s, e = pl.logits()
    a, ae = pl.weights(s, e, _finite_or_zero(lse))  # the forward's softmax weights
    dout_t = dout.transpose(1, 2)  # [BH, P, D]
    delta = (dout * out).sum(1).unsqueeze(-1)  # [BH, P, 1]
    dv = torch.bmm(dout, a)  # [BH, D, N]
    ds = torch.bmm(dout_t, pl.v).sub_(delta).mul_(a).mul_(pl.scale)  # d(logits) * scale, [BH, P, N]
    dqs = torch.bmm(pl.k, ds.transpose(1, 2))  # [BH, D, P]
    dk = torch.bmm(pl.qs, ds)  # [BH, D, N]
    dek = dev = None
    if ae is not None and pl.ek is not None and pl.ev is not None:
        dev = torch.bmm(ae.transpose(1, 2), dout_t)  # [BH, M, D]
        de = torch.bmm(dout_t, pl.ev.transpose(1, 2)).sub_(delta).mul_(ae).mul_(pl.scale)  # [BH, P, M]
        dqs.baddbmm_(pl.ek.transpose(1, 2), de.transpose(1, 2))
        dek = torch.bmm(de.transpose(1, 2), pl.qs.transpose(1, 2))  # [BH, M, D]
    return dqs, dk, dv, dek, dev


def _no_autocast(t: Tensor) -> torch.autocast:
    """The products run in the compute dtype chosen here, not in an enclosing autocast's (bf16 training)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


class DenseBackend:
    name = "dense"
    layout = "bhdhw"

    def can_run(self, pb: Problem) -> str | None:
        if pb.dropout_p > 0:
            return "attention dropout is not fused (the portable backend runs it)"
        n = pb.height * pb.width
        if n > FORCED_MAX_KEYS:
            return (f"the map has {n} keys (H*W), more than {FORCED_MAX_KEYS}: dense attention over the whole map "
                    "is for small maps")
        return None

    def workspace_bytes(self, pb: Problem) -> int:
        """The temporaries of one call: the ``[B*h, P, N + M]`` logits and their weights (the backward's
        weights and their gradient are as large), ``2 x B*h*P*(N + M)`` elements of the compute dtype."""
        Ho, Wo = pb.out_size
        elements = pb.batch * pb.heads * Ho * Wo * (pb.height * pb.width + pb.extra)
        return 2 * elements * _compute_dtype(pb.dtype).itemsize

    def declines(self, pb: Problem) -> str | None:
        """Why ``backend=None`` should pass it over: a map of fewer than 9 or more than 25 keys."""
        n = pb.height * pb.width
        if not MIN_KEYS <= n <= MAX_KEYS:
            return (f"the map has {n} keys (H*W), outside {MIN_KEYS}..{MAX_KEYS}, where the window kernels are "
                    "as fast or faster")
        return None

    def forward_with_stats(self, q, k, v, extra_k, extra_v, pb: Problem) -> tuple[Tensor, Tensor]:
        """``(out [B,h,D,Ho,Wo] in q's dtype, lse [B,h,Ho,Wo] in the compute dtype)``; not differentiable."""
        with torch.no_grad(), _no_autocast(q):
            pl = _Plane(q, k, v, extra_k, extra_v, pb)
            out, lse = _forward(pl)
        B, h, D, _, _ = pl.shape
        return out.view(B, h, D, pl.Ho, pl.Wo).to(pb.dtype), lse.view(B, h, pl.Ho, pl.Wo)

    def backward(self, dout, q, k, v, extra_k, extra_v, out, lse, pb: Problem):
        """Gradients ``(dq, dk, dv, d_extra_k | None, d_extra_v | None)`` from the saved ``out`` and ``lse``."""
        with torch.no_grad(), _no_autocast(q):
            pl = _Plane(q, k, v, extra_k, extra_v, pb)
            B, h, D, H, W = pl.shape
            P = pl.Ho * pl.Wo
            dqs, dk, dv, dek, dev = _backward(pl, dout.to(pl.ct).reshape(B * h, D, P),
                                              out.to(pl.ct).reshape(B * h, D, P), lse.reshape(B * h, P))
            if pl.stride == (1, 1):
                dq = dqs.view(B, h, D, H, W)
            else:
                dq = dqs.new_zeros((B, h, D, H, W))
                dq[:, :, :, :: pl.stride[0], :: pl.stride[1]] = dqs.view(B, h, D, pl.Ho, pl.Wo)
        dt = pb.dtype
        res = [dq.to(dt), dk.view(B, h, D, H, W).to(dt), dv.view(B, h, D, H, W).to(dt)]
        if extra_k is None or dek is None or dev is None:
            return (*res, None, None)
        return (*res, dek.view(extra_k.shape).to(dt), dev.view(extra_v.shape).to(dt))

    def forward(self, q, k, v, extra_k, extra_v, pb: Problem):
        return StatsBackwardFn.apply(self, q, k, v, extra_k, extra_v, pb)


BACKEND = DenseBackend()
