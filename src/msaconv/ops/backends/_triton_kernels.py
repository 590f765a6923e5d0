"""Triton kernels of the ``triton`` backend (imported only by :mod:`.triton`, and only when a call needs them).

Geometry (:mod:`msaconv.ops.shapes`). Along each axis, output position ``o``
has a *first window position* ``f(o)``: ``s*o - d*(k-1)//2`` for 'zeros', 'mask' and 'circular', and the
clamped start ``start*d + r`` of NATTEN's rule for 'clamp'. Its window is ``f, f+d, ..., f+(k-1)d`` in
*virtual* coordinates: for 'zeros'/'mask' a virtual position outside the map is a zero key/value (taken
in the softmax with logit 0, or left out), for 'circular' it reads the map modulo H and W, for 'clamp' it
is always inside. So "key ``vr`` is in the window of query ``o``" is ``0 <= vr - f(o) <= (k-1)d`` and
``(vr - f(o)) % d == 0``, separable in rows and columns, the same test for every border.

Forward (``_fwd``): one program per 2-D tile of ``TH x TW`` output positions of one (image, head). It
walks the rectangle of virtual key positions that the tile's windows cover, ``KR x KC`` keys at a time
(a flattened chunk), computes their logits with one ``tl.dot`` (tensor cores; fp32 accumulation), drops
the pairs outside each query's window with the membership test above and folds them into an online
softmax; the extra keys follow in chunks of ``BM``. It stores the output and the natural log-sum-exp.

Backward: ``delta = rowsum(dout * out)`` (computed by the caller), then

- ``_bwd_dq``: the forward's walk again, ``dS = P * (dP - delta)``, ``dq = scale * dS @ k`` (+ extra keys);
  with ``ATOMIC`` it also scatters ``dS^T @ q`` and ``P^T @ dout`` into fp32 key/value gradients with
  atomic adds (fast, not bit-reproducible);
- ``_bwd_dkv`` (the deterministic option, no atomics): one program per tile of *key* positions walks
  every query whose window can reach the tile (each virtual image of the tile for 'circular') and
  gathers its key and value gradients in registers; one program owns each key, in a fixed order;
- ``_bwd_extra``: the extra keys' gradients, one partial sum per (head, query split), summed by the caller.

The window geometry (kernel, dilation, stride, reach) is passed as runtime integers, so one compiled
kernel serves every window (Triton still specialises the ones equal to 1: stride 1, dilation 1); the border,
head_dim padding, tile sizes and dtypes are compile-time constants.

Every tile size is a power of two (``tl.arange``) and every ``tl.dot`` operand at least 16 wide; head_dim
is padded to ``BD`` (a power of two, >= 16) with masked loads. ``DT`` is the dtype the dot operands are
cast to: the input dtype, except bfloat16 under Triton's interpreter, whose ``tl.dot`` mishandles it
(float32 there). ``ACC`` is the accumulation dtype (float32; float64 for float64 inputs).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

#: whether these kernels were decorated under Triton's interpreter (it is read when ``triton.jit`` runs)
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

BORDER_CODE = {"zeros": 0, "mask": 1, "clamp": 2, "circular": 3}


@triton.jit
def _first(o, L, S, K, DIL, PAD, BORDER: tl.constexpr):
    """First virtual input position of the window of output position(s) ``o`` along an axis of length L."""
    y = o * S
    if BORDER == 2:  # clamp: NATTEN's rule, inside y's dilation group
        r = y % DIL
        g = y // DIL
        group_len = (L - r + DIL - 1) // DIL
        start = tl.minimum(tl.maximum(g - (K - 1) // 2, 0), group_len - K)
        f = start * DIL + r
    else:
        f = y - PAD
    return f


@triton.jit
def _member(vpos, f, K, DIL):
    """Whether virtual position ``vpos`` is a slot of the window starting at ``f`` (broadcasting)."""
    delta = vpos - f
    return (delta >= 0) & (delta <= (K - 1) * DIL) & (delta % DIL == 0)


@triton.jit
def _span(o0, T: tl.constexpr, LO, L, S, K, DIL, PAD, BORDER: tl.constexpr):
    """``(lo, hi)``: the virtual positions the windows of outputs ``o0 .. o0+T-1`` (those < LO) cover.

    From scalars only (loop bounds): ``f`` is non-decreasing in the output position for every border but
    'clamp' with dilation > 1, whose windows interleave dilation groups; there the bound is the reach
    ``[y - (k-1)d, y + (k-1)d]`` cut to the map (wider, still exact after the membership test)."""
    o1 = tl.minimum(o0 + T, LO) - 1
    lo = _first(o0, L, S, K, DIL, PAD, BORDER)
    hi = _first(o1, L, S, K, DIL, PAD, BORDER) + (K - 1) * DIL
    if BORDER == 2:
        lo = tl.where(DIL > 1, tl.maximum(o0 * S - (K - 1) * DIL, 0), lo)
        hi = tl.where(DIL > 1, tl.minimum(o1 * S + (K - 1) * DIL, L - 1), hi)
    return lo, hi


@triton.jit
def _real(vpos, L, OFF, BORDER: tl.constexpr):
    """``(real position, inside)`` of virtual positions: wrapped for 'circular' (``OFF`` >= the reach, a
    multiple of L, keeps the modulo non-negative), else themselves, inside when in ``[0, L)``."""
    if BORDER == 3:
        real = (vpos + OFF) % L
        inside = vpos == vpos
    else:
        real = vpos
        inside = (vpos >= 0) & (vpos < L)
    return real, inside


@triton.jit
def _scale(scale_hi, scale_lo, ACC: tl.constexpr):
    # the scale arrives as two float32 halves so that a float64 call keeps it to ~1e-15
    one = tl.full([], 1.0, ACC)
    return scale_hi * one + scale_lo * one


@triton.jit
def _image_head(pid_bh, NH):
    """``(bh, b, hh)``: flat (image, head) program index ``pid_bh``, its image and its head, as int64 offsets."""
    return pid_bh.to(tl.int64), (pid_bh // NH).to(tl.int64), (pid_bh % NH).to(tl.int64)


@triton.jit
def _tile_positions(pid_t, ROWS, COLS, TH: tl.constexpr, TW: tl.constexpr):
    """``(y0, x0, y, x, valid)``: the origin and the ``TH*TW`` positions (row-major) of tile ``pid_t`` of a
    ``ROWS x COLS`` grid (output positions for the query kernels, key positions for ``_bwd_dkv``)."""
    n_tw = tl.cdiv(COLS, TW)
    y0 = (pid_t // n_tw) * TH
    x0 = (pid_t % n_tw) * TW
    t = tl.arange(0, TH * TW)
    y = y0 + t // TW
    x = x0 + t % TW
    return y0, x0, y, x, (y < ROWS) & (x < COLS)


@triton.jit
def _tile_program(ROWS, COLS, NH, scale_hi, scale_lo, D: tl.constexpr, BD: tl.constexpr, TH: tl.constexpr,
                  TW: tl.constexpr, ACC: tl.constexpr):
    """What the tiled kernels start with: ``(bh, b, hh)`` of :func:`_image_head` (grid axis 1), ``(y0, x0, y,
    x, valid)`` of :func:`_tile_positions` (grid axis 0, a ``ROWS x COLS`` grid), the channel lanes ``dd``
    and their mask ``dm``, the ``[TH*TW, BD]`` load mask of the tile and the logit scale (:func:`_scale`)."""
    bh, b, hh = _image_head(tl.program_id(1), NH)
    y0, x0, y, x, valid = _tile_positions(tl.program_id(0), ROWS, COLS, TH, TW)
    dd = tl.arange(0, BD)
    dm = dd < D
    return bh, b, hh, y0, x0, y, x, valid, dd, dm, valid[:, None] & dm[None, :], _scale(scale_hi, scale_lo, ACC)


@triton.jit
def _tile_windows(y0, x0, yo, xo, H, W, HO, WO, KH, KW, DH, DW, SH, SW, PH, PW, BORDER: tl.constexpr,
                  TH: tl.constexpr, TW: tl.constexpr):
    """``(fr, fc, r_lo, r_hi, c_lo, c_hi)``: the first window row and column of each query of a tile, and
    the virtual key rows and columns the tile's windows cover."""
    fr = _first(yo, H, SH, KH, DH, PH, BORDER)
    fc = _first(xo, W, SW, KW, DW, PW, BORDER)
    r_lo, r_hi = _span(y0, TH, HO, H, SH, KH, DH, PH, BORDER)
    c_lo, c_hi = _span(x0, TW, WO, W, SW, KW, DW, PW, BORDER)
    return fr, fc, r_lo, r_hi, c_lo, c_hi


