"""timm integration: registration at import, timm.create_model, timm's data config and feature helpers.

Marked ``timm``: they run in CI's second stage (torch 2.14.1 + timm), and are skipped where timm is absent.
"""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch

timm = pytest.importorskip("timm")

import msaconv  # noqa: E402  (registers msaconv's models into timm)
from msaconv.models import list_models, timm_status  # noqa: E402

pytestmark = pytest.mark.timm

# timm's wrappers see the same module structure in every model; a few bodies cover the variants
# (TiC with MSAConv2d downsampling, 3-stage nano, the generic backbone, the isotropic ViT)
FEATURE_MODELS = ["tic_nano", "tic_micro", "hier_nano_global", "hier_nano_halo", "vit_nano_global"]


def test_every_model_is_registered_into_timm():
    st = timm_status()
    assert st["active"] and st["error"] is None
    assert set(list_models()) <= set(timm.list_models()) | set(st["skipped"])
    assert set(timm.list_models("tic_*")) == {"tic_base", "tic_micro", "tic_nano", "tic_small", "tic_tiny"}
    assert not timm.list_models("tic_*", pretrained=True)  # no weights ship
    cfg = timm.models.get_pretrained_cfg("tic_tiny")
    assert cfg.input_size == (3, 224, 224) and cfg.min_input_size == (3, 32, 32)
    assert cfg.first_conv == "stem.0" and cfg.classifier == "head" and not cfg.has_weights


def test_timm_create_model_tic_tiny():
    torch.manual_seed(0)
    model = timm.create_model("tic_tiny", num_classes=10, drop_path_rate=0.1).eval()
    assert model.pretrained_cfg["architecture"] == "tic_tiny"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 10)
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, 224, 224) and data["crop_pct"] == 0.9
    assert timm.models.get_pretrained_cfg_value("tic_nano", "mean") == (0.4914, 0.4822, 0.4465)


def test_timm_pretrained_true_is_a_clear_error():
    with pytest.raises(ValueError, match=r"ships no pretrained weights and never downloads"):
        timm.create_model("tic_nano", pretrained=True)


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
    red = [model.cfg.stem_stride * 2 ** i for i in range(n)]
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
    for kw in ({}, {"feature_cls": "getter"}, {"feature_cls": "hook"}):
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
