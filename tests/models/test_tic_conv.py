"""The ConvNet reading of TiC (``tic_conv_*``) and its matched baseline (``convnet_*``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msaconv.layers import MSAConv2d
from msaconv.models import ConvNetConfig, create_model
from msaconv.models.tic_conv import CONFIGS, ConvUnit


def _convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, MSAConv2d)
            or (isinstance(m, nn.Conv2d) and not any(m is c.conv for c in model.modules() if isinstance(c, MSAConv2d))
                and m.kernel_size != (1, 1))]


@pytest.mark.parametrize("size", ["nano", "tiny"])
def test_baseline_is_the_same_skeleton_with_plain_convs(size):
    tic, base = create_model(f"tic_conv_{size}"), create_model(f"convnet_{size}")
    a, b = _convs(tic), _convs(base)
    assert len(a) == len(b)
    n_plain = 1 + tic.cfg.plain_convs  # the stem, and the first plain_convs convs of the body
    assert all(isinstance(m, nn.Conv2d) for m in a[:n_plain]) and isinstance(b[0], nn.Conv2d)
    assert all(isinstance(m, MSAConv2d) for m in a[n_plain:]) and not any(isinstance(m, MSAConv2d) for m in b)
    assert len(a) - n_plain >= 5
    for m, c in zip(a[n_plain:], b[n_plain:]):
        assert (m.conv.in_channels, m.conv.out_channels, m.conv.kernel_size, m.conv.stride, m.conv.padding) == (
            c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding)
    ua = [m for m in tic.modules() if isinstance(m, ConvUnit)]
    ub = [m for m in base.modules() if isinstance(m, ConvUnit)]
    assert len(ua) == len(ub) == len(a) - 1
    for x, y in zip(ua, ub):
        assert (type(x.pool), type(x.norm), type(x.act), x.residual) == (type(y.pool), type(y.norm), type(y.act),
                                                                          y.residual)


def test_tiny_is_about_resnet50_size():
    n = sum(p.numel() for p in create_model("tic_conv_tiny").parameters())
    assert 20e6 <= n <= 30e6


@pytest.mark.parametrize("kw", [dict(dilation=2), dict(depthwise=True), dict(kernel_size=((5, 1), 3, 3)),
                                dict(shift="kv", inter_pool="grid", head_dim=16), dict(layer_scale_init=0.0), dict(downsample="stride", residual=True,
                                                                          depths=(1, 3, 2))])
def test_variants_build_run_and_match_the_baseline_shapes(kw):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for conv in ("msa", "plain"):
        cfg = CONFIGS["tic_conv_nano"].override(conv=conv, **{k: v for k, v in kw.items()
                                                                if conv == "msa" or k not in ("shift", "inter_pool")})
        from msaconv.models import ConvNet

        out = ConvNet(cfg)(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_msa_conv2d_with_mdcsm_and_ipm_matches_the_reference_backend():
    torch.manual_seed(1)
    kw = dict(num_heads=4, shift="kv", inter_pool="grid", border="zeros", qkv_bias=True)
    fast = MSAConv2d(32, 48, 3, **kw)
    ref = MSAConv2d(32, 48, 3, backend="reference", **kw)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 32, 11, 13, dtype=torch.float32, requires_grad=True)
    xr = x.detach().clone().requires_grad_(True)
    y, yr = fast(x), ref(xr)
    torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    yr.backward(g)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)
    for (n, p), (_, pr) in zip(fast.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, pr.grad, rtol=1e-4, atol=1e-4, msg=n)


def test_msa_conv2d_mechanisms_change_the_output():
    torch.manual_seed(2)
    plain = MSAConv2d(32, 32, 3, num_heads=4)
    x = torch.randn(1, 32, 16, 16)
    for kw in (dict(shift="kv"), dict(shift="input"), dict(inter_pool="grid"), dict(inter_pool="local")):
        m = MSAConv2d(32, 32, 3, num_heads=4, **kw)
        m.load_state_dict(plain.state_dict())
        assert not torch.allclose(m(x), plain(x)), kw


def test_mdcsm_kv_needs_two_heads_in_msa_conv2d():
    with pytest.raises(ValueError, match=r"num_heads >= 2"):
        MSAConv2d(32, 32, 3, num_heads=1, shift="kv")


def test_mechanism_notes_name_no_ops():
    cfg = ConvNetConfig(dims=(32, 64), depths=(2, 2), shift="kv", inter_pool="grid")
    notes = cfg.mechanism_notes(16)  # maps read: 16, 8 | 8, 4
    assert any("4x4" in n and "no pooling" in n for n in notes)
    assert any("16x16" in n and "rolls keys" in n for n in notes)
    assert cfg.layer_maps(16) == [[16, 8], [8, 4]]


def test_main_model_mechanisms_are_alive_at_its_training_sizes():
    from msaconv.train.config import resolve

    cfg = resolve()  # the main job
    model_cfg = CONFIGS[cfg.model].override(**cfg.model_kwargs) if cfg.model in CONFIGS else None
    assert model_cfg is not None and model_cfg.conv == "msa"
    for size in cfg.train_sizes or [cfg.img_size]:
        dead = [n for n in model_cfg.mechanism_notes(size) if "no-op" in n or "no pooling" in n]
        assert not dead, (size, dead)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"conv='msa_conv'.*did you mean"):
        ConvNetConfig(conv="msa_conv").validate()
    with pytest.raises(ValueError, match=r"unknown option 'widths'.*options are .*dims"):
        CONFIGS["tic_conv_nano"].override(widths=(1, 2))
    with pytest.raises(ValueError, match=r"depths"):
        ConvNetConfig(dims=(8, 16), depths=(1,)).validate()
