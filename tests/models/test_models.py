"""Generic tests over every registered model (timm's tests/test_models.py habit), at small inputs.

Models built for 224 px are exercised at small sizes here; their default-size forward is marked slow.
"""

from __future__ import annotations

import io
import warnings
from functools import lru_cache

import pytest
import torch

import msaconv
from msaconv.models import FeatureNet, count_flops, create_model, list_models

MODELS = list_models()
BIG = [n for n in MODELS if msaconv.models.get_pretrained_cfg(n)["input_size"][-1] > 96]


def _seed_model(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return create_model(name, **kw)


@lru_cache(maxsize=None)
def _eval_model(name: str):
    """A shared model in eval mode for the read-only tests."""
    return _seed_model(name).eval()


def _odd_size(model) -> tuple[int, int]:
    """An odd, non-square size a little above the model's minimum (small, so big models stay cheap)."""
    m = max(model.min_input_size, 16)
    return m + 1, m + 15


def _expected_map(cfg, h: int, w: int, stage: int) -> tuple[int, int]:
    return cfg.stage_sizes(h)[stage], cfg.stage_sizes(w)[stage]


@pytest.mark.parametrize("name", MODELS)
def test_forward_default_size(name):
    if name in BIG:
        pytest.skip("224 px forward is in test_forward_default_size_big (slow)")
    model = _eval_model(name)
    c, h, w = model.pretrained_cfg["input_size"]
    with torch.no_grad():
        out = model(torch.randn(2, c, h, w))
    assert out.shape == (2, model.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", BIG)
def test_forward_default_size_big(name):
    model = _eval_model(name)
    with torch.no_grad():
        out = model(torch.randn(1, *model.pretrained_cfg["input_size"]))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_forward_odd_size(name):
    model = _eval_model(name)
    h, w = _odd_size(model)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, h, w))
        out = model.forward_head(feats)
    assert feats.shape == (2, model.num_features) + _expected_map(model.cfg, h, w, model.cfg.num_stages - 1)
    assert out.shape == (2, model.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = _eval_model(name).train()  # the shared model; restored to eval with no grads below
    try:
        h, w = _odd_size(model)
        out = model(torch.randn(2, 3, h, w))
        out.square().mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"no gradient for {missing[:5]}"
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
        assert not bad, f"non-finite gradient for {bad[:5]}"
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name, tmp_path):
    a = _eval_model(name)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    path = tmp_path / "w.pt"
    path.write_bytes(buf.getvalue())
    b = _seed_model(name, 1, checkpoint_path=str(path)).eval()
    x = torch.randn(1, 3, *_odd_size(a))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert a.state_dict().keys() == b.state_dict().keys()


@pytest.mark.parametrize("name", MODELS)
def test_features_only_shapes_and_reductions(name):
    torch.manual_seed(0)
    base = _eval_model(name)
    n = base.cfg.num_stages
    if name in BIG:  # the wrapper over the shared model (create_model's path is the same, tested on the rest)
        fmodel = FeatureNet(base, out_indices=tuple(range(n)))
    else:
        fmodel = create_model(name, features_only=True, out_indices=tuple(range(n))).eval()
    h, w = _odd_size(base)
    with torch.no_grad():
        maps = fmodel(torch.randn(2, 3, h, w))
    assert len(maps) == n == len(fmodel.feature_info)
    assert fmodel.feature_info.channels() == list(base.cfg.dims)
    assert fmodel.feature_info.reduction() == base.cfg.reductions()
    for i, t in enumerate(maps):
        assert t.shape == (2, base.cfg.dims[i]) + _expected_map(base.cfg, h, w, i)
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier_zero_gives_pooled_features(name):
    model = _eval_model(name)
    head, num_classes = model.head, model.num_classes
    x = torch.randn(2, 3, *_odd_size(model))
    try:
        with torch.no_grad():
            feats = model.forward_features(x)
            pooled = model.forward_head(feats, pre_logits=True)
            model.reset_classifier(0)
            assert isinstance(model.get_classifier(), torch.nn.Identity)
            out = model(x)
            assert out.shape == (2, model.num_features)
            torch.testing.assert_close(out, pooled)
            model.reset_classifier(7)
            assert model.forward_head(feats).shape == (2, 7) and model.num_classes == 7
    finally:
        model.head, model.num_classes = head, num_classes


