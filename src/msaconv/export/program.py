"""``torch.export`` of an image model with dynamic batch, height and width."""

from __future__ import annotations

import torch
from torch import nn


def export_program(model: nn.Module, example: torch.Tensor, dynamic: bool = True,
                   decompose: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.export(model, (example,))`` with batch, H and W marked dynamic (``dynamic=True``).

    The graph keeps ``msaconv::msa_conv2d`` as one node (its fake implementation gives the shapes);
    ``decompose=True`` then lowers it, and every other op, with :func:`export_decompositions`, to core
    aten ops that keep the sizes symbolic (what the ONNX export uses). Sizes the model itself turns into
    Python ints are specialised by torch.export (see the report of :func:`msaconv.export.export_onnx`).
    """
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        shape = tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__
        raise ValueError(f"export_program: example must be a [B, C, H, W] tensor, got {shape}; "
                         f"pass e.g. torch.randn(2, 3, 32, 32)")
    dyn = None
    if dynamic:
        d = torch.export.Dim.DYNAMIC
        dyn = ({0: d, 2: d, 3: d},)
    ep = torch.export.export(model, (example,), dynamic_shapes=dyn)
    if decompose:
        from ._decomp import export_decompositions

        ep = ep.run_decompositions(export_decompositions())
    return ep
