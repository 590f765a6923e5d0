"""Pictures of the analysis results (matplotlib, Agg backend: files, never windows)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_attention_distance(rows: Sequence, path: str | Path, title: str = "mean attention distance") -> Path:
    """One dot per head, layers along x (ConViT's figure); ``rows`` from :func:`mean_attention_distance`."""
    plt = _plt()
    layers = list(dict.fromkeys(r.layer for r in rows))
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(layers) + 2), 3.5))
    for i, layer in enumerate(layers):
        d = [r.distance_px for r in rows if r.layer == layer]
        ax.scatter([i] * len(d), d, s=14)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("distance (input pixels)")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_erf(erfs: Sequence, path: str | Path, title: str = "effective receptive field") -> Path:
    """One panel per stage (log scale), with the 50%-mass radius in the panel title."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(erfs), figsize=(2.6 * len(erfs), 2.8), squeeze=False)
    for ax, e in zip(axes[0], erfs):
        ax.imshow(torch.log10(e.map.float() + 1e-8).numpy(), cmap="magma")
        r = ", ".join(f"r{int(100 * s)}={v:.1f}" for s, v in e.radius.items())
        ax.set_title(f"{e.stage}\n{r}", fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_attention_map(image: torch.Tensor, maps: torch.Tensor, pixel: tuple[int, int], path: str | Path,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Path:
    """The image with each head's attention for ``pixel`` overlaid (one panel per head)."""
    import torch.nn.functional as F

    plt = _plt()
    img = image.detach().float().cpu()
    if mean is not None and std is not None:
        img = img * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    pixels = img.clamp(0, 1).permute(1, 2, 0).numpy()  # [H, W, 3] for imshow
    H, W = image.shape[-2:]
    up = F.interpolate(maps[None].float(), size=(H, W), mode="nearest")[0]
    heads = maps.shape[0]
    fig, axes = plt.subplots(1, heads, figsize=(2.2 * heads, 2.4), squeeze=False)
    for h, ax in enumerate(axes[0]):
        ax.imshow(pixels)
        ax.imshow(up[h].numpy(), cmap="jet", alpha=0.5)
        ax.scatter([pixel[1]], [pixel[0]], marker="x", c="white", s=30)
        ax.set_title(f"head {h}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