def test_tic_nano_trains_on_random_data():
    torch.manual_seed(0)
    model = create_model("tic_nano").train()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_tic_tiny_any_input_size_same_weights_no_warning():
    model = _eval_model("tic_tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            for h, w in [(224, 224), (160, 160), (288, 288), (320, 192), (97, 131)]:
                out = model(torch.randn(1, 3, h, w))
                assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_tic_nano_shapes_at_32px_and_stage_maps():
    model = _eval_model("tic_nano")
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(2, 3, 32, 32), intermediates_only=True)
    assert [tuple(t.shape[-2:]) for t in maps] == [(8, 8), (4, 4), (2, 2)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name,target", [("tic_tiny", 20e6), ("tic_small", 28e6), ("tic_base", 51e6)])
def test_param_counts_within_ten_percent(name, target):
    n = sum(p.numel() for p in _eval_model(name).parameters())
    assert abs(n - target) / target < 0.10, n


def test_below_minimum_size_is_a_clear_error():
    model = _eval_model("tic_tiny")
    with pytest.raises(ValueError, match=r"tic_tiny: input 31x64 is below the minimum input size 32x32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match=r"below the minimum input size 16x16"):
        _eval_model("tic_nano")(torch.randn(1, 3, 32, 15))
    assert model.pretrained_cfg["min_input_size"] == (3, 32, 32)


def test_clamp_border_raises_the_minimum():
    model = create_model("tic_nano", border="clamp", kernel_size=3)
    # the last stage (reduction 16) needs a whole 3-px window: 48 px
    assert model.min_input_size == 48 and model.pretrained_cfg["min_input_size"] == (3, 48, 48)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 48, 53)).shape == (1, 10)
    with pytest.raises(ValueError, match=r"minimum input size 48x48"):
        model(torch.randn(1, 3, 47, 64))


def test_forward_intermediates_and_prune():
    model = _seed_model("tic_nano").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=2)
        assert [t.shape[1] for t in inter] == [128, 256]
        torch.testing.assert_close(final, model.forward_features(x))
        nhwc = model.forward_intermediates(x, indices=[0], output_fmt="NHWC", intermediates_only=True)
        assert nhwc[0].shape == (1, 8, 8, 64)
        kept = model.prune_intermediate_layers([1])
        assert kept == [1] and len(model.stages) == 2 and model.num_features == 128
        assert model(x).shape == (1, 128)
    with pytest.raises(ValueError, match=r"norm=True is not supported"):
        model.forward_intermediates(x, norm=True)


def test_grad_checkpointing_gives_the_same_gradients():
    a = _seed_model("tic_nano", 3).train()
    b = _seed_model("tic_nano", 3).train()
    b.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    a(x).sum().backward()
    b(x).sum().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


