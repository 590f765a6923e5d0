"""A generic hierarchical backbone that takes any registered token mixer by name, and its named variants.

``HierNet(HierConfig(token_mixer="global", ...))`` is the macro-architecture of the TiC family (stem,
stages of pre-norm blocks, downsampling between stages, GAP + LN + Linear head) with the mixer of every
block built by :func:`msaconv.layers.get_token_mixer`, so the zoo's mixers are compared in the same body.
:class:`~msaconv.models.tic.TiCConfig` is the same backbone with MSA-Conv and its switches.

Registered here: ``vit_nano_global`` (an isotropic ViT-like baseline: patch-4 stem, one stage of global
attention, a depthwise-conv position encoding instead of a fixed-size embedding) and ``hier_nano_<mixer>``
for every token mixer registered when :mod:`msaconv.models` is imported (tic_nano's body with that mixer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..layers import get_token_mixer, list_token_mixers
from .._errors import did_you_mean
from ._blocks import Block, Stage, make_downsample, make_stem
from ._fields import StageConfig, _err, _pos_int, at_block, per_stage
from ._backbone import Backbone
from ._builder import build_model
from ._registry import register_model

STEMS = ("conv", "patch")
DOWNSAMPLES = ("conv", "msa_conv")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class HierConfig(StageConfig):
    """Config of :class:`HierNet`. Per-stage fields take a tuple (one entry per stage) or one shared value.

    Fields: ``dims``, ``depths`` (per stage); ``head_dim`` (heads = dim // head_dim) or ``num_heads``
    (per stage, overrides head_dim); ``token_mixer`` (a name of :func:`msaconv.layers.list_token_mixers`)
    and ``mixer_options`` (a dict for every stage, or a tuple of dicts); ``mlp_ratio``; ``stem`` ('conv':
    two 3x3 convs, or 'patch') and ``stem_stride`` (1, 2 or 4; the patch stem also 8 or 16); ``downsample`` ('conv': LN + strided
    conv, or 'msa_conv': LN + ``MSAConv2d(stride=2)``) with ``downsample_kernel``; ``layer_scale_init``
    (None: no layer scale); ``pos_conv`` (a depthwise 3x3 position encoding in every block);
    ``mixer_size`` (pass ``size=`` the stage's map size at ``img_size`` to mixers that are built for one
    size, e.g. ``spectral``);
    ``drop_rate`` (head dropout), ``drop_path_rate`` (linearly increasing over blocks); ``in_chans``,
    ``num_classes``; ``img_size`` (the default input size of the pretrained_cfg); ``mean``/``std``.
    """

    dims: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (1, 1, 3, 1)
    head_dim: int = 16
    num_heads: Any = None
    token_mixer: str = "msa_conv"
    mixer_options: Any = field(default_factory=dict)
    mlp_ratio: float = 3.0
    stem: str = "conv"
    stem_stride: int = 2
    downsample: str = "conv"
    downsample_kernel: int = 3
    layer_scale_init: float | None = None
    pos_conv: bool = False
    mixer_size: bool = False
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    in_chans: int = 3
    num_classes: int = 1000
    img_size: int = 32
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD

    # ---- derived values -------------------------------------------------------------------------
    def reductions(self) -> list[int]:
        return [self.stem_stride * 2 ** i for i in range(self.num_stages)]

    def stage_sizes(self, img_size: int) -> list[int]:
        """Side of each stage's map for a square ``img_size`` input (3x3 stride-2 convs round up, patchify down)."""
        if self.stem == "patch":
            s = img_size // self.stem_stride
        else:
            s = img_size
            for _ in range({1: 0, 2: 1, 4: 2}[self.stem_stride]):
                s = -(-s // 2)
        sizes = [s]
        for _ in range(self.num_stages - 1):
            sizes.append(-(-sizes[-1] // 2))
        return sizes

    def stage_heads(self) -> list[int]:
        heads = per_stage(self, "num_heads", self.num_heads, self.num_stages)
        return [h if h is not None else max(1, d // self.head_dim) for h, d in zip(heads, self.dims)]

    def mixer(self, stage: int, block: int, dim: int, heads: int) -> nn.Module:
        """The token mixer of one block."""
        opts = dict(at_block(per_stage(self, "mixer_options", self.mixer_options, self.num_stages)[stage], block) or {})
        if self.mixer_size:
            side = self.stage_sizes(self.img_size)[stage]
            opts.setdefault("size", (side, side))
        return get_token_mixer(self.token_mixer, dim, num_heads=heads, **opts)

    def downsample_border(self) -> str:
        return "zeros"

    def min_input_size(self) -> int:
        """The smallest H and W: every stage map at least 1 px at its nominal reduction."""
        return self.reductions()[-1]

    # ---- validation -----------------------------------------------------------------------------
    def validate(self) -> "HierConfig":
        n = self._check_stages(example=(32, 64, 128, 256))
        if not _pos_int(self.head_dim):
            raise _err(self, "head_dim", self.head_dim, "use a positive int, e.g. 32")
        for i, (h, d) in enumerate(zip(per_stage(self, "num_heads", self.num_heads, n), self.dims)):
            if h is not None and (not _pos_int(h) or d % h):
                raise _err(self, "num_heads", self.num_heads, f"stage {i} has dim {d}: use None or a divisor of each dim")
        if self.token_mixer not in list_token_mixers():
            names = list_token_mixers()
            raise ValueError(f"{type(self).__name__}: unknown token_mixer {self.token_mixer!r};"
                             f"{did_you_mean(str(self.token_mixer), names)} choose one of {names}")
        for opts in per_stage(self, "mixer_options", self.mixer_options, n):
            for o in (opts if isinstance(opts, list) else [opts]):
                if o is not None and not isinstance(o, dict):
                    raise _err(self, "mixer_options", self.mixer_options, "use a dict of mixer options, or a tuple of dicts per stage")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise _err(self, "mlp_ratio", self.mlp_ratio, "use a positive number, e.g. 4.0")
        if self.stem not in STEMS:
            raise _err(self, "stem", self.stem, f"choose one of {STEMS}")
        strides = (1, 2, 4, 8, 16) if self.stem == "patch" else (1, 2, 4)
        if self.stem_stride not in strides or isinstance(self.stem_stride, bool):
            raise _err(self, "stem_stride", self.stem_stride, f"use one of {strides} with stem={self.stem!r}"
                       + (" (8 and 16: stem='patch', ViT's patchify)" if self.stem != "patch" else ""))
        if self.downsample not in DOWNSAMPLES:
            raise _err(self, "downsample", self.downsample,
                       f"choose one of {DOWNSAMPLES}{did_you_mean(str(self.downsample), DOWNSAMPLES)}")
        if not _pos_int(self.downsample_kernel):
            raise _err(self, "downsample_kernel", self.downsample_kernel, "use a positive int, e.g. 3")
        ls = self.layer_scale_init
        if ls is not None and (isinstance(ls, bool) or not isinstance(ls, (int, float)) or ls <= 0):
            raise _err(self, "layer_scale_init", ls, "use None (no layer scale) or a positive float, e.g. 1e-5")
        self._check_probabilities("drop_rate", "drop_path_rate")
        if not _pos_int(self.in_chans):
            raise _err(self, "in_chans", self.in_chans, "use a positive int, e.g. 3")
        self._check_num_classes()
        if not _pos_int(self.img_size):
            raise _err(self, "img_size", self.img_size, "use a positive int, e.g. 224")
        return self


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class HierNet(Backbone):
    """Hierarchical backbone: stem, stages of pre-norm blocks with any token mixer, GAP + LN + Linear head.

    Follows timm's model contract: ``forward_features`` (the last stage's map), ``forward_head(x,
    pre_logits=False)``, ``reset_classifier``, ``get_classifier``, ``num_features``, ``no_weight_decay``,
    ``feature_info``, ``forward_intermediates`` / ``prune_intermediate_layers``, ``group_matcher``,
    ``set_grad_checkpointing``; ``pretrained_cfg`` is set by :func:`msaconv.models.create_model`.
    No absolute position embedding: any input of at least ``min_input_size`` pixels works.
    The methods it shares with :class:`~msaconv.models.tic_conv.ConvNet` (``forward``, ``check_input``,
    ``get_classifier``, ``reset_classifier``, ``forward_intermediates``, ``prune_intermediate_layers``)
    are written once, in ``msaconv.models._backbone.Backbone``.
    """

    if TYPE_CHECKING:  # set by Backbone.__init__; declared for the type checker only (TorchScript reads class annotations)
        cfg: HierConfig

    def __init__(self, cfg: HierConfig):
        super().__init__(cfg)
        dims, depths, heads = cfg.dims, cfg.depths, cfg.stage_heads()
        self.stem = make_stem(cfg.stem, cfg.in_chans, dims[0], cfg.stem_stride)
        total = sum(depths)
        dpr = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, k = [], 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            ds = None
            if i > 0:
                ds = make_downsample(cfg.downsample, dims[i - 1], dim, cfg.downsample_kernel, heads[i - 1],
                                     cfg.downsample_border())
            blocks = [Block(dim, cfg.mixer(i, j, dim, heads[i]), cfg.mlp_ratio, dpr[k + j], cfg.layer_scale_init,
                            cfg.pos_conv) for j in range(depth)]
            k += depth
            stages.append(Stage(ds, blocks))
        self.stages = nn.Sequential(*stages)
        self.head_norm: nn.Module = nn.LayerNorm(dims[-1])
        self.global_pool = "avg"  # '' (reset_classifier(0, '')): forward_head keeps the map
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(dims[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    # ---- timm contract (the rest: Backbone) ----------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_input(x)
        return self.stages(self.stem(x))  # [B, num_features, H/r, W/r]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = self.head_norm(x.mean((2, 3)))  # global average pool, then LN: [B, C]
        else:  # '': no pooling, the LN per pixel: [B, C, H, W]
            x = self.head_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def _init_head(self, head: nn.Linear) -> None:
        _init_weights(head)

    def _prune_norm(self) -> None:
        self.head_norm = nn.Identity()

    def no_weight_decay(self) -> set[str]:
        """Parameter names to keep out of weight decay: the layer-scale gammas (norms and biases are 1-D
        and excluded by the usual ndim rule)."""
        return {n for n, _ in self.named_parameters() if n.endswith(".gamma")}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise learning-rate decay (timm's format)."""
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^head_norm", (99999,)),
            ],
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            cast(Stage, s).grad_checkpointing = bool(enable)


def _entry(name: str, model_cls, cfg: HierConfig):
    """An entry point ``fn(pretrained=False, **kwargs)`` named ``name`` in this module (for both registries)."""

    def fn(pretrained: bool = False, **kwargs) -> nn.Module:
        return build_model(model_cls, name, cfg, pretrained, **kwargs)

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = f"{name}: {model_cls.__name__} with {cfg}"
    return fn


def pretrained_cfg_for(cfg: HierConfig, **extra) -> dict:
    """The timm-style pretrained_cfg of a config: sizes, normalisation, first conv and classifier names."""
    s, m = cfg.img_size, cfg.min_input_size()
    p = cfg.stage_sizes(s)[-1]  # forward_features' map at input_size
    return dict(
        url="", input_size=(cfg.in_chans, s, s), min_input_size=(cfg.in_chans, m, m), fixed_input_size=False,
        pool_size=(p, p), interpolation="bicubic", crop_pct=1.0 if s <= 96 else 0.9, crop_mode="center",
        mean=tuple(cfg.mean), std=tuple(cfg.std), num_classes=cfg.num_classes, first_conv="stem.0",
        classifier="head", license="apache-2.0", **extra,
    )


# ---- registered variants ---------------------------------------------------------------------------

# tic_nano's body (see msaconv.models.tic) with another mixer; 32 px CIFAR-size images, 10 classes.
NANO_BODY: dict[str, Any] = dict(dims=(64, 128, 256), depths=(1, 2, 1), head_dim=16, mlp_ratio=3.0, stem="conv",
                 stem_stride=4, downsample="conv", num_classes=10, img_size=32)

VARIANTS: dict[str, HierConfig] = {
    # isotropic ViT-like global-attention baseline: patch-4 stem, one stage of 6 blocks at 8x8 for 32 px
    "vit_nano_global": HierConfig(dims=(128,), depths=(6,), head_dim=32, token_mixer="global", mlp_ratio=3.0,
                                  stem="patch", stem_stride=4, pos_conv=True, num_classes=10, img_size=32),
}
# mixers built for one map size get it from the config, and adapt their weights to other sizes by their
# own documented option (spectral: resize='kernel', the same circular convolution at any size)
_MIXER_VARIANT_OPTIONS: dict[str, dict[str, Any]] = {"spectral": dict(mixer_size=True, mixer_options={"resize": "kernel"})}
for _mixer in list_token_mixers():
    VARIANTS[f"hier_nano_{_mixer}"] = HierConfig(token_mixer=_mixer, **{**NANO_BODY, **_MIXER_VARIANT_OPTIONS.get(_mixer, {})})

default_cfgs: dict[str, dict] = {}
for _name, _cfg in VARIANTS.items():
    if _cfg.token_mixer not in list_token_mixers():  # e.g. 'global' before the zoo has it
        continue
    default_cfgs[_name] = pretrained_cfg_for(_cfg, description=f"{_name}: {_cfg.token_mixer} token mixer")
    globals()[_name] = register_model(_entry(_name, HierNet, _cfg))
