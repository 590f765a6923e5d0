"""Deploying msaconv models: ONNX export with onnxruntime verification, and ``torch.export`` helpers.

``msa_conv2d`` exports as standard ONNX ops: at export time the ``msaconv::msa_conv2d`` custom op is
replaced by :func:`msaconv.ops.decomposed.msa_conv2d_decomposed` (aten gather + softmax), so no custom
ONNX domain is needed. See :mod:`msaconv.export.onnx` for which shapes stay dynamic.
"""

from __future__ import annotations

from ._decomp import adaptive_avg_pool2d_decomposition, export_decompositions
from .program import export_program
from .onnx import OnnxCheck, export_onnx, verify_onnx

__all__ = [
    "OnnxCheck",
    "adaptive_avg_pool2d_decomposition",
    "export_decompositions",
    "export_onnx",
    "export_program",
    "verify_onnx",
]
