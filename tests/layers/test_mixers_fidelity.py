"""Where a mixer was changed to match its authors' released code (or gained an option that reproduces it):
issue 21. Each test pins the behaviour the fix or the option promises; docs/zoo_fidelity.md has the table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msaconv.layers import MOH_LOAD_BALANCE_WEIGHT, auxiliary_losses, get_token_mixer, list_token_mixers
from msaconv.layers.mixers.kdgqa import allocate


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def _support(t: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` bool: where ``t [B, C, H, W]`` is nonzero in any batch/channel."""
    return t.abs().sum(dim=(0, 1)) > 0


def _randomise(m: nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


# ------------------------------------------------------------------------------------------ lowtention
@pytest.mark.parametrize("upsampler", ["depthwise", "fused"])
def test_lowtention_stride1_upsampler_is_centred(upsampler):
    """An impulse through the stride-1 upsampler (and through downsampler + upsampler) stays centred: the
    receptive field is symmetric about the pixel (the old 2x2 kernel with padding 0 shifted it by half a
    pixel, reading only pixels (y-1..y, x-1..x))."""
    m = get_token_mixer("lowtention", 4, num_heads=1, stride=1, kernel_size=3, upsampler=upsampler)
    _randomise(m, 1)
    m.eval()
    x = torch.zeros(1, 4, 11, 11)
    x[..., 5, 5] = 1.0
    with torch.no_grad():
        up = _support(m.up(x) - m.up(torch.zeros_like(x)))                # minus the (bias) response to 0
        path = m.up(m.proj(m.down(x))) - m.up(m.proj(m.down(torch.zeros_like(x))))
        path = _support(path)
    want_up = torch.zeros(11, 11, dtype=torch.bool)
    want_up[4:7, 4:7] = True                                              # 3x3 centred on (5, 5)
    assert torch.equal(up, want_up)
    want_path = torch.zeros(11, 11, dtype=torch.bool)
    want_path[3:8, 3:8] = True                                            # 3x3 down then 3x3 up: 5x5 centred
    assert torch.equal(path, want_path)
    assert torch.equal(path, path.flip(0)) and torch.equal(path, path.flip(1))


def test_lowtention_whole_mixer_keeps_the_size_at_stride_1_and_2():
    for s, k in ((1, 3), (2, 5), (3, 5)):
        m = get_token_mixer("lowtention", 8, num_heads=2, stride=s, kernel_size=k).eval()
        for size in ((9, 7), (8, 8), (1, 1)):
            assert m(torch.randn(2, 8, *size)).shape == (2, 8, *size)


def test_lowtention_presets_build_the_released_layers():
    C = 8
    plain = get_token_mixer("lowtention", C, num_heads=2)
    assert plain.up.bias is None and plain.up.groups == C and isinstance(plain.proj, nn.Conv2d)
    assert tuple(plain.up.weight.shape[-2:]) == (4, 4) and plain.up.padding == (1, 1)    # stride 2: 2s, s // 2
    rel = get_token_mixer("lowtention", C, num_heads=2, preset="lowformer")
    assert rel.up.bias is not None and rel.up.groups == C                 # the released upsampler has a bias
    fused = get_token_mixer("lowtention", C, num_heads=2, stride=1, kernel_size=3, preset="lowformer_fused")
    assert isinstance(fused.proj, nn.Identity) and fused.up.groups == 1 and fused.up.bias is not None
    assert tuple(fused.up.weight.shape) == (C, C, 3, 3) and fused.up.padding == (1, 1)
    # explicit arguments override a preset
    assert get_token_mixer("lowtention", C, num_heads=2, preset="lowformer", up_bias=False).up.bias is None
    # state dicts of the default layout are unchanged at stride 2 (trained checkpoints still load)
    assert set(plain.state_dict()) == {"down.0.weight", "down.1.weight", "down.1.bias", "down.1.running_mean",
                                       "down.1.running_var", "down.1.num_batches_tracked", "qkv.weight",
                                       "proj.weight", "proj.bias", "up.weight"}


# ------------------------------------------------------------------------------------------------- moh
def test_moh_all_heads_shared_is_soft_weighting_without_a_router():
    torch.manual_seed(0)
    plain = get_token_mixer("global", 16, num_heads=4)
    m = get_token_mixer("moh", 16, num_heads=4, shared_heads=4)
    assert m.router is None and m.mix_router is None and m.top_k == 0 and m.routed_heads == 0
    m.inner.load_state_dict(plain.state_dict())
    x = torch.randn(2, 16, 5, 4)
    with torch.no_grad():
        m.shared_router.weight.zero_()                                    # uniform: every gate is 1
    torch.testing.assert_close(m(x), plain(x))
    _randomise(m.shared_router, 2, 1.0)
    g = m.gates(x)
    torch.testing.assert_close(g, 4 * torch.softmax(m.shared_router(x), dim=1))
    torch.testing.assert_close(g.sum(1), torch.full((2, 5, 4), 4.0))
    m.train()
    m(x)
    assert m.load_balance_loss() == 0 and m.aux_loss is None              # nothing is routed


def test_moh_default_split_never_leaves_a_single_routed_head():
    assert get_token_mixer("moh", 16, num_heads=2).routed_heads == 2      # h = 2: all routed
    assert get_token_mixer("moh", 12, num_heads=3).routed_heads == 2
    m = get_token_mixer("moh", 16, num_heads=8)
    assert (m.shared_heads, m.routed_heads, m.top_k) == (4, 4, 2)


def _moh_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 1),
                         nn.Sequential(get_token_mixer("moh", 16, num_heads=4), nn.GELU()),
                         get_token_mixer("moh", 16, num_heads=8, shared_heads=2, top_k=3),
                         get_token_mixer("moh", 16, num_heads=4, shared_heads=4))   # all shared: no loss


