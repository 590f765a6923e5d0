"""``halo``: blocked local self-attention with a halo and relative logits (HaloNet, Vaswani et al., CVPR'21).

Computation: ``q = W_q x``, ``k, v = W_kv x`` (1x1 convolutions). The map is cut into non-overlapping
``b x b`` query blocks; every query of a block attends to the same ``(b + 2h) x (b + 2h)`` window of keys
(the block grown by the halo ``h``). Logits are ``q.k / sqrt(d)`` plus factorised relative logits
``q . R_row[ky - y + win - 1] + q . R_col[kx - x + win - 1]`` (``y, x``: the query's place in its block,
``ky, kx``: the key's place in the window, ``win = b + 2h``; two tables of ``2 win - 1`` rows each).
Softmax over the window, weighted sum of v, blocks put back, then a 1x1 output projection (``proj=False``
drops it, as timm's ``HaloAttn`` which lives inside a bottleneck block).

Border (``border``): ``'mask'`` (default) masks every key outside the image -- the halo beyond the border
and the padding that rounds H, W up to multiples of ``b`` -- so a pixel's output depends only on real
pixels and not on how much padding was added. ``'zeros'`` is the paper's and timm's rule: keys outside
the image are zero vectors that still take softmax mass through their relative logit (at sizes that are
not multiples of ``b``, the rounding padding then also acts as zero keys). Deliberate default: ``'mask'``,
so that results do not depend on the block grid's padding; ``'zeros'`` exists to match timm.

Cost in N = H*W: ``O(N (b + 2h)^2 d)`` per head for logits and weighted sum (``4 N (b+2h)^2 C`` FLOPs), plus
``O(N (b+2h) d)`` for the relative logits and ``8 N C^2`` for the projections: linear in N. Neighbouring
pixels share one window, so it is cheaper than per-pixel windows but not translation-equivariant.

Not implemented: the paper's strided variant (queries subsampled), since the contract keeps the size.

New resolution: any H, W >= 1. Sizes that are not multiples of ``b`` are padded at the bottom/right and
cropped after, with the padded keys masked (``border='mask'``). The relative tables depend on ``b`` and
``h`` only, never on the image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import MultiHeadMixer, check_choice, check_input, check_int, pad_to_multiple

BORDERS = ("mask", "zeros")


class HaloAttention2d(MultiHeadMixer):
    """HaloNet blocked local attention as a ``[B, C, H, W] -> [B, C, H, W]`` token mixer.

    Fidelity: HaloNet (Vaswani et al., CVPR'21); the authors released no code, so this was compared
    with timm's ``timm/layers/halo_attn.py`` (``HaloAttn``), numerically (tested): matches with
    ``border='zeros', proj=False``. Differences kept by default: keys outside the image are masked
    (``border='mask'``, so outputs do not depend on the block grid's padding) and a 1x1 output projection
    (timm's module lives inside a bottleneck block that projects after it).
    """

    layout = "map"

    def __init__(self, dim: int, num_heads: int = 8, block_size: int = 8, halo_size: int = 3, qkv_bias: bool = False,
                 border: str = "mask", proj: bool = True, scale_pos_embed: bool = False, device=None, dtype=None):
        cls = "HaloAttention2d"
        super().__init__(cls, dim, num_heads)
        self.block_size = check_int(cls, "block_size", block_size)
        self.halo_size = check_int(cls, "halo_size", halo_size, minimum=0)
        self.border = check_choice(cls, "border", border, BORDERS)
        self.scale_pos_embed = bool(scale_pos_embed)
        self.win_size = self.block_size + 2 * self.halo_size
        dd = {"device": device, "dtype": dtype}
        self.q = self.qkv_layer(1, bias=qkv_bias, **dd)
        self.kv = self.qkv_layer(2, bias=qkv_bias, **dd)       # channels [k (all heads), v (all heads)]
        R = 2 * self.win_size - 1
        self.rel_height = nn.Parameter(torch.empty(R, self.head_dim, **dd))
        self.rel_width = nn.Parameter(torch.empty(R, self.head_dim, **dd))
        self.proj = self.proj_layer(**dd) if proj else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.dim ** -0.5  # fan-in, as timm
        nn.init.trunc_normal_(self.q.weight, std=std)
        nn.init.trunc_normal_(self.kv.weight, std=std)
        nn.init.trunc_normal_(self.rel_height, std=self.scale)
        nn.init.trunc_normal_(self.rel_width, std=self.scale)

    def _rel_index(self, device) -> torch.Tensor:
        """``[b, win]``: table row of (query place y in the block, key place ky in the window)."""
        y = torch.arange(self.block_size, device=device)[:, None]
        ky = torch.arange(self.win_size, device=device)[None, :]
        return ky - y + self.win_size - 1

    def _rel_logits(self, q: torch.Tensor) -> torch.Tensor:
        """``q [..., b, b, d]`` (rows y, cols x) -> relative logits ``[..., b*b, win*win]``."""
        b, win = self.block_size, self.win_size
        idx = self._rel_index(q.device)                                  # [b, win]
        ar = torch.arange(b, device=q.device)[:, None]
        lw = (q @ self.rel_width.t())[..., ar, idx]                      # [..., y, x, kx]
        lh = (q.transpose(-2, -3) @ self.rel_height.t())[..., ar, idx]   # [..., x, y, ky]
        lh = lh.transpose(-2, -3)                                        # [..., y, x, ky]
        rel = lh[..., :, None] + lw[..., None, :]                        # [..., y, x, ky, kx]
        return rel.reshape(*q.shape[:-3], b * b, win * win)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = check_input("HaloAttention2d", x, self.dim)
        b, hs, win, nh_, d = self.block_size, self.halo_size, self.win_size, self.num_heads, self.head_dim
        q = self.q(x)
        kv = self.kv(x)
        q, ph, pw = pad_to_multiple(q, b, b)
        kv, _, _ = pad_to_multiple(kv, b, b)
        Hp, Wp = H + ph, W + pw
        nbh, nbw = Hp // b, Wp // b
        # queries: [B, h, nbh, nbw, b, b, d]
        q = q.reshape(B, nh_, d, nbh, b, nbw, b).permute(0, 1, 3, 5, 4, 6, 2)
        # keys/values: windows of side win at stride b over the halo-padded map -> [B, 2, h, nbh, nbw, win*win, d]
        kv = F.pad(kv, (hs, hs, hs, hs))
        kv = kv.unfold(2, win, b).unfold(3, win, b)                      # [B, 2C, nbh, nbw, win, win]
        kv = kv.reshape(B, 2, nh_, d, nbh, nbw, win * win).permute(0, 1, 2, 4, 5, 6, 3)
        k, v = kv[:, 0], kv[:, 1]
        logits = q.reshape(B, nh_, nbh, nbw, b * b, d) @ k.transpose(-1, -2)  # [B, h, nbh, nbw, b*b, win*win]
        rel = self._rel_logits(q)
        logits = (logits + rel) * self.scale if self.scale_pos_embed else logits * self.scale + rel
        if self.border == "mask":
            valid = torch.ones(1, 1, H, W, device=x.device, dtype=x.dtype)
            valid = F.pad(valid, (hs, hs + pw, hs, hs + ph))
            valid = valid.unfold(2, win, b).unfold(3, win, b).reshape(1, 1, nbh, nbw, 1, win * win) > 0
            logits = logits.masked_fill(~valid, float("-inf"))
        attn = logits.softmax(dim=-1)
        out = attn @ v                                                    # [B, h, nbh, nbw, b*b, d]
        out = out.reshape(B, nh_, nbh, nbw, b, b, d).permute(0, 1, 6, 2, 4, 3, 5).reshape(B, C, Hp, Wp)
        return self.proj(out[:, :, :H, :W])

    def extra_repr(self) -> str:
        s = (f"dim={self.dim}, num_heads={self.num_heads}, block_size={self.block_size}, "
             f"halo_size={self.halo_size}, border={self.border!r}")
        if isinstance(self.proj, nn.Identity):
            s += ", proj=False"
        if self.scale_pos_embed:
            s += ", scale_pos_embed=True"
        return s


@register_token_mixer("halo", paper="HaloNet (Vaswani et al., CVPR'21)")
def halo(dim: int, num_heads: int = 1, **options) -> HaloAttention2d:
    return HaloAttention2d(dim, num_heads=num_heads, **options)
