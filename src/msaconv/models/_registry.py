"""Model registry with timm's API: ``register_model``, ``list_models``, ``is_model``, ``create_model``.

An entry point is a function ``name(pretrained=False, **kwargs) -> nn.Module`` registered under its
``__name__``. Its pretrained_cfg comes from the ``default_cfgs`` dict of its module (timm's convention,
so the same functions register into timm unchanged), or from ``register_model(pretrained_cfg=...)``.
"""

from __future__ import annotations

import fnmatch
import sys
from typing import Callable, Iterable

from torch import nn

from .._errors import did_you_mean
_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_PRETRAINED_CFGS: dict[str, dict] = {}
# called with each newly registered entry point (the timm bridge adds itself here)
_ON_REGISTER: list[Callable[[Callable[..., nn.Module]], None]] = []

# every key of timm's PretrainedCfg that timm's data config, tests and tools read (pool_size: the side of
# forward_features' map at input_size, set per model); msaconv never downloads, so url is empty and
# shipped weights are a local ``file``
_DEFAULT_CFG = dict(url="", file=None, input_size=(3, 224, 224), test_input_size=None, min_input_size=(3, 32, 32),
                    fixed_input_size=False, interpolation="bicubic", crop_pct=0.9, test_crop_pct=None,
                    crop_mode="center", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_classes=1000,
                    pool_size=None, test_pool_size=None, first_conv="stem.0", classifier="head",
                    license="apache-2.0")


def register_model(fn: Callable[..., nn.Module] | None = None, *, pretrained_cfg: dict | None = None):
    """Register an entry point under its ``__name__``; use as ``@register_model`` or
    ``@register_model(pretrained_cfg={...})``. The cfg is also written to the module's ``default_cfgs``
    (where timm looks for it). A different function under a taken name is a ValueError."""

    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(f) or not getattr(f, "__name__", None):
            raise ValueError(f"register_model: expected a named function, got {f!r}")
        name = f.__name__
        if name in _ENTRYPOINTS and _ENTRYPOINTS[name] is not f:
            raise ValueError(f"register_model: a model named {name!r} is already registered "
                             f"({_ENTRYPOINTS[name].__module__}); choose another function name")
        mod = sys.modules.get(f.__module__)
        cfgs = getattr(mod, "default_cfgs", None) if mod is not None else None
        if pretrained_cfg is not None:
            if cfgs is None and mod is not None:
                cfgs = {}
                setattr(mod, "default_cfgs", cfgs)
            if cfgs is not None:
                cfgs[name] = dict(pretrained_cfg)
        cfg = dict(_DEFAULT_CFG)
        cfg.update((cfgs or {}).get(name, pretrained_cfg or {}))
        cfg["architecture"] = name
        _ENTRYPOINTS[name] = f
        _PRETRAINED_CFGS[name] = cfg
        for hook in _ON_REGISTER:
            hook(f)
        return f

    return deco(fn) if fn is not None else deco


def _filters(p: str | Iterable[str] | None) -> list[str]:
    if p is None or p == "":
        return []
    if isinstance(p, str):
        return [p]
    return list(p)


def list_models(filter: str | Iterable[str] | None = None, exclude_filters: str | Iterable[str] | None = None) -> list[str]:
    """Sorted names of the registered models matching any of the shell-style patterns in ``filter``
    (e.g. ``'tic_*'``) and none of ``exclude_filters``."""
    names = sorted(_ENTRYPOINTS)
    inc = _filters(filter)
    if inc:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in inc)]
    exc = _filters(exclude_filters)
    if exc:
        names = [n for n in names if not any(fnmatch.fnmatch(n, p) for p in exc)]
    return names


def list_pretrained(filter: str | Iterable[str] | None = None) -> list[str]:
    """Sorted names of the models whose weights ship inside the package (``pretrained=True`` loads them)."""
    return [n for n in list_models(filter) if _PRETRAINED_CFGS[n].get("file")]


def is_model(name: str) -> bool:
    return name in _ENTRYPOINTS


def _unknown(fn: str, name: object) -> ValueError:
    names = sorted(_ENTRYPOINTS)
    return ValueError(f"{fn}: unknown model {name!r};{did_you_mean(str(name), names)} "
                      f"see msaconv.list_models() for the {len(names)} registered models")


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    if name not in _ENTRYPOINTS:
        raise _unknown("model_entrypoint", name)
    return _ENTRYPOINTS[name]


def get_pretrained_cfg(name: str) -> dict:
    """A copy of the registered pretrained_cfg of ``name`` (sizes, mean/std, crop_pct, first_conv, classifier)."""
    if name not in _PRETRAINED_CFGS:
        raise _unknown("get_pretrained_cfg", name)
    return dict(_PRETRAINED_CFGS[name])


def create_model(model_name: str, pretrained: bool = False, num_classes: int | None = None,
                 checkpoint_path: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model: ``create_model('tic_tiny', num_classes=10, drop_path_rate=0.1)``.

    ``pretrained=True`` loads the weights shipped in the package (:func:`list_pretrained`; nothing is ever
    downloaded, a model without shipped weights raises); ``checkpoint_path`` loads a
    .safetensors (or .pt via ``torch.load(weights_only=True)``) state dict; ``features_only=True`` with
    ``out_indices`` returns a feature extractor; every other keyword overrides a field of the model's
    config dataclass (unknown ones get a did-you-mean). As in timm, keywords set to None are dropped.
    """
    if not isinstance(model_name, str) or model_name not in _ENTRYPOINTS:
        raise _unknown("create_model", model_name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if checkpoint_path is not None:
        kwargs["checkpoint_path"] = checkpoint_path
    return _ENTRYPOINTS[model_name](pretrained=pretrained, **kwargs)


def create_model_from_config(model_name: str, overrides: dict, num_classes: int | None = None) -> nn.Module:
    """Build a registered model from a config file's ``model_kwargs``: values as YAML, JSON or ``--set`` write
    them (lists read by :func:`msaconv.models.plain_overrides`), and, unlike :func:`create_model`, a None
    kept as the config's value (``shift: null`` turns MDCSM off, ``layer_scale_init: null`` removes layer
    scale) rather than dropped for the default."""
    from ._fields import plain_overrides

    kwargs = plain_overrides(overrides)
    if not any(v is None for v in kwargs.values()):
        return create_model(model_name, num_classes=num_classes, **kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return model_entrypoint(model_name)(**kwargs)
