"""Head importance: what the loss and accuracy lose when one attention head is silenced.

Two measures, after the visual-analytics paper of the seed page (Michel et al.-style):

- **masking**: zero head ``h``'s output (before the output projection) in one layer, evaluate, and report
  the drop in top-1 and the rise in loss against the unmasked model;
- **gradient** (cheap): a gate ``xi_h = 1`` multiplies each head's output; ``|dL/dxi_h|`` summed over the
  data is the first-order estimate of the loss change when the head is removed.

Heads are those of every :class:`~msaconv.layers.MSAttention2d` (its ``attn`` core returns the heads
concatenated along channels, head ``h`` at channels ``[h*D, (h+1)*D)``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import NO_WEIGHTS, attention_mixers


@dataclass
class HeadImportance:
    layer: str
    head: int
    top1_drop: float  # percentage points lost when the head is masked
    loss_rise: float
    grad_importance: float  # |dL/d gate|, summed over the data

    def as_dict(self) -> dict:
        return asdict(self)


@contextmanager
def _gate(core: nn.Module, num_heads: int, gate: torch.Tensor):
    """Multiply the heads of ``core``'s output ``[B, heads*D, H, W]`` by ``gate [heads]``."""

    def hook(module, args, out):
        B, C, H, W = out.shape
        return (out.view(B, num_heads, C // num_heads, H, W) * gate.view(1, num_heads, 1, 1, 1).to(out)).view(B, C, H, W)

    handle = core.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _evaluate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    correct = total = 0
    loss = 0.0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            total += len(y)
    return 100.0 * correct / total, loss / total


def head_importance(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[HeadImportance]:
    """Masking and gradient importance of every head of every MSA-Conv mixer of ``model``."""
    batches = list(batches)
    if not batches:
        raise ValueError("head_importance: no data; pass at least one (images, labels) batch")
    mixers = attention_mixers(model)
    if not mixers:
        raise ValueError(f"head_importance: {type(model).__name__} has no multi-head MSA-Conv mixer ({NO_WEIGHTS})")
    was_training = model.training
    model.eval()
    rows = []
    try:
        base_top1, base_loss = _evaluate(model, batches)
        for name, mixer in mixers.items():
            core, heads = mixer.attn, mixer.num_heads
            # gradient importance: one pass with a differentiable gate of ones
            gate = torch.ones(heads, requires_grad=True)
            with _gate(core, heads, gate):
                for x, y in batches:
                    F.cross_entropy(model(x), y, reduction="sum").backward()
            grads = gate.grad.abs().tolist() if gate.grad is not None else [0.0] * heads  # None: no head was reached
            model.zero_grad(set_to_none=True)
            for h in range(heads):
                mask = torch.ones(heads)
                mask[h] = 0
                with _gate(core, heads, mask):
                    top1, loss = _evaluate(model, batches)
                rows.append(HeadImportance(name, h, base_top1 - top1, loss - base_loss, grads[h]))
    finally:
        model.train(was_training)
    return rows
