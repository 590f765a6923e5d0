"""An experiment-only model: ``vit_nano_abspe``, the classic failure case of "any resolution".

``vit_nano_global`` (msaconv.models.hier) encodes positions with a depthwise conv (``pos_conv``), which
works at any size. The textbook ViT instead adds a *learned absolute* position embedding of the training
grid and, at another size, interpolates it (timm's ``resample_abs_pos_embed``, bicubic). This is that
model: vit_nano_global's body without ``pos_conv``, plus an 8x8 (at 32 px) learned embedding after the
patch stem, bicubically resized to the token grid of any other input size.

Registered into msaconv's model registry on import (the experiments import this module before they
train or load it).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..models import HierNet, build_model, register_model
from ..models.hier import VARIANTS, pretrained_cfg_for

CFG = replace(VARIANTS["vit_nano_global"], pos_conv=False)


class AbsPosViT(HierNet):
    """:class:`HierNet` with a learned absolute position embedding, interpolated (bicubic) at other sizes."""

    def __init__(self, cfg):
        super().__init__(cfg)
        side = cfg.stage_sizes(cfg.img_size)[0]
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.dims[0], side, side))  # [1, C, h, w] at img_size
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)  # [B, C, h, w]
        pe = self.pos_embed
        if pe.shape[-2:] != x.shape[-2:]:
            pe = F.interpolate(pe, size=tuple(x.shape[-2:]), mode="bicubic", align_corners=False)
        return self.stages(x + pe)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"pos_embed"}


default_cfgs = {"vit_nano_abspe": pretrained_cfg_for(CFG, description="vit_nano_global with a learned absolute "
                                                      "position embedding (interpolated at other sizes)")}


def vit_nano_abspe(pretrained: bool = False, **kwargs) -> nn.Module:
    """vit_nano_global with a learned, interpolated absolute position embedding instead of pos_conv."""
    return build_model(AbsPosViT, "vit_nano_abspe", CFG, pretrained, **kwargs)


def ensure_registered() -> None:
    from ..models import is_model

    if not is_model("vit_nano_abspe"):
        register_model(vit_nano_abspe)


ensure_registered()
