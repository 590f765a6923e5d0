"""MSA-Conv modules: ``MSAConv2d`` (a drop-in for ``nn.Conv2d``) and ``MSAttention2d`` (a token mixer).

Both project q, k, v with one 1x1 convolution and call :func:`msaconv.ops.msa_conv2d` in the
channels-first ``'bhdhw'`` layout, which is a free view of the projection's output (NCHW or channels-last:
the fused kernels read either in place).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .._errors import check_choice, check_probability, pair
from ..ops import BORDERS, msa_conv2d, msa_conv2d_weights
from ._checks import check_heads, check_input, check_int
from .pointwise import Pointwise2d
from .shift_pool import (CyclicShift, InterPool, pool_grid, pool_local, resolve_inter_pool, resolve_shift,
                         shift_heads, shift_input)


def _check_shift_heads(cls: str, sh: CyclicShift | None, num_heads: int) -> None:
    if sh is not None and sh.mode == "kv" and sh.local > 0 and num_heads < 2:
        raise ValueError(
            f"{cls}: shift mode 'kv' splits the heads into a local group and shifted groups and needs "
            f"num_heads >= 2, got num_heads={num_heads}; use more heads, shift='input', or "
            f"shift=dict(mode='kv', local=0) to shift every head"
        )


class QKVAttention(nn.Module):
    """1x1 qkv projection + MSA-Conv core, shared by both modules. NCHW in, NCHW (attention output) out.

    ``shift`` (MDCSM) and ``inter_pool`` (IPM) are resolved :class:`CyclicShift` / :class:`InterPool`
    settings or None; see :mod:`msaconv.layers.shift_pool`.
    """

    def __init__(self, cls: str, dim: int, num_heads: int, kernel_size, dilation, stride, border: str,
                 attn_drop: float, qkv_bias: bool, scale: float | None, backend: str | None,
                 device=None, dtype=None, shift: CyclicShift | None = None, inter_pool: InterPool | None = None):
        super().__init__()
        self._cls = cls
        self.dim = check_int(cls, "dim" if cls == "MSAttention2d" else "in_channels", dim)
        self.num_heads = check_heads(cls, dim, num_heads, dim_arg="dim" if cls == "MSAttention2d" else "in_channels")
        self.head_dim = dim // self.num_heads
        self.kernel_size = pair(cls, "kernel_size", kernel_size)
        self.dilation = pair(cls, "dilation", dilation)
        self.attn_stride = pair(cls, "attn_stride", stride)
        self.border = check_choice(cls, "border", border, BORDERS)
        self.attn_drop = check_probability(cls, "attn_drop", attn_drop)
        self.scale = scale
        self.backend = backend
        self.shift = shift
        self.inter_pool = inter_pool
        self.qkv = Pointwise2d(dim, 3 * dim, bias=qkv_bias, device=device, dtype=dtype, channels_first=True)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v ``[B, heads, head_dim, H, W]`` (free views of the projection); MDCSM 'input' rolls x first."""
        sh = self.shift
        if sh is not None and sh.mode == "input":
            x = shift_input(x, sh)
        B, _, H, W = x.shape
        qkv = self.qkv(x).view(B, 3, self.num_heads, self.head_dim, H, W)  # [B, 3, h, D, H, W]
        # unbind, not three selects: its backward stacks the three gradients into one tensor, where each
        # select's backward writes a zero tensor of the whole qkv size and autograd then adds three of them
        q, k, v = qkv.unbind(1)
        return q, k, v

    def key_context(self, k: torch.Tensor, v: torch.Tensor | None):
        """The keys/values the core sees: ``(k, v, extra_k, extra_v)`` from projected ``k, v [B, h, D, H, W]``.

        Order: IPM 'local' pools k, v; IPM 'grid' pools the (unrolled) k, v into extra tokens
        ``[B, h, M, D]``; MDCSM 'kv' rolls the head groups of k, v. Works on any head axis (a GQA wrapper
        may hand in repeated key heads), since every step acts per head or per head group.
        """
        sh, ip = self.shift, self.inter_pool
        extra_k = extra_v = None
        if ip is not None:
            if ip.mode == "local":
                k = pool_local(k, ip)
                v = pool_local(v, ip) if v is not None else None
            else:
                extra_k = pool_grid(k, ip)
                extra_v = pool_grid(v, ip) if v is not None else None
        if sh is not None and sh.mode == "kv":
            k = shift_heads(k, sh)
            v = shift_heads(v, sh) if v is not None else None
        return k, v, extra_k, extra_v

    def attend_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-head attention output ``[B, heads, head_dim, H_out, W_out]``."""
        k, v, extra_k, extra_v = self.key_context(k, v)
        return msa_conv2d(q, k, v, self.kernel_size, self.dilation, self.attn_stride, self.border, self.scale,
                          extra_k=extra_k, extra_v=extra_v, backend=self.backend, layout="bhdhw",
                          dropout_p=self.attn_drop if self.training else 0.0)

    def options_repr(self, stride_arg: str) -> str:
        """The attention options that differ from their defaults, for the modules' ``extra_repr``."""
        s = f", {stride_arg}={self.attn_stride}" if self.attn_stride != (1, 1) else ""
        if self.attn_drop:
            s += f", attn_drop={self.attn_drop}"
        if self.shift is not None:
            s += f", shift={self.shift}"
        if self.inter_pool is not None:
            s += f", inter_pool={self.inter_pool}"
        return s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attend_heads(*self.qkv_heads(x))  # [B, h, D, Ho, Wo]
        return out.reshape(x.shape[0], self.dim, out.shape[-2], out.shape[-1])

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Weights ``[B, heads, H_out, W_out, K + M]`` for analysis: the K window slots, then the M pooled
        IPM tokens (M = 0 without ``inter_pool`` in 'grid' mode). Under MDCSM 'kv' the window slots of a
        shifted head refer to the rolled map (offsets relative to the head's shifted centre)."""
        q, k, _ = self.qkv_heads(x)
        k, _, extra_k, _ = self.key_context(k, None)
        return msa_conv2d_weights(q, k, self.kernel_size, self.dilation, self.attn_stride, self.border,
                                  self.scale, extra_k=extra_k, layout="bhdhw")


class MSAConv2d(nn.Module):
    """Multi-head self-attention inside a convolution, a drop-in for ``nn.Conv2d``.

    ``y = conv_kxk(x + msa(qkv_1x1(x)))``: window attention over the ``kernel_size`` (dilated)
    neighbourhood of every pixel, a residual, then a k x k convolution that does the stride and the change
    of channels, as in the authors' layer (StriveZs/MSA-Conv, ``MSA_Conv_2d``). With ``num_heads=1``,
    ``attn_drop=0.1`` and a ReLU after it, this is their layer exactly.

    Args follow ``nn.Conv2d``; differences: ``padding=None`` (default) pads the trailing convolution by
    ``dilation*(k-1)//2`` ("same" for odd kernels, as the authors' default) where ``nn.Conv2d`` defaults
    to 0; ``bias`` defaults to False as in the authors' layer. Extra options: ``num_heads`` (attention
    heads; ``groups=num_heads=in_channels`` is the depthwise MSA-Conv), ``attn_drop``, ``border`` (see
    :func:`msaconv.ops.msa_conv2d`), ``qkv_bias``, ``scale``, ``attn_stride`` (run the attention
    strided too, a cheaper variant of ours), ``conv_dilation`` (dilation of the trailing convolution;
    None uses ``dilation``, for ``nn.Conv2d``'s output shapes; the authors' layer uses 1) and
    ``backend``.

    TiC's strategies are options here as in :class:`MSAttention2d`: ``shift`` (MDCSM) and ``inter_pool``
    (IPM) act on the attention's keys and values (or, for ``shift='input'``, on its input) before the
    trailing convolution; both are off by default (the authors' layer has neither).
    ``layer_scale_init`` (ours, default None: the authors' layer) multiplies the attention output by a
    learnable per-channel scale with that initial value (0.0: the layer starts as its plain convolution).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False,
                 padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros", num_heads: int = 1,
                 attn_drop: float = 0.0, border: str = "zeros", qkv_bias: bool = True, scale: float | None = None,
                 attn_stride=1, conv_dilation=None, backend: str | None = None, shift=None, inter_pool=None,
                 layer_scale_init: float | None = None, device=None, dtype=None):
        super().__init__()
        cls = "MSAConv2d"
        self.in_channels = check_int(cls, "in_channels", in_channels)
        self.out_channels = check_int(cls, "out_channels", out_channels)
        sh = resolve_shift(cls, shift)
        self.attn = QKVAttention(cls, in_channels, num_heads, kernel_size, dilation, attn_stride, border,
                                  attn_drop, qkv_bias, scale, backend, device, dtype, shift=sh,
                                  inter_pool=resolve_inter_pool(cls, inter_pool))
        _check_shift_heads(cls, sh, self.attn.num_heads)
        kh, kw = self.attn.kernel_size
        dh, dw = self.attn.dilation
        cd = pair(cls, "conv_dilation", conv_dilation) if conv_dilation is not None else (dh, dw)
        if padding is None:
            padding = (cd[0] * (kh - 1) // 2, cd[1] * (kw - 1) // 2)
        cstride = pair(cls, "stride", stride)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{cls}: groups={groups!r} must be a positive int dividing in_channels={in_channels} and "
                f"out_channels={out_channels}; use groups=1 or groups=in_channels for depthwise"
            )
        self.conv = nn.Conv2d(in_channels, out_channels, (kh, kw), cstride, padding, cd, groups, bias,
                              padding_mode, device=device, dtype=dtype)
        self.gamma: nn.Parameter | None = None
        if layer_scale_init is not None:
            if isinstance(layer_scale_init, bool) or not isinstance(layer_scale_init, (int, float)):
                raise ValueError(f"{cls}: layer_scale_init={layer_scale_init!r} must be None or a number, e.g. 0.0")
            self.gamma = nn.Parameter(torch.full((in_channels,), float(layer_scale_init), device=device, dtype=dtype))

    # nn.Conv2d-like read-only attributes
    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.attn.kernel_size

    @property
    def stride(self):
        return self.conv.stride

    @property
    def padding(self):
        return self.conv.padding

    @property
    def dilation(self) -> tuple[int, int]:
        return self.attn.dilation

    @property
    def groups(self) -> int:
        return self.conv.groups

    @property
    def num_heads(self) -> int:
        return self.attn.num_heads

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    @property
    def bias(self):
        return self.conv.bias

    def _check_conv_fits(self, height: int, width: int) -> None:
        """The trailing convolution needs its padded input to hold one (dilated) kernel along each axis."""
        padding = self.conv.padding
        if padding == "same":
            return
        pad = (0, 0) if isinstance(padding, str) else padding  # the other string is "valid"
        for axis, size, k, d, p in (("H", height, self.conv.kernel_size[0], self.conv.dilation[0], pad[0]),
                                    ("W", width, self.conv.kernel_size[1], self.conv.dilation[1], pad[1])):
            reach = d * (k - 1) + 1
            if size + 2 * p < reach:
                raise ValueError(
                    f"MSAConv2d: input {axis}={size} padded by {p} on each side is smaller than the trailing "
                    f"convolution's kernel extent dilation*(kernel_size-1)+1 = {reach}; use inputs of at least "
                    f"{reach - 2 * p} pixels along {axis}, or more padding (e.g. padding=None pads to keep the size)"
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("MSAConv2d", x, self.in_channels, "in_channels")
        sh, sw = self.attn.attn_stride
        self._check_conv_fits((x.shape[-2] - 1) // sh + 1, (x.shape[-1] - 1) // sw + 1)
        a = self.attn(x)
        if a.shape[-2:] != x.shape[-2:]:  # attn_stride > 1: the residual is sampled at the queries
            x = x[:, :, ::sh, ::sw]
        if self.gamma is not None:
            a = a * self.gamma.view(1, -1, 1, 1)
        return self.conv(x + a)

    def extra_repr(self) -> str:
        a = self.attn
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={a.kernel_size}, stride={self.conv.stride}, "
             f"padding={self.conv.padding}, dilation={a.dilation}, num_heads={a.num_heads}, border={a.border!r}")
        if self.conv.dilation != a.dilation:
            s += f", conv_dilation={self.conv.dilation}"
        if self.conv.groups != 1:
            s += f", groups={self.conv.groups}"
        s += a.options_repr("attn_stride")
        if self.conv.bias is None:
            s += ", bias=False"
        return s


class MSAttention2d(nn.Module):
    """MSA-Conv as the token mixer of a transformer block: 1x1 qkv, window attention, 1x1 projection.

    NCHW in, NCHW out (the same size unless ``stride > 1``). ``num_heads=dim`` gives every channel its own
    attention weights (the depthwise form).

    TiC's two strategies (details ours; see :mod:`msaconv.layers.shift_pool`):

    - ``shift`` (MDCSM): None (off), True or ``'kv'`` (default reading: roll K and V of head groups in
      4 or 8 directions by a fraction of the map; q stays), ``'input'`` (alternative: roll channel groups of
      x before the qkv projection), a dict of :class:`~msaconv.layers.shift_pool.CyclicShift` fields
      (``mode, directions, fraction, local``) or a ``CyclicShift``.
    - ``inter_pool`` (IPM): None (off), True or ``'grid'`` (default reading: K and V average-pooled to a
      fixed grid and seen by every query as extra keys), ``'local'`` (alternative: stride-1 3x3 average of
      K and V before the window gather), a dict of :class:`~msaconv.layers.shift_pool.InterPool` fields
      (``mode, grid, kernel``) or an ``InterPool``.

    Both are resolution-free: shifts are fractions of the map, pooled grids are fixed grids.
    """

    def __init__(self, dim: int, num_heads: int = 1, kernel_size=7, dilation=1, stride=1, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, border: str = "zeros", scale: float | None = None,
                 backend: str | None = None, shift=None, inter_pool=None, device=None, dtype=None):
        super().__init__()
        cls = "MSAttention2d"
        sh = resolve_shift(cls, shift)
        ip = resolve_inter_pool(cls, inter_pool)
        self.attn = QKVAttention(cls, dim, num_heads, kernel_size, dilation, stride, border, attn_drop, qkv_bias,
                                  scale, backend, device, dtype, shift=sh, inter_pool=ip)
        _check_shift_heads(cls, sh, self.attn.num_heads)
        self.proj = Pointwise2d(dim, dim, device=device, dtype=dtype)
        self.proj_drop = nn.Dropout(check_probability(cls, "proj_drop", proj_drop))

    @property
    def dim(self) -> int:
        return self.attn.dim

    @property
    def num_heads(self) -> int:
        return self.attn.num_heads

    @property
    def shift(self) -> CyclicShift | None:
        return self.attn.shift

    @property
    def inter_pool(self) -> InterPool | None:
        return self.attn.inter_pool

    @property
    def head_dim(self) -> int:
        return self.attn.head_dim

    # The head-structured protocol of msaconv.layers.mixers._heads (used by the MoH and KDGQA wrappers):
    # forward(x) == merge_heads(attend_heads(*qkv_heads(x), x.shape[-2:])).
    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v ``[B, heads, head_dim, H, W]``."""
        return self.attn.qkv_heads(x)

    def attend_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """One output map per head, ``[B, heads, head_dim, H_out, W_out]`` (MDCSM and IPM included)."""
        return self.attn.attend_heads(q, k, v)

    def merge_heads(self, o: torch.Tensor) -> torch.Tensor:
        """The output projection of the concatenated heads ``o [B, heads, head_dim, H, W]`` -> ``[B, C, H, W]``."""
        B, h, D, H, W = o.shape
        return self.proj_drop(self.proj(o.reshape(B, h * D, H, W)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("MSAttention2d", x, self.dim)
        return self.proj_drop(self.proj(self.attn(x)))

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Weights ``[B, heads, H_out, W_out, K + M]`` of this mixer for input ``x``: K window slots, then
        the M pooled tokens of ``inter_pool='grid'`` (M = 0 otherwise)."""
        check_input("MSAttention2d", x, self.dim)
        return self.attn.attention_weights(x)

    def extra_repr(self) -> str:
        a = self.attn
        return (f"dim={a.dim}, num_heads={a.num_heads}, kernel_size={a.kernel_size}, dilation={a.dilation}, "
                f"border={a.border!r}" + a.options_repr("stride"))
