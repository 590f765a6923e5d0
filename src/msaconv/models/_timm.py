"""Registration of msaconv's entry points into timm's model registry (when timm is importable).

After ``import msaconv``, ``timm.create_model("tic_tiny")`` and ``timm.list_models("tic_*")`` work: the
same entry-point functions are handed to ``timm.models.register_model``, which reads their
pretrained_cfg from their module's ``default_cfgs`` (timm's convention). A name timm already has is left
to timm (never overwritten) and reported by :func:`timm_status`. Models registered with
:func:`msaconv.register_model` later are registered into timm too.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import fields
from typing import Callable

from torch import nn

from . import _registry

_STATUS: dict = {"active": False, "registered": [], "skipped": {}, "error": None}


def timm_status() -> dict:
    """``{'active': bool, 'registered': [...], 'skipped': {name: reason}, 'error': str | None}``."""
    return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v) for k, v in _STATUS.items()}


def _register_one(fn: Callable[..., nn.Module]) -> None:
    from timm.models import _registry as treg
    from timm.models._pretrained import PretrainedCfg

    name = fn.__name__
    if treg.is_model(name):
        if treg.model_entrypoint(name) is not fn:
            _STATUS["skipped"][name] = "timm already has a model of this name"
        return
    mod = sys.modules[fn.__module__]
    cfgs = getattr(mod, "default_cfgs", None)
    if cfgs is None:
        cfgs = {}
        setattr(mod, "default_cfgs", cfgs)
    allowed = {f.name for f in fields(PretrainedCfg)}
    cfg = dict(_registry.get_pretrained_cfg(name))
    cfgs[name] = {k: v for k, v in cfg.items() if k in allowed and k not in ("architecture", "tag")}
    treg.register_model(fn)
    _STATUS["registered"].append(name)


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
    for name in _registry.list_models():
        _register_one(_registry.model_entrypoint(name))
    _registry._ON_REGISTER.append(_register_one)
    _STATUS["active"] = True
    _STATUS["error"] = None
    return True
