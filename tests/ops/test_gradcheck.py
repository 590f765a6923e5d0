"""torch.autograd.gradcheck in float64 on small cases, for every backend (custom Functions included)."""

from __future__ import annotations

import pytest
import torch

from msaconv.ops import backends, msa_conv2d, msa_conv2d_weights

from .cases import Case

SMALL = [
    Case(0, 1, 2, 5, 4, 3, (3, 3), (1, 1), (1, 1), "zeros", 0, 11),
    Case(1, 2, 1, 4, 6, 2, (2, 3), (2, 1), (1, 2), "mask", 2, 12),
    Case(2, 1, 2, 6, 5, 2, (3, 1), (2, 1), (2, 1), "clamp", 0, 13),
    Case(3, 1, 1, 3, 4, 1, (3, 3), (1, 2), (1, 1), "circular", 3, 14),
]


@pytest.mark.parametrize("backend", list(backends.BACKENDS))
@pytest.mark.parametrize("case", SMALL, ids=lambda c: c.id)
def test_gradcheck(case, backend):
    q, k, v, ek, ev = case.tensors(torch.float64, requires_grad=True)
    inputs = [t for t in (q, k, v, ek, ev) if t is not None]

    def f(*ts):
        q, k, v, *extra = ts
        ek, ev = (extra + [None, None])[:2]
        return msa_conv2d(q, k, v, extra_k=ek, extra_v=ev, backend=backend, **case.kwargs())

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_weights_gradcheck():
    case = SMALL[1]
    q, k, _, ek, _ = case.tensors(torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, ek: msa_conv2d_weights(q, k, extra_k=ek, **case.kwargs()), (q, k, ek), eps=1e-6, atol=1e-8)