def test_auxiliary_losses_collects_the_moh_load_balance_loss():
    assert MOH_LOAD_BALANCE_WEIGHT == 0.01                                # MoH, arXiv 2410.11842, eq. 8
    net = _moh_net().train()
    x = torch.randn(2, 3, 6, 5)
    net(x)
    losses = auxiliary_losses(net)
    assert set(losses) == {"moh_load_balance"}
    loss = losses["moh_load_balance"]
    per_layer = [net[1][0].load_balance_loss(), net[2].load_balance_loss()]
    assert all(v > 0 for v in per_layer) and loss > 0
    torch.testing.assert_close(loss, (per_layer[0] + per_layer[1]).float() / 2)  # the mean over routing layers
    torch.testing.assert_close(auxiliary_losses(net, reduction="sum")["moh_load_balance"],
                               (per_layer[0] + per_layer[1]).float())
    (MOH_LOAD_BALANCE_WEIGHT * loss).backward()
    for router in (net[1][0].router, net[2].router):
        assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        net(x)
    assert auxiliary_losses(net)["moh_load_balance"] == 0                 # evaluation forwards add nothing


def test_auxiliary_losses_of_models_without_routing():
    assert auxiliary_losses(nn.Sequential(nn.Conv2d(3, 16, 1), get_token_mixer("global", 16, num_heads=4))) == {}
    shared_only = nn.Sequential(get_token_mixer("moh", 16, num_heads=4, shared_heads=4)).train()
    shared_only(torch.randn(1, 16, 4, 4))
    out = auxiliary_losses(shared_only)
    assert set(out) == {"moh_load_balance"} and out["moh_load_balance"] == 0
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        auxiliary_losses(shared_only, reduction="max")


# ------------------------------------------------------------------------------------------------ hilo
@pytest.mark.parametrize("dim", [8, 15, 16, 64])
def test_hilo_registry_default_has_both_branches(dim):
    m = get_token_mixer("hilo", dim)
    assert m.l_heads >= 1 and m.h_heads >= 1, m
    q = get_token_mixer("hilo", 16, alpha=0.25)
    assert (q.num_heads, q.l_heads, q.h_heads) == (4, 1, 3)


def test_hilo_single_branch_is_only_by_request():
    assert get_token_mixer("hilo", 16, num_heads=1, alpha=0.0).l_heads == 0          # Hi-Fi only, asked for
    assert get_token_mixer("hilo", 16, num_heads=1, alpha=1.0).h_heads == 0          # Lo-Fi only, asked for
    assert get_token_mixer("hilo", 16, num_heads=1, window_size=1).h_heads == 0      # ws = 1: MHSA, as LITv2
    with pytest.raises(ValueError, match=r"HiLo2d: alpha=0.5 with num_heads=1 gives 0 Lo-Fi and 1 Hi-Fi heads"):
        get_token_mixer("hilo", 16, num_heads=1)


def test_registry_defaults_never_build_a_degenerate_mixer():
    """``get_token_mixer(name, dim)`` with every default: it builds and runs, and the multi-branch mixers
    keep every branch (HiLo: both; MoH: >= 2 routed heads; KDGQA: >= 2 key/value groups)."""
    for name in list_token_mixers():
        kw = {"size": (6, 6)} if name == "spectral" else {}
        for dim in (16, 32):
            m = get_token_mixer(name, dim, **kw).eval()
            with torch.no_grad():
                assert m(torch.randn(1, dim, 6, 6)).shape == (1, dim, 6, 6)
            if name == "hilo":
                assert m.l_heads >= 1 and m.h_heads >= 1
            if name == "moh":
                assert m.routed_heads >= 2 and m.shared_heads >= 1
            if name == "kdgqa":
                assert m.kv_heads >= 2


# ----------------------------------------------------------------------------------------------- kdgqa
def _group_norms(m, x):
    _, k, _ = m.inner.qkv_heads(x)
    return m._pool(k).flatten(2).norm(dim=-1).sum(0).float()


