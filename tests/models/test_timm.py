"""timm integration: registration at import, timm.create_model, timm's data config and feature helpers.

Marked ``timm``: they run in CI's second stage (torch 2.14.1 + timm), and are skipped where timm is absent.
"""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch

timm = pytest.importorskip("timm")

import msaconv  # noqa: E402  (registers msaconv's models into timm)
from msaconv.models import list_models, list_pretrained, timm_status  # noqa: E402

pytestmark = pytest.mark.timm

PUBLIC = {"tic_nano", "tic_micro", "tic_tiny", "tic_small", "tic_base", "tic_conv_nano", "tic_conv_tiny",
          "convnet_nano", "convnet_tiny"}

# timm's wrappers see the same module structure in every model of a class; these cover the variants
# (TiC with MSAConv2d downsampling, 3-stage nano, the ConvNet skeleton with and without MSA-Conv)
FEATURE_MODELS = ["tic_nano", "tic_micro", "tic_conv_nano", "convnet_nano"]


def test_every_public_model_is_registered_into_timm_and_the_experiments_are_not():
    st = timm_status()
    assert st["active"] and st["error"] is None
    assert set(list_models()) <= set(timm.list_models()) | set(st["skipped"])
    assert PUBLIC <= set(st["registered"]) and PUBLIC <= set(timm.list_models())
    experiments = set(list_models(["hier_nano_*", "vit_nano_global"]))
    assert len(experiments) > 10 and not experiments & set(timm.list_models())
    assert all("msaconv.create_model" in st["skipped"][n] for n in experiments)
    assert set(timm.list_models("tic_*")) == {n for n in PUBLIC if n.startswith("tic_")}
    # timm lists exactly the models whose weights ship in the package (a local file, never a download)
    assert set(timm.list_models(pretrained=True)) & PUBLIC == set(list_pretrained())
    cfg = timm.models.get_pretrained_cfg("tic_tiny")
    assert cfg.input_size == (3, 224, 224) and cfg.min_input_size == (3, 32, 32) and cfg.pool_size == (7, 7)
    assert cfg.first_conv == "stem.0" and cfg.classifier == "head" and not cfg.has_weights
    assert timm.models.get_pretrained_cfg("tic_conv_nano").pool_size == (4, 4)


def test_timm_create_model_tic_tiny():
    torch.manual_seed(0)
    model = timm.create_model("tic_tiny", num_classes=10, drop_path_rate=0.1).eval()
    assert model.pretrained_cfg["architecture"] == "tic_tiny"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 10)
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, 224, 224) and data["crop_pct"] == 0.9
    assert timm.models.get_pretrained_cfg_value("tic_nano", "mean") == (0.4914, 0.4822, 0.4465)


def test_timm_pretrained_true_without_shipped_weights_is_a_clear_error():
    name = sorted(PUBLIC - set(list_pretrained()))[0]
    with pytest.raises(ValueError, match=r"no weights ship for it and msaconv never downloads any"):
        timm.create_model(name, pretrained=True)


def test_timm_checkpoint_path_and_kwargs(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    a = timm.create_model("tic_nano").eval()
    save_file(a.state_dict(), str(tmp_path / "w.safetensors"))
    b = timm.create_model("tic_nano", checkpoint_path=str(tmp_path / "w.safetensors"), kernel_size=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_timm_feature_helpers(name):
    from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet, FeatureListNet

    torch.manual_seed(0)
    x = torch.randn(1, 3, 37, 45)
    model = timm.create_model(name).eval()
    n = model.cfg.num_stages
    idx = tuple(range(n))
    chans = list(model.cfg.dims)
    red = model.cfg.reductions()
    assert [f["num_chs"] for f in model.feature_info] == chans and [f["reduction"] for f in model.feature_info] == red
    copy = lambda: deepcopy(model)  # noqa: E731  (each wrapper takes its model apart)
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        outs = {
            "list": FeatureListNet(copy(), out_indices=idx, flatten_sequential=True)(x),
            "dict": list(FeatureDictNet(copy(), out_indices=idx, flatten_sequential=True)(x).values()),
            "hook": FeatureHookNet(copy(), out_indices=idx, flatten_sequential=True)(x),
            "getter": FeatureGetterNet(copy(), out_indices=idx)(x),
        }
    for kind, maps in outs.items():
        assert [t.shape for t in maps] == [t.shape for t in ref], kind
        for t, r in zip(maps, ref):
            torch.testing.assert_close(t, r, msg=kind)
    # timm.create_model(features_only=True): msaconv's wrapper, or timm's by feature_cls
    sel = sorted({min(1, n - 1), n - 1})
    for kw in ({}, {"feature_cls": "getter"}, {"feature_cls": "hook"}, {"feature_cls": "fx"}):
        f = timm.create_model(name, features_only=True, out_indices=tuple(sel), **kw).eval()
        assert f.feature_info.channels() == [chans[i] for i in sel], kw
        assert f.feature_info.reduction() == [red[i] for i in sel], kw
        with torch.no_grad():
            got = f(x)
        assert [t.shape for t in got] == [ref[i].shape for i in sel], kw


def test_timm_utils_on_our_models():
    import timm.optim

    model = timm.create_model("tic_micro")
    # timm's optimizer factory reads no_weight_decay; layer-decay reads group_matcher
    opt = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    assert len(opt.param_groups) > 2
    model.set_grad_checkpointing(True)
    out = model(torch.randn(2, 3, 48, 40))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 48, 40)).shape == (1, model.num_features)


