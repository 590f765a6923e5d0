"""Exponential moving average of a model's weights, the copy evaluated in their place when ``ema_decay > 0``."""

from __future__ import annotations

import copy

import torch


class ModelEma:
    """Exponential moving average of the weights (buffers copied); ``module`` is evaluated in their place."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move every floating-point tensor a ``1 - decay`` step towards ``model``'s; copy the rest (counters)."""
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(self.decay).add_(src[k].detach(), alpha=1 - self.decay)
            else:
                v.copy_(src[k])
