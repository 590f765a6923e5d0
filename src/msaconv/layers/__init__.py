"""Modules: parameters and defaults over the functional ops."""

from .msa_conv import MSAConv2d, MSAttention2d
from .pointwise import Pointwise2d
from .registry import get_token_mixer, list_token_mixers, register_token_mixer

__all__ = ["MSAConv2d", "MSAttention2d", "Pointwise2d", "get_token_mixer", "list_token_mixers", "register_token_mixer"]
