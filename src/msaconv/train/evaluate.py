"""Evaluate a saved checkpoint at several image sizes (what ``msaconv eval`` calls)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import distributed as D
from .config import TrainConfig, apply_overrides, parse_set


def load_model_from_checkpoint(path: str, model: str | None = None, sets: list[str] | None = None):
    """(model in eval mode, config with model/mean/std/img_size, classes) from any weights file we accept."""
    weights, meta = ckpt.load_weights(path)
    name = model or meta.get("model")
    if not name:
        raise ValueError(f"--model: {path!r} does not record its model; pass --model NAME (see msaconv.models.list_models())")
    kwargs = json.loads(meta.get("model_kwargs", "{}"))
    for k, v in parse_set(sets or []).items():
        kwargs[k.split(".", 1)[1] if k.startswith("model_kwargs.") else k] = v
    values = {"model": name, "model_kwargs": kwargs}
    for key in ("mean", "std"):
        if key in meta:
            values[key] = json.loads(meta[key])
    if "img_size" in meta:
        values["img_size"] = int(meta["img_size"])
    cfg = apply_overrides(TrainConfig(), values, "checkpoint")
    classes = json.loads(meta["classes"]) if "classes" in meta else None
    num_classes = int(meta["num_classes"]) if "num_classes" in meta else None
    if num_classes is None:
        head = [v for k, v in weights.items() if k.endswith("weight") and v.ndim == 2]
        num_classes = head[-1].shape[0] if head else 1000
    from ..models import create_model_from_config

    m = create_model_from_config(name, kwargs, num_classes)
    missing, unexpected = m.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"--checkpoint: {path!r} does not fit {name} (missing {list(missing)[:4]}, unexpected "
                         f"{list(unexpected)[:4]}); pass the right --model / --set model_kwargs.KEY=VALUE")
    return m.eval(), cfg, classes


def evaluate_checkpoint(path: str, data: str = "embedded", sizes: list[int] | None = None, model: str | None = None,
                        batch_size: int = 500, limit: int | None = None, skip_bad: bool = False,
                        json_path: str | None = None, sets: list[str] | None = None, tta: str = "none",
                        protocols: list[str] | None = None) -> tuple[list[dict], Path]:
    """Top-1/top-5 of a checkpoint at every size and protocol ('resize' / 'canvas', see
    :func:`msaconv.data.to_eval_size`), with flip TTA when ``tta`` is 'flip' or 'both'."""
    from .engine import resolve_data_paths, evaluate, load_split

    m, cfg, classes = load_model_from_checkpoint(path, model, sets)
    cfg = apply_overrides(cfg, {"eval_batch_size": batch_size, "skip_bad": skip_bad, "limit_val": limit, "tta": tta,
                                "eval_protocols": protocols or ["resize"]}, "eval")
    if data == "embedded":
        resolved = resolve_data_paths(apply_overrides(cfg, {"data": "embedded"}, "eval"))[1]
        if resolved is None:
            raise ValueError(f"--data embedded: the checkpoint's config sets val_data={cfg.val_data!r}, so there is "
                             f"no validation set to evaluate on; pass --data with a folder of <class> images")
        val_path = resolved
    else:
        p = Path(data)
        val_path = str(p / "val") if p.is_dir() and (p / "val").is_dir() else data
    sizes = sizes or [cfg.img_size]
    if any(s < 1 for s in sizes):
        raise ValueError(f"--img-size: sizes must be positive, got {sizes}")
    info = D.DistInfo()
    split = load_split(cfg, val_path, False, limit, print)
    if classes is not None and split.classes != classes:
        raise ValueError(f"--data: its classes {split.classes[:4]}... differ from the checkpoint's {classes[:4]}...")
    n_params = sum(p.numel() for p in m.parameters())
    results = []
    for protocol in cfg.eval_protocols:
        for s in sizes:
            ev = evaluate(m, split, s, cfg, info, limit, protocol=protocol, tta=tta != "none")
            row = {"model": cfg.model, "top1": round(ev["top1"], 3), "top1_err": round(100 - ev["top1"], 3),
                   "top5": round(ev["top5"], 3), "top5_err": round(100 - ev["top5"], 3),
                   "param_count": round(n_params / 1e6, 3), "img_size": s, "protocol": protocol,
                   "images": ev["images"], "loss": ev["loss"], "seconds": ev["seconds"]}
            if "top1_flip" in ev:
                row.update(top1_flip=round(ev["top1_flip"], 3), top5_flip=round(ev["top5_flip"], 3))
            results.append(row)
    out = Path(json_path) if json_path else (Path(path) if Path(path).is_dir() else Path(path).parent) / "eval.json"
    doc = {"checkpoint": str(path), "data": str(val_path), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "torch": torch.__version__, "results": results}
    ckpt.atomic_write(out, (json.dumps(doc, indent=1) + "\n").encode())
    return results, out
