"""Modules: parameters and defaults over the functional ops."""

from .msa_conv import MSAConv2d, MSAttention2d

__all__ = ["MSAConv2d", "MSAttention2d"]