def test_registering_a_new_model_reaches_timm():
    from msaconv.models import HierConfig, HierNet
    from msaconv.models._builder import build_model

    cfg = HierConfig(dims=(16, 32), depths=(1, 1), token_mixer="global", num_classes=3)

    def msaconv_test_tiny_global(pretrained=False, **kwargs):
        return build_model(HierNet, "msaconv_test_tiny_global", cfg, pretrained, **kwargs)

    msaconv.register_model(msaconv_test_tiny_global, pretrained_cfg=dict(input_size=(3, 16, 16), num_classes=3))
    m = timm.create_model("msaconv_test_tiny_global")
    assert m(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    assert timm.models.get_pretrained_cfg("msaconv_test_tiny_global").input_size == (3, 16, 16)


def test_experiment_models_take_timms_feature_wrappers():
    from timm.models import FeatureListNet

    x = torch.randn(1, 3, 32, 40)
    for name in ("hier_nano_global", "vit_nano_global"):
        model = msaconv.create_model(name).eval()
        n = model.cfg.num_stages
        with torch.no_grad():
            ref = model.forward_intermediates(x, intermediates_only=True)
            got = FeatureListNet(deepcopy(model), out_indices=tuple(range(n)), flatten_sequential=True)(x)
        for t, r in zip(got, ref, strict=True):
            torch.testing.assert_close(t, r)


def test_custom_op_traces_as_one_fx_node():
    class Core(torch.nn.Module):
        def forward(self, q):
            out, _ = torch.ops.msaconv.msa_conv2d(q, q, q, None, None, [3, 3], [1, 1], [1, 1], "zeros", 0.5,
                                                  "bhdhw", "")
            return out

    g = torch.fx.symbolic_trace(Core())
    assert [str(n.target) for n in g.graph.nodes if n.op == "call_function"][0] == "msaconv.msa_conv2d"
    q = torch.randn(1, 2, 4, 6, 5)
    torch.testing.assert_close(g(q), Core()(q))


@pytest.mark.parametrize("name", ["tic_nano", "tic_conv_nano", "convnet_nano"])
def test_fx_tracing_with_timms_leaf_modules(name):
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor

    from msaconv.layers import MSAConv2d, MSAttention2d

    assert {MSAConv2d, MSAttention2d} <= set(get_notrace_modules())
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 32, 36)
    fx = create_feature_extractor(model, return_nodes={"stages.1": "mid", "head": "logits"}, tracer_kwargs=dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions()))
    with torch.no_grad():
        out = fx(x)
        torch.testing.assert_close(out["logits"], model(x))
        torch.testing.assert_close(out["mid"], model.forward_intermediates(x, indices=[1], intermediates_only=True)[0])
    # the eager input checks stay
    with pytest.raises(ValueError, match=r"expected images \[B, C, H, W\]"):
        model(x[0])


def test_plain_fx_and_torchscript_on_the_convnet_baseline():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for kw in ({}, {"depthwise": True}, {"head_pool": "max"}):
        model = timm.create_model("convnet_nano", **kw).eval()
        with torch.no_grad():
            ref = model(x)
            torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), ref)
            torch.testing.assert_close(torch.jit.script(model)(x), ref, msg=str(kw))


