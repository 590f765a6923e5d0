"""The model registry: names, patterns, did-you-mean, pretrained_cfg, registering new models, errors."""

from __future__ import annotations

import pytest
import torch

import msaconv
from msaconv.layers import list_token_mixers
from msaconv.models import HierConfig, HierNet, get_pretrained_cfg, is_model, list_models
from msaconv.models._builder import build_model


def test_top_level_exports():
    assert msaconv.create_model is msaconv.models.create_model
    assert msaconv.list_models is msaconv.models.list_models
    assert msaconv.register_model is msaconv.models.register_model
    assert {"create_model", "list_models", "register_model"} <= set(msaconv.__all__)


def test_list_models_patterns():
    assert list_models("tic_*") == ["tic_base", "tic_conv_nano", "tic_conv_tiny", "tic_micro", "tic_nano", "tic_small",
                                    "tic_tiny"]
    # vit_nano_abspe is experiment-only: registered when an experiment builds it (maybe earlier in this process)
    assert list_models(["tic_n*", "vit_*"], exclude_filters="vit_nano_abspe") == ["tic_nano", "vit_nano_global"]
    assert list_models("tic_*", exclude_filters=["*_b*", "*conv*"]) == ["tic_micro", "tic_nano", "tic_small", "tic_tiny"]
    assert list_models("convnet_*") == ["convnet_nano", "convnet_tiny"]
    # one generic-backbone variant per token mixer of the zoo
    assert {f"hier_nano_{m}" for m in list_token_mixers()} <= set(list_models("hier_nano_*"))
    assert list_models() == sorted(list_models())


def test_pretrained_cfg_fields():
    for name in list_models():
        cfg = get_pretrained_cfg(name)
        for key in ("input_size", "min_input_size", "mean", "std", "crop_pct", "classifier", "first_conv", "num_classes"):
            assert key in cfg, (name, key)
        assert cfg["architecture"] == name and cfg["classifier"] == "head" and cfg["first_conv"] == "stem.0"
    assert get_pretrained_cfg("tic_tiny")["input_size"] == (3, 224, 224)
    assert get_pretrained_cfg("tic_nano")["input_size"] == (3, 32, 32)
    m = msaconv.create_model("tic_nano", num_classes=4, in_chans=1)
    assert m.pretrained_cfg["num_classes"] == 4 and m.pretrained_cfg["input_size"] == (1, 32, 32)
    assert dict(m.named_modules())["stem.0"].in_channels == 1
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 4)


def test_unknown_model_did_you_mean():
    with pytest.raises(ValueError, match=r"create_model: unknown model 'tic_tinny'; did you mean 'tic_tiny'\?"):
        msaconv.create_model("tic_tinny")
    with pytest.raises(ValueError, match=r"unknown model 'resnet50';.*msaconv.list_models\(\)"):
        get_pretrained_cfg("resnet50")
    assert is_model("tic_nano") and not is_model("tic_tinny")


def test_pretrained_true_without_shipped_weights_is_a_clear_error():
    assert "tic_nano" not in msaconv.list_pretrained()
    with pytest.raises(ValueError, match=r"pretrained=True for 'tic_nano', but no weights ship for it and msaconv "
                                         r"never downloads any; .*list_pretrained\(\).*checkpoint_path="):
        msaconv.create_model("tic_nano", pretrained=True)


def test_none_kwargs_are_dropped_and_overrides_win():
    m = msaconv.create_model("tic_nano", num_classes=None, drop_path_rate=None, kernel_size=5)
    assert m.num_classes == 10 and m.stages[0].blocks[0].mixer.attn.kernel_size == (5, 5)
    with pytest.raises(ValueError, match=r"global_pool='max' is not supported"):
        msaconv.create_model("tic_nano", global_pool="max")


def test_register_model_and_duplicates():
    cfg = HierConfig(dims=(8, 16), depths=(1, 1), head_dim=8, token_mixer="msa_conv", num_classes=2, img_size=16)

    def msaconv_test_two_stage(pretrained=False, **kwargs):
        return build_model(HierNet, "msaconv_test_two_stage", cfg, pretrained, **kwargs)

    msaconv.register_model(msaconv_test_two_stage, pretrained_cfg=dict(input_size=(3, 16, 16), num_classes=2))
    msaconv.register_model(msaconv_test_two_stage)  # the same function again: a no-op
    assert "msaconv_test_two_stage" in list_models("msaconv_test_*")
    m = msaconv.create_model("msaconv_test_two_stage")
    assert m(torch.randn(1, 3, 16, 16)).shape == (1, 2)
    assert get_pretrained_cfg("msaconv_test_two_stage")["input_size"] == (3, 16, 16)

    def other(pretrained=False, **kwargs):
        return build_model(HierNet, "msaconv_test_two_stage", cfg, pretrained, **kwargs)

    other.__name__ = "msaconv_test_two_stage"
    with pytest.raises(ValueError, match=r"a model named 'msaconv_test_two_stage' is already registered"):
        msaconv.register_model(other)
