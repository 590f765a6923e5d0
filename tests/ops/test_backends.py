"""Every fast backend against the reference on replayable random cases, forward and gradients."""

from __future__ import annotations

import pytest
import torch

from msaconv.ops import backends
from msaconv.ops._checks import check_msa_conv2d

from ._compare import compare
from .cases import random_cases

CASES = random_cases(200, seed=0)
FAST = [name for name in backends.BACKENDS if name != "reference"]


def _skip_unless_runs(case, backend, dtype, layout="bhwd", dropout_p=0.0):
    q, k, v, ek, ev = case.tensors(dtype, requires_grad=True, layout=layout)
    pb = check_msa_conv2d("test", q, k, v, case.kernel, case.dilation, case.stride, case.border, None, ek, ev,
                          layout, dropout_p)
    reason = backends.BACKENDS[backend].can_run(pb)
    if reason is not None:
        pytest.skip(f"{backend} cannot run {case.id}: {reason}")


def test_case_sweep_covers_the_spec():
    """The 200 cases reach every option the issue names."""
    assert len(CASES) >= 200
    assert {c.border for c in CASES} == {"zeros", "mask", "clamp", "circular"}
    kernels = {c.kernel for c in CASES}
    assert {(5, 1), (1, 5), (1, 1), (9, 9)} <= kernels and any(k[0] % 2 == 0 for k in kernels)
    assert {c.dilation[0] for c in CASES} == {1, 2, 3} and {c.stride[1] for c in CASES} == {1, 2, 3}
    assert {c.heads for c in CASES} >= {1, 8} and 1 in {c.head_dim for c in CASES}
    assert {(c.height, c.width) for c in CASES} >= {(13, 9), (57, 43)}
    assert {c.extra for c in CASES} >= {0, 1, 4}


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_float64_matches_reference(case, backend):
    _skip_unless_runs(case, backend, torch.float64)
    compare(case, backend, torch.float64)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", CASES[:80], ids=lambda c: c.id)
def test_float32_matches_reference(case, backend):
    _skip_unless_runs(case, backend, torch.float32)
    compare(case, backend, torch.float32, ref_dtype=torch.float64)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", CASES[:40:3], ids=lambda c: c.id)
def test_channels_first_layout_matches(case, backend):
    _skip_unless_runs(case, backend, torch.float64, layout="bhdhw")
    compare(case, backend, torch.float64, layout="bhdhw")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", CASES[:24:4], ids=lambda c: c.id)
def test_half_dtypes_close_to_float64(case, backend, dtype):
    _skip_unless_runs(case, backend, dtype)
    compare(case, backend, dtype)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", CASES[:30:5], ids=lambda c: c.id)
def test_dropout_draws_the_same_mask_as_the_reference(case, backend):
    _skip_unless_runs(case, backend, torch.float64, dropout_p=0.3)
    compare(case, backend, torch.float64, dropout_p=0.3, seed=1234)


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_output_is_contiguous_in_the_requested_layout(backend):
    case = CASES[3] if CASES[3].height * CASES[3].width <= 1024 else CASES[1]  # one that 'dense' runs too
    assert case.height * case.width <= 1024
    for layout in ("bhwd", "bhdhw"):
        q, k, v, ek, ev = case.tensors(torch.float64, requires_grad=False, layout=layout)
        from msaconv.ops import msa_conv2d

        out = msa_conv2d(q, k, v, extra_k=ek, extra_v=ev, backend=backend, layout=layout, **case.kwargs())
        assert out.is_contiguous()


@pytest.mark.parametrize("backend", [n for n in FAST if callable(getattr(backends.BACKENDS[n], "backward", None))])
def test_direct_forward_of_explicit_backward_backends_passes_gradcheck(backend):
    """``BACKEND.forward`` outside the custom op (shared StatsBackwardFn autograd) has correct gradients."""
    be = backends.BACKENDS[backend]
    g = torch.Generator().manual_seed(9)
    shape = (1, 2, 3, 4, 5) if be.layout == "bhdhw" else (1, 2, 4, 5, 3)  # its native layout, head_dim 3
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ek, ev = (torch.randn(1, 2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    pb = check_msa_conv2d("t", q, k, v, 3, 1, (1, 2), "zeros", None, ek, ev, be.layout)
    if be.can_run(pb) is not None:
        pytest.skip(be.can_run(pb))
    assert torch.autograd.gradcheck(lambda *a: be.forward(*a, pb), (q, k, v, ek, ev))
