"""The small-map ``dense`` backend: when ``backend=None`` takes it, and the corners of its count matrix.

Its agreement with the reference on the 200 random cases (forward, gradients, both layouts, half dtypes)
is in test_backends.py, which runs every registered backend.
"""

from __future__ import annotations

import pytest
import torch

from msaconv.ops import choose_backend, msa_conv2d
from msaconv.ops._checks import check_msa_conv2d
from msaconv.ops.backends import dense

from ._compare import compare
from .cases import Case


def _problem(H, W, kernel=3, stride=1, extra=None):
    q = torch.zeros(2, 2, 4, H, W)
    return check_msa_conv2d("t", q, q, q, kernel, 1, stride, "zeros", None, extra, extra, "bhdhw")


@pytest.mark.parametrize("size,chosen", [((4, 4), "dense"), ((3, 3), "dense"), ((5, 5), "dense"),
                                         ((2, 2), "cpu"), ((8, 8), "cpu"), ((6, 6), "cpu"), ((1, 30), "cpu")])
def test_backend_none_takes_it_on_3x3_to_5x5_maps(size, chosen):
    pb = _problem(*size)
    if chosen == "cpu" and choose_backend(pb, None).name == "portable":
        pytest.skip("the fused CPU kernels are unavailable here")
    assert choose_backend(pb, None).name == chosen