def test_safetensors_checkpoint(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    a = _seed_model("tic_micro", 0).eval()
    path = tmp_path / "w.safetensors"
    safetensors.save_file(a.state_dict(), str(path))
    b = create_model("tic_micro", checkpoint_path=str(path)).eval()
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    # a checkpoint saved as {"model": state_dict, ...} (a training checkpoint) loads too
    torch.save({"model": a.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    c = create_model("tic_micro", checkpoint_path=str(tmp_path / "ckpt.pt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), c(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"shape mismatches: head.bias: checkpoint \(10,\) vs model \(5,\).*num_classes"):
        create_model("tic_micro", num_classes=5, checkpoint_path=str(path))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match=r"is not a file"):
        create_model("tic_nano", checkpoint_path=str(tmp_path / "nope.pt"))
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unknown checkpoint type .*\.safetensors"):
        create_model("tic_nano", checkpoint_path=str(tmp_path / "w.npz"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"holds no state dict"):
        create_model("tic_nano", checkpoint_path=str(tmp_path / "list.pt"))


def test_no_weight_decay_and_group_matcher():
    model = create_model("tic_nano", layer_scale_init=1e-5)
    nwd = model.no_weight_decay()
    assert nwd and all(n.endswith(".gamma") for n in nwd)
    assert {n for n, _ in model.named_parameters() if n.endswith("gamma")} == nwd
    assert create_model("tic_nano").no_weight_decay() == set()
    gm = model.group_matcher()
    assert gm["stem"] == r"^stem"


def test_switches_are_config_fields():
    m = create_model("tic_nano", kernel_size=(5, 3, 3), dilation=(1, [1, 2], 1), depthwise=(True, False, False),
                     shift=("input", [None, "kv"], dict(mode="kv", directions=8)), inter_pool="local",
                     downsample="msa_conv", border="mask", layer_scale_init=1e-5)
    s = m.stages
    assert s[0].blocks[0].mixer.num_heads == 64  # depthwise
    assert s[0].blocks[0].mixer.attn.kernel_size == (5, 5) and s[0].blocks[0].mixer.shift.mode == "input"
    assert s[1].blocks[0].mixer.shift is None and s[1].blocks[1].mixer.shift.mode == "kv"
    assert [b.mixer.attn.dilation for b in s[1].blocks] == [(1, 1), (2, 2)]
    assert s[2].blocks[0].mixer.shift.directions == 8
    assert s[1].blocks[0].mixer.inter_pool.mode == "local"
    assert type(s[1].downsample[1]).__name__ == "MSAConv2d"
    assert s[1].downsample[1].attn.border == "mask"
    with torch.no_grad():
        assert m.eval()(torch.randn(1, 3, 35, 29)).shape == (1, 10)
    m2 = create_model("tic_micro", dilation=(1, [1, 2], 1, 1))
    assert [b.mixer.attn.dilation for b in m2.stages[1].blocks] == [(1, 1), (2, 2)]
    assert [b.mixer.shift.mode for b in m2.stages[0].blocks] == ["kv", "kv"]
    tiny_cfg = msaconv.models.tic.CONFIGS["tic_tiny"]
    assert tiny_cfg.shift == [None, "kv"] and tiny_cfg.inter_pool == "grid" and tiny_cfg.downsample == "msa_conv"


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_size=(3, 3)), r"kernel_size=\(3, 3\) is invalid; give one entry per stage \(3 stages\)"),
    (dict(kernel_size=0), r"kernel_size must be >= 1"),
    (dict(downsample="msa"), r"downsample='msa' is invalid; choose one of .*did you mean 'msa_conv'"),
    (dict(border="zero"), r"border='zero' is invalid"),
    (dict(shift="up"), r"unknown shift mode 'up'"),
    (dict(inter_pool=dict(grid=-1)), r"grid got -1"),
    (dict(depthwise="yes"), r"depthwise='yes' is invalid"),
    (dict(dims=(32, 64)), r"depths=\(1, 2, 1\) is invalid; use a tuple of 2 positive ints"),
    (dict(token_mixer="global"), r"TiC models always use 'msa_conv'"),
    (dict(stem_stride=3), r"stem_stride=3 is invalid; use one of \(1, 2, 4\) with stem=.conv.*8 and 16: stem=.patch."),
    (dict(drop_path_rate=1.5), r"TiCConfig: drop_path_rate must be a float in \[0, 1\), got 1.5"),
    (dict(kernal_size=3), r"unknown option 'kernal_size'; did you mean 'kernel_size'\?"),
    (dict(num_heads=(3, 4, 8)), r"num_heads=.* is invalid; stage 0 has dim 64"),
    (dict(layer_scale_init=0), r"layer_scale_init=0 is invalid"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("tic_nano", **kwargs)


def test_hier_backbone_errors():
    with pytest.raises(ValueError, match=r"unknown token_mixer 'globl'; did you mean 'global'\?"):
        create_model("hier_nano_global", token_mixer="globl")
    with pytest.raises(ValueError, match=r"mixer_options=.* is invalid; use a dict"):
        create_model("hier_nano_global", mixer_options=3)


def test_count_flops_counts_the_msa_core():
    r = count_flops(_eval_model("tic_nano"))
    assert r["params"] == sum(p.numel() for p in _eval_model("tic_nano").parameters())
    assert r["msa_core"] in ("op formula", "analytic")
    core = sum(v for k, v in r["by_op"].items() if "msa_conv" in k)
    assert core > 0 and r["gmacs"] == pytest.approx(r["flops"] / 2e9)
    # analytic check for one layer: 4 * H*W * (K + M) * C FLOPs
    layer = msaconv.layers.MSAttention2d(16, 2, kernel_size=3, inter_pool=dict(grid=2))
    r1 = count_flops(layer, input_size=(16, 8, 8))
    core1 = sum(v for k, v in r1["by_op"].items() if "msa_conv" in k)
    assert core1 == 4 * 64 * (9 + 4) * 16
    with pytest.raises(ValueError, match=r"input_size must be \(C, H, W\)"):
        count_flops(layer, input_size=(8, 8))


def test_features_only_errors():
    with pytest.raises(ValueError, match=r"out_indices=\(0, 3\) has index 3 but the model has 3 feature maps"):
        create_model("tic_nano", features_only=True, out_indices=(0, 3))
    with pytest.raises(ValueError, match=r"out_indices=.* needs features_only=True"):
        create_model("tic_nano", out_indices=(1,))
    f = create_model("tic_nano", features_only=True, out_indices=2)
    assert f.feature_info.channels() == [128, 256] and f.out_indices == (1, 2)
    f = create_model("tic_nano", features_only=True, out_indices=(-1,))
    assert f.feature_info.reduction() == [16] and len(f.stages) == 3
    f = create_model("tic_micro", features_only=True, out_indices=(0, 1))
    assert f.feature_info.reduction() == [2, 4] and len(f.stages) == 2  # later stages are not built into it
