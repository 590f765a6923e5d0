"""TiC read as "Transformer in Convolution": a ConvNet whose convolutions are ``MSAConv2d`` layers.

The authors' only released layer (``MSA_Conv_2d``: 1x1 qkv -> k x k window attention -> + x -> k x k
convolution) has the signature of ``nn.Conv2d``, so this family takes a plain ConvNet skeleton with
BatchNorm and puts that layer in place of every convolution but the stem's (attention over 3 RGB
channels would be meaningless). ``convnet_*`` is the same skeleton with ``nn.Conv2d`` in every place
(same widths, same recipe): the matched baseline that every claim about the family is compared with.

Skeleton (:class:`ConvNetConfig`): a 3x3 conv stem at full resolution, then one stage per entry of
``dims``. The first conv of a stage changes the width and is followed by a 2x2 max-pool (the
``downsample='maxpool'`` default; ``'stride'`` strides that conv instead), then BatchNorm and the
activation; each further conv of the stage keeps the width (``residual=True`` adds a skip around it).
Head: global average (or max) pool, optional dropout, linear.

Variants of the abstract ("standard, dilated and depthwise"): ``dilation`` per stage (the attention
window and the trailing conv dilated alike), ``depthwise`` per stage (a depthwise MSA-Conv, one head per
channel and a depthwise trailing conv, followed by a 1x1 conv for the change of width; the baseline
then uses a depthwise-separable conv). MDCSM (``shift``) and IPM (``inter_pool``) are per-stage options
of every ``MSAConv2d`` of the stage; :meth:`ConvNetConfig.layer_maps` says at which map size each layer
runs, and :meth:`ConvNetConfig.mechanism_notes` whether a mechanism is alive there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import MSAConv2d, SizeBatchNorm2d
from ..layers.pointwise import Pointwise2d
from ..layers.shift_pool import resolve_inter_pool, resolve_shift
from .._errors import did_you_mean, pair
from ..ops import BORDERS
from ._backbone import Backbone
from ._builder import build_model
from ._registry import register_model
from ._fields import StageConfig, _err, _pos_int, per_stage
from .hier import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD

CONVS = ("msa", "plain")
DOWNSAMPLES = ("maxpool", "stride")
ACTS = {"gelu": nn.GELU, "relu": nn.ReLU}
HEAD_POOLS = ("avg", "max")


@dataclass
class ConvNetConfig(StageConfig):
    """Config of :class:`ConvNet`. Per-stage fields take a tuple (one entry per stage) or one shared value.

    ``conv``: 'msa' (``MSAConv2d``, TiC) or 'plain' (``nn.Conv2d``, the matched baseline); ``stem_width``,
    ``stem_stride`` (1 for 32 px images, 4 for 224 px: a 7x7 stride-2 conv and a 3x3 max-pool as ResNet's);
    ``dims``, ``depths`` (convs per stage); ``kernel_size``, ``dilation``, ``depthwise``, ``shift``,
    ``inter_pool`` (per stage); ``head_dim`` (heads = max(1, in_channels // head_dim) in each MSAConv2d);
    ``border``, ``qkv_bias``, ``attn_drop``, ``backend``, ``layer_scale_init`` (shared; see ``MSAConv2d``);
    ``size_bn`` (0: ``nn.BatchNorm2d``; N > 0: every BatchNorm is a :class:`~msaconv.layers.SizeBatchNorm2d`
    keeping running statistics for up to N training sizes, evaluated with the nearest trained size's);
    ``plain_convs`` (the first N convs of the body stay ``nn.Conv2d`` besides the stem: attention on the
    largest map moves the most memory for the least context); ``downsample``, ``residual``, ``act``,
    ``head_pool``, ``drop_rate``; ``in_chans``, ``num_classes``, ``img_size``, ``mean``, ``std``.
    """

    conv: str = "msa"
    stem_width: int = 32
    stem_stride: int = 1
    dims: tuple[int, ...] = (64, 128, 256)
    depths: tuple[int, ...] = (2, 2, 2)
    kernel_size: Any = 3
    dilation: Any = 1
    depthwise: Any = False
    shift: Any = None
    inter_pool: Any = None
    head_dim: int = 32
    border: str = "zeros"
    qkv_bias: bool = True
    attn_drop: float = 0.0
    backend: str | None = None
    layer_scale_init: float | None = None
    size_bn: int = 0
    plain_convs: int = 0
    downsample: str = "maxpool"
    residual: bool = False
    act: str = "gelu"
    head_pool: str = "avg"
    drop_rate: float = 0.0
    in_chans: int = 3
    num_classes: int = 10
    img_size: int = 32
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD

    def reductions(self) -> list[int]:
        return [self.stem_stride * 2 ** (i + 1) for i in range(self.num_stages)]

    def min_input_size(self) -> int:
        return self.reductions()[-1]

    def stage(self, name: str) -> list:
        return per_stage(self, name, getattr(self, name), self.num_stages)

    def window(self, stage: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The ``(kernel_size, dilation)`` pairs of one stage, normalised."""
        return (pair("ConvNetConfig.kernel_size", "kernel_size", self.stage("kernel_size")[stage]),
                pair("ConvNetConfig.dilation", "dilation", self.stage("dilation")[stage]))

    def _after_stem(self, img_size: int) -> int:
        s = img_size
        for _ in range({1: 0, 2: 1, 4: 2}[self.stem_stride]):
            s = -(-s // 2)  # stride-2 convs / max-pool with "same" padding round up
        return s

    def stage_sizes(self, img_size: int) -> list[int]:
        """Side of each stage's output map for a square ``img_size`` input."""
        s, out = self._after_stem(img_size), []
        for _ in self.dims:
            s = s // 2 if self.downsample == "maxpool" else -(-s // 2)
            out.append(s)
        return out

    def layer_maps(self, img_size: int) -> list[list[int]]:
        """The side of the map each conv of each stage *reads* for a square ``img_size`` input."""
        s = self._after_stem(img_size)
        out = []
        for d in self.depths:
            first = s
            s = s // 2 if self.downsample == "maxpool" else -(-s // 2)
            out.append([first] + [s] * (d - 1))
        return out

    def mechanism_notes(self, img_size: int) -> list[str]:
        """For each MSA-Conv layer with MDCSM or IPM on, whether it acts at ``img_size`` (a no-op is named)."""
        notes = []
        maps = self.layer_maps(img_size)
        for i in range(self.num_stages):
            k = max(a * b for a, b in zip(*self.window(i)))
            for j, side in enumerate(maps[i]):
                if self.stage("shift")[i] is not None:
                    notes.append(f"stage {i} conv {j} ({side}x{side}, window {k}): MDCSM "
                                 + ("rolls keys outside the window" if side > k else
                                    "is a no-op (window covers the map)"))
                ip = resolve_inter_pool("ConvNetConfig", self.stage("inter_pool")[i])
                if ip is not None:
                    if ip.mode == "grid":
                        g = pair("InterPool", "grid", ip.grid)
                        what = (f"adds {g[0]}x{g[1]} pooled keys" if side > max(g) else
                                "passes the raw map as extra keys (global attention, no pooling)")
                    else:
                        what = "smooths keys over a 3x3 neighbourhood"
                    notes.append(f"stage {i} conv {j} ({side}x{side}): IPM {what}")
        return notes

    def validate(self) -> "ConvNetConfig":
        n = self._check_stages(example=(64, 128, 256))
        for arg, allowed in (("conv", CONVS), ("downsample", DOWNSAMPLES), ("act", tuple(ACTS)),
                             ("head_pool", HEAD_POOLS), ("border", BORDERS)):
            v = getattr(self, arg)
            if v not in allowed:
                raise _err(self, arg, v, f"choose one of {allowed}{did_you_mean(str(v), allowed)}")
        if self.stem_stride not in (1, 2, 4) or isinstance(self.stem_stride, bool):
            raise _err(self, "stem_stride", self.stem_stride, "use 1 (32 px images), 2 or 4 (224 px images)")
        for arg in ("kernel_size", "dilation", "depthwise", "shift", "inter_pool"):
            if any(isinstance(v, list) for v in self.stage(arg)):
                raise _err(self, arg, getattr(self, arg), "ConvNet takes one value per stage (a tuple), not a per-block "
                                                         "cycle (a list, or {blocks: [...]} in YAML); a pair is a tuple, "
                                                         "e.g. kernel_size=((5, 1),) * 3")
        for i in range(n):
            self.window(i)
        for v in self.stage("depthwise"):
            if not isinstance(v, bool):
                raise _err(self, "depthwise", self.depthwise, "use True/False, or a tuple of them per stage")
        for v in self.stage("shift"):
            resolve_shift("ConvNetConfig.shift", v)
        for v in self.stage("inter_pool"):
            resolve_inter_pool("ConvNetConfig.inter_pool", v)
        if isinstance(self.size_bn, bool) or not isinstance(self.size_bn, int) or self.size_bn < 0:
            raise _err(self, "size_bn", self.size_bn, "use an int >= 0: 0 for nn.BatchNorm2d, N for running statistics "
                                                      "per training size (N >= the number of training sizes)")
        if isinstance(self.plain_convs, bool) or not isinstance(self.plain_convs, int) or self.plain_convs < 0:
            raise _err(self, "plain_convs", self.plain_convs, "use an int >= 0 (0: every conv after the stem is MSA-Conv)")
        for arg in ("stem_width", "head_dim", "in_chans", "img_size"):
            v = getattr(self, arg)
            if not _pos_int(v):
                raise _err(self, arg, v, "use a positive int")
        self._check_num_classes()
        self._check_probabilities("drop_rate", "attn_drop")
        return self


def _conv(cfg: ConvNetConfig, stage: int, cin: int, cout: int, stride: int, plain: bool = False) -> nn.Module:
    """One convolution of the skeleton: ``MSAConv2d`` or ``nn.Conv2d``, standard / dilated / depthwise."""
    k, d = cfg.window(stage)
    pad = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    dw = cfg.stage("depthwise")[stage]
    groups, width = (cin, cin) if dw else (1, cout)
    if cfg.conv == "msa" and not plain:
        heads = cin if dw else max(1, cin // cfg.head_dim)
        op: nn.Module = MSAConv2d(cin, width, k, stride=stride, padding=pad, dilation=d, groups=groups, num_heads=heads,
                                  border=cfg.border, qkv_bias=cfg.qkv_bias, attn_drop=cfg.attn_drop,
                                  backend=cfg.backend, shift=cfg.stage("shift")[stage],
                                  inter_pool=cfg.stage("inter_pool")[stage], layer_scale_init=cfg.layer_scale_init)
    else:
        op = nn.Conv2d(cin, width, k, stride, pad, d, groups, bias=False)
    if dw:
        return nn.Sequential(op, Pointwise2d(cin, cout, bias=False))
    return op


class ConvUnit(nn.Module):
    """``conv -> [2x2 max-pool] -> BatchNorm -> activation``, with a skip when the shape is kept and asked for."""

    def __init__(self, conv: nn.Module, cout: int, pool: bool, act: str, residual: bool, size_bn: int = 0):
        super().__init__()
        self.conv = conv
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm = _norm(cout, size_bn)
        self.act = ACTS[act]()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm(self.pool(self.conv(x))))
        return x + y if self.residual else y


def _norm(channels: int, size_bn: int) -> nn.Module:
    return SizeBatchNorm2d(channels, size_bn) if size_bn else nn.BatchNorm2d(channels)


def _stem(cfg: ConvNetConfig) -> nn.Sequential:
    act = ACTS[cfg.act]
    if cfg.stem_stride == 1:
        return nn.Sequential(nn.Conv2d(cfg.in_chans, cfg.stem_width, 3, 1, 1, bias=False),
                             _norm(cfg.stem_width, cfg.size_bn), act())
    layers: list[nn.Module] = [nn.Conv2d(cfg.in_chans, cfg.stem_width, 7 if cfg.stem_stride == 4 else 3, 2,
                                         3 if cfg.stem_stride == 4 else 1, bias=False),
                               _norm(cfg.stem_width, cfg.size_bn), act()]
    if cfg.stem_stride == 4:
        layers.append(nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(*layers)


class ConvNet(Backbone):
    """The ConvNet skeleton of :class:`ConvNetConfig`, with timm's model contract (as :class:`HierNet`)."""

    _POOLS = HEAD_POOLS
    if TYPE_CHECKING:  # set by Backbone.__init__; declared for the type checker only (TorchScript reads class annotations)
        cfg: ConvNetConfig

    def __init__(self, cfg: ConvNetConfig):
        super().__init__(cfg)
        self.stem = _stem(cfg)
        stages, cin, k = [], cfg.stem_width, 0
        for i, (w, depth) in enumerate(zip(cfg.dims, cfg.depths)):
            pool = cfg.downsample == "maxpool"
            units = []
            for j in range(depth):
                conv = _conv(cfg, i, cin if j == 0 else w, w, 2 if j == 0 and not pool else 1, k < cfg.plain_convs)
                units.append(ConvUnit(conv, w, pool and j == 0, cfg.act, cfg.residual and j > 0, cfg.size_bn))
                k += 1
            stages.append(nn.Sequential(*units))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.global_pool = cfg.head_pool  # a str attribute (TorchScript reads no dataclass); '': keep the map
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_input(x)
        x = self.stem(x)
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for stage in self.stages:
                x = checkpoint(stage, x, use_reentrant=False)
            return x
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "max":
            x = x.amax((2, 3))
        elif self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def _classifier_pool(self) -> str:
        return self.cfg.head_pool  # the config's pooling (it follows the last pooling reset_classifier chose)

    def _set_pool(self, pool: str) -> None:
        if pool in HEAD_POOLS:
            self.cfg = replace(self.cfg, head_pool=pool)
        self.global_pool = pool

    def no_weight_decay(self) -> set[str]:
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)


# ---- the family --------------------------------------------------------------------------------------

_TINY: dict[str, Any] = dict(stem_width=64, stem_stride=2, dims=(80, 160, 320, 640), depths=(3, 4, 6, 3),
                             residual=True, num_classes=1000, img_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)

CONFIGS: dict[str, ConvNetConfig] = {
    # CIFAR-size (32 px): convs read maps of 32 | 16, 16 | 8, 8 | 4 px; the stem and the first conv (both at
    # 32 px) plain, the five others MSA-Convs (plain_convs=1: 1.4x the training speed of all six, see
    # docs/main_job.md). BatchNorm keeps statistics for up to 4 training sizes (size_bn=4: the main job trains at
    # 24 / 32 / 40 / 48 px; one training size computes what nn.BatchNorm2d computes)
    "tic_conv_nano": ConvNetConfig(conv="msa", dims=(32, 64, 128), plain_convs=1, size_bn=4),
    "convnet_nano": ConvNetConfig(conv="plain", dims=(32, 64, 128), size_bn=4),
    # 224 px, about ResNet-50's parameter count
    "tic_conv_tiny": ConvNetConfig(conv="msa", **_TINY),
    "convnet_tiny": ConvNetConfig(conv="plain", **_TINY),
}


PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
# weights that ship in the package: the main job's final weights, with the run folder that produced them
SHIPPED: dict[str, dict[str, str]] = {
    "tic_conv_nano": dict(file=str(PRETRAINED_DIR / "tic_conv_nano" / "model.safetensors"), sha256="cb284e618282bd75657f7f53f6445edb88c27be5fa1a859f68fb843416dc2f68",
                          tag="cifar10_jpeg_20k"),
}


def _pretrained_cfg(name: str, cfg: ConvNetConfig) -> dict:
    s, m = cfg.img_size, cfg.min_input_size()
    return dict(url="", input_size=(cfg.in_chans, s, s), min_input_size=(cfg.in_chans, m, m), fixed_input_size=False,
                pool_size=(cfg.stage_sizes(s)[-1],) * 2, interpolation="bilinear" if s <= 96 else "bicubic",
                crop_mode="center",
                crop_pct=1.0 if s <= 96 else 0.875, mean=tuple(cfg.mean), std=tuple(cfg.std),
                num_classes=cfg.num_classes, first_conv="stem.0", classifier="head", license="apache-2.0",
                paper_ids="arXiv:2310.04134", description=f"{name}: {'MSA-Conv' if cfg.conv == 'msa' else 'plain conv'} "
                "ConvNet (configuration ours)", **SHIPPED.get(name, {}))


default_cfgs = {name: _pretrained_cfg(name, c) for name, c in CONFIGS.items()}


@register_model
def tic_conv_nano(pretrained: bool = False, **kwargs) -> nn.Module:
    """TiC as a ConvNet of MSA-Convs, CIFAR-size (32 px); the main job's model."""
    return build_model(ConvNet, "tic_conv_nano", CONFIGS["tic_conv_nano"], pretrained, **kwargs)


@register_model
def convnet_nano(pretrained: bool = False, **kwargs) -> nn.Module:
    """tic_conv_nano's skeleton with nn.Conv2d in every place: its matched baseline."""
    return build_model(ConvNet, "convnet_nano", CONFIGS["convnet_nano"], pretrained, **kwargs)


@register_model
def tic_conv_tiny(pretrained: bool = False, **kwargs) -> nn.Module:
    """TiC as a ConvNet of MSA-Convs, 224 px, about ResNet-50's size."""
    return build_model(ConvNet, "tic_conv_tiny", CONFIGS["tic_conv_tiny"], pretrained, **kwargs)


@register_model
def convnet_tiny(pretrained: bool = False, **kwargs) -> nn.Module:
    """tic_conv_tiny's skeleton with nn.Conv2d in every place: its matched baseline."""
    return build_model(ConvNet, "convnet_tiny", CONFIGS["convnet_tiny"], pretrained, **kwargs)
