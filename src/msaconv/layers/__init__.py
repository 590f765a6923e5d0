"""Modules: parameters and defaults over the functional ops."""

from .msa_conv import MSAConv2d, MSAttention2d
from .pointwise import Pointwise2d
from .size_norm import SizeBatchNorm2d
from .registry import get_token_mixer, list_token_mixers, register_token_mixer, token_mixer_paper
from .mixers.moh import MOH_LOAD_BALANCE_WEIGHT, auxiliary_losses

__all__ = ["MOH_LOAD_BALANCE_WEIGHT", "MSAConv2d", "MSAttention2d", "Pointwise2d", "SizeBatchNorm2d", "auxiliary_losses",
           "get_token_mixer", "list_token_mixers", "register_token_mixer", "token_mixer_paper"]
