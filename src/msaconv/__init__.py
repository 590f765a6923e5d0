"""msaconv: attention inside convolution for PyTorch (MSA-Conv, TiC, and a zoo of vision token mixers)."""

from __future__ import annotations

__version__ = "0.1.0"

from . import ops
from .ops import msa_conv2d, msa_conv2d_weights

__all__ = ["__version__", "msa_conv2d", "msa_conv2d_weights", "ops"]
