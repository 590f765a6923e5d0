"""TiC ("Transformer in Convolution", arXiv 2310.04134): the hierarchical backbone with MSA-Conv token mixers.

The paper's body could not be read here, so every configuration is ours, and
every switch of the spec is a :class:`TiCConfig` field: ``kernel_size`` and ``dilation`` per stage (a list
inside a stage cycles over its blocks, e.g. ``dilation=(1, [1, 2], [1, 2], 1)`` for DiNAT-style
alternation), ``depthwise`` (one head per channel) or ``num_heads``/``head_dim``, ``border``, ``shift``
(MDCSM) and ``inter_pool`` (IPM) per stage (lists cycle over blocks too), ``downsample`` ('msa_conv':
``MSAConv2d(stride=2)``, or 'conv'), ``layer_scale_init``, ``drop_path_rate``.

Sizes: ``tic_tiny``/``tic_small``/``tic_base`` follow NAT-Mini/Tiny/Small's widths and depths (about 20M,
28M, 51M parameters) for 224 px; ``tic_nano`` and ``tic_micro`` are CPU-trainable for 32-96 px images.

- ``tic_nano`` (1.4M params, 32 px): stem stride 4 and *three* stages (64, 128, 256 channels; depths 1, 2,
  1), so the stage maps at 32 px are 8, 4, 2 px, never 1x1 (a four-stage form with a stride-2 stem, maps
  16, 8, 4, 2, is ``stem_stride=2, dims=(32, 64, 128, 256), depths=(1, 1, 3, 1)``: about 1.7x the cost).
- ``tic_micro`` (5.7M params, 64 px default, 32-96 px): stem stride 2, four stages (maps 32, 16, 8, 4 at
  64 px; 16, 8, 4, 2 at 32 px), ``MSAConv2d`` downsampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..layers import MSAttention2d
from ..layers.shift_pool import resolve_inter_pool, resolve_shift
from .._errors import pair
from ..ops import BORDERS
from ._builder import build_model
from ._fields import _err, at_block, per_stage
from .hier import IMAGENET_MEAN, IMAGENET_STD, HierConfig, HierNet, pretrained_cfg_for
from ._registry import register_model


def _blocks_of(value: Any) -> list:
    return value if isinstance(value, list) else [value]


@dataclass
class TiCConfig(HierConfig):
    """:class:`HierConfig` with MSA-Conv mixers. Extra fields (per stage: a tuple, or one shared value; a
    list inside a stage cycles over its blocks): ``kernel_size``, ``dilation``, ``depthwise``, ``shift``
    (None, 'kv', 'input', a dict of CyclicShift fields), ``inter_pool`` (None, 'grid', 'local', a dict of
    InterPool fields); shared: ``border``, ``qkv_bias``, ``attn_drop``, ``backend``. The downsampler
    ``'msa_conv'`` uses ``downsample_kernel`` and ``border``."""

    dims: tuple[int, ...] = (64, 128, 256, 512)
    depths: tuple[int, ...] = (3, 4, 6, 5)
    head_dim: int = 32
    stem_stride: int = 4
    downsample: str = "msa_conv"
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    kernel_size: Any = 7
    dilation: Any = 1
    depthwise: Any = False
    border: str = "zeros"
    shift: Any = field(default_factory=lambda: [None, "kv"])  # MDCSM on every second block
    inter_pool: Any = "grid"  # IPM: 4x4 pooled keys in every block
    qkv_bias: bool = True
    attn_drop: float = 0.0
    backend: str | None = None

    def stage_heads(self) -> list[int]:
        dw = per_stage(self, "depthwise", self.depthwise, self.num_stages)
        heads = super().stage_heads()
        return [d if w is True else h for h, d, w in zip(heads, self.dims, dw)]

    def block_pairs(self, arg: str) -> list[list[tuple[int, int]]]:
        """``kernel_size`` or ``dilation`` normalised: per stage, the pairs its blocks cycle over."""
        return [[pair(f"TiCConfig.{arg}", arg, b) for b in _blocks_of(v)]
                for v in per_stage(self, arg, getattr(self, arg), self.num_stages)]

    def mixer(self, stage: int, block: int, dim: int, heads: int) -> nn.Module:
        n = self.num_stages
        pick = lambda name: at_block(per_stage(self, name, getattr(self, name), n)[stage], block)  # noqa: E731
        window = lambda name: at_block(self.block_pairs(name)[stage], block)  # noqa: E731
        return MSAttention2d(dim, heads, kernel_size=window("kernel_size"), dilation=window("dilation"),
                             border=self.border, qkv_bias=self.qkv_bias, attn_drop=self.attn_drop,
                             backend=self.backend, shift=pick("shift"), inter_pool=pick("inter_pool"))

    def downsample_border(self) -> str:
        return self.border

    def min_input_size(self) -> int:
        """The total stride, and for ``border='clamp'`` room for a whole window in every stage (NATTEN's rule)."""
        red = self.reductions()
        need = red[-1]
        if self.border == "clamp":
            ks, ds = self.block_pairs("kernel_size"), self.block_pairs("dilation")
            for i in range(self.num_stages):
                span = max(max(a * b for a, b in zip(k, d)) for k in ks[i] for d in ds[i])
                need = max(need, red[i] * span)
                if i > 0 and self.downsample == "msa_conv":
                    need = max(need, red[i - 1] * self.downsample_kernel)
        return need

    def validate(self) -> "TiCConfig":
        if self.token_mixer != "msa_conv":
            raise _err(self, "token_mixer", self.token_mixer,
                       "TiC models always use 'msa_conv'; for another mixer use HierConfig / the hier_* models")
        super().validate()
        n = self.num_stages
        for arg in ("kernel_size", "dilation"):
            self.block_pairs(arg)
        for v in per_stage(self, "depthwise", self.depthwise, n):
            if not isinstance(v, bool):
                raise _err(self, "depthwise", self.depthwise, "use True/False, or a tuple of them per stage")
        if self.border not in BORDERS:
            raise _err(self, "border", self.border, f"choose one of {BORDERS}")
        for v in per_stage(self, "shift", self.shift, n):
            for b in _blocks_of(v):
                resolve_shift("TiCConfig.shift", b)
        for v in per_stage(self, "inter_pool", self.inter_pool, n):
            for b in _blocks_of(v):
                resolve_inter_pool("TiCConfig.inter_pool", b)
        if self.downsample_kernel % 2 == 0:
            raise _err(self, "downsample_kernel", self.downsample_kernel, "use an odd kernel, e.g. 3")
        return self


# ---- the family --------------------------------------------------------------------------------------

_SMALL_IMAGES: dict[str, Any] = dict(stem_stride=2, num_classes=10, img_size=32, mean=(0.4914, 0.4822, 0.4465),
                     std=(0.2470, 0.2435, 0.2616))

CONFIGS: dict[str, TiCConfig] = {
    # CPU-trainable, 32 px CIFAR-size images: stem stride 4 and 3 stages, maps 8, 4, 2 (see the module doc)
    "tic_nano": TiCConfig(dims=(64, 128, 256), depths=(1, 2, 1), head_dim=16, kernel_size=3,
                          downsample="conv", shift="kv", inter_pool="grid", **{**_SMALL_IMAGES, "stem_stride": 4}),
    "tic_micro": TiCConfig(dims=(48, 96, 192, 384), depths=(2, 2, 4, 2), head_dim=16, kernel_size=(5, 5, 3, 3),
                           downsample="msa_conv", shift="kv", inter_pool="grid",
                           **{**_SMALL_IMAGES, "img_size": 64}),
    # 224 px, the NAT-Mini / NAT-Tiny / NAT-Small widths and depths
    "tic_tiny": TiCConfig(dims=(64, 128, 256, 512), depths=(3, 4, 6, 5), head_dim=32, mlp_ratio=3.0),
    "tic_small": TiCConfig(dims=(64, 128, 256, 512), depths=(3, 4, 18, 5), head_dim=32, mlp_ratio=3.0,
                           drop_path_rate=0.2),
    "tic_base": TiCConfig(dims=(96, 192, 384, 768), depths=(3, 4, 18, 5), head_dim=32, mlp_ratio=2.0,
                          drop_path_rate=0.3),
}

default_cfgs = {name: pretrained_cfg_for(c, paper_ids="arXiv:2310.04134", paper_name="TiC: Exploring Vision "
                                         "Transformer in Convolution", description=f"{name} (configuration ours)")
                for name, c in CONFIGS.items()}


@register_model
def tic_nano(pretrained: bool = False, **kwargs) -> nn.Module:
    """TiC-Nano, ~1.4M params, 32 px (CIFAR-size) images, CPU-trainable in minutes."""
    return build_model(HierNet, "tic_nano", CONFIGS["tic_nano"], pretrained, **kwargs)


@register_model
def tic_micro(pretrained: bool = False, **kwargs) -> nn.Module:
    """TiC-Micro, ~5.7M params, 32-96 px images (default 64)."""
    return build_model(HierNet, "tic_micro", CONFIGS["tic_micro"], pretrained, **kwargs)


@register_model
def tic_tiny(pretrained: bool = False, **kwargs) -> nn.Module:
    """TiC-Tiny, ~20M params (NAT-Mini's size), 224 px."""
    return build_model(HierNet, "tic_tiny", CONFIGS["tic_tiny"], pretrained, **kwargs)


@register_model
def tic_small(pretrained: bool = False, **kwargs) -> nn.Module:
    """TiC-Small, ~28M params (NAT-Tiny's size), 224 px."""
    return build_model(HierNet, "tic_small", CONFIGS["tic_small"], pretrained, **kwargs)


@register_model
def tic_base(pretrained: bool = False, **kwargs) -> nn.Module:
    """TiC-Base, ~51M params (NAT-Small's size), 224 px."""
    return build_model(HierNet, "tic_base", CONFIGS["tic_base"], pretrained, **kwargs)
