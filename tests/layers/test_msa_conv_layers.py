"""MSAConv2d (a drop-in for nn.Conv2d) and MSAttention2d (a token mixer)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msaconv.layers import MSAConv2d, MSAttention2d
from msaconv.ops._attn import dropout_keep


def authors_layer(m: MSAConv2d, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' MSA_Conv_2d forward, rebuilt from its definition with m's own weights.

    1x1 qkv conv (with bias); single-head logits over the k x k window of *zero-padded* k (padding
    dilation*(k-1)//2, applied after the projection, padded keys not masked) scaled by C^-0.5; softmax
    over the window; (dropout); weighted sum of the zero-padded v window; + x; k x k conv (stride,
    padding, no bias); ReLU.
    """
    B, C, H, W = x.shape
    kh, kw = m.kernel_size
    dh, dw = m.dilation
    pad = (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
    q, k, v = F.conv2d(x, m.attn.qkv.weight, m.attn.qkv.bias).chunk(3, dim=1)
    unf = dict(kernel_size=(kh, kw), dilation=(dh, dw), padding=pad)
    k_win = F.unfold(k, **unf).view(B, C, kh * kw, H * W)  # [B, C, K, N]
    v_win = F.unfold(v, **unf).view(B, C, kh * kw, H * W)
    dots = (q.reshape(B, C, 1, H * W) * k_win).sum(1) * C ** -0.5  # [B, K, N]
    attn = dots.softmax(dim=1)
    if keep is not None:
        attn = attn * keep
    out = (attn.unsqueeze(1) * v_win).sum(2).view(B, C, H, W) + x
    return F.relu(F.conv2d(out, m.conv.weight, None, m.conv.stride, m.conv.padding))


@pytest.mark.parametrize("cin,cout,k,stride,dilation", [(8, 16, 3, 1, 1), (6, 4, 3, 2, 1), (5, 7, 5, 1, 2)])
def test_reproduces_the_authors_layer(cin, cout, k, stride, dilation):
    torch.manual_seed(0)
    m = MSAConv2d(cin, cout, k, stride=stride, dilation=dilation, num_heads=1, attn_drop=0.1,
                  conv_dilation=1, padding=(k - 1) // 2).double().eval()
    x = torch.randn(2, cin, 11, 9, dtype=torch.float64)
    torch.testing.assert_close(F.relu(m(x)), authors_layer(m, x), rtol=1e-10, atol=1e-12)


def test_attention_dropout_is_applied_to_the_window_weights_in_training():
    torch.manual_seed(0)
    m = MSAConv2d(6, 6, 3, num_heads=1, attn_drop=0.1).double().train()
    x = torch.randn(2, 6, 7, 8, dtype=torch.float64)
    torch.manual_seed(42)
    got = F.relu(m(x))
    torch.manual_seed(42)
    keep = dropout_keep((2, 1, 7 * 8, 9), 0.1, x.device).double()  # [B, heads, P, K], the op's draw
    want = authors_layer(m, x, keep.squeeze(1).transpose(1, 2))  # -> [B, K, N]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    m.eval()
    assert not torch.allclose(F.relu(m(x)), got)  # no dropout at evaluation


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(5, 1), stride=(1, 2), padding=(2, 0)),
    dict(kernel_size=3, stride=1, padding=2, dilation=2),
    dict(kernel_size=4, stride=2, padding=1),
    dict(kernel_size=3, stride=1, padding=0),
    dict(kernel_size=3, padding=1, groups=4),
])
def test_output_shape_is_nn_conv2d_s(kw):
    x = torch.randn(2, 8, 13, 10)
    conv = nn.Conv2d(8, 12, **kw)
    m = MSAConv2d(8, 12, num_heads=2, **kw)
    assert m(x).shape == conv(x).shape
    assert m.weight.shape == conv.weight.shape


def test_default_padding_keeps_the_size_and_depthwise_form():
    x = torch.randn(2, 16, 9, 7)
    m = MSAConv2d(16, 16, 3, groups=16, num_heads=16)  # depthwise MSA-Conv: head_dim 1
    assert m(x).shape == x.shape and m.attn.head_dim == 1
    assert m.groups == 16 and m.num_heads == 16


def test_attn_stride_runs_the_attention_strided():
    torch.manual_seed(0)
    m = MSAConv2d(8, 8, 3, num_heads=2, attn_stride=2).double()
    x = torch.randn(1, 8, 9, 8, dtype=torch.float64)
    full = MSAConv2d(8, 8, 3, num_heads=2).double()
    full.load_state_dict(m.state_dict())
    a_full = full.attn(x)
    a_strided = m.attn(x)
    torch.testing.assert_close(a_strided, a_full[:, :, ::2, ::2])
    assert m(x).shape == (1, 8, 5, 4)