def test_pointwise2d_scripts_and_traces():
    from msaconv.layers import Pointwise2d

    torch.manual_seed(0)
    for kw in ({}, {"channels_first": True}, {"bias": False, "channels_first": True}):
        pw = Pointwise2d(6, 4, **kw)
        x = torch.randn(2, 6, 5, 3)
        s = torch.jit.script(pw)
        torch.testing.assert_close(s(x), pw(x), rtol=0, atol=0)
        torch.testing.assert_close(s(x[0]), pw(x[0]))  # unbatched: nn.Conv2d's own path
        torch.testing.assert_close(torch.fx.symbolic_trace(pw)(x), pw(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["tic_nano", "convnet_nano"])
def test_global_pool_and_reset_classifier_follow_timm(name):
    x = torch.randn(2, 3, 32, 32)
    m = timm.create_model(name, num_classes=0, global_pool="").eval()
    pool = m.pretrained_cfg["pool_size"]
    with torch.no_grad():
        assert m(x).shape == (2, m.num_features, *pool)
        m.reset_classifier(3)  # a classifier needs pooling: the model's default comes back
        assert m(x).shape == (2, 3)
    assert not m.head.training  # new head modules follow the model's mode
    with pytest.raises(ValueError, match=r"needs pooling"):
        m.reset_classifier(3, "")
    with pytest.raises(ValueError, match=r"global_pool='catavgmax' is not supported"):
        timm.create_model(name, global_pool="catavgmax")
    # an unknown option is a TypeError for timm (Python's own error for a stray keyword) and a ValueError
    with pytest.raises(TypeError, match=r"unknown option 'not_an_option'"):
        timm.create_model(name, not_an_option=1)
    with pytest.raises(ValueError, match=r"unknown option 'not_an_option'"):
        msaconv.create_model(name, not_an_option=1)


def test_features_only_carries_the_cfg():
    f = timm.create_model("tic_conv_nano", features_only=True)
    assert f.default_cfg is f.pretrained_cfg and f.default_cfg["architecture"] == "tic_conv_nano"
    assert timm.data.resolve_data_config({}, model=f)["input_size"] == (3, 32, 32)


def test_pretrained_true_with_another_in_chans_or_num_classes_adapts_as_timm(tmp_path):
    """timm's test_model_load_pretrained builds every model with weights with in_chans=1, num_classes=5 / 0."""
    from safetensors.torch import save_file

    from msaconv.models._builder import build_model
    from msaconv.models.tic_conv import CONFIGS, ConvNet

    torch.manual_seed(0)
    src = msaconv.create_model("convnet_nano").eval()
    path = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(path))

    def msaconv_test_shipped_convnet(pretrained=False, **kwargs):
        return build_model(ConvNet, "msaconv_test_shipped_convnet", CONFIGS["convnet_nano"], pretrained, **kwargs)

    msaconv.register_model(msaconv_test_shipped_convnet, pretrained_cfg=dict(
        file=str(path), input_size=(3, 32, 32), num_classes=10, first_conv="stem.0", classifier="head"))
    assert "msaconv_test_shipped_convnet" in timm.list_models(pretrained=True)
    x = torch.randn(2, 3, 32, 32)
    same = timm.create_model("msaconv_test_shipped_convnet", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(same(x), src(x), rtol=0, atol=0)
    one = timm.create_model("msaconv_test_shipped_convnet", pretrained=True, in_chans=1, num_classes=5).eval()
    torch.testing.assert_close(one.stem[0].weight, src.stem[0].weight.sum(1, keepdim=True))
    torch.testing.assert_close(one.stages[1][0].conv.weight, src.stages[1][0].conv.weight, rtol=0, atol=0)
    assert one(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    six = timm.create_model("msaconv_test_shipped_convnet", pretrained=True, in_chans=6, num_classes=0).eval()
    with torch.no_grad():  # the tiled, rescaled first conv sees a repeated image as the original
        ref = src.forward_head(src.forward_features(x), pre_logits=True)
        torch.testing.assert_close(six(x.repeat(1, 2, 1, 1)), ref)
    f = timm.create_model("msaconv_test_shipped_convnet", pretrained=True, features_only=True)
    assert len(f(x)) == 3
    with pytest.raises(ValueError, match=r"do not fit this model"):
        timm.create_model("msaconv_test_shipped_convnet", pretrained=True, in_chans=1, dims=(16, 32, 64))
