"""Every user-facing error of msa_conv2d names the argument, the value and the fix."""

from __future__ import annotations

import pytest
import torch

from msaconv.ops import merge_heads, msa_conv2d, msa_conv2d_weights, split_heads


def t(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


Q = t(1, 2, 6, 5, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(q=t(2, 6, 5, 4)), r"q must be a 5-D tensor \[B, heads, H, W, head_dim\].*4 dims.*split_heads"),
    (dict(k=t(1, 2, 6, 6, 4)), r"k has shape \(1, 2, 6, 6, 4\) but q has shape \(1, 2, 6, 5, 4\)"),
    (dict(v=t(1, 2, 6, 5, 4, dtype=torch.float64)), r"v has dtype torch.float64 but q has torch.float32; cast it"),
    (dict(q=t(1, 2, 6, 5, 4, dtype=torch.int64), k=t(1, 2, 6, 5, 4, dtype=torch.int64),
          v=t(1, 2, 6, 5, 4, dtype=torch.int64)), r"q has dtype torch.int64; use float32, float64, bfloat16"),
    (dict(q=t(1, 2, 0, 5, 4), k=t(1, 2, 0, 5, 4), v=t(1, 2, 0, 5, 4)), r"q has H=0 .* must be >= 1"),
    (dict(kernel_size=0), r"kernel_size must be >= 1 along each axis, got 0"),
    (dict(kernel_size=(3, 3, 3)), r"kernel_size must be an int or a pair of ints.*got \(3, 3, 3\); use e.g."),
    (dict(kernel_size=2.5), r"kernel_size must be an int or a pair"),
    (dict(dilation=(1, 0)), r"dilation must be >= 1 along each axis, got \(1, 0\)"),
    (dict(stride=-1), r"stride must be >= 1 along each axis, got -1"),
    (dict(border="zero"), r"unknown border 'zero'; did you mean 'zeros'\? choose one of 'zeros', 'mask'"),
    (dict(layout="bhw"), r"unknown layout 'bhw'; did you mean 'bhwd'\?"),
    (dict(backend="portabel"), r"unknown backend 'portabel'; did you mean 'portable'\?"),
    (dict(border="clamp", kernel_size=3, dilation=2), r"border='clamp' needs W >= kernel_size\*dilation.*got W=5 < 3\*2=6; reduce"),
    (dict(extra_k=t(1, 2, 3, 4)), r"extra_k was given without extra_v; pass both"),
    (dict(extra_k=t(1, 2, 3, 5), extra_v=t(1, 2, 3, 5)), r"extra_k must have shape \[B, heads, M, head_dim\] = \(1, 2, 'M', 4\).*got \(1, 2, 3, 5\)"),
    (dict(extra_k=t(1, 2, 3, 4), extra_v=t(1, 2, 2, 4)), r"extra_k has M=3 keys but extra_v has M=2"),
    (dict(extra_k=t(1, 2, 3, 4, dtype=torch.float64), extra_v=t(1, 2, 3, 4)), r"extra_k is torch.float64 on cpu but q is torch.float32"),
    (dict(scale=float("nan")), r"scale must be a finite float or None, got nan"),
    (dict(dropout_p=1.0), r"dropout_p must be a float in \[0, 1\), got 1.0"),
])
def test_msa_conv2d_errors(kwargs, match):
    args = dict(q=Q, k=Q, v=Q, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        msa_conv2d(**args)


def test_a_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match=r"q must be a torch.Tensor, got list"):
        msa_conv2d([1, 2], Q, Q, 3)


def test_named_backend_that_cannot_run_gives_its_reason(monkeypatch):
    from msaconv.ops import backends

    class Never:
        name, layout = "never", "bhwd"

        def can_run(self, pb):
            return "it never runs (test double)"

    monkeypatch.setitem(backends.BACKENDS, "never", Never())
    with pytest.raises(ValueError, match=r"backend 'never' cannot run this call: it never runs \(test double\); use backend=None"):
        msa_conv2d(Q, Q, Q, 3, backend="never")


def test_no_backend_can_run_lists_every_reason(monkeypatch):
    from msaconv.ops import backends

    class Never:
        layout = "bhwd"

        def __init__(self, name):
            self.name = name

        def can_run(self, pb):
            return f"{self.name} says no"

    monkeypatch.setattr(backends, "BACKENDS", {"a": Never("a"), "b": Never("b")})
    with pytest.raises(ValueError, match=r"no backend can run this call; a: a says no; b: b says no"):
        msa_conv2d(Q, Q, Q, 3)


def test_weights_errors():
    with pytest.raises(ValueError, match=r"msa_conv2d_weights: unknown border"):
        msa_conv2d_weights(Q, Q, 3, border="wrap")


def test_split_heads_error_and_round_trip():
    with pytest.raises(ValueError, match=r"split_heads: x must be \[B, C, H, W\] with C divisible by num_heads=3"):
        split_heads(t(1, 8, 4, 4), 3)
    x = torch.randn(2, 8, 5, 3)
    for layout in ("bhwd", "bhdhw"):
        assert torch.equal(merge_heads(split_heads(x, 4, layout), layout), x)
