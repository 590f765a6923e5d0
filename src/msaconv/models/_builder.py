"""From an entry point's config and the user's keyword arguments to a model: overrides, checkpoint loading
(shipped weights for ``pretrained=True``, checked against their SHA-256), ``features_only`` wrapping.
Nothing is ever downloaded."""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .._provenance import file_sha256
from ._blocks import Stage, check_image

if TYPE_CHECKING:
    from .hier import HierNet

# keyword arguments timm's create_model passes to every entry point; msaconv reads or ignores them
_TIMM_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "scriptable", "exportable", "no_jit")


class UnknownOptionError(ValueError, TypeError):
    """A keyword argument that is no option of the model: a ValueError (msaconv's errors) and a TypeError
    (what Python, and so timm's model contract, raises for an unexpected keyword argument)."""


def check_out_indices(fn: str, indices: Any, n: int) -> list[int]:
    """timm's index rule: None -> all ``n``; an int k -> the last k; a sequence -> those (negatives from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= n:
            raise ValueError(f"{fn}: out_indices={indices} asks for the last {indices} of {n} feature maps; "
                             f"use an int in 1..{n} or a sequence of indices in {-n}..{n - 1}")
        return list(range(n - indices, n))
    if isinstance(indices, (list, tuple)) and indices and all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        out = []
        for i in indices:
            if not -n <= i < n:
                raise ValueError(f"{fn}: out_indices={tuple(indices)} has index {i} but the model has {n} feature "
                                 f"maps; use indices in {-n}..{n - 1}")
            out.append(i % n)
        return out
    raise ValueError(f"{fn}: out_indices must be None, an int or a sequence of ints, got {indices!r}; "
                     f"use e.g. out_indices=(0, 1, 2, 3)")


def traceable_annotations(cls: type) -> type:
    """Class decorator: ``cls.forward``'s annotations evaluated (this package postpones them, PEP 563).

    ``torch.fx`` writes the root ``forward``'s annotations into the code of the traced graph, where a string
    such as ``'torch.Tensor'`` becomes an unknown type name for ``torch.jit.script`` (timm's FX + TorchScript
    path, e.g. ``torch.jit.script(create_feature_extractor(model, ...))``)."""
    fn = cls.__dict__["forward"]
    fn.__annotations__ = typing.get_type_hints(fn)
    return cls


def stage_intermediates(model: Any, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                        output_fmt: str = "NCHW", intermediates_only: bool = False):
    """timm's ``forward_intermediates`` for a ``stem`` + ``stages`` model with no map-level final norm.

    Stage outputs at ``indices`` (None: all; int n: the last n; a sequence: those, negatives from the end);
    returns the list of maps, or ``(final_map, maps)`` unless ``intermediates_only``. ``norm=True`` is refused.
    """
    if norm:
        raise ValueError("forward_intermediates: norm=True is not supported, the models have no map-level "
                         "final norm; use norm=False")
    if output_fmt not in ("NCHW", "NHWC"):
        raise ValueError(f"forward_intermediates: output_fmt={output_fmt!r} is not supported; use 'NCHW' or 'NHWC'")
    take = check_out_indices("forward_intermediates", indices, len(model.stages))
    model.check_input(x)
    x = model.stem(x)
    # cast: torch's stubs type a slice of an nn.Sequential as Module, it is an nn.Sequential
    stages = cast(nn.Sequential, model.stages[: max(take) + 1]) if stop_early or intermediates_only else model.stages
    out = []
    for i, stage in enumerate(stages):
        x = stage(x)
        if i in take:
            out.append(x if output_fmt == "NCHW" else x.permute(0, 2, 3, 1))
    return out if intermediates_only else (x, out)


def prune_stages(model: Any, indices) -> tuple[list[int], bool]:
    """Drop ``model``'s stages after the last of ``indices``; returns the kept indices and whether any went."""
    take = check_out_indices("prune_intermediate_layers", indices, len(model.stages))
    last = max(take)
    if last >= len(model.stages) - 1:
        return take, False
    model.stages = cast(nn.Sequential, model.stages[: last + 1])
    model.num_features = model.head_hidden_size = model.feature_info[last]["num_chs"]
    model.feature_info = model.feature_info[: last + 1]
    return take, True