@triton.jit
def _chunk_offsets(R: tl.constexpr, C: tl.constexpr):
    """``(rows, cols)`` of the ``R*C`` positions of a flattened ``R x C`` chunk, relative to its corner."""
    j = tl.arange(0, R * C)
    return j // C, j % C


@triton.jit
def _key_rows(vr, fr, H, KH, DH, OFF_H, BORDER: tl.constexpr):
    """``(row_ok [TQ, N], rr, r_in)`` of virtual key rows ``vr``: whether each query's window holds the row,
    and the real row with whether it is inside the map."""
    rr, r_in = _real(vr, H, OFF_H, BORDER)
    return _member(vr[None, :], fr[:, None], KH, DH), rr, r_in


@triton.jit
def _key_chunk(row_ok, rr, r_in, vc, fc, W, KW, DW, OFF_W, k_base, v_base, sky, skx, skd, svy, svx, svd, dd, dm,
               BORDER: tl.constexpr, DT: tl.constexpr):
    """``(member [TQ, N], inside [N], rc, kt, vt)`` of a chunk of virtual keys (rows ``rr`` with ``row_ok``,
    columns ``vc``): which queries' windows hold each key, and the keys and values (zero outside the map)."""
    member = row_ok & _member(vc[None, :], fc[:, None], KW, DW)
    rc, c_in = _real(vc, W, OFF_W, BORDER)
    inside = r_in & c_in
    if BORDER == 1:  # mask: outside slots are left out of the softmax
        member = member & inside[None, :]
    lm = inside[:, None] & dm[None, :]
    kt = tl.load(k_base + rr[:, None] * sky + rc[:, None] * skx + dd[None, :] * skd, mask=lm, other=0.0).to(DT)
    vt = tl.load(v_base + rr[:, None] * svy + rc[:, None] * svx + dd[None, :] * svd, mask=lm, other=0.0).to(DT)
    return member, inside, rc, kt, vt


