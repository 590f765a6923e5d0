"""msaconv: attention inside convolution for PyTorch (MSA-Conv, TiC, and a zoo of vision token mixers)."""

from __future__ import annotations

__version__ = "0.1.0"

from . import ops
from .ops import msa_conv2d, msa_conv2d_weights
from . import models
from .models import create_model, list_models, list_pretrained, register_model

__all__ = ["__version__", "create_model", "list_models", "list_pretrained", "models", "msa_conv2d",
           "msa_conv2d_weights", "ops", "register_model"]