def test_declining_gives_the_reason_and_naming_it_still_runs():
    pb = _problem(8, 8)
    assert dense.BACKEND.declines(pb) == "the map has 64 keys (H*W), outside 9..25, where the window kernels are as fast or faster"
    assert dense.BACKEND.can_run(pb) is None
    q, k, v = (torch.randn(1, 2, 4, 8, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(msa_conv2d(q, k, v, 3, layout="bhdhw", backend="dense"),
                               msa_conv2d(q, k, v, 3, layout="bhdhw", backend="reference"))


def test_refuses_maps_too_large_for_dense_logits():
    big = _problem(33, 32)
    assert "more than 1024" in dense.BACKEND.can_run(big)
    q = torch.zeros(1, 1, 33, 32, 2)
    with pytest.raises(ValueError, match=r"backend 'dense' cannot run this call: the map has 1056 keys"):
        msa_conv2d(q, q, q, 3, backend="dense")


def _case(H, W, kernel, dilation, stride, border, extra, heads=2, head_dim=3, seed=7):
    return Case(0, 2, heads, H, W, head_dim, kernel, dilation, stride, border, extra, seed)


@pytest.mark.parametrize("case", [
    _case(2, 2, (3, 3), (1, 1), (1, 1), "circular", 0),  # the wrapped window reads keys twice (count 2)
    _case(1, 3, (3, 3), (1, 1), (1, 1), "circular", 2),  # a 1-pixel axis: all three rows are the same key
    _case(3, 3, (3, 3), (2, 2), (1, 1), "circular", 0),
    _case(4, 4, (3, 3), (1, 1), (2, 2), "zeros", 4),  # strided queries, zero keys, extra keys
    _case(5, 4, (2, 4), (1, 1), (1, 3), "zeros", 0),  # even kernel
    _case(4, 5, (3, 3), (1, 1), (1, 1), "clamp", 3),
    _case(5, 5, (5, 5), (1, 1), (1, 1), "mask", 1),
    _case(3, 4, (9, 1), (1, 1), (1, 1), "mask", 0),
], ids=lambda c: c.id)
@pytest.mark.parametrize("layout", ["bhwd", "bhdhw"])
def test_small_map_corners_match_the_reference(case, layout):
    compare(case, "dense", torch.float64, layout=layout)


def test_a_query_without_any_key_gets_zeros_and_zero_gradients():
    """'mask' with a window that never touches the map (a 1x1 map, kernel 2, dilation 3: offsets -1, +2)."""
    q, k, v = (torch.randn(1, 1, 1, 1, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    for backend in ("dense", "reference"):
        out = msa_conv2d(q, k, v, 2, dilation=3, border="mask", backend=backend)
        assert torch.equal(out, torch.zeros_like(out))
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_large_logits_stay_finite_and_exact():
    """Logits ~1e3 apart: the exponent floor must not change any weight that matters."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 4, 4, 8, generator=g, dtype=torch.float64) for _ in range(3))
    q = (q * 300).requires_grad_()
    k, v = k.requires_grad_(), v.requires_grad_()
    outs, grads = [], []
    for backend in ("dense", "reference"):
        out = msa_conv2d(q, k, v, 3, backend=backend)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    for a, b in zip(*grads):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_runs_inside_the_custom_op_by_automatic_choice():
    """tic_nano's 4x4 stage goes through it under backend=None, with gradients equal to the fused kernel's."""
    pb = _problem(4, 4)
    assert choose_backend(pb, None).name == "dense"
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(4, 8, 16, 4, 4, generator=g, requires_grad=True) for _ in range(3))
    ek, ev = (torch.randn(4, 8, 16, 16, generator=g, requires_grad=True) for _ in range(2))
    outs = []
    for backend in (None, "portable"):
        out = msa_conv2d(q, k, v, 3, extra_k=ek, extra_v=ev, layout="bhdhw", backend=backend)
        outs.append((out, torch.autograd.grad(out.sum(), (q, k, v, ek, ev))))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("border", ["zeros", "mask", "circular", "clamp"])
def test_a_key_outside_the_window_with_a_huge_logit_changes_nothing(border):
    """Dense logits cover the whole map: a key no window slot reaches may sit 1e4 above the window's
    largest logit (trained weights do that). Its weight must stay exactly 0, not exp(overflow) * 0 = NaN."""
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, 5, 5, 4, generator=g, dtype=torch.float32) for _ in range(3))
    k[:, :, 4, 4] = q[:, :, 0, 0] * 1e4  # far from query (0, 0)'s 3x3 window, huge logit for it
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    outs = []
    for backend in ("dense", "reference"):
        out = msa_conv2d(q, k, v, 3, border=border, backend=backend)
        outs.append((out, torch.autograd.grad(out.sum(), (q, k, v))))
    assert torch.isfinite(outs[0][0]).all()
    torch.testing.assert_close(outs[0][0][:, :, 0, 0], outs[1][0][:, :, 0, 0], rtol=1e-5, atol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        assert torch.isfinite(a).all()


def test_all_window_logits_far_below_zero_stay_finite():
    """Under 'zeros', a row with every slot inside and logits ~-200 (m = -200) must not overflow the
    zero-key term exp(-m) of the rows that have no zero keys."""
    u = torch.ones(4)
    k = (u + 0.01 * torch.randn(1, 2, 5, 5, 4, generator=torch.Generator().manual_seed(2))).requires_grad_()
    q = (-100 * u).expand(1, 2, 5, 5, 4).clone().requires_grad_()
    v = torch.randn(1, 2, 5, 5, 4, generator=torch.Generator().manual_seed(3)).requires_grad_()
    outs = []
    for backend in ("dense", "reference"):
        out = msa_conv2d(q, k, v, 3, backend=backend)
        outs.append((out, torch.autograd.grad(out.sum(), (q, k, v))))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_runs_under_bf16_autocast():
    """Inside a bf16 autocast region (the recipes' amp=bf16) the products keep the compute dtype."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 2, 8, 4, 4, generator=g, requires_grad=True) for _ in range(3))
    ek, ev = (torch.randn(2, 2, 3, 8, generator=g, requires_grad=True) for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = msa_conv2d(q, k, v, 3, extra_k=ek, extra_v=ev, layout="bhdhw", backend="dense")
    want = msa_conv2d(q, k, v, 3, extra_k=ek, extra_v=ev, layout="bhdhw", backend="reference")
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v, ek, ev))
