"""Learning rate as a pure function of the optimizer step (so the schedule's state is just the step)."""

from __future__ import annotations

import math


def lr_at(step: int, schedule: str, peak: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR for optimizer step ``step`` (0-based): linear warm-up to ``peak``, then the named decay.

    - ``cosine``: half cosine from peak to ``min_ratio * peak``;
    - ``onecycle``: linear decay from peak to ``min_ratio * peak`` (a triangle with the warm-up);
    - ``step``: x0.1 at 50% and 75% of the steps after warm-up;
    - ``constant``: peak after warm-up.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    lo = peak * min_ratio
    if schedule == "cosine":
        return lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "onecycle":
        return lo + (peak - lo) * (1 - t)
    if schedule == "step":
        return peak * (0.1 ** ((t >= 0.5) + (t >= 0.75)))
    return peak
