"""BatchNorm with one set of running statistics per map size: the normalisation of multi-size training.

A network trained on several image sizes sees, in each BatchNorm, feature statistics that depend on the
size (a 24-px image's maps have other means and variances than a 40-px image's). ``nn.BatchNorm2d`` keeps
one exponential average over whatever sizes the last batches had, so the statistics a model is evaluated
with are those of the last few batches' random sizes: the main job lost 3.3 points at 32 px to that
(``msaconv eval --bn-recalibrate`` recovered them, docs/main_job.md). :class:`SizeBatchNorm2d` keeps, beside
the usual running statistics, one set per map size it trained at (as resolution-switchable networks keep a
private BatchNorm per resolution; here the affine weights stay shared, so the weights are the same model
at every size) and normalises an evaluation batch with the set of the nearest trained size.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn


class SizeBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that also keeps running statistics for each of up to ``slots`` input map sizes.

    Training: normalises with the batch's statistics, exactly as ``nn.BatchNorm2d``, and updates the
    running statistics of the batch's map size ``(H, W)`` (a free slot is given to a new size; a new size
    with every slot taken is an error naming the sizes held) and the shared ``running_mean`` /
    ``running_var`` (which stay what ``nn.BatchNorm2d`` would hold, so a state dict loads into either).
    Evaluation: normalises with the statistics of the trained size nearest to the input's (by the ratio of
    areas; ties go to the larger size), or with the shared statistics while no slot has trained.
    With one training size it computes what ``nn.BatchNorm2d`` computes.

    ``momentum=None`` (a cumulative average, as ``torch.optim.swa_utils.update_bn`` sets for a re-estimate)
    averages each slot over its own batches. :meth:`reset_running_stats` clears the slots too.
    """

    if TYPE_CHECKING:  # buffers, declared for the type checker only (TorchScript reads class annotations)
        slot_hw: torch.Tensor  # [slots, 2] map size (H, W) of each slot (0, 0: free)
        slot_mean: torch.Tensor  # [slots, C]
        slot_var: torch.Tensor  # [slots, C]
        slot_batches: torch.Tensor  # [slots] training batches each slot has averaged (0: free)
        running_mean: torch.Tensor  # always tracked here (nn.BatchNorm2d types them Optional)
        running_var: torch.Tensor
        num_batches_tracked: torch.Tensor

    def __init__(self, num_features: int, slots: int, eps: float = 1e-5, momentum: float | None = 0.1):
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"SizeBatchNorm2d: slots={slots!r} is not a positive int; use the number of training "
                             "sizes (e.g. 3 for --train-sizes 24,32,40), or nn.BatchNorm2d for one size")
        if momentum is not None and (not isinstance(momentum, float) or not 0.0 < momentum <= 1.0):
            raise ValueError(f"SizeBatchNorm2d: momentum={momentum!r} must be a float in (0, 1] or None, e.g. 0.1")
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.slots = slots
        self.register_buffer("slot_hw", torch.zeros(slots, 2, dtype=torch.long))
        self.register_buffer("slot_mean", torch.zeros(slots, num_features))
        self.register_buffer("slot_var", torch.ones(slots, num_features))
        self.register_buffer("slot_batches", torch.zeros(slots, dtype=torch.long))

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if hasattr(self, "slot_hw"):  # BatchNorm's __init__ calls this before the slots exist
            self.slot_hw.zero_()
            self.slot_mean.zero_()
            self.slot_var.fill_(1.0)
            self.slot_batches.zero_()

    def trained_sizes(self) -> list[tuple[int, int]]:
        """The map sizes ``(H, W)`` that hold statistics, in slot order."""
        return [(int(h), int(w)) for (h, w), n in zip(self.slot_hw.tolist(), self.slot_batches.tolist()) if n > 0]

    def _train_slot(self, h: int, w: int) -> int:
        free = -1
        for i in range(self.slots):
            if int(self.slot_batches[i]) == 0:
                if free < 0:
                    free = i
            elif int(self.slot_hw[i, 0]) == h and int(self.slot_hw[i, 1]) == w:
                return i
        if free < 0:
            held: list[list[int]] = self.slot_hw.tolist()
            names = ", ".join([f"{a}x{b}" for a, b in held])
            raise RuntimeError(f"SizeBatchNorm2d: a training batch of map size {h}x{w}, but all {self.slots} slots "
                               f"hold other sizes ({names}); build the model with as many slots as "
                               "training sizes (size_bn=N in the model's config)")
        self.slot_hw[free, 0] = h
        self.slot_hw[free, 1] = w
        return free

    def _eval_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (mean, var) an evaluation batch is normalised with: the trained slot nearest in log-area (a tie
        goes to the larger size), else the shared statistics. Tensor operations only, so that ``torch.export``
        and TorchScript keep the choice as a graph over the input's (possibly symbolic) size."""
        area = torch.ones((), dtype=torch.float64, device=x.device) * (x.shape[-2] * x.shape[-1])
        slot_area = (self.slot_hw[:, 0] * self.slot_hw[:, 1]).to(torch.float64).clamp_min(1.0)
        dist = (slot_area.log() - area.log()).abs() - 1e-9 * slot_area.log()
        dist = torch.where(self.slot_batches > 0, dist, torch.full_like(dist, math.inf))
        dist = torch.cat([dist, torch.full_like(dist[:1], 1e30)])  # the shared statistics: the last resort
        i = torch.argmin(dist).view(1)  # index_select, not [i]: no .item(), so meta tensors and export trace it
        return (torch.cat([self.slot_mean, self.running_mean[None]]).index_select(0, i)[0],
                torch.cat([self.slot_var, self.running_var[None]]).index_select(0, i)[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch._assert, not `if ...: raise`: torch.fx traces it (the layer is no leaf of plain symbolic_trace)
        torch._assert(x.dim() == 4, "SizeBatchNorm2d: expected a 4-D (N, C, H, W) input")
        if self.training:
            i = self._train_slot(int(x.shape[-2]), int(x.shape[-1]))
            n_slot, n_all = int(self.slot_batches[i]) + 1, int(self.num_batches_tracked) + 1
            f_slot = float(self.momentum) if self.momentum is not None else 1.0 / n_slot
            f_all = float(self.momentum) if self.momentum is not None else 1.0 / n_all
            old_mean, old_var = self.slot_mean[i].clone(), self.slot_var[i].clone()
            y = F.batch_norm(x, self.slot_mean[i], self.slot_var[i], self.weight, self.bias, True, f_slot, self.eps)
            with torch.no_grad():
                # the slot moved by f_slot * (batch - old): the batch's statistics, for the shared average
                self.running_mean.add_(old_mean + (self.slot_mean[i] - old_mean) / f_slot - self.running_mean,
                                       alpha=f_all)
                self.running_var.add_(old_var + (self.slot_var[i] - old_var) / f_slot - self.running_var, alpha=f_all)
                self.slot_batches[i] += 1
                self.num_batches_tracked += 1
            return y
        mean, var = self._eval_stats(x)
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", slots={self.slots}"
