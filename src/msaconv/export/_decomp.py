"""Export-time decompositions that keep image sizes symbolic.

- ``msaconv::msa_conv2d`` -> :func:`msaconv.ops.decomposed.msa_conv2d_op_decomposition` (gather + softmax);
- ``aten.adaptive_avg_pool2d`` / ``aten._adaptive_avg_pool2d`` -> two small averaging matrices built with
  ``arange`` on the symbolic sizes (``P_h @ x @ P_w^T``). torch's own decomposition (and the ONNX
  exporter's translation) turns an adaptive pool into an ``avg_pool2d`` whose kernel is read off the
  traced size, so an ONNX graph with dynamic H/W computes the wrong bins at any other size. The TiC
  models' IPM 'grid' pooling uses an adaptive pool.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..ops.decomposed import decomposition_table as _op_table


def _pool_matrix(length: Any, bins: Any, like: Tensor) -> Tensor:
    """``[bins, length]``: row i averages ``[floor(i*L/n), ceil((i+1)*L/n))`` (torch's adaptive-pool bins)."""
    i = torch.arange(bins, device=like.device)[:, None]  # [n, 1]
    y = torch.arange(length, device=like.device)[None, :]  # [1, L]
    start = torch.div(i * length, bins, rounding_mode="floor")
    end = torch.div((i + 1) * length + bins - 1, bins, rounding_mode="floor")
    inside = (y >= start) & (y < end)
    return inside.to(like.dtype) / (end - start).to(like.dtype)


def adaptive_avg_pool2d_decomposition(x: Tensor, output_size: Sequence[Any]) -> Tensor:
    """``F.adaptive_avg_pool2d`` as two matrix products; exact for any (symbolic) input size."""
    H, W = x.shape[-2], x.shape[-1]
    oh = H if output_size[0] is None else output_size[0]
    ow = W if output_size[1] is None else output_size[1]
    ph = _pool_matrix(H, oh, x)  # [oh, H]
    pw = _pool_matrix(W, ow, x)  # [ow, W]
    return ph @ x @ pw.t()  # [..., oh, ow]


def export_decompositions() -> dict[Any, Callable[..., Any]]:
    """The decomposition table the exporters use: torch's defaults plus the two above."""
    table: dict[Any, Callable[..., Any]] = dict(torch.export.default_decompositions())
    table.update(_op_table())
    table[torch.ops.aten.adaptive_avg_pool2d.default] = adaptive_avg_pool2d_decomposition
    table[torch.ops.aten._adaptive_avg_pool2d.default] = adaptive_avg_pool2d_decomposition
    return table