@triton.jit
def _extra_chunk(EK, EV, b, hh, m0, M, sekb, sekh, sekm, sekd, sevb, sevh, sevm, sevd, dd, dm,
                 BM: tl.constexpr, DT: tl.constexpr):
    """``(em, valid, lm, ekt, evt)``: extra keys ``m0 .. m0+BM-1`` of (image, head), their keys and values."""
    em = m0 + tl.arange(0, BM)
    emask = em < M
    lm = emask[:, None] & dm[None, :]
    ekt = tl.load(EK + b * sekb + hh * sekh + em[:, None] * sekm + dd[None, :] * sekd, mask=lm, other=0.0).to(DT)
    evt = tl.load(EV + b * sevb + hh * sevh + em[:, None] * sevm + dd[None, :] * sevd, mask=lm, other=0.0).to(DT)
    return em, emask, lm, ekt, evt


@triton.jit
def _softmax_step(q, kt, vt, member, m_i, l_i, acc, scale, DT: tl.constexpr, ACC: tl.constexpr,
                  PREC: tl.constexpr):
    """Fold one chunk of keys (``kt``, ``vt`` ``[N, BD]``; ``member`` ``[TQ, N]``) into the online softmax."""
    s = tl.dot(q, tl.trans(kt), out_dtype=ACC, input_precision=PREC) * scale
    s = tl.where(member, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_use)
    p = tl.exp(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(DT), vt, out_dtype=ACC, input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def _fwd(Q, K, V, EK, EV, O, LSE,
         sqb, sqh, sqy, sqx, sqd, skb, skh, sky, skx, skd, svb, svh, svy, svx, svd,
         sekb, sekh, sekm, sekd, sevb, sevh, sevm, sevd, sob, soh, soy, sox, sod,
         H, W, HO, WO, NH, M, OFF_H, OFF_W, scale_hi, scale_lo,
         D: tl.constexpr, BD: tl.constexpr,
         KH, KW, DH, DW, SH, SW, PH, PW, BORDER: tl.constexpr,
         TH: tl.constexpr, TW: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr, BM: tl.constexpr,
         HAS_EXTRA: tl.constexpr, DT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    bh, b, hh, y0, x0, yo, xo, qv, dd, dm, qm, scale = _tile_program(HO, WO, NH, scale_hi, scale_lo, D, BD, TH, TW,
                                                                     ACC)

    q = tl.load(Q + b * sqb + hh * sqh + (yo * SH)[:, None] * sqy + (xo * SW)[:, None] * sqx + dd[None, :] * sqd,
                mask=qm, other=0.0).to(DT)
    fr, fc, r_lo, r_hi, c_lo, c_hi = _tile_windows(y0, x0, yo, xo, H, W, HO, WO, KH, KW, DH, DW, SH, SW, PH, PW,
                                                   BORDER, TH, TW)

    k_base = K + b * skb + hh * skh
    v_base = V + b * svb + hh * svh
    m_i = tl.full([TH * TW], float("-inf"), ACC)
    l_i = tl.zeros([TH * TW], ACC)
    acc = tl.zeros([TH * TW, BD], ACC)
    jr, jc = _chunk_offsets(KR, KC)
    for r0 in range(r_lo, r_hi + 1, KR):
        row_ok, rr, r_in = _key_rows(r0 + jr, fr, H, KH, DH, OFF_H, BORDER)
        for c0 in range(c_lo, c_hi + 1, KC):
            member, inside, rc, kt, vt = _key_chunk(row_ok, rr, r_in, c0 + jc, fc, W, KW, DW, OFF_W, k_base, v_base,
                                                    sky, skx, skd, svy, svx, svd, dd, dm, BORDER, DT)
            m_i, l_i, acc = _softmax_step(q, kt, vt, member, m_i, l_i, acc, scale, DT, ACC, PREC)
    if HAS_EXTRA:
        for m0 in range(0, M, BM):
            em, emask, lm, ekt, evt = _extra_chunk(EK, EV, b, hh, m0, M, sekb, sekh, sekm, sekd, sevb, sevh, sevm,
                                                   sevd, dd, dm, BM, DT)
            member = qv[:, None] & emask[None, :]
            m_i, l_i, acc = _softmax_step(q, ekt, evt, member, m_i, l_i, acc, scale, DT, ACC, PREC)

    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    tl.store(O + b * sob + hh * soh + yo[:, None] * soy + xo[:, None] * sox + dd[None, :] * sod,
             out.to(O.dtype.element_ty), mask=qm)
    tl.store(LSE + bh * HO * WO + yo * WO + xo, lse, mask=qv)


@triton.jit
def _bwd_dq(Q, K, V, EK, EV, DO, LSE, DELTA, DQ, DK, DV,
            sqb, sqh, sqy, sqx, sqd, skb, skh, sky, skx, skd, svb, svh, svy, svx, svd,
            sekb, sekh, sekm, sekd, sevb, sevh, sevm, sevd, sob, soh, soy, sox, sod,
            sgb, sgh, sgy, sgx, sgd, sdb, sdh, sdy, sdx, sdd,
            H, W, HO, WO, NH, M, OFF_H, OFF_W, scale_hi, scale_lo,
            D: tl.constexpr, BD: tl.constexpr,
            KH, KW, DH, DW, SH, SW, PH, PW, BORDER: tl.constexpr,
            TH: tl.constexpr, TW: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr, BM: tl.constexpr,
            HAS_EXTRA: tl.constexpr, ATOMIC: tl.constexpr, DT: tl.constexpr, ACC: tl.constexpr,
            PREC: tl.constexpr):
    """dq per query tile (strides ``sq*`` for q, ``sd*`` for dq, ``so*`` for dout); with ATOMIC, also dk and
    dv (``[B, heads, H, W, D]`` buffers of dtype ACC with strides ``sg*``) by atomic adds."""
    bh, b, hh, y0, x0, yo, xo, qv, dd, dm, qm, scale = _tile_program(HO, WO, NH, scale_hi, scale_lo, D, BD, TH, TW,
                                                                     ACC)

    q_off = b * sqb + hh * sqh + (yo * SH)[:, None] * sqy + (xo * SW)[:, None] * sqx + dd[None, :] * sqd
    q = tl.load(Q + q_off, mask=qm, other=0.0).to(DT)
    do = tl.load(DO + b * sob + hh * soh + yo[:, None] * soy + xo[:, None] * sox + dd[None, :] * sod,
                 mask=qm, other=0.0).to(DT)
    stat = bh * HO * WO + yo * WO + xo
    lse = tl.load(LSE + stat, mask=qv, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)  # a query with no key: every weight is 0 (masked below)
    delta = tl.load(DELTA + stat, mask=qv, other=0.0)
    fr, fc, r_lo, r_hi, c_lo, c_hi = _tile_windows(y0, x0, yo, xo, H, W, HO, WO, KH, KW, DH, DW, SH, SW, PH, PW,
                                                   BORDER, TH, TW)

    k_base = K + b * skb + hh * skh
    v_base = V + b * svb + hh * svh
    g_base = b * sgb + hh * sgh
    dq = tl.zeros([TH * TW, BD], ACC)
    jr, jc = _chunk_offsets(KR, KC)
    for r0 in range(r_lo, r_hi + 1, KR):
        row_ok, rr, r_in = _key_rows(r0 + jr, fr, H, KH, DH, OFF_H, BORDER)
        row_ok = row_ok & qv[:, None]
        for c0 in range(c_lo, c_hi + 1, KC):
            member, inside, rc, kt, vt = _key_chunk(row_ok, rr, r_in, c0 + jc, fc, W, KW, DW, OFF_W, k_base, v_base,
                                                    sky, skx, skd, svy, svx, svd, dd, dm, BORDER, DT)
            s = tl.dot(q, tl.trans(kt), out_dtype=ACC, input_precision=PREC) * scale
            p = tl.where(member, tl.exp(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(vt), out_dtype=ACC, input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(DT), kt, out_dtype=ACC, input_precision=PREC)
            if ATOMIC:
                used = tl.max(member.to(tl.int32), 0) > 0
                gm = (inside & used)[:, None] & dm[None, :]
                g_off = g_base + rr[:, None] * sgy + rc[:, None] * sgx + dd[None, :] * sgd
                dk_c = tl.dot(tl.trans(ds.to(DT)), q, out_dtype=ACC, input_precision=PREC) * scale
                dv_c = tl.dot(tl.trans(p.to(DT)), do, out_dtype=ACC, input_precision=PREC)
                tl.atomic_add(DK + g_off, dk_c, mask=gm)
                tl.atomic_add(DV + g_off, dv_c, mask=gm)
    if HAS_EXTRA:
        for m0 in range(0, M, BM):
            em, emask, lm, ekt, evt = _extra_chunk(EK, EV, b, hh, m0, M, sekb, sekh, sekm, sekd, sevb, sevh, sevm,
                                                   sevd, dd, dm, BM, DT)
            s = tl.dot(q, tl.trans(ekt), out_dtype=ACC, input_precision=PREC) * scale
            p = tl.where(qv[:, None] & emask[None, :], tl.exp(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(evt), out_dtype=ACC, input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(DT), ekt, out_dtype=ACC, input_precision=PREC)
    dq_off = b * sdb + hh * sdh + (yo * SH)[:, None] * sdy + (xo * SW)[:, None] * sdx + dd[None, :] * sdd
    tl.store(DQ + dq_off, (dq * scale).to(DQ.dtype.element_ty), mask=qm)


@triton.jit
def _bwd_dkv(Q, K, V, DO, LSE, DELTA, DK, DV,
             sqb, sqh, sqy, sqx, sqd, skb, skh, sky, skx, skd, svb, svh, svy, svx, svd,
             sob, soh, soy, sox, sod, sgb, sgh, sgy, sgx, sgd,
             H, W, HO, WO, NH, MR_LO, MR_HI, MC_LO, MC_HI, scale_hi, scale_lo,
             D: tl.constexpr, BD: tl.constexpr,
             KH, KW, DH, DW, SH, SW, PH, PW, BORDER: tl.constexpr,
             TH: tl.constexpr, TW: tl.constexpr, QR: tl.constexpr, QC: tl.constexpr,
             DT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    """dk, dv of a ``TH x TW`` tile of key positions, gathered from every query that sees it (no atomics).

    ``dk``/``dv`` are written with strides ``sg*`` (shared by both). For 'circular', key row ``r`` is
    read at virtual rows ``r + m*H`` for ``m`` in ``[MR_LO, MR_HI]`` (columns alike); elsewhere m = 0."""
    bh, b, hh, ty0, tx0, ky, kx, kv, dd, dm, km, scale = _tile_program(H, W, NH, scale_hi, scale_lo, D, BD, TH, TW,
                                                                       ACC)

    kt = tl.load(K + b * skb + hh * skh + ky[:, None] * sky + kx[:, None] * skx + dd[None, :] * skd,
                 mask=km, other=0.0).to(DT)
    vt = tl.load(V + b * svb + hh * svh + ky[:, None] * svy + kx[:, None] * svx + dd[None, :] * svd,
                 mask=km, other=0.0).to(DT)
    q_base = Q + b * sqb + hh * sqh
    o_base = DO + b * sob + hh * soh
    s_base = bh * HO * WO
    ky_hi = tl.minimum(ty0 + TH, H) - 1
    kx_hi = tl.minimum(tx0 + TW, W) - 1
    # how far a window reaches from its query position: [y - lo_reach, y + hi_reach] holds it
    if BORDER == 2:
        lo_reach = (KH - 1) * DH
        hi_reach = (KH - 1) * DH
        lo_reach_c = (KW - 1) * DW
        hi_reach_c = (KW - 1) * DW
    else:
        lo_reach = PH
        hi_reach = (KH - 1) * DH - PH
        lo_reach_c = PW
        hi_reach_c = (KW - 1) * DW - PW

    dk = tl.zeros([TH * TW, BD], ACC)
    dv = tl.zeros([TH * TW, BD], ACC)
    jr, jc = _chunk_offsets(QR, QC)
    for mr in range(MR_LO, MR_HI + 1):
        vy = ky + mr * H
        y_lo = ty0 + mr * H - hi_reach  # queries at input rows y_lo..y_hi can reach the tile
        y_hi = ky_hi + mr * H + lo_reach
        yo_lo = (tl.maximum(y_lo, 0) + SH - 1) // SH
        yo_hi = tl.where(y_hi >= 0, tl.minimum(tl.maximum(y_hi, 0) // SH, HO - 1), -1)
        for mc in range(MC_LO, MC_HI + 1):
            vx = kx + mc * W
            x_lo = tx0 + mc * W - hi_reach_c
            x_hi = kx_hi + mc * W + lo_reach_c
            xo_lo = (tl.maximum(x_lo, 0) + SW - 1) // SW
            xo_hi = tl.where(x_hi >= 0, tl.minimum(tl.maximum(x_hi, 0) // SW, WO - 1), -1)
            for r0 in range(yo_lo, yo_hi + 1, QR):
                qyo = r0 + jr
                frq = _first(qyo, H, SH, KH, DH, PH, BORDER)
                row_ok = _member(vy[:, None], frq[None, :], KH, DH) & kv[:, None]
                for c0 in range(xo_lo, xo_hi + 1, QC):
                    qxo = c0 + jc
                    qv = (qyo <= yo_hi) & (qxo <= xo_hi)
                    fcq = _first(qxo, W, SW, KW, DW, PW, BORDER)
                    member = row_ok & _member(vx[:, None], fcq[None, :], KW, DW) & qv[None, :]
                    qm = qv[:, None] & dm[None, :]
                    qc = tl.load(q_base + (qyo * SH)[:, None] * sqy + (qxo * SW)[:, None] * sqx + dd[None, :] * sqd,
                                 mask=qm, other=0.0).to(DT)
                    doc = tl.load(o_base + qyo[:, None] * soy + qxo[:, None] * sox + dd[None, :] * sod,
                                  mask=qm, other=0.0).to(DT)
                    stat = s_base + qyo * WO + qxo
                    lse = tl.load(LSE + stat, mask=qv, other=0.0)
                    lse = tl.where(lse == float("-inf"), 0.0, lse)
                    delta = tl.load(DELTA + stat, mask=qv, other=0.0)
                    st = tl.dot(kt, tl.trans(qc), out_dtype=ACC, input_precision=PREC) * scale
                    pt = tl.where(member, tl.exp(st - lse[None, :]), 0.0)
                    dv += tl.dot(pt.to(DT), doc, out_dtype=ACC, input_precision=PREC)
                    dpt = tl.dot(vt, tl.trans(doc), out_dtype=ACC, input_precision=PREC)
                    dst = pt * (dpt - delta[None, :])
                    dk += tl.dot(dst.to(DT), qc, out_dtype=ACC, input_precision=PREC)
    g_off = b * sgb + hh * sgh + ky[:, None] * sgy + kx[:, None] * sgx + dd[None, :] * sgd
    tl.store(DK + g_off, (dk * scale).to(DK.dtype.element_ty), mask=km)
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=km)


@triton.jit
def _bwd_extra(Q, EK, EV, DO, LSE, DELTA, DEK, DEV,
               sqb, sqh, sqy, sqx, sqd, sekb, sekh, sekm, sekd, sevb, sevh, sevm, sevd,
               sob, soh, soy, sox, sod,
               HO, WO, NH, M, PER_SPLIT, NSPLIT, scale_hi, scale_lo,
               SH, SW, D: tl.constexpr, BD: tl.constexpr,
               BQ: tl.constexpr, BM: tl.constexpr, DT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    """Partial extra-key gradients of one (block of BM extra keys, query split, head):
    ``DEK``/``DEV`` are contiguous ``[B*heads, NSPLIT, M, D]`` buffers of dtype ACC."""
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    bh, b, hh = _image_head(tl.program_id(2), NH)
    dd = tl.arange(0, BD)
    dm = dd < D
    scale = _scale(scale_hi, scale_lo, ACC)
    em, emask, lm, ekt, evt = _extra_chunk(EK, EV, b, hh, pid_m * BM, M, sekb, sekh, sekm, sekd, sevb, sevh, sevm,
                                           sevd, dd, dm, BM, DT)
    P = HO * WO
    p_lo = pid_s * PER_SPLIT
    p_hi = tl.minimum(p_lo + PER_SPLIT, P)
    dek = tl.zeros([BM, BD], ACC)
    dev = tl.zeros([BM, BD], ACC)
    for p0 in range(p_lo, p_hi, BQ):
        pp = p0 + tl.arange(0, BQ)
        pv = pp < p_hi
        yo = pp // WO
        xo = pp % WO
        qm = pv[:, None] & dm[None, :]
        qc = tl.load(Q + b * sqb + hh * sqh + (yo * SH)[:, None] * sqy + (xo * SW)[:, None] * sqx + dd[None, :] * sqd,
                     mask=qm, other=0.0).to(DT)
        doc = tl.load(DO + b * sob + hh * soh + yo[:, None] * soy + xo[:, None] * sox + dd[None, :] * sod,
                      mask=qm, other=0.0).to(DT)
        stat = bh * P + pp
        lse = tl.load(LSE + stat, mask=pv, other=0.0)
        delta = tl.load(DELTA + stat, mask=pv, other=0.0)
        st = tl.dot(ekt, tl.trans(qc), out_dtype=ACC, input_precision=PREC) * scale
        pt = tl.where(emask[:, None] & pv[None, :], tl.exp(st - lse[None, :]), 0.0)
        dev += tl.dot(pt.to(DT), doc, out_dtype=ACC, input_precision=PREC)
        dpt = tl.dot(evt, tl.trans(doc), out_dtype=ACC, input_precision=PREC)
        dst = pt * (dpt - delta[None, :])
        dek += tl.dot(dst.to(DT), qc, out_dtype=ACC, input_precision=PREC)
    off = ((bh * NSPLIT + pid_s) * M + em)[:, None] * D + dd[None, :]
    tl.store(DEK + off, dek * scale, mask=lm)
    tl.store(DEV + off, dev, mask=lm)
