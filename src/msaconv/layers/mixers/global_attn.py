"""``global``: multi-head self-attention over all H*W tokens (ViT, Dosovitskiy et al. 2021; DHVT head tokens, NeurIPS'22).

Computation: ``q, k, v = W_qkv x`` (a 1x1 convolution), per head ``softmax(q k^T / sqrt(d)) v`` through
``F.scaled_dot_product_attention``, heads concatenated, then a 1x1 output projection.

``head_token=True`` adds DHVT's head tokens (Lu et al., "Bridging the Gap Between Vision Transformers and
Convolutional Neural Networks on Small Datasets", NeurIPS 2022): for every head ``i`` the mean over tokens
of that head's channel chunk ``x_i`` (d channels) goes through a shared ``Linear(d -> C)``, is viewed as
``h`` chunks of ``d``, LayerNorm(d), GELU, flattened back to C and added to a learned embedding; the ``h``
resulting tokens join the sequence, so every head of every pixel also attends to a summary of every
channel group. Deliberate difference: DHVT merges the head tokens' *outputs* into the CLS token and drops
them; this contract has no CLS token, so the head tokens act as extra keys and values only (their queries
would only feed the CLS token and are skipped).

Cost in N = H*W: ``O(N^2 C)`` time for the logits and the weighted sum (``4 N^2 C`` FLOPs) plus
``8 N C^2`` for the projections; SDPA keeps memory at ``O(N C)`` when a fused kernel runs, the math
fallback needs ``O(h N^2)``. With head tokens, ``N`` keys become ``N + h``.

New resolution: nothing to change; there is no positional term here (a model adds its own).

Head-structured: implements ``qkv_heads`` / ``attend_heads`` / ``merge_heads``
(see :mod:`msaconv.layers.mixers._heads`), so ``moh`` and ``kdgqa`` can wrap it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import MultiHeadMixer, check_input, check_probability


class GlobalAttention2d(MultiHeadMixer):
    """Multi-head self-attention on a ``[B, C, H, W]`` map (optionally with DHVT head tokens).

    Fidelity: ViT MHSA (Dosovitskiy et al., ICLR'21) compared with google-research/vision_transformer
    ``vit_jax/models_vit.py`` (flax multi-head attention with biased q, k, v): matches. Head tokens:
    DHVT (Lu et al., NeurIPS'22) compared with the authors' ArieSeirack/DHVT ``vision_transformer.py``
    (``HI_Attention``): the tokens match (per-head channel means, shared Linear, LayerNorm, GELU, learned
    embedding); one difference kept: they act as extra keys and values only, where DHVT also runs their
    queries and adds their mean output to the CLS token (this contract has no CLS token).
    """

    layout = "map"

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, scale: float | None = None, head_token: bool = False,
                 device=None, dtype=None):
        cls = "GlobalAttention2d"
        super().__init__(cls, dim, num_heads, scale=scale, attn_drop=attn_drop)
        if not isinstance(head_token, bool):
            raise ValueError(f"{cls}: head_token must be True or False, got {head_token!r}")
        self.head_token = head_token
        dd = {"device": device, "dtype": dtype}
        self.qkv = self.qkv_layer(bias=qkv_bias, **dd)
        self.proj = self.proj_layer(**dd)
        self.proj_drop = nn.Dropout(check_probability(cls, "proj_drop", proj_drop))
        if head_token:
            self.ht_proj = nn.Linear(self.head_dim, dim, **dd)
            self.ht_norm = nn.LayerNorm(self.head_dim, **dd)
            self.ht_embed = nn.Parameter(torch.zeros(1, self.num_heads, dim, **dd))
            nn.init.trunc_normal_(self.ht_embed, std=0.02)

    # --- the head-structured protocol -------------------------------------------------------------
    def head_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """DHVT head tokens ``[B, h, C]`` for ``x [B, C, H, W]``."""
        B, C, H, W = x.shape
        h, d = self.num_heads, self.head_dim
        m = x.reshape(B, h, d, H * W).mean(-1)                      # [B, h, d]: per-head channel-group means
        t = self.ht_proj(m).reshape(B, h, h, d)                     # [B, h, h, d]
        t = F.gelu(self.ht_norm(t)).reshape(B, h, C)                # [B, h, C]
        return t + self.ht_embed

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q ``[B, h, N, d]``; k, v ``[B, h, N (+h head tokens), d]``."""
        C = x.shape[1]
        q, k, v = self.split_map_heads(self.qkv(x), 3)                 # [B, h, N, d] each
        if self.head_token:
            t = self.head_tokens(x)                                  # [B, h_tok, C]
            w, b = self.qkv.weight[C:, :, 0, 0], None if self.qkv.bias is None else self.qkv.bias[C:]
            k_t, v_t = self.split_heads(F.linear(t, w, b), 2)        # [B, h, h_tok, d] each
            k = torch.cat([k, k_t], dim=2)
            v = torch.cat([v, v_t], dim=2)
        return q, k, v

    def attend_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Per-head attention output ``[B, h, d, H, W]``."""
        H, W = size
        o = self.sdpa(q, k, v)                                          # [B, h, N, d]
        return o.transpose(-1, -2).reshape(o.shape[0], o.shape[1], o.shape[-1], H, W)

    def merge_heads(self, o: torch.Tensor) -> torch.Tensor:
        B, h, d, H, W = o.shape
        return self.proj_drop(self.proj(o.reshape(B, h * d, H, W)))

    # --- module -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("GlobalAttention2d", x, self.dim)
        return self.merge_heads(self.attend_heads(*self.qkv_heads(x), (x.shape[-2], x.shape[-1])))

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, h, N, N(+h)]`` attention weights (explicit softmax, for analysis)."""
        check_input("GlobalAttention2d", x, self.dim)
        q, k, _ = self.qkv_heads(x)
        return torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)

    def extra_repr(self) -> str:
        s = f"dim={self.dim}, num_heads={self.num_heads}"
        if self.head_token:
            s += ", head_token=True"
        if self.attn_drop:
            s += f", attn_drop={self.attn_drop}"
        if self.sdpa_scale is not None:
            s += f", scale={self.sdpa_scale}"
        return s


@register_token_mixer("global", paper="ViT MHSA (ICLR'21); head_token: DHVT (NeurIPS'22)")
def global_attention(dim: int, num_heads: int = 1, **options) -> GlobalAttention2d:
    return GlobalAttention2d(dim, num_heads=num_heads, **options)
