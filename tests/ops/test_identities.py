"""Properties of MSA-Conv that need no oracle, checked on every backend (the reference included)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msaconv.ops import backends, msa_conv2d, msa_conv2d_weights, window_offsets

ALL = list(backends.BACKENDS)


def _qkv(B=2, h=3, H=9, W=7, D=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, H, W, D, generator=g, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("border", ["zeros", "mask", "clamp", "circular"])
@pytest.mark.parametrize("stride", [1, 2, (3, 1)])
def test_kernel_one_gives_v(backend, border, stride):
    q, k, v = _qkv()
    out = msa_conv2d(q, k, v, 1, stride=stride, border=border, backend=backend)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    torch.testing.assert_close(out, v[:, :, ::sh, ::sw], rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("H,W", [(5, 7), (6, 4), (1, 9)])
def test_window_covering_the_map_with_mask_is_global_attention(backend, H, W):
    q, k, v = _qkv(H=H, W=W)
    out = msa_conv2d(q, k, v, (2 * H - 1, 2 * W - 1), border="mask", backend=backend)
    B, h, _, _, D = q.shape
    flat = [t.reshape(B, h, H * W, D) for t in (q, k, v)]
    want = F.scaled_dot_product_attention(*flat).reshape(B, h, H, W, D)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("border", ["zeros", "mask", "clamp", "circular"])
@pytest.mark.parametrize("stride", [2, 3, (2, 3)])
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (4, 2), ((5, 1), (1, 1)), (2, 3)])
def test_stride_samples_the_stride_one_output(backend, border, stride, kernel, dilation):
    q, k, v = _qkv(H=13, W=11, seed=1)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    full = msa_conv2d(q, k, v, kernel, dilation, 1, border, backend=backend)
    strided = msa_conv2d(q, k, v, kernel, dilation, stride, border, backend=backend)
    torch.testing.assert_close(strided, full[:, :, ::sh, ::sw], rtol=1e-12, atol=1e-12)


def _pad_maps(ts, top, bottom, left, right, mode):
    # [B, h, H, W, D] -> pad H and W
    out = []
    for t in ts:
        x = t.permute(0, 1, 4, 2, 3).flatten(0, 1)  # [B*h, D, H, W]
        x = F.pad(x, (left, right, top, bottom), mode=mode)
        out.append(x.unflatten(0, t.shape[:2]).permute(0, 1, 3, 4, 2))
    return out


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("border,mode", [("zeros", "constant"), ("circular", "circular")])
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 2), ((3, 5), (2, 1)), (4, 1), (2, 2)])
def test_zeros_and_circular_equal_mask_on_an_explicitly_padded_map(backend, border, mode, kernel, dilation):
    """'zeros' = zero-pad k and v (after the projection) and let the padded keys into the softmax;
    'circular' = pad by wrap-around. Either way, no window of the padded map leaves it."""
    q, k, v = _qkv(H=8, W=9, seed=2)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    top, left = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    bottom, right = dh * (kh - 1) - top, dw * (kw - 1) - left
    qp, kp, vp = _pad_maps((q, k, v), top, bottom, left, right, mode)
    want = msa_conv2d(qp, kp, vp, kernel, dilation, border="mask", backend="reference")
    want = want[:, :, top : top + 8, left : left + 9]
    got = msa_conv2d(q, k, v, kernel, dilation, border=border, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _natten_window_start(index, length, kernel_size, neighborhood_size, dilation):
    """NATTEN's rule for odd kernels, transcribed from its documented definition (dilation groups)."""
    if dilation <= 1:
        return max(index - neighborhood_size, 0) + (index + neighborhood_size >= length) * (
            length - index - neighborhood_size - 1)
    ni = index - neighborhood_size * dilation
    if ni < 0:
        return index % dilation
    if index + neighborhood_size * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * neighborhood_size * dilation
        return a + imodd - kernel_size * dilation
    return ni


