"""TiC models, a generic hierarchical backbone over the token-mixer zoo, and a registry with timm's API.

``create_model(name, pretrained=False, num_classes=..., **overrides)``, ``list_models(pattern)``,
``register_model``; ``count_flops(model)`` for params and GMACs. When timm is installed, every model is
also registered into timm's registry on import (``timm.create_model("tic_tiny")`` works).
"""

from __future__ import annotations

from ._builder import FeatureNet, build_model, load_checkpoint
from ._fields import plain_overrides
from ._registry import (create_model, create_model_from_config, get_pretrained_cfg, is_model, list_models, list_pretrained, model_entrypoint,
                        register_model)
from .flops import count_flops, count_params
from .hier import HierConfig, HierNet
from .tic import TiCConfig
from .tic_conv import ConvNet, ConvNetConfig
from ._timm import register_into_timm, timm_status

register_into_timm()

__all__ = [
    "ConvNet",
    "ConvNetConfig",
    "FeatureNet",
    "HierConfig",
    "HierNet",
    "TiCConfig",
    "build_model",
    "count_flops",
    "count_params",
    "create_model",
    "create_model_from_config",
    "get_pretrained_cfg",
    "is_model",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "model_entrypoint",
    "plain_overrides",
    "register_into_timm",
    "register_model",
    "timm_status",
]