@pytest.mark.parametrize("cls,args", [(MSAConv2d, (8, 12, 3)), (MSAttention2d, (8, 2, 5))])
def test_gradients_reach_every_parameter_and_state_dict_round_trips(cls, args):
    torch.manual_seed(0)
    m = cls(*args)
    x = torch.randn(2, 8, 7, 9, requires_grad=True)
    m(x).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None
    m2 = cls(*args)
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x), m(x))


def test_msattention_shapes_weights_and_repr():
    torch.manual_seed(0)
    m = MSAttention2d(16, num_heads=4, kernel_size=5, dilation=2, border="mask").eval()
    x = torch.randn(2, 16, 11, 6)
    assert m(x).shape == x.shape
    a = m.attention_weights(x)
    assert a.shape == (2, 4, 11, 6, 25)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 11, 6))
    r = repr(m)
    assert "num_heads=4" in r and "kernel_size=(5, 5)" in r and "border='mask'" in r


def test_any_input_size_same_weights():
    m = MSAttention2d(8, 2, 7).eval()
    for hw in [(1, 1), (3, 17), (32, 32), (57, 43)]:
        assert m(torch.randn(1, 8, *hw)).shape == (1, 8, *hw)


def test_device_and_dtype_arguments():
    m = MSAttention2d(8, 2, 3, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    m = MSAConv2d(8, 4, 3, device="cpu", dtype=torch.bfloat16)
    assert m(torch.randn(1, 8, 5, 5, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("build,match", [
    (lambda: MSAConv2d(8, 12, 3, num_heads=3), r"MSAConv2d: in_channels=8 is not divisible by num_heads=3; choose num_heads from \[1, 2, 4, 8\]"),
    (lambda: MSAttention2d(10, num_heads=4), r"MSAttention2d: dim=10 is not divisible by num_heads=4"),
    (lambda: MSAttention2d(8, num_heads=0), r"MSAttention2d: num_heads must be an int >= 1, got 0; use e.g. num_heads=1"),
    (lambda: MSAConv2d(0, 4, 3), r"MSAConv2d: in_channels must be an int >= 1, got 0"),
    (lambda: MSAConv2d(8, 6, 3, groups=4), r"groups=4 must be a positive int dividing in_channels=8 and out_channels=6"),
    (lambda: MSAttention2d(8, 2, kernel_size=0), r"MSAttention2d: kernel_size must be >= 1"),
    (lambda: MSAttention2d(8, 2, border="wrap"), r"MSAttention2d: unknown border 'wrap'"),
    (lambda: MSAttention2d(8, 2, attn_drop=1.5), r"MSAttention2d: attn_drop must be a float in \[0, 1\), got 1.5"),
    (lambda: MSAttention2d(8, 2, proj_drop=-0.1), r"MSAttention2d: proj_drop must be a float in \[0, 1\)"),
])
def test_config_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_input_errors():
    m = MSAttention2d(8, 2, 3)
    with pytest.raises(ValueError, match=r"MSAttention2d: expected input \[B, C, H, W\], got \(8, 5, 5\); add a batch axis"):
        m(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match=r"MSAttention2d: expected 8 input channels, got x of shape \(1, 4, 5, 5\)"):
        m(torch.randn(1, 4, 5, 5))
    c = MSAConv2d(8, 4, 3)
    with pytest.raises(ValueError, match=r"MSAConv2d: expected 8 input channels"):
        c(torch.randn(1, 3, 5, 5))


def test_msattention_is_head_structured_with_shift_and_pool():
    """forward == merge_heads(attend_heads(*qkv_heads(x))) with MDCSM and IPM on, so the MoH/KDGQA
    wrappers keep both mechanisms."""
    from msaconv.layers import get_token_mixer

    torch.manual_seed(0)
    m = MSAttention2d(16, 4, 3, shift="kv", inter_pool="grid").eval()
    x = torch.randn(2, 16, 9, 7)
    torch.testing.assert_close(m.merge_heads(m.attend_heads(*m.qkv_heads(x), x.shape[-2:])), m(x))
    plain = MSAttention2d(16, 4, 3).eval()
    plain.load_state_dict(m.state_dict())
    assert not torch.allclose(plain(x), m(x))  # the mechanisms do change the output
    moh = get_token_mixer("moh", 16, num_heads=4, inner="msa_conv", shift="kv", inter_pool="grid").eval()
    assert moh.inner.shift is not None and moh.inner.inter_pool is not None
    assert moh(x).shape == x.shape
