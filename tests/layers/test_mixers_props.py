"""Each mixer's defining property, tested against a direct definition or a measurable consequence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from msaconv.layers import get_token_mixer
from msaconv.layers.mixers.kdgqa import allocate

from msaconv.layers.mixers.flops import count_flops


@pytest.fixture(autouse=True)
def _float64():
    """Exact comparisons against loop references (restored after each test)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def _jacobian_support(m, x, out_pixel):
    """Which input pixels the output at ``out_pixel`` depends on: ``[H, W]`` bool."""
    x = x.clone().requires_grad_(True)
    y = m(x)
    y[..., out_pixel[0], out_pixel[1]].sum().backward()
    return x.grad.abs().sum(dim=(0, 1)) > 0


def _flops(m, x):
    r = count_flops(m, x)
    assert not r.uncounted, r.uncounted
    return r.flops


def _randomise(m, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


# ----------------------------------------------------------------------------------------------- halo
def _halo_loop_reference(m, x):
    """HaloNet by its definition, pixel by pixel, with masked outside keys (no padding anywhere)."""
    B, C, H, W = x.shape
    b, hs, win, nh, d = m.block_size, m.halo_size, m.win_size, m.num_heads, m.head_dim
    q = m.q(x).reshape(B, nh, d, H, W)
    k, v = m.kv(x).reshape(B, 2, nh, d, H, W).unbind(1)
    out = torch.zeros(B, nh, d, H, W)
    for y in range(H):
        for xx in range(W):
            y0, x0 = (y // b) * b - hs, (xx // b) * b - hs
            logits, vals = [], []
            for ky in range(win):
                for kx in range(win):
                    py, px = y0 + ky, x0 + kx
                    if 0 <= py < H and 0 <= px < W:
                        lg = (q[..., y, xx] * k[..., py, px]).sum(-1) * m.scale
                        lg = lg + (q[..., y, xx] * m.rel_height[ky - y % b + win - 1]).sum(-1)
                        lg = lg + (q[..., y, xx] * m.rel_width[kx - xx % b + win - 1]).sum(-1)
                        logits.append(lg)
                        vals.append(v[..., py, px])
            a = torch.stack(logits, -1).softmax(-1)                       # [B, nh, K]
            out[..., y, xx] = (a[..., None] * torch.stack(vals, -2)).sum(-2)
    return m.proj(out.reshape(B, C, H, W))


@pytest.mark.parametrize("size", [(8, 8), (7, 5)], ids=["divisible", "padded"])
def test_halo_equals_its_definition_with_and_without_padding(size):
    """Masked border: the padded path (7x5, block 4) and the unpadded one (8x8) both equal the
    pixel-by-pixel definition in which outside keys simply do not exist."""
    m = get_token_mixer("halo", 8, num_heads=2, block_size=4, halo_size=1)
    _randomise(m)
    x = torch.randn(1, 8, *size)
    torch.testing.assert_close(m(x), _halo_loop_reference(m, x))


def test_halo_padding_does_not_change_interior_blocks():
    """Where the size is divisible, adding a block of padding changes nothing (masked keys)."""
    m = get_token_mixer("halo", 8, num_heads=2, block_size=4, halo_size=1)
    x = torch.randn(1, 8, 8, 8)
    y = m(x)
    y_cropped_input = m(x[..., :7, :8])  # now padded to 8 rows inside; row 7 is masked
    # block row 0 (rows 0..3) has a window reaching row 4 only: unchanged by the missing row 7
    torch.testing.assert_close(y_cropped_input[..., :4, :], y[..., :4, :])
    assert (y_cropped_input[..., 4:7, :] - y[..., 4:7, :]).abs().max() > 1e-6


def test_halo_is_local():
    m = get_token_mixer("halo", 8, num_heads=2, block_size=4, halo_size=1)
    sup = _jacobian_support(m, torch.randn(1, 8, 12, 12), (5, 5))
    rows, cols = sup.any(1).nonzero().flatten(), sup.any(0).nonzero().flatten()
    assert rows.min() == 3 and rows.max() == 8 and cols.min() == 3 and cols.max() == 8  # block 4..7 +- 1


# ----------------------------------------------------------------------------------------------- gpsa
def test_gpsa_at_init_attends_locally():
    m = get_token_mixer("gpsa", 16, num_heads=4).eval()
    H = W = 9
    P = m.positional_scores(H, W)                                          # [h, N, N]
    n = 4 * W + 4                                                          # the centre pixel
    # 4 heads: offsets (+-0.5, +-0.5), so each head is a Gaussian between the query and one diagonal
    # neighbour: most of its mass lies in the query's 3x3 neighbourhood, centred on a different quadrant
    local_mass = P[:, n].reshape(4, H, W)[:, 3:6, 3:6].sum((1, 2))
    assert (local_mass > 0.85).all()
    centroids = {tuple((P[h, n].reshape(H, W) * torch.stack(torch.meshgrid(torch.arange(H), torch.arange(W),
                 indexing="ij"))).sum((1, 2)).sub(4).sign().tolist()) for h in range(4)}
    assert centroids == {(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)}
    x = torch.randn(2, 16, H, W)
    dist = m.attention_distance(x)
    uniform = torch.full((1, 1, H * W, H * W), 1.0 / (H * W))
    from msaconv.layers.mixers._common import mean_distance

    assert (dist < 0.5 * mean_distance(uniform, H, W)).all()
    # with the gate closed (content only) the same mixer is non-local
    with torch.no_grad():
        m.gating_param.fill_(-30.0)
    assert m.attention_distance(x).mean() > 2 * dist.mean()


def test_gpsa_nine_heads_cover_the_3x3_neighbourhood():
    m = get_token_mixer("gpsa", 18, num_heads=9, locality_strength=3.0)
    P = m.positional_scores(7, 7)
    n = 3 * 7 + 3
    peaks = sorted(divmod(int(P[h, n].argmax()), 7) for h in range(9))
    assert peaks == sorted((3 + dy, 3 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_gpsa_rebuilds_offsets_for_non_square_maps():
    m = get_token_mixer("gpsa", 16, num_heads=4)
    x = torch.randn(1, 16, 3, 11)
    assert m(x).shape == x.shape
    from msaconv.layers.mixers.gpsa import rel_indices

    r = rel_indices(3, 11)
    # token 0 = (0, 0) to token 12 = (1, 1): dx = 1, dy = 1, d2 = 2
    assert r[0, 12].tolist() == [1.0, 1.0, 2.0]


# ---------------------------------------------------------------------------------------------- axial
def test_axial_receptive_field():
    x = torch.randn(1, 8, 7, 6)
    summ = get_token_mixer("axial", 8, num_heads=2, mode="sum")
    sup = _jacobian_support(summ, x, (2, 3))
    cross = torch.zeros(7, 6, dtype=torch.bool)
    cross[2, :] = True
    cross[:, 3] = True
    assert torch.equal(sup, cross)                                         # one layer: row + column
    two = torch.nn.Sequential(summ, get_token_mixer("axial", 8, num_heads=2, mode="sum"))
    assert _jacobian_support(two, x, (2, 3)).all()                         # two layers: global
    seq = get_token_mixer("axial", 8, num_heads=2)                         # row then column: global at once
    assert _jacobian_support(seq, x, (2, 3)).all()


@pytest.mark.parametrize("H,W", [(8, 8), (16, 16), (12, 5)])
def test_axial_flops_are_n_times_h_plus_w(H, W):
    """4 N (H + W) C FLOPs of attention plus 16 N C^2 of projections (the docstring's formula)."""
    C = 8
    m = get_token_mixer("axial", C, num_heads=2, mode="sum")
    N = H * W
    assert _flops(m, torch.randn(1, C, H, W)) == 4 * N * (H + W) * C + 16 * N * C * C


# ------------------------------------------------------------------------------------------------ hilo
def test_hilo_hifi_masks_padded_keys():
    """alpha=0 (all Hi-Fi): on a 3x3 map with 2x2 windows, pixel (2, 2) is alone in its window, so with
    masked padding it attends only to itself: out = proj(v(x_22))."""
    m = get_token_mixer("hilo", 8, num_heads=2, alpha=0.0, window_size=2)
    x = torch.randn(1, 8, 3, 3)
    y = m(x)
    v = m.h_qkv(x[:, :, 2, 2])[:, 2 * m.h_dim:]
    torch.testing.assert_close(y[:, :, 2, 2], m.h_proj(v))


def test_hilo_lofi_pools_only_real_pixels():
    """alpha=1 (all Lo-Fi) on 3x3: the pooled keys are means of the real pixels of each 2x2 window."""
    m = get_token_mixer("hilo", 8, num_heads=2, alpha=1.0, window_size=2)
    x = torch.randn(1, 8, 3, 3)
    pooled = torch.stack([x[0, :, r0:r0 + 2, c0:c0 + 2].mean((1, 2)) for r0 in (0, 2) for c0 in (0, 2)])
    kv = m.l_kv(pooled).reshape(4, 2, 2, 4).permute(1, 2, 0, 3)            # [2, heads, M, d]
    q = m.l_q(x[0].flatten(1).t()).reshape(9, 2, 4).transpose(0, 1)       # [heads, N, d]
    o = F.scaled_dot_product_attention(q, kv[0], kv[1]).transpose(0, 1).reshape(9, 8)
    torch.testing.assert_close(m(x)[0].flatten(1).t(), m.l_proj(o))


def test_hilo_window_1_is_global_attention():
    m = get_token_mixer("hilo", 8, num_heads=2, window_size=1)
    assert m.l_heads == 2 and m.h_heads == 0
    assert _jacobian_support(m, torch.randn(1, 8, 5, 4), (0, 0)).all()


# --------------------------------------------------------------------------------------------- channel
def test_channel_cost_is_linear_in_n():
    m = get_token_mixer("channel", 16, num_heads=4)
    f = [_flops(m, torch.randn(1, 16, s, s)) for s in (7, 14, 28)]
    assert f[1] == 4 * f[0] and f[2] == 4 * f[1]
    g = get_token_mixer("gpsa", 16, num_heads=4)                          # explicit N x N maps: quadratic
    fg = [_flops(g, torch.randn(1, 16, s, s)) for s in (7, 14)]
    assert fg[1] > 10 * fg[0]


def test_channel_is_global():
    m = get_token_mixer("channel", 8, num_heads=2)
    assert _jacobian_support(m, torch.randn(1, 8, 6, 5), (0, 0)).all()


# ------------------------------------------------------------------------------------------------ shsa
def test_shsa_attends_on_the_slice_only():
    """x1 (the first partial_dim channels) mixes globally; x2 reaches the output only at its own pixel."""
    m = get_token_mixer("shsa", 16, partial_dim=4).eval()
    x = torch.randn(1, 16, 5, 5, requires_grad=True)
    m(x)[..., 0, 0].sum().backward()
    g = x.grad.abs()
    assert (g[:, :4].sum(1) > 0).all()                                     # every pixel of the slice
    g2 = g[:, 4:].sum(1)[0]
    assert g2[0, 0] > 0 and g2.sum() == g2[0, 0]                           # the rest: only pixel (0, 0)


# ------------------------------------------------------------------------------------------ lowtention
def test_lowtention_attends_at_low_resolution():
    m = get_token_mixer("lowtention", 8, num_heads=2, stride=2, kernel_size=3)
    seen = []
    orig = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(q.shape[-2])
        return orig(q, k, v, **kw)

    F.scaled_dot_product_attention = spy
    try:
        y = m(torch.randn(1, 8, 9, 7))
    finally:
        F.scaled_dot_product_attention = orig
    assert seen == [5 * 4] and y.shape == (1, 8, 9, 7)                     # ceil(9/2) * ceil(7/2) tokens


# ----------------------------------------------------------------------------------------------- glmix
def test_glmix_linear_cost_and_global_reach():
    m = get_token_mixer("glmix", 16, num_heads=2, num_slots=16)
    f = [_flops(m, torch.randn(1, 16, s, s)) for s in (16, 32)]
    assert 3.5 < f[1] / f[0] <= 4.0
    assert _jacobian_support(m, torch.randn(1, 16, 9, 9), (0, 0)).all()


# -------------------------------------------------------------------------------------------- spectral
def _filter_from_kernel(m, kernel, size):
    """Set ``m``'s filter to the circular convolution with ``kernel [C, kh, kw]`` (centred at offset 0)."""
    C = kernel.shape[0]
    kc = torch.zeros(C, *size)
    kh, kw = kernel.shape[-2:]
    for i in range(kh):
        for j in range(kw):
            # FFT products are convolutions; F.conv2d is a correlation: place the kernel flipped
            kc[:, (kh // 2 - i) % size[0], (kw // 2 - j) % size[1]] = kernel[:, i, j]
    Fk = torch.fft.rfft2(kc)                                               # [C, h, w//2+1]
    with torch.no_grad():
        m.complex_weight.copy_(torch.view_as_real(Fk.permute(1, 2, 0)))


def _circular_conv(x, kernel):
    kh, kw = kernel.shape[-2:]
    xp = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="circular")
    return F.conv2d(xp, kernel[:, None], groups=x.shape[1])


def test_spectral_is_a_circular_convolution():
    m = get_token_mixer("spectral", 4, size=(8, 8))
    k = torch.randn(4, 3, 3)
    _filter_from_kernel(m, k, (8, 8))
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(m(x), _circular_conv(x, k))


def test_spectral_default_raises_at_a_new_size():
    m = get_token_mixer("spectral", 4, size=(8, 8))
    with pytest.raises(ValueError, match=r"built for 8x8 maps, got 11x9; build it with size=\(11, 9\)"):
        m(torch.randn(1, 4, 11, 9))


def test_spectral_resize_kernel_keeps_the_convolution():
    m = get_token_mixer("spectral", 4, size=(8, 8), resize="kernel")
    k = torch.randn(4, 3, 3)
    _filter_from_kernel(m, k, (8, 8))
    for size in [(11, 9), (5, 6), (16, 3)]:
        x = torch.randn(1, 4, *size)
        torch.testing.assert_close(m(x), _circular_conv(x, k))


def test_spectral_resize_bilinear_is_identity_at_build_size_and_smooth():
    a = get_token_mixer("spectral", 4, size=(8, 8))
    b = get_token_mixer("spectral", 4, size=(8, 8), resize="bilinear")
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(b(x), a(x))
    # a constant filter stays constant under interpolation: the layer stays a per-channel scaling
    with torch.no_grad():
        b.complex_weight.zero_()
        b.complex_weight[..., 0] = 2.0
    x = torch.randn(1, 4, 13, 7)
    torch.testing.assert_close(b(x), 2 * x)


# ------------------------------------------------------------------------------------------------- moh
def test_moh_with_all_heads_active_equals_the_plain_mixer():
    for inner, opts in [("global", {}), ("msa_conv", {"kernel_size": 3})]:
        torch.manual_seed(0)
        plain = get_token_mixer(inner, 16, num_heads=4, **opts)
        moh = get_token_mixer("moh", 16, num_heads=4, inner=inner, shared_heads=1, top_k=3, **opts)
        moh.inner.load_state_dict(plain.state_dict())
        with torch.no_grad():
            for r in (moh.router, moh.mix_router):
                r.weight.zero_()
        x = torch.randn(2, 16, 7, 5)
        torch.testing.assert_close(moh(x), plain(x))
        # with trained (random) routers the heads are re-weighted: no longer the plain mixer
        _randomise(moh.router, 1, 1.0)
        assert (moh(x) - plain(x)).abs().max() > 1e-4


def test_moh_routes_top_k_heads_per_token_and_exposes_its_loss():
    moh = get_token_mixer("moh", 16, num_heads=8, shared_heads=2, top_k=3)
    x = torch.randn(2, 16, 6, 6)
    g = moh.gates(x)
    assert g.shape == (2, 8, 6, 6)
    assert ((g[:, 2:] > 0).sum(1) == 3).all()                             # 3 of the 6 routed heads per token
    assert torch.allclose(g[:, 2:].sum(1), 3 * torch.softmax(moh.mix_router(x), 1)[:, 1] * 2)
    moh.train()
    moh(x)
    loss = moh.load_balance_loss()
    probs = moh.router(x).softmax(1)
    mask = torch.zeros_like(probs).scatter_(1, probs.topk(3, 1).indices, 1.0)
    expect = (mask.mean((0, 2, 3)) * probs.mean((0, 2, 3))).mean() * 36
    torch.testing.assert_close(loss, expect)
    loss.backward()
    assert moh.router.weight.grad.abs().sum() > 0
    moh.eval()
    moh(x)
    assert moh.load_balance_loss() == 0                                    # no loss from evaluation forwards


# ----------------------------------------------------------------------------------------------- kdgqa
def test_allocate_sums_to_heads_and_follows_the_weights():
    assert allocate(torch.tensor([1.0, 1.0, 1.0, 1.0]), 8).tolist() == [2, 2, 2, 2]
    assert allocate(torch.tensor([0.0, 1.0]), 8).tolist() == [0, 8]
    a = allocate(torch.tensor([0.1, 0.3, 0.6]), 8)
    assert int(a.sum()) == 8 and a.argmax() == 2 and a.tolist() == sorted(a.tolist())
    assert allocate(torch.zeros(4), 4).tolist() == [1, 1, 1, 1]            # degenerate: even split


def test_kdgqa_gives_more_queries_to_the_larger_keys():
    torch.manual_seed(0)
    m = get_token_mixer("kdgqa", 16, num_heads=4, kv_heads=2)
    with torch.no_grad():  # scale the keys of heads 2..3 (group 1) up: group 1 must get the queries
        m.inner.qkv.weight[16 + 8:32] *= 10
    m(torch.randn(2, 16, 5, 5))
    assert m.allocation.tolist() == [0, 4]                                 # min-max: group 0 gets none


def test_kdgqa_with_one_query_per_group_is_the_plain_mixer():
    torch.manual_seed(0)
    plain = get_token_mixer("global", 16, num_heads=4)
    m = get_token_mixer("kdgqa", 16, num_heads=4, kv_heads=4)
    m.inner.load_state_dict(plain.state_dict())
    m._update_allocation = lambda k: torch.ones(4, dtype=torch.long)       # the GQA plumbing alone
    x = torch.randn(2, 16, 5, 4)
    torch.testing.assert_close(m(x), plain(x))


def test_dgqa_ema_tracks_norms_in_training_and_freezes_at_eval():
    torch.manual_seed(0)
    m = get_token_mixer("kdgqa", 16, num_heads=4, kv_heads=2, mode="ema", window_size=2, momentum=0.5)
    m.train()
    xs = [torch.randn(2, 16, 5, 5) * s for s in (1.0, 3.0, 0.5)]
    m(xs[0])
    first = m.norm_state.clone()
    m(xs[1])                                                               # step 1: not a window step
    torch.testing.assert_close(m.norm_state, first)
    m(xs[2])                                                               # step 2: EMA update
    q, k, v = m.inner.qkv_heads(xs[2])
    n = m._pool(k).flatten(2).norm(dim=-1).sum(0).float()
    torch.testing.assert_close(m.norm_state, 0.5 * first + 0.5 * n)
    assert int(m.steps) == 3
    m.eval()
    alloc = m.allocation.clone()
    m(torch.randn(2, 16, 5, 5) * 100)
    assert torch.equal(m.allocation, alloc) and int(m.steps) == 3          # frozen at evaluation
    b = get_token_mixer("kdgqa", 16, num_heads=4, kv_heads=2, mode="ema")
    b.load_state_dict(m.state_dict())
    assert torch.equal(b.allocation, alloc)


# ---------------------------------------------------------------------------------- global, head token
def test_head_tokens_are_extra_keys():
    torch.manual_seed(0)
    m = get_token_mixer("global", 16, num_heads=4, head_token=True)
    x = torch.randn(2, 16, 5, 3)
    a = m.attention_weights(x)
    assert a.shape == (2, 4, 15, 15 + 4)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 15))
    plain = get_token_mixer("global", 16, num_heads=4)
    plain.load_state_dict(m.state_dict(), strict=False)
    assert (m(x) - plain(x)).abs().max() > 1e-4
    # a head token summarises one channel group over the whole map
    t = m.head_tokens(x)
    x2 = x.clone()
    x2[:, :4] += 1.0                                                       # change head 0's channels only
    d = (m.head_tokens(x2) - t).abs().sum(-1)[0]
    assert d[0] > 0 and torch.all(d[1:] == 0)


# ---------------------------------------------------------------------------- ulsam, sparse_gsa, DANet
def test_ulsam_maps_are_spatial_softmaxes_and_output_is_x_times_1_plus_m():
    m = get_token_mixer("ulsam", 8, num_heads=2).eval()
    x = torch.randn(2, 8, 6, 5)
    maps = m.maps(x)
    torch.testing.assert_close(maps.sum((2, 3)), torch.ones(2, 2))
    torch.testing.assert_close(m(x), x * (1 + maps.repeat_interleave(4, 1)))


def test_sparse_gsa_relu_map_is_sparse_and_cost_linear():
    m = get_token_mixer("sparse_gsa", 8, num_heads=2)
    _randomise(m, 2, 1.0)
    x = torch.randn(1, 8, 6, 6)
    q, k, _ = m.qkv_dw(m.qkv(x)).reshape(1, 3, 2, 4, 36).unbind(1)
    A = F.relu(F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2) * m.temperature)
    assert (A == 0).any() and (A >= 0).all()
    f = [_flops(m, torch.randn(1, 8, s, s)) for s in (8, 16)]
    assert f[1] == 4 * f[0]


def test_pam_cam_start_as_noops_and_follow_danet():
    x = torch.randn(2, 8, 5, 4)
    for name in ("pam", "cam"):
        m = get_token_mixer(name, 8)
        assert torch.equal(m(x), torch.zeros_like(x))
        r = get_token_mixer(name, 8, residual=True)
        torch.testing.assert_close(r(x), x)
    cam = get_token_mixer("cam", 8)
    with torch.no_grad():
        cam.gamma.fill_(1.0)
    X = x.flatten(2)
    E = X @ X.transpose(1, 2)
    A = torch.softmax(E.max(-1, keepdim=True).values - E, -1)
    torch.testing.assert_close(cam(x), (A @ X).reshape_as(x))
    pam = get_token_mixer("pam", 8)
    with torch.no_grad():
        pam.gamma.fill_(1.0)
    q, k, v = (c(x).flatten(2) for c in (pam.query, pam.key, pam.value))
    attn = torch.softmax(q.transpose(1, 2) @ k, -1)                        # no 1/sqrt(d), as DANet
    torch.testing.assert_close(pam(x), (v @ attn.transpose(1, 2)).reshape_as(x))


def test_global_gate_reaches_everywhere_through_the_gate():
    m = get_token_mixer("global_gate", 8)
    _randomise(m, 4, 0.5)
    sup = _jacobian_support(m, torch.randn(1, 8, 15, 15), (7, 7))
    assert sup.all()                                                       # the 5x5 conv alone reaches 5x5
    s = get_token_mixer("global_gate", 8, pooling="sum")
    u = torch.randn(1, 8, 4, 4)
    ref = torch.sigmoid(s.fc2(F.relu(s.fc1(u.sum((2, 3), keepdim=True)))))
    torch.testing.assert_close(s.gate(u), ref)


def test_mixers_take_device_and_dtype():
    for name in ("global", "halo", "gpsa", "spectral", "moh", "kdgqa", "glmix", "hilo"):
        kw = {"size": (6, 6)} if name == "spectral" else {}
        heads = 4 if name == "kdgqa" else 2                                # kdgqa: >= 2 key/value groups
        m = get_token_mixer(name, 8, num_heads=heads, device="cpu", dtype=torch.float32, **kw)
        assert all(p.dtype == torch.float32 for p in m.parameters())
        assert m(torch.randn(1, 8, 6, 6, dtype=torch.float32)).dtype == torch.float32


def test_flops_formula_sanity():
    """Halo's FLOP count follows its docstring: 4 N (b+2h)^2 C for logits and weighted sum (+ relative
    logits and projections), all linear in N."""
    m = get_token_mixer("halo", 8, num_heads=2, block_size=4, halo_size=1)
    f = [_flops(m, torch.randn(1, 8, s, s)) for s in (8, 16)]
    assert f[1] == 4 * f[0]
    N, win, C = 64, 6, 8
    assert f[0] >= 4 * N * win * win * C and math.isfinite(f[0])


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("name", ["halo", "hilo", "moh"])
def test_torch_compile_matches_eager(name):
    torch.set_default_dtype(torch.float32)
    m = get_token_mixer(name, 16, num_heads=4).eval()
    x = torch.randn(2, 16, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m)(x), m(x), rtol=1e-4, atol=1e-5)