class FeatureInfoList(list):
    """The ``feature_info`` of a features-only model: a list of dicts with timm's accessors."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


@traceable_annotations
class FeatureNet(nn.Module):
    """``features_only=True``: the stem and the stages up to the last wanted one; ``forward`` returns the
    list of stage maps at ``out_indices`` (NCHW). ``feature_info`` describes the returned maps."""

    def __init__(self, model: HierNet, out_indices: Any = None):
        super().__init__()
        n = len(model.stages)
        self.out_indices = tuple(check_out_indices("features_only", out_indices, n))
        last = max(self.out_indices)
        self.stem = model.stem
        # cast: torch's stubs type a slice of an nn.Sequential as Module, it is an nn.Sequential
        self.stages = cast(nn.Sequential, model.stages[: last + 1])
        self.feature_info = FeatureInfoList(copy.deepcopy(model.feature_info[i]) for i in self.out_indices)
        for f, i in zip(self.feature_info, self.out_indices):
            f["index"] = i
        # timm's feature wrappers carry the model's cfg under both names (timm's tests and data config read them)
        self.pretrained_cfg = self.default_cfg = model.pretrained_cfg
        self.in_chans, self.min_input_size = model.in_chans, model.min_input_size
        self._total_stride = model.feature_info[-1]["reduction"]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not torch.jit.is_scripting():
            check_image(self.pretrained_cfg.get("architecture", "features_only"), x, self.in_chans,
                        self.min_input_size, self._total_stride)
        x = self.stem(x)
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                out.append(x)
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            cast(Stage, s).grad_checkpointing = bool(enable)


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # the core install is torch only
            raise ValueError(f"load_checkpoint: reading {path!r} needs the safetensors package; "
                             f"pip install safetensors (or msaconv[train])") from e
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # noqa: BLE001 - SafetensorError and friends: one line naming the file
            raise ValueError(f"load_checkpoint: {path!r} ({os.path.getsize(path)} bytes) is not a readable "
                             f"safetensors file ({type(e).__name__}: {e}); it is truncated or corrupted") from None
    if path.endswith((".pt", ".pth", ".bin", ".ckpt")):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - an unpickling refusal (code in the file) or a damaged file
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ValueError(f"load_checkpoint: {path!r} was refused by torch.load(weights_only=True) "
                             f"({type(e).__name__}: {first[:200]}); msaconv never unpickles arbitrary objects: "
                             f"save model.state_dict() with safetensors, or with torch.save if it holds only "
                             f"tensors") from None
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(f"load_checkpoint: {path!r} holds no state dict of tensors (looked at the top level and "
                             f"under 'state_dict', 'model', 'model_state_dict', 'state_dict_ema'); save "
                             f"model.state_dict() with torch.save or safetensors")
        return obj
    raise ValueError(f"load_checkpoint: unknown checkpoint type {path!r}; use a .safetensors file, or a "
                     f".pt/.pth/.bin/.ckpt file (read with torch.load(weights_only=True))")


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load a state dict from ``path`` (.safetensors, or .pt/.pth/.bin/.ckpt via ``torch.load(weights_only=True)``)
    into ``model``; a ``module.`` prefix (DataParallel/DDP) is removed. A mismatch raises a ValueError that
    lists the missing, unexpected and mis-shaped keys."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"load_checkpoint: checkpoint_path={path!r} is not a file; pass the path of a saved state dict")
    sd = _read_state_dict(path)
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    own = model.state_dict()
    shape = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if shape or (strict and (missing or unexpected)):
        parts = []
        if shape:
            parts.append("shape mismatches: " + "; ".join(shape[:6]) + (" ..." if len(shape) > 6 else ""))
        if missing:
            parts.append(f"missing keys: {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        raise ValueError(f"load_checkpoint: {path!r} does not fit this model ({'; '.join(parts)}); build the model "
                         f"with the options it was trained with (e.g. num_classes=...)")
    model.load_state_dict(sd, strict=strict)
    return model


def shipped_weights(variant: str, pcfg: dict) -> str:
    """The path of the weights that ship inside the package for ``variant`` (``pretrained_cfg['file']``), after
    checking their SHA-256 against ``pretrained_cfg['sha256']``. Nothing is ever downloaded."""
    path = pcfg.get("file")
    if not path:
        raise ValueError(f"create_model: pretrained=True for {variant!r}, but no weights ship for it and msaconv never "
                         f"downloads any; use pretrained=False (models with shipped weights: see "
                         f"msaconv.models.list_pretrained()), or checkpoint_path='my_weights.safetensors'")
    if not os.path.isfile(path):
        raise ValueError(f"create_model: the shipped weights of {variant!r} are missing at {path!r}; reinstall msaconv")
    want = pcfg.get("sha256")
    if want:
        got = file_sha256(path)
        if got != want:
            raise ValueError(f"create_model: the shipped weights {path!r} of {variant!r} have SHA-256 {got}, not the "
                             f"recorded {want}; the file is damaged: reinstall msaconv")
    return path


def _load_adapted(model: nn.Module, path: str, weights_cfg: dict, num_classes: int) -> None:
    """Shipped weights into a model built with another ``in_chans`` or ``num_classes`` than they were trained
    with, by timm's rule (``timm.models.load_pretrained``): the first conv's kernels are summed over the
    input channels (``in_chans=1``) or tiled and rescaled (other counts), the classifier is left at its
    initialisation (or absent, ``num_classes=0``). Every other key must fit exactly."""
    sd = _read_state_dict(path)
    own = model.state_dict()
    cin = weights_cfg["input_size"][0]
    for name in _names(weights_cfg.get("first_conv")):
        key = name + ".weight"
        w, want = sd.get(key), own.get(key)
        if w is None or want is None or w.shape[1] == want.shape[1]:
            continue
        n = want.shape[1]
        if n == 1:
            sd[key] = w.sum(dim=1, keepdim=True)
        else:
            sd[key] = w.repeat(1, -(-n // cin), 1, 1)[:, :n] * (cin / n)
    dropped: set[str] = set()
    if num_classes != weights_cfg["num_classes"]:
        for name in _names(weights_cfg.get("classifier")):
            for key in (name + ".weight", name + ".bias"):
                if sd.pop(key, None) is not None:
                    dropped.add(key)
    shape = [f"{k}: weights {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(sd) - dropped)
    unexpected = sorted(set(sd) - set(own))
    if shape or missing or unexpected:
        raise ValueError(f"create_model: the shipped weights {path!r} do not fit this model (shape mismatches: "
                         f"{shape[:6]}; missing keys: {missing[:6]}; unexpected keys: {unexpected[:6]}); "
                         f"pretrained=True takes a changed in_chans or num_classes, not other options")
    model.load_state_dict(sd, strict=False)


def _names(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def build_model(model_cls, variant: str, cfg, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build ``model_cls(cfg.override(**kwargs))`` for the registered ``variant``.

    Handles: ``pretrained`` (True loads the weights shipped in the package, see :func:`shipped_weights`;
    a model without them raises; built with another ``in_chans`` or ``num_classes``, the first conv is
    adapted and the classifier left at its init, as timm does), ``checkpoint_path``, ``features_only`` with
    ``out_indices`` (and timm's ``feature_cls`` when timm is installed), ``global_pool`` (what the model's
    ``reset_classifier`` takes: 'avg', '' for the unpooled map with ``num_classes=0``; ConvNet also 'max'),
    ``device``/``dtype``, and timm's bookkeeping arguments (``pretrained_cfg`` as a dict, and
    ``pretrained_cfg_overlay``, are merged into the model's ``pretrained_cfg``; ``cache_dir`` is unused
    since nothing is downloaded). Every other keyword is a config override.
    """
    from ._registry import get_pretrained_cfg

    given_cfg = kwargs.pop("pretrained_cfg", None)
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    for k in _TIMM_KWARGS:
        kwargs.pop(k, None)
    checkpoint_path = kwargs.pop("checkpoint_path", None)
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    feature_cls = kwargs.pop("feature_cls", None)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    global_pool = kwargs.pop("global_pool", None)
    if out_indices is not None and not features_only:
        raise ValueError(f"create_model: out_indices={out_indices!r} needs features_only=True")

    if kwargs:
        names = {f.name for f in dataclasses.fields(cfg)}
        try:
            cfg = cfg.override(**kwargs)
        except ValueError as e:
            if any(k not in names for k in kwargs):
                raise UnknownOptionError(str(e)) from None
            raise
    model = model_cls(cfg)
    if global_pool is not None and global_pool != getattr(model, "global_pool", "avg"):
        # the model's reset_classifier says which pools it has ('' keeps the map, with num_classes=0)
        try:
            model.reset_classifier(cfg.num_classes, global_pool)
        except ValueError as e:
            raise ValueError(f"create_model: {variant!r}: {e}") from None
    registered = get_pretrained_cfg(variant)
    pcfg = dict(registered)
    if isinstance(given_cfg, dict):
        pcfg.update(given_cfg)
    elif given_cfg is not None and hasattr(given_cfg, "to_dict"):  # timm's PretrainedCfg
        pcfg.update({k: v for k, v in given_cfg.to_dict().items() if v is not None})
    if overlay:
        pcfg.update(overlay)
    m = model.min_input_size
    pcfg.update(architecture=variant, num_classes=cfg.num_classes, min_input_size=(cfg.in_chans, m, m),
                input_size=(cfg.in_chans,) + tuple(pcfg.get("input_size", (3, cfg.img_size, cfg.img_size)))[1:])
    if hasattr(cfg, "stage_sizes"):  # forward_features' map at input_size (timm's pool_size)
        H, W = pcfg["input_size"][1:]
        pcfg["pool_size"] = (cfg.stage_sizes(H)[-1], cfg.stage_sizes(W)[-1])
    model.pretrained_cfg = model.default_cfg = pcfg

    if pretrained and checkpoint_path is None:
        path = shipped_weights(variant, pcfg)
        if cfg.num_classes == registered["num_classes"] and cfg.in_chans == registered["input_size"][0]:
            load_checkpoint(model, path)
        else:
            _load_adapted(model, path, registered, cfg.num_classes)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    if features_only:
        if feature_cls is None:
            model = FeatureNet(model, out_indices)
        else:
            model = _timm_feature_net(model, feature_cls, out_indices)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def _timm_feature_net(model: HierNet, feature_cls: Any, out_indices: Any) -> nn.Module:
    """``feature_cls`` ('list', 'dict', 'hook', 'getter', 'fx' or a class): timm's own feature wrappers."""
    try:
        from timm.models import FeatureDictNet, FeatureGraphNet, FeatureHookNet, FeatureListNet
        from timm.models._features import FeatureGetterNet  # not exported by timm.models
    except ImportError as e:
        raise ValueError(f"create_model: feature_cls={feature_cls!r} uses timm's feature wrappers but timm is not "
                         f"installed; drop feature_cls (msaconv's own features_only wrapper) or pip install timm") from e
    table = {"list": FeatureListNet, "dict": FeatureDictNet, "hook": FeatureHookNet, "getter": FeatureGetterNet,
             "fx": FeatureGraphNet}
    cls = table.get(feature_cls, feature_cls) if isinstance(feature_cls, str) else feature_cls
    if isinstance(cls, str) or not isinstance(cls, type):
        raise ValueError(f"create_model: unknown feature_cls {feature_cls!r}; choose one of {sorted(table)} or a class")
    idx = tuple(check_out_indices("features_only", out_indices, len(model.stages)))
    if issubclass(cls, (FeatureDictNet, FeatureHookNet)):
        return cls(model, out_indices=idx, flatten_sequential=True)
    return cls(model, out_indices=idx)
