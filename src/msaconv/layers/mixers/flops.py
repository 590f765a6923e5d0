"""FLOP counting for token mixers with ``torch.utils.flop_counter.FlopCounterMode``, and what it misses.

``FlopCounterMode`` counts matmuls, convolutions and the GPU attention kernels. Two gaps matter here:

* on CPU, ``F.scaled_dot_product_attention`` runs ``aten._scaled_dot_product_flash_attention_for_cpu``,
  which torch's table does not list; :data:`EXTRA_FORMULAS` adds it (``2 L S E + 2 L S Ev`` per batch-head,
  the two matmuls, as torch counts its GPU kernels);
* anything else heavy that the table does not know -- FFTs, a custom operator such as an ``msaconv::``
  kernel before its formula is registered -- is not counted. :func:`count_flops` records every operator
  that ran and returns the heavy ones it could not count, so a table can say so instead of printing a
  silently low number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    *batch, L, E = query_shape
    S, Ev = key_shape[-2], value_shape[-1]
    b = math.prod(batch)
    return 2 * b * L * S * E + 2 * b * L * S * Ev


EXTRA_FORMULAS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    EXTRA_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flop

# operator-name fragments of work that is O(N C) or more per call and that a MAC table should include
_HEAVY = ("fft", "conv", "mm", "attention", "matmul", "linear", "einsum")


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


@dataclass
class FlopReport:
    flops: int
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)   # heavy operators that ran but were not counted

    @property
    def macs(self) -> float:
        return self.flops / 2


def count_flops(module: torch.nn.Module, *inputs) -> FlopReport:
    """Run ``module(*inputs)`` once under ``FlopCounterMode`` (plus :data:`EXTRA_FORMULAS`)."""
    rec = _Recorder()
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as fc, rec:
        module(*inputs)
    counts = fc.get_flop_counts().get("Global", {})
    known = set(fc.flop_registry)
    uncounted = sorted(
        str(op) for op in rec.ops
        if op not in known and (not str(op).startswith("aten.") or any(h in str(op) for h in _HEAVY))
    )
    return FlopReport(int(fc.get_total_flops()), {str(k): int(v) for k, v in counts.items()}, uncounted)
