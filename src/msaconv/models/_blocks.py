"""Building blocks of the hierarchical backbones, all NCHW: norm, MLP, drop path, layer scale, block, stem,
downsampling. The token mixer of a block is any ``[B, C, H, W] -> [B, C, H, W]`` module."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import MSAConv2d
from ..layers.pointwise import Pointwise2d


def is_tracing(x: object) -> bool:
    """Whether ``x`` is a ``torch.fx`` Proxy (symbolic tracing) or ``torch.jit`` is scripting: then the model's
    eager input checks are left out, as timm does (a Proxy has no concrete rank or size). torch.compile and
    torch.export run the checks on fake tensors, which have both."""
    if torch.jit.is_scripting():
        return True
    return isinstance(x, torch.fx.Proxy)


def check_image(name: str, x: object, in_chans: int, min_size: int, total_stride: int) -> None:
    """A clear ValueError for an input a model cannot take: wrong rank or channels, below the minimum size.

    Nothing is checked while ``torch.fx`` traces (:func:`is_tracing`); scripted models skip the call (their
    ``forward`` guards it with ``torch.jit.is_scripting()``)."""
    if is_tracing(x):
        return
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected images [B, C, H, W], got {got}; add a batch axis with x[None]")
    if x.shape[1] != in_chans:
        raise ValueError(f"{name}: expected {in_chans} input channels, got x of shape {tuple(x.shape)}; "
                         f"build the model with in_chans={x.shape[1]}")
    H, W = x.shape[-2:]
    if H < min_size or W < min_size:
        raise ValueError(f"{name}: input {H}x{W} is below the minimum input size {min_size}x{min_size} of this model "
                         f"(total stride {total_stride}); resize or pad the images to at least {min_size}x{min_size}")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (per pixel), as ConvNeXt's channels-first norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # [B, H, W, C]
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # [B, C, H, W]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p`` (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale2d(nn.Module):
    """Per-channel learnable scale of a residual branch (CaiT), initialised to ``init``."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class Mlp(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv, NCHW (the 1x1 convs as ``Pointwise2d``)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Pointwise2d(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Pointwise2d(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(LS(mixer(LN(x))))``, then ``x + DropPath(LS(MLP(LN(x))))``.

    ``pos_conv`` adds a depthwise 3x3 conv position encoding first (``x + dwconv(x)``, CPVT's PEG): it
    gives position-blind mixers (global attention) a sense of place without a fixed-size embedding.
    """

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 layer_scale_init: float | None = None, pos_conv: bool = False, drop: float = 0.0):
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if pos_conv else None
        self.norm1 = LayerNorm2d(dim)
        self.mixer = mixer
        self.ls1 = LayerScale2d(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, max(1, int(round(dim * mlp_ratio))), drop)
        self.ls2 = LayerScale2d(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos is not None:
            x = x + self.pos(x)
        x = x + self.drop_path(self.ls1(self.mixer(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def make_stem(kind: str, in_chans: int, dim: int, stride: int) -> nn.Sequential:
    """``'conv'``: two 3x3 convs (strides split as 4 -> 2, 2; 2 -> 1, 2; 1 -> 1, 1) with LN and GELU, as
    NAT's tokenizer; ``'patch'``: one ``stride`` x ``stride`` conv (ViT / ConvNeXt patchify). Both end in LN."""
    if kind == "patch":
        return nn.Sequential(nn.Conv2d(in_chans, dim, stride, stride), LayerNorm2d(dim))
    s1, s2 = {1: (1, 1), 2: (1, 2), 4: (2, 2)}[stride]
    mid = max(dim // 2, 1)
    return nn.Sequential(
        nn.Conv2d(in_chans, mid, 3, s1, 1), LayerNorm2d(mid), nn.GELU(),
        nn.Conv2d(mid, dim, 3, s2, 1), LayerNorm2d(dim),
    )


def make_downsample(kind: str, in_dim: int, out_dim: int, kernel: int, num_heads: int, border: str) -> nn.Sequential:
    """Halve H and W (ceil) and change channels, pre-normed: ``LN -> op``.

    ``'conv'``: a strided ``kernel`` x ``kernel`` conv. ``'msa_conv'``: ``MSAConv2d(stride=2)``, attention
    over a ``kernel`` window at the input resolution, then the strided conv (the paper's title: attention
    inside a convolution).
    """
    norm = LayerNorm2d(in_dim)
    if kind == "msa_conv":
        op: nn.Module = MSAConv2d(in_dim, out_dim, kernel, stride=2, num_heads=num_heads, border=border, bias=True)
    else:
        op = nn.Conv2d(in_dim, out_dim, kernel, 2, kernel // 2)
    return nn.Sequential(norm, op)


class Stage(nn.Module):
    """``downsample`` (or identity for the first stage) then a sequence of blocks, with optional gradient checkpointing."""

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[nn.Module]):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        return self.blocks(x)