@pytest.mark.parametrize("window", [1, 2])
def test_dgqa_released_cache_is_the_authors_running_sum(window):
    torch.manual_seed(0)
    m = get_token_mixer("kdgqa", 16, num_heads=4, kv_heads=2, mode="diff", window_size=window, released_cache=True)
    m.train()
    xs = [torch.randn(2, 16, 5, 5) * s for s in (1.0, 3.0, 0.5, 2.0)]
    c = torch.zeros(2, dtype=torch.float32)                               # the cache buffer is float32
    for step, x in enumerate(xs):
        n = _group_norms(m, x)
        m(x)
        if step % window == 0:
            assert torch.equal(m.allocation, allocate((c - n).abs(), 4))
            c = (c + n) / window
        torch.testing.assert_close(m.norm_state, c)
    if window == 1:                                                       # a running sum of all the norms
        torch.testing.assert_close(m.norm_state, sum(_group_norms(m, x) for x in xs))
    ema = get_token_mixer("kdgqa", 16, num_heads=4, kv_heads=2, mode="ema", momentum=0.1, released_cache=True)
    ema.train()
    n0, n1 = _group_norms(ema, xs[0]), _group_norms(ema, xs[1])
    ema(xs[0])
    ema(xs[1])
    assert torch.equal(ema.allocation, allocate(0.1 * n0 + 0.9 * n1, 4))  # their 0.9 n + 0.1 c
    torch.testing.assert_close(ema.norm_state, n0 + n1)


# ----------------------------------------------------------------------------------------------- ulsam
@pytest.mark.parametrize("momentum", [0.1, 0.9])
def test_ulsam_bn_momentum_follows_pytorch_convention(momentum):
    """``bn_momentum=0.9`` is the released code (PyTorch's ``momentum=0.9``: running stats 90% the last
    batch); the default 0.1 is what a Keras ``momentum=0.9`` means."""
    kw = {} if momentum == 0.1 else {"bn_momentum": momentum}
    m = get_token_mixer("ulsam", 8, num_heads=2, **kw).train()
    x = torch.randn(4, 8, 6, 5)
    m(x)
    batch_mean = m.dw(x).mean(dim=(0, 2, 3))
    torch.testing.assert_close(m.bn_dw.running_mean, momentum * batch_mean)
    assert m.bn_dw.momentum == momentum and m.bn_pw.momentum == momentum


# ----------------------------------------------------------------------------------------- global_gate
def test_global_gate_mpgnet_preset_is_the_released_block():
    m = get_token_mixer("global_gate", 8, preset="mpgnet")
    assert (m.reduction, m.gate_bias, m.padding_mode, m.pooling) == (1, False, "reflect", "sum")
    assert m.fc1.bias is None and m.fc2.bias is None and m.fc1.out_channels == 8 and m.context is None
    _randomise(m, 3, 0.3)
    x = torch.randn(2, 8, 7, 6)
    u = F.relu(F.conv2d(F.pad(m.pw1(x), (2, 2, 2, 2), mode="reflect"), m.dw.weight, m.dw.bias, groups=8))
    c = u.sum(dim=(2, 3))                                                 # their softmax over a size-1 axis
    g = torch.sigmoid(F.linear(F.relu(F.linear(c, m.fc1.weight[:, :, 0, 0])), m.fc2.weight[:, :, 0, 0]))
    torch.testing.assert_close(m(x), m.pw2(u * g[:, :, None, None]))
    with pytest.raises(ValueError, match="padding_mode='reflect' needs maps of at least 3x3 pixels"):
        m(torch.randn(1, 8, 2, 6))
    soft = get_token_mixer("global_gate", 8, preset="mpgnet", pooling="softmax")   # explicit beats preset
    assert soft.pooling == "softmax" and soft.context is not None and soft.padding_mode == "reflect"
    default = get_token_mixer("global_gate", 8)
    assert (default.reduction, default.gate_bias, default.padding_mode, default.pooling) == (4, True, "zeros",
                                                                                              "softmax")


# ----------------------------------------------------------------------------------------------- glmix
def test_glmix_slots_can_come_from_the_pre_norm_input():
    m = get_token_mixer("glmix", 8, num_heads=2, num_slots=4)
    _randomise(m, 4, 0.3)
    u = torch.randn(2, 8, 6, 5)                                           # a block's input before its norm
    x = F.group_norm(u, 1)                                                # what the mixer is given
    torch.testing.assert_close(m(x, slot_source=x), m(x))
    slots = F.adaptive_avg_pool2d(u, 2).flatten(2).transpose(1, 2)
    t = x.flatten(2).transpose(1, 2)
    L = F.normalize(slots, dim=-1) @ (m.slot_scale * F.normalize(t, dim=-1)).transpose(1, 2)
    torch.testing.assert_close(m.logits(x, slot_source=u), L)
    assert (m(x, slot_source=u) - m(x)).abs().max() > 1e-6
    with pytest.raises(ValueError, match="slot_source has batch 1, x has 2"):
        m(x, slot_source=u[:1])
