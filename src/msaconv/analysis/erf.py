"""Effective receptive field (ERF): how far the input reaches an output pixel, measured by gradients.

For each chosen stage, the ERF is ``mean over images of |d (sum_c f[c, yc, xc]) / d image|`` summed over
the colour channels, where ``(yc, xc)`` is the centre of that stage's feature map (Luo et al. 2016's
measure, as used by RepLKNet). The radius that holds a given share of the ERF's mass summarises it in
one number per stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ERF:
    stage: str
    map: torch.Tensor  # [H, W] float64, sums to 1
    radius: dict[float, float] = field(default_factory=dict)  # mass share -> radius in image pixels


def mass_radius(erf: torch.Tensor, share: float) -> float:
    """Smallest radius r (Euclidean, image pixels, from the map centre) whose disc holds ``share`` of the mass."""
    H, W = erf.shape
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    r = torch.sqrt((yy - (H - 1) / 2) ** 2 + (xx - (W - 1) / 2) ** 2).flatten()
    order = torch.argsort(r)
    cum = torch.cumsum(erf.flatten().double()[order], 0)
    total = float(cum[-1])
    if total <= 0:
        return float("nan")
    idx = int(torch.searchsorted(cum, torch.tensor(share * total, dtype=torch.float64)).clamp(max=len(r) - 1))
    return float(r[order][idx])


def stage_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The stages to probe: from timm-style ``feature_info`` (``module`` names) when the model has it."""
    info = getattr(model, "feature_info", None)
    names = []
    if info is not None:
        for entry in (info if isinstance(info, (list, tuple)) else getattr(info, "info", [])):
            name = entry.get("module") if isinstance(entry, dict) else None
            if name:
                names.append(name)
    if not names:
        raise ValueError(
            f"effective_receptive_field: {type(model).__name__} has no feature_info with module names; "
            f"pass stages={{name: module}} explicitly"
        )
    modules = dict(model.named_modules())
    return {n: modules[n] for n in names if n in modules}


def effective_receptive_field(model: nn.Module, images: torch.Tensor, stages: dict[str, nn.Module] | None = None,
                              shares: tuple[float, ...] = (0.5, 0.9)) -> list[ERF]:
    """ERF of each stage over a batch ``images [B, 3, H, W]`` (one backward pass per stage)."""
    stages = stage_modules(model) if stages is None else stages
    was_training = model.training
    model.eval()
    results = []
    try:
        for name, module in stages.items():
            captured: dict[str, torch.Tensor] = {}
            hook = module.register_forward_hook(lambda m, a, out: captured.__setitem__("f", out))
            x = images.detach().clone().requires_grad_(True)
            try:
                model(x)
            finally:
                hook.remove()
            f = captured["f"]
            if f.dim() != 4:
                raise ValueError(f"effective_receptive_field: stage {name!r} gives shape {tuple(f.shape)}, not [B, C, H, W]")
            yc, xc = f.shape[-2] // 2, f.shape[-1] // 2
            (grad,) = torch.autograd.grad(f[:, :, yc, xc].sum(), x)
            erf = grad.abs().sum(dim=1).mean(dim=0).double()  # [H, W]
            total = erf.sum()
            erf = erf / total if total > 0 else erf
            results.append(ERF(name, erf, {s: mass_radius(erf, s) for s in shares}))
    finally:
        model.train(was_training)
    return results
