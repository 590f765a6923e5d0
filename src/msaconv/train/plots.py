"""PNG plots of a run, made from its ``metrics.jsonl`` (never from numbers typed by hand)."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: str | Path) -> list[dict]:
    out = []
    p = Path(run_dir) / "metrics.jsonl"
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _save(plt, fig, axes, path: Path) -> Path:
    """Finish a figure (a grid and a legend on each of its ``axes``, a tight layout) and write it as a PNG."""
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``curves.png`` (loss and accuracy vs epoch) and ``resolution.png`` (top-1 vs evaluation size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    recs = read_metrics(run_dir)
    run = next((r for r in recs if r.get("type") == "run"), {})
    title = f"{run.get('model', '')} ({run.get('params', 0) / 1e6:.2f}M params)" if run else run_dir.name
    tr = [r for r in recs if r.get("type") == "train"]
    va = [r for r in recs if r.get("type") == "val"]
    fin = sorted((r for r in recs if r.get("type") == "final"), key=lambda r: r["img_size"])

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    if tr:
        a1.plot([r["epoch"] for r in tr], [r["loss"] for r in tr], label="train loss (incl. label smoothing)")
        a2.plot([r["epoch"] for r in tr], [r["acc"] for r in tr], label="train accuracy (augmented)")
    if va:
        n = f" ({va[-1]['images']:,} images)" if va[-1].get("images") else ""
        a1.plot([r["epoch"] for r in va], [r["loss"] for r in va], "o-", label=f"val loss{n}")
        a2.plot([r["epoch"] for r in va], [r["top1"] for r in va], "o-", label=f"val top-1{n}")
        a2.plot([r["epoch"] for r in va], [r["top5"] for r in va], "s--", label="val top-5", alpha=0.6)
    a1.set_xlabel("epoch")
    a1.set_ylabel("cross-entropy")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy (%)")
    fig.suptitle(title)
    written = [_save(plt, fig, (a1, a2), run_dir / "curves.png")]

    if fin:
        fig, a = plt.subplots(figsize=(5, 4))
        sizes = [r["img_size"] for r in fin]
        a.plot(sizes, [r["top1"] for r in fin], "o-", label="top-1")
        a.plot(sizes, [r["top5"] for r in fin], "s--", label="top-5")
        for s, r in zip(sizes, fin):
            a.annotate(f"{r['top1']:.1f}", (s, r["top1"]), textcoords="offset points", xytext=(0, 6), ha="center",
                       fontsize=8)
        a.set_xlabel("evaluation image size (px), same weights")
        a.set_ylabel("accuracy (%)")
        a.set_xticks(sizes)
        a.set_title(title)
        written.append(_save(plt, fig, (a,), run_dir / "resolution.png"))
    return written
