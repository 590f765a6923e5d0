"""MDCSM (``shift=``) and IPM (``inter_pool=``) options of MSAttention2d: identities, shapes, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msaconv.layers import MSAttention2d
from msaconv.layers.shift_pool import CyclicShift, InterPool, resolve_inter_pool, resolve_shift
from msaconv.ops import msa_conv2d


def _core(m: MSAttention2d, x: torch.Tensor) -> torch.Tensor:
    """The attention output before the output projection, [B, C, H, W]."""
    return m.attn(x)


def _v(m: MSAttention2d, x: torch.Tensor) -> torch.Tensor:
    C = m.dim
    return F.conv2d(x, m.attn.qkv.weight[2 * C:], m.attn.qkv.bias[2 * C:])


def test_groups_and_offsets():
    s = CyclicShift()
    assert s.groups(8) == [(0, 4), (4, 5), (5, 6), (6, 7), (7, 8)]
    assert s.groups(2) == [(0, 1), (1, 2), (2, 2), (2, 2), (2, 2)]
    assert s.offsets(16, 8) == ((-8, 0), (8, 0), (0, -4), (0, 4))
    assert CyclicShift(directions=8, fraction=0.25).offsets(8, 12)[4:] == ((-2, -3), (-2, 3), (2, -3), (2, 3))
    assert CyclicShift(local=0.0).groups(4)[0] == (0, 0)


@pytest.mark.parametrize("size", [(8, 8), (11, 7)])
def test_kv_shift_kernel1_reads_the_rolled_value(size):
    # kernel 1: each query sees one key, so a local head returns v and a shifted head returns v rolled
    torch.manual_seed(0)
    m = MSAttention2d(8, num_heads=4, kernel_size=1, shift="kv").eval()  # local: heads 0-1; up, down
    x = torch.randn(2, 8, *size)
    out, v = _core(m, x), _v(m, x)
    H, W = size
    sy = int(0.5 * H + 0.5)
    torch.testing.assert_close(out[:, :4], v[:, :4])
    torch.testing.assert_close(out[:, 4:6], torch.roll(v[:, 4:6], sy, dims=2))  # up: reads (y - sy)
    torch.testing.assert_close(out[:, 6:8], torch.roll(v[:, 6:8], -sy, dims=2))  # down: reads (y + sy)


def test_kv_shift_matches_manual_roll_with_a_window():
    torch.manual_seed(1)
    m = MSAttention2d(16, num_heads=8, kernel_size=3, shift=dict(directions=4, fraction=0.25)).eval()
    x = torch.randn(1, 16, 12, 10)
    q, k, v = m.attn.qkv_heads(x)
    sh = m.shift
    offs = sh.offsets(12, 10)
    k2, v2 = k.clone(), v.clone()
    for (a, b), (oy, ox) in zip(sh.groups(8)[1:], offs):
        k2[:, a:b] = torch.roll(k[:, a:b], (-oy, -ox), (-2, -1))
        v2[:, a:b] = torch.roll(v[:, a:b], (-oy, -ox), (-2, -1))
    want = msa_conv2d(q, k2, v2, 3, layout="bhdhw").reshape(1, 16, 12, 10)
    torch.testing.assert_close(_core(m, x), want)


def test_input_shift_rolls_channel_groups_before_the_projection():
    torch.manual_seed(2)
    m = MSAttention2d(8, num_heads=2, kernel_size=1, shift="input").eval()
    x = torch.randn(2, 8, 6, 10)
    xr = x.clone()
    for (a, b), (oy, ox) in zip(m.shift.groups(8)[1:], m.shift.offsets(6, 10)):
        xr[:, a:b] = torch.roll(x[:, a:b], (-oy, -ox), (-2, -1))
    assert not torch.equal(xr, x)
    torch.testing.assert_close(_core(m, x), _v(m, xr))  # kernel 1: the output is v of the rolled input


def test_grid_pool_adds_pooled_tokens():
    torch.manual_seed(3)
    m = MSAttention2d(8, num_heads=2, kernel_size=3, inter_pool=dict(grid=(2, 3))).eval()
    x = torch.randn(2, 8, 9, 7)
    q, k, v = m.attn.qkv_heads(x)
    ek = F.adaptive_avg_pool2d(k.reshape(2, 8, 9, 7), (2, 3)).reshape(2, 2, 4, 6).transpose(-1, -2)
    ev = F.adaptive_avg_pool2d(v.reshape(2, 8, 9, 7), (2, 3)).reshape(2, 2, 4, 6).transpose(-1, -2)
    want = msa_conv2d(q, k, v, 3, extra_k=ek, extra_v=ev, layout="bhdhw").reshape(2, 8, 9, 7)
    torch.testing.assert_close(_core(m, x), want)
    w = m.attention_weights(x)
    assert w.shape == (2, 2, 9, 7, 9 + 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 9, 7))


@pytest.mark.parametrize("size,grid,m_tokens", [((3, 2), 4, 6), ((20, 20), 4, 16), ((5, 9), 7, 35)])
def test_grid_is_clamped_to_the_map(size, grid, m_tokens):
    m = MSAttention2d(4, num_heads=1, kernel_size=3, inter_pool=dict(grid=grid))
    assert m.attention_weights(torch.randn(1, 4, *size)).shape[-1] == 9 + m_tokens


def test_local_pool_kernel1_returns_pooled_v():
    torch.manual_seed(4)
    m = MSAttention2d(6, num_heads=3, kernel_size=1, inter_pool="local").eval()
    x = torch.randn(2, 6, 7, 5)
    want = F.avg_pool2d(_v(m, x), 3, 1, 1, count_include_pad=False)
    torch.testing.assert_close(_core(m, x), want)


@pytest.mark.parametrize("shift", [None, "kv", "input"])
@pytest.mark.parametrize("pool", [None, "grid", "local"])
def test_every_combination_any_size_and_gradients(shift, pool):
    torch.manual_seed(5)
    m = MSAttention2d(16, num_heads=4, kernel_size=3, shift=shift, inter_pool=pool)
    for size in [(8, 8), (5, 11), (1, 3)]:
        x = torch.randn(2, 16, *size, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_shift_changes_the_output_and_repr():
    torch.manual_seed(6)
    base = MSAttention2d(16, num_heads=4, kernel_size=3)
    shifted = MSAttention2d(16, num_heads=4, kernel_size=3, shift=True, inter_pool=True)
    shifted.load_state_dict(base.state_dict())  # no new parameters
    x = torch.randn(1, 16, 8, 8)
    assert not torch.allclose(base(x), shifted(x))
    r = repr(shifted)
    assert "CyclicShift(mode='kv'" in r and "InterPool(mode='grid'" in r


def test_resolve_options():
    assert resolve_shift("f", None) is None and resolve_shift("f", False) is None
    assert resolve_shift("f", True) == CyclicShift()
    assert resolve_shift("f", "input").mode == "input"
    assert resolve_inter_pool("f", {"grid": [7, 7]}).grid == (7, 7)
    assert resolve_inter_pool("f", InterPool(mode="local")).mode == "local"


@pytest.mark.parametrize("kwargs,match", [
    (dict(shift="kvv"), r"unknown shift mode 'kvv'; did you mean 'kv'\?"),
    (dict(shift=dict(directions=5)), r"directions got 5; use 4 .* or 8"),
    (dict(shift=dict(fraction=1.5)), r"fraction got 1.5; use a share"),
    (dict(shift=dict(local=1.0)), r"local got 1.0"),
    (dict(shift=dict(dirs=4)), r"shift has unknown keys \['dirs'\]"),
    (dict(shift=3), r"shift must be None, True, a mode name"),
    (dict(inter_pool="grd"), r"unknown inter_pool mode 'grd'; did you mean 'grid'\?"),
    (dict(inter_pool=dict(grid=0)), r"grid got 0; use a positive int"),
    (dict(inter_pool=dict(mode="local", kernel=2)), r"kernel got 2; use an odd positive int"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MSAttention2d(8, num_heads=2, **kwargs)


def test_kv_shift_needs_two_heads():
    with pytest.raises(ValueError, match=r"needs num_heads >= 2, got num_heads=1"):
        MSAttention2d(8, num_heads=1, shift="kv")
    MSAttention2d(8, num_heads=1, shift=dict(mode="kv", local=0))  # every head shifted: allowed
    MSAttention2d(8, num_heads=1, shift="input")


@pytest.mark.parametrize("shape,dim,shift", [
    ((3, 8, 5, 6, 7), 1, CyclicShift()),  # k or v [B, heads, D, H, W]
    ((2, 9, 5, 4), 1, CyclicShift(mode="input", directions=8, fraction=0.25)),  # x [B, C, H, W]
    ((2, 4, 3, 1, 9), 1, CyclicShift(local=0.0)),
])
def test_eager_permutation_equals_the_rolls_forward_and_backward(shape, dim, shift):
    """roll_groups' cached-permutation gather (eager) and its roll-and-concatenate form (traced) agree
    exactly, on a non-contiguous input too, and so do their gradients."""
    from msaconv.layers.shift_pool import _roll_groups_by_parts, roll_groups

    g = torch.Generator().manual_seed(0)
    base = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g, dtype=torch.float64)
    t = base.transpose(-1, -2).requires_grad_()  # a strided view, as the q/k/v of a projection are
    bounds, offsets = shift.groups(shape[dim]), shift.offsets(shape[-2], shape[-1])
    fast, slow = roll_groups(t, dim, bounds, offsets), _roll_groups_by_parts(t, dim, bounds, offsets)
    assert torch.equal(fast, slow)
    up = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    assert torch.equal(torch.autograd.grad(fast, t, up)[0], torch.autograd.grad(slow, t, up)[0])
