"""Pointwise2d is nn.Conv2d(in, out, 1) computed as a matrix product: same values, grads and state_dict."""

import pytest
import torch
from torch import nn

from msaconv.layers import Pointwise2d


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_conv1x1_forward_and_backward(bias, channels_last):
    g = torch.Generator().manual_seed(3)
    pw = Pointwise2d(6, 10, bias=bias).double()
    conv = nn.Conv2d(6, 10, 1, bias=bias).double()
    conv.load_state_dict(pw.state_dict())  # the same parameter names and shapes
    x = torch.randn(3, 6, 5, 7, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = pw(x1), conv(x2)
    assert y1.shape == y2.shape == (3, 10, 5, 7)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    gy = torch.randn(y1.shape, generator=g, dtype=torch.float64)
    y1.backward(gy)
    y2.backward(gy)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pw.weight.grad, conv.weight.grad, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(pw.bias.grad, conv.bias.grad, rtol=1e-12, atol=1e-12)


def test_is_a_conv2d_and_takes_unbatched_input():
    pw = Pointwise2d(4, 2)
    assert isinstance(pw, nn.Conv2d) and pw.weight.shape == (2, 4, 1, 1)
    x = torch.randn(4, 3, 3)
    torch.testing.assert_close(pw(x), pw(x[None])[0])


@pytest.mark.parametrize("bias", [True, False])
def test_channels_first_matches_conv_and_is_nchw_contiguous(bias):
    torch.manual_seed(0)
    pw = Pointwise2d(6, 9, bias=bias, channels_first=True).double()
    ref = torch.nn.Conv2d(6, 9, 1, bias=bias).double()
    ref.load_state_dict(pw.state_dict())
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    y = pw(x)
    assert y.is_contiguous()  # the fused MSA-Conv kernel reads these planes without a copy
    torch.testing.assert_close(y, ref(x))
    torch.autograd.gradcheck(pw, (x,))


def test_channels_first_takes_the_linear_path_for_a_channels_last_input():
    """A channels-last x stays channels-last (linear over its free view): bmm would copy x to NCHW and, in the
    backward, sum one weight gradient per image."""
    torch.manual_seed(0)
    pw = Pointwise2d(6, 9, channels_first=True).double()
    ref = torch.nn.Conv2d(6, 9, 1).double()
    ref.load_state_dict(pw.state_dict())
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = pw(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    torch.testing.assert_close(y, ref(x))
    torch.autograd.gradcheck(pw, (x,))
    one = torch.randn(2, 6, 1, 1, dtype=torch.float64)  # both layouts at once: the NCHW path
    assert pw(one).is_contiguous()
