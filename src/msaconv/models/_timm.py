"""Registration of msaconv's entry points into timm's model registry (when timm is importable).

After ``import msaconv``, ``timm.create_model("tic_tiny")`` and ``timm.list_models("tic_*")`` work: the
same entry-point functions are handed to timm's public ``timm.models.register_model``, which reads their
pretrained_cfg from their module's ``default_cfgs`` (timm's convention). A name timm already has is left
to timm (never overwritten) and reported by :func:`timm_status`. Models registered with
:func:`msaconv.register_model` later are registered into timm too.

Kept out of timm's registry (:data:`EXPERIMENT_MODELS`, reported under ``skipped``): ``hier_nano_<mixer>``
and ``vit_nano_global``, the bodies of msaconv's controlled token-mixer comparison. They are built with
``msaconv.create_model`` as before; they are not models to pick from timm's list (no weights, one per
mixer of the zoo), and ``vit_*`` is timm's ViT namespace, whose name patterns timm's tools and tests
treat as its own family.

MSA-Conv's layers validate their inputs and choose a kernel in Python, from concrete shapes, so
``torch.fx`` cannot trace into them (nor into ``SizeBatchNorm2d``, which picks its statistics by the input's
size); they are registered as leaf modules of timm's FX tracer
(``timm.layers.register_notrace_module``, as timm does with its own untraceable layers). The op they call,
``msaconv::msa_conv2d``, is a ``torch.library`` custom op and traces as a single node.
"""

from __future__ import annotations

import fnmatch
import importlib.util
from dataclasses import fields
from typing import Callable

from torch import nn

from . import _registry

# experiment bodies that stay in msaconv's registry only (see the module doc)
EXPERIMENT_MODELS = ("hier_nano_*", "vit_nano_global")

_STATUS: dict = {"active": False, "registered": [], "skipped": {}, "error": None}


def timm_status() -> dict:
    """``{'active': bool, 'registered': [...], 'skipped': {name: reason}, 'error': str | None}``."""
    return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v) for k, v in _STATUS.items()}


def _timm_cfg(name: str) -> dict:
    """The pretrained_cfg of ``name`` restricted to the fields of timm's ``PretrainedCfg``."""
    from timm.models import PretrainedCfg

    allowed = {f.name for f in fields(PretrainedCfg)}
    cfg = _registry.get_pretrained_cfg(name)
    return {k: v for k, v in cfg.items() if k in allowed and k not in ("architecture", "tag")}


def _register_one(fn: Callable[..., nn.Module]) -> None:
    import sys

    import timm.models

    name = fn.__name__
    if any(fnmatch.fnmatch(name, p) for p in EXPERIMENT_MODELS):
        _STATUS["skipped"][name] = ("an experiment body of msaconv's token-mixer comparison: build it with "
                                    "msaconv.create_model")
        return
    if timm.models.is_model(name):
        if timm.models.model_entrypoint(name) is not fn:
            _STATUS["skipped"][name] = "timm already has a model of this name"
        return
    mod = sys.modules[fn.__module__]
    cfgs = getattr(mod, "default_cfgs", None)
    if cfgs is None:
        cfgs = {}
        setattr(mod, "default_cfgs", cfgs)
    # timm reads default_cfgs[name] once, in register_model, and takes only PretrainedCfg's fields: hand it
    # those for the call, then put the module's own entry back (msaconv's registry keeps the complete cfg)
    missing = object()
    own = cfgs.get(name, missing)
    cfgs[name] = _timm_cfg(name)
    try:
        timm.models.register_model(fn)
    finally:
        if own is missing:
            del cfgs[name]
        else:
            cfgs[name] = own
    _STATUS["registered"].append(name)


def _register_fx_leaves() -> None:
    from timm.layers import register_notrace_module

    from ..layers import MSAConv2d, MSAttention2d, SizeBatchNorm2d

    for cls in (MSAConv2d, MSAttention2d, SizeBatchNorm2d):
        register_notrace_module(cls)


def register_into_timm() -> bool:
    """Register every msaconv model into timm if timm imports; returns whether it did. Safe to call twice."""
    if _STATUS["active"]:
        return True
    if importlib.util.find_spec("timm") is None:
        _STATUS["error"] = "timm is not installed"
        return False
    try:
        import timm.models  # noqa: F401
    except Exception as e:  # a broken timm install must not break msaconv
        _STATUS["error"] = f"import timm failed: {type(e).__name__}: {e}"
        return False
    _register_fx_leaves()
    for name in _registry.list_models():
        _register_one(_registry.model_entrypoint(name))
    _registry._ON_REGISTER.append(_register_one)
    _STATUS["active"] = True
    _STATUS["error"] = None
    return True