def _natten_mask(H, W, kh, kw, dh, dw):
    """Dense [N, N] boolean mask: query (y, x) may see key (y', x')."""
    mask = torch.zeros(H * W, H * W, dtype=torch.bool)
    for y in range(H):
        sy = _natten_window_start(y, H, kh, kh // 2, dh)
        rows = [sy + i * dh for i in range(kh)]
        for x in range(W):
            sx = _natten_window_start(x, W, kw, kw // 2, dw)
            for r in rows:
                for c in (sx + j * dw for j in range(kw)):
                    mask[y * W + x, r * W + c] = True
    return mask


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("H,W,kernel,dilation", [
    (9, 7, 3, 1), (9, 7, (5, 3), 1), (13, 11, 3, 2), (13, 11, 3, 3), (12, 10, 5, 2), (10, 9, (3, 1), (3, 2)),
    (7, 7, 7, 1),
])
def test_clamp_is_nattens_neighbourhood(backend, H, W, kernel, dilation):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    q, k, v = _qkv(H=H, W=W, seed=3)
    B, h, _, _, D = q.shape
    mask = _natten_mask(H, W, kh, kw, dh, dw)
    assert (mask.sum(1) == kh * kw).all()  # every query sees exactly K real keys
    flat = [t.reshape(B, h, H * W, D) for t in (q, k, v)]
    want = F.scaled_dot_product_attention(*flat, attn_mask=mask).reshape(B, h, H, W, D)
    got = msa_conv2d(q, k, v, kernel, dilation, border="clamp", backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ALL)
def test_extra_keys_join_the_same_softmax(backend):
    q, k, v = _qkv(H=6, W=5, seed=4)
    g = torch.Generator().manual_seed(5)
    ek, ev = (torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    got = msa_conv2d(q, k, v, 3, border="mask", extra_k=ek, extra_v=ev, backend=backend)
    # dense formulation: keys = window keys (mask) + the 4 extra keys
    B, h, H, W, D = q.shape
    win = torch.zeros(H * W, H * W, dtype=torch.bool)
    for y in range(H):
        for x in range(W):
            for dy, dx in window_offsets((3, 3), (1, 1)):
                if 0 <= y + dy < H and 0 <= x + dx < W:
                    win[y * W + x, (y + dy) * W + x + dx] = True
    mask = torch.cat([win, torch.ones(H * W, 4, dtype=torch.bool)], dim=1)
    keys = torch.cat([k.reshape(B, h, H * W, D), ek], dim=2)
    vals = torch.cat([v.reshape(B, h, H * W, D), ev], dim=2)
    want = F.scaled_dot_product_attention(q.reshape(B, h, H * W, D), keys, vals, attn_mask=mask)
    torch.testing.assert_close(got, want.reshape(B, h, H, W, D), rtol=1e-10, atol=1e-12)


def test_literal_loop_for_the_authors_zero_border():
    """A per-pixel loop in plain Python floats, straight from the definition (border='zeros')."""
    import math

    q, k, v = _qkv(B=1, h=1, H=4, W=5, D=2, seed=6)
    out = msa_conv2d(q, k, v, 3, dilation=(1, 2), border="zeros", backend="reference")
    H, W, D = 4, 5, 2
    for y in range(H):
        for x in range(W):
            logits, vals = [], []
            for i in range(3):
                for j in range(3):
                    yy, xx = y + i - 1, x + 2 * j - 2
                    inside = 0 <= yy < H and 0 <= xx < W
                    kk = [float(k[0, 0, yy, xx, c]) if inside else 0.0 for c in range(D)]
                    vals.append([float(v[0, 0, yy, xx, c]) if inside else 0.0 for c in range(D)])
                    logits.append(sum(float(q[0, 0, y, x, c]) * kk[c] for c in range(D)) / math.sqrt(D))
            m = max(logits)
            e = [math.exp(l - m) for l in logits]
            s = sum(e)
            for c in range(D):
                want = sum(e[n] / s * vals[n][c] for n in range(9))
                assert abs(float(out[0, 0, y, x, c]) - want) < 1e-12


def test_weights_match_the_output_and_sum_to_one():
    q, k, v = _qkv(H=7, W=6, seed=7)
    for border in ("zeros", "mask", "clamp", "circular"):
        a = msa_conv2d_weights(q, k, 3, 2, 1, border)
        assert a.shape == (2, 3, 7, 6, 9)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 7, 6, dtype=torch.float64))
    # rebuild the 'circular' output from the weights: sum_n a_n * v at offset n
    a = msa_conv2d_weights(q, k, 3, 1, 1, "circular")
    out = msa_conv2d(q, k, v, 3, 1, 1, "circular")
    want = sum(a[..., n, None] * torch.roll(v, (-dy, -dx), (2, 3))
               for n, (dy, dx) in enumerate(window_offsets((3, 3), (1, 1))))
    torch.testing.assert_close(out, want)


def test_mask_border_with_no_valid_key_gives_zero():
    """Even kernel + dilation on a 1-pixel-high map: the 'mask' window of every query is empty."""
    q, k, v = _qkv(H=1, W=4, seed=8)
    for backend in ALL:
        out = msa_conv2d(q, k, v, (2, 1), (2, 1), border="mask", backend=backend)
        assert torch.equal(out, torch.zeros_like(out))


def test_empty_batch():
    q, k, v = _qkv(B=0)
    for layout, shape in (("bhwd", (0, 3, 5, 4, 4)),):
        out = msa_conv2d(q, k, v, 3, stride=2, layout=layout)
        assert out.shape == shape
