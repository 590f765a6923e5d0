"""ONNX export of msaconv models (standard ops only) and a check of the file against PyTorch.

How: ``torch.export.export`` with dynamic batch/H/W -> ``run_decompositions`` with
:func:`msaconv.export.export_decompositions` (the ``msa_conv2d`` custom op becomes gather + softmax; the
adaptive pool becomes size-exact matrices) -> ``torch.onnx.export`` of that program (dynamo exporter,
opset >= 18). The decomposition builds its window tables from the symbolic H and W for all four border
modes (zeros, mask, clamp, circular), strides, dilations and extra keys, so the op itself never fixes a
size. A model can still fix sizes: a range guard (a window that must fit) becomes a range constraint,
returned by :func:`export_onnx`; but a comparison the model's Python decides on a size is baked into the
graph as the traced outcome. The TiC models' IPM grid clamp ``min(grid, H_stage)``
(``layers/shift_pool.py``) is such a case: a stage map smaller than the grid at the traced size keeps the
map size (symbolic), a larger one keeps the constant grid, and the file is exact while every stage stays
on its traced side (or equals the grid). Traced at the default 224 px, tic_tiny is exact for inputs whose
last stage is at least 4 px (about 97 px and up); traced at 64 px, at 64 to 128 px (the last stage at 2
to 4 px; tested). :func:`verify_onnx` is the judge: it runs onnxruntime at given sizes.

Cost: the model is traced with symbolic sizes three times (``torch.export``, ``run_decompositions``, the
ONNX exporter's own decomposition pass), then onnxscript optimises the graph; the symbolic arithmetic of
the gather tables and pool matrices dominates, and takes minutes for tic_tiny on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .program import export_program

MIN_OPSET = 18


@dataclass
class OnnxCheck:
    """One verification run: the input shape and the largest absolute difference to PyTorch."""

    shape: tuple[int, ...]
    max_abs_diff: float


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote: the path, opset and the symbolic-size ranges torch.export kept."""

    path: Path
    opset: int
    dynamic: bool
    input_name: str
    constraints: dict[str, tuple[int, int | None]] = field(default_factory=dict)


def _as_int(bound: Any) -> int | None:
    """A sympy range bound as an int, None when unbounded (torch's ``int_oo``)."""
    try:
        return int(bound)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None


def export_onnx(model: nn.Module, path: str | Path, img_size: Sequence[int] = (224, 224), batch: int = 2,
                in_chans: int = 3, dynamic: bool = True, opset: int = MIN_OPSET) -> OnnxExport:
    """Write ``model`` (put in eval mode) to ``path`` as ONNX with standard ops only."""
    if opset < MIN_OPSET:
        raise ValueError(f"export_onnx: opset must be >= {MIN_OPSET}, got {opset}; use opset={MIN_OPSET}")
    if len(img_size) != 2 or min(img_size) < 1:
        raise ValueError(f"export_onnx: img_size must be (H, W) with positive ints, got {tuple(img_size)}; "
                         f"use e.g. img_size=(224, 224)")
    if batch < 1 or (dynamic and batch < 2):
        raise ValueError(f"export_onnx: batch must be >= {2 if dynamic else 1}, got {batch} (a dynamic "
                         f"batch of 1 would be specialised by torch.export); use batch=2")
    model = model.eval()
    example = torch.randn(batch, in_chans, *img_size)
    with torch.no_grad():
        ep = export_program(model, example, dynamic=dynamic, decompose=True)
    onx = torch.onnx.export(ep, (example,), dynamo=True, opset_version=opset, optimize=True, verbose=False)
    if onx is None:  # only the legacy (dynamo=False) exporter returns None
        raise RuntimeError("export_onnx: torch.onnx.export returned no program")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onx.save(str(out))
    constraints = {str(s): (_as_int(r.lower) or 0, _as_int(r.upper)) for s, r in ep.range_constraints.items()}
    names = [str(i.name) for i in onx.model.graph.inputs]
    return OnnxExport(out, opset, dynamic, names[0], constraints)


def verify_onnx(model: nn.Module, path: str | Path, shapes: Sequence[Sequence[int]], seed: int = 0,
                threads: int | None = None) -> list[OnnxCheck]:
    """Run the ONNX file with onnxruntime on random inputs of each shape; compare with ``model`` (eval)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    model = model.eval()
    checks = []
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {name: x.numpy()})[0]
        if got.shape != ref.shape:
            raise ValueError(f"verify_onnx: output shape {got.shape} differs from PyTorch's {ref.shape} at "
                             f"input {tuple(shape)}; re-export with dynamic=True or at this size")
        checks.append(OnnxCheck(tuple(int(s) for s in shape), float(np.abs(got - ref).max())))
    return checks
