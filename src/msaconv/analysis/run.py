"""``msaconv analyze``'s engine: load a model and images, run one tool, write JSON lines and a picture.

No argparse here: :mod:`msaconv.cli.analyze` builds an :class:`AnalysisConfig` and calls :func:`run_analysis`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .._errors import unknown_name
KINDS = ("distance", "heads", "erf", "attention")


@dataclass
class AnalysisConfig:
    kind: str
    checkpoint: str | None = None  # a run folder / weights file (msaconv eval's --checkpoint)
    model: str | None = None  # or an untrained registered model
    data: str = "embedded"  # images: the shipped CIFAR-10 test set, or an ImageFolder dir / zip / tar
    images: int = 64
    img_size: int | None = None
    output: str = "analysis"
    layer: str | None = None  # attention: which mixer
    pixel: tuple[int, int] | None = None  # attention: (row, col) in image pixels; default: the centre
    seed: int = 0


def _load(cfg: AnalysisConfig):
    from ..train.config import TrainConfig, apply_overrides

    if cfg.checkpoint:
        from ..train.evaluate import load_model_from_checkpoint

        model, tcfg, _ = load_model_from_checkpoint(cfg.checkpoint, cfg.model)
    elif cfg.model:
        from ..models import create_model

        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, num_classes=10).eval()
        tcfg = apply_overrides(TrainConfig(), {"model": cfg.model}, "analyze")
    else:
        raise ValueError("msaconv analyze: pass --checkpoint PATH (a trained run) or --model NAME (untrained weights)")
    size = cfg.img_size or tcfg.img_size
    return model, tcfg, size


def _images(cfg: AnalysisConfig, tcfg, size: int):
    from ..data.transforms import normalize, resize
    from ..train.config import apply_overrides
    from ..train.data import resolve_data_paths, batches, load_split

    tcfg = apply_overrides(tcfg, {"data": cfg.data, "img_size": size}, "analyze")
    path = resolve_data_paths(tcfg)[1] if cfg.data == "embedded" else cfg.data
    if path is None:
        raise ValueError(f"msaconv analyze: no evaluation images for --data {cfg.data!r}")
    split = load_split(tcfg, path, False, cfg.images, print)
    order = torch.arange(min(cfg.images, len(split)))
    xs, ys = [], []
    for x, y, _ in batches(split, order, 256, tcfg, 0):
        xs.append(normalize(resize(x, size) if x.shape[-1] != size else x, tcfg.mean, tcfg.std))
        ys.append(y)
    return torch.cat(xs), torch.cat(ys), tcfg


def run_analysis(cfg: AnalysisConfig) -> dict:
    """Run ``cfg.kind`` and return ``{"rows": [...], "jsonl": path, "plot": path}``."""
    from . import attention as A
    from . import erf as E
    from . import heads as Hd
    from . import plots

    if cfg.kind not in KINDS:
        raise unknown_name("msaconv analyze", "analysis", cfg.kind, KINDS)
    if cfg.images < 1:
        raise ValueError(f"msaconv analyze: --images must be >= 1, got {cfg.images}")
    model, tcfg, size = _load(cfg)
    x, y, tcfg = _images(cfg, tcfg, size)
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = tcfg.model
    plot = out_dir / f"{name}-{cfg.kind}.png"
    if cfg.kind == "distance":
        rows = [r.as_dict() for r in A.mean_attention_distance(model, x)]
        plots.plot_attention_distance([A.HeadDistance(**r) for r in rows], plot, f"{name}: mean attention distance")
    elif cfg.kind == "heads":
        rows = [r.as_dict() for r in Hd.head_importance(model, [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(y), 64)])]
    elif cfg.kind == "erf":
        erfs = E.effective_receptive_field(model, x)
        rows = [{"stage": e.stage, **{f"radius{int(100 * s)}": r for s, r in e.radius.items()}} for e in erfs]
        plots.plot_erf(erfs, plot, f"{name}: effective receptive field at {size} px")
    else:
        mixers = A.attention_mixers(model)
        layer = cfg.layer or next(iter(mixers), None)
        if layer is None:
            raise ValueError(f"msaconv analyze attention: {name} has no MSA-Conv mixer ({A.NO_WEIGHTS})")
        pixel = cfg.pixel or (size // 2, size // 2)
        maps = A.attention_map(model, x[0], layer, pixel)
        rows = [{"layer": layer, "pixel": list(pixel), "head": h, "max_weight": float(maps[h].max())} for h in range(maps.shape[0])]
        plots.plot_attention_map(x[0], maps, pixel, plot, tcfg.mean, tcfg.std)
    meta = {"kind": cfg.kind, "model": name, "img_size": size, "images": int(len(y)), "torch": torch.__version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": asdict(cfg)}
    jsonl = out_dir / f"{name}-{cfg.kind}.jsonl"
    with open(jsonl, "w") as f:
        for r in rows:
            f.write(json.dumps({**meta, **r}) + "\n")
    return {"rows": rows, "jsonl": jsonl, "plot": None if cfg.kind == "heads" else plot}  # heads: a table only
