"""Evaluation: top-1 / top-5 / loss of a model on a split at one size (what the engine runs each epoch and at
the end), and of a saved checkpoint at several sizes (what ``msaconv eval`` calls)."""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from .._provenance import cpu_isa, cpu_model, file_sha256, git_commit
from ..data import StreamingImages, normalize, to_eval_size
from . import checkpoint as ckpt
from . import distributed as D
from .config import TrainConfig, apply_overrides, parse_set
from .data import Split, batches, load_split, resolve_data_paths


def native_bf16(device: torch.device) -> str | None:
    """What makes bfloat16 fast on ``device`` (a CUDA GPU that supports it; a CPU with AVX512_BF16 or AMX
    tiles), or None: elsewhere bfloat16 is emulated and slower than float32."""
    if device.type == "cuda":
        return "a CUDA GPU with bfloat16" if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        for name, probe in (("AMX", "_is_amx_tile_supported"), ("AVX512_BF16", "_is_avx512_bf16_supported")):
            fn = getattr(torch.cpu, probe, None)  # torch's own CPU probes (absent in older releases)
            if fn is not None and fn():
                return f"a CPU with {name}"
    return None


def amp_mode(cfg: TrainConfig, info: D.DistInfo) -> str:
    """The precision a run computes in: ``cfg.amp``, with 'auto' resolved to 'bf16' where the device computes
    bfloat16 natively (:func:`native_bf16`) and to 'none' elsewhere."""
    if cfg.amp == "auto":
        return "bf16" if native_bf16(torch.device(info.device)) else "none"
    return cfg.amp


def autocast(cfg: TrainConfig, info: D.DistInfo):
    """bf16 autocast on ``info.device`` when :func:`amp_mode` is 'bf16', a disabled one otherwise."""
    if amp_mode(cfg, info) == "bf16":
        return torch.autocast(info.device.type, dtype=torch.bfloat16)
    return torch.autocast(info.device.type, enabled=False)


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: Split, img_size: int, cfg: TrainConfig, info: D.DistInfo,
             limit: int | None = None, indices: torch.Tensor | None = None, protocol: str = "resize",
             tta: bool = False) -> dict:
    """top-1 / top-5 / loss over ``split`` (or its ``indices``; sharded over ranks, summed) at ``img_size``.

    ``protocol`` says how an image of the training size becomes ``img_size`` (see
    :func:`msaconv.data.to_eval_size`); ``tta=True`` adds ``top1_flip`` / ``top5_flip`` / ``loss_flip``,
    the same figures for the mean of the logits of each image and its horizontal mirror.
    """
    was_training = model.training
    model.eval()
    order = _rank_items(split, limit, indices, info)
    sums = [0.0] * 7  # loss, top1, top5, count, then loss, top1, top5 with flip TTA
    t0 = time.perf_counter()
    ev_split = _at_stream_size(split, img_size if protocol == "resize" else cfg.img_size, cfg)
    for x, y, _bad in batches(ev_split, order, cfg.eval_batch_size, cfg, 0):
        if len(y) == 0:
            continue
        x = to_eval_size(normalize(x, cfg.mean, cfg.std), img_size, protocol, cfg.img_size).to(info.device)
        y = y.to(info.device)
        logits = [_logits(model, v, cfg, info) for v in ([x, x.flip(-1)] if tta else [x])]
        _score(sums, 0, logits[0], y)
        if tta:
            _score(sums, 4, (logits[0] + logits[1]) / 2, y)
        sums[3] += len(y)
        ckpt.fault_point("eval")
    totals = D.all_reduce_sum(sums, info)
    model.train(was_training)
    cnt = max(totals[3], 1)
    out = {"img_size": img_size, "protocol": protocol, "top1": 100 * totals[1] / cnt, "top5": 100 * totals[2] / cnt,
           "loss": totals[0] / cnt, "images": int(totals[3]), "seconds": time.perf_counter() - t0}
    if tta:
        out.update(top1_flip=100 * totals[5] / cnt, top5_flip=100 * totals[6] / cnt, loss_flip=totals[4] / cnt)
    return out


def _rank_items(split: Split, limit: int | None, indices: torch.Tensor | None, info: D.DistInfo) -> torch.Tensor:
    """This rank's share of the images to evaluate: ``indices``, or the first ``limit`` (all when None)."""
    n = len(split) if limit is None else min(limit, len(split))
    items = torch.arange(n) if indices is None else indices
    n = len(items)
    order = D.shard(items, info)
    if info.enabled and len(order) * info.world_size > n:  # padded items would be counted twice
        order = order[: len(range(info.rank, n, info.world_size))]
    return order


def _at_stream_size(split: Split, size: int, cfg: TrainConfig, force_eval: bool = False) -> Split:
    """``split``, or for a stream decoded at another size (or, with ``force_eval``, a training stream, which
    augments), the same images streamed at ``size`` without augmentation."""
    if split.stream is None or (split.stream.size == size and not (force_eval and split.stream.train)):
        return split
    return Split(split.classes, split.source, stream=StreamingImages(
        split.source, size, train=False, limit=split.stream.__len__(), skip_bad=cfg.skip_bad, seed=split.stream.seed))


def _logits(model: torch.nn.Module, x: torch.Tensor, cfg: TrainConfig, info: D.DistInfo) -> torch.Tensor:
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(cfg, info):
        return model(x).float()


def _score(sums: list[float], at: int, out: torch.Tensor, y: torch.Tensor) -> None:
    """Add the summed loss, top-1 and top-5 hits of ``out`` for labels ``y`` to ``sums[at:at + 3]``."""
    sums[at] += F.cross_entropy(out, y, reduction="sum").item()
    top5 = out.topk(min(5, out.shape[1]), dim=1).indices
    sums[at + 1] += (top5[:, 0] == y).sum().item()
    sums[at + 2] += (top5 == y[:, None]).any(dim=1).sum().item()


RECAL_KEYS = ("top1", "top5", "loss", "top1_flip", "top5_flip", "loss_flip")


def recalibrated(model: torch.nn.Module, split: Split, img_size: int | list[int], cfg: TrainConfig,
                 info: D.DistInfo, images: int, protocol: str = "resize") -> torch.nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated at ``img_size``.

    The statistics come from the first ``images`` images of ``split`` (a training split; seeded order, no
    augmentation, no labels, no gradient), shown at ``img_size`` by ``protocol`` as the evaluation shows its
    images, and averaged over all of them (``torch.optim.swa_utils.update_bn``). A list of sizes gives one
    set of statistics for all of them: the same images are shown at each size in turn, one size per batch,
    and every batch counts the same. Only the running statistics change; the weights are the trained ones.
    ``model`` itself is left as it was.
    """
    m = copy.deepcopy(model)
    n = min(images, len(split))
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0x8EC))[:n]
    sizes = img_size if isinstance(img_size, list) else [img_size]

    def inputs() -> Iterator[torch.Tensor]:
        for size in sizes:
            src = _at_stream_size(split, size if protocol == "resize" else cfg.img_size, cfg, force_eval=True)
            for x, _y, _bad in batches(src, order, cfg.eval_batch_size, cfg, 0):
                if len(x):
                    x = to_eval_size(normalize(x, cfg.mean, cfg.std), size, protocol, cfg.img_size).to(info.device)
                    yield x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x

    with torch.no_grad(), autocast(cfg, info):
        torch.optim.swa_utils.update_bn(inputs(), m)
    return m.eval()


def final_evaluations(model: torch.nn.Module, split: Split, cfg: TrainConfig, info: D.DistInfo,
                      train_split: Split | None = None) -> Iterator[dict]:
    """The end of a run: ``evaluate`` at ``img_size`` and every ``eval_sizes`` size, for each protocol, one
    result as each is done. At the training size 'canvas' shows the images 'resize' does, so it runs once.

    With ``cfg.bn_recalibrate`` images and a ``train_split``, each result also holds the same figures with the
    BatchNorm statistics re-estimated at that size (:func:`recalibrated`), as ``top1_recal``,
    ``top1_flip_recal``, ... and ``recal_images``. Always in float32 (``amp`` is for training)."""
    # float32 whatever the training's amp: these figures are the run's measurement, and `msaconv eval` of its
    # weights (float32, on any machine) reproduces them
    cfg = apply_overrides(cfg, {"amp": "none"}, "final evaluation")
    sizes = sorted(set(cfg.eval_sizes) | {cfg.img_size})
    for protocol in cfg.eval_protocols:
        for s in sizes:
            if protocol != "resize" and s == cfg.img_size and "resize" in cfg.eval_protocols:
                continue
            ev = evaluate(model, split, s, cfg, info, cfg.limit_val, protocol=protocol, tta=cfg.tta != "none")
            if cfg.bn_recalibrate and train_split is not None:
                ev.update(recalibrated_scores(model, split, train_split, s, cfg, info, protocol, plain=ev))
            yield ev


def has_batchnorm(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds a module whose running statistics :func:`recalibrated` re-estimates."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recalibrated_scores(model: torch.nn.Module, split: Split, train_split: Split, img_size: int, cfg: TrainConfig,
                        info: D.DistInfo, protocol: str, recal_sizes: list[int] | None = None,
                        cache: dict | None = None, plain: dict | None = None) -> dict:
    """``evaluate``'s figures at ``img_size`` after :func:`recalibrated` with ``cfg.bn_recalibrate`` images of
    ``train_split``, as ``<key>_recal``, with ``recal_images`` and ``recal_seconds``. With ``recal_sizes`` the
    statistics are re-estimated once over those sizes (kept in ``cache`` per protocol, so every evaluation
    size reuses them) and the result names them as ``recal_sizes``.

    ``plain``: the same evaluation without re-estimation. A model without BatchNorm (LayerNorm transformers) has
    no statistics to re-estimate, so its recalibrated figures are exactly these: they are copied, with
    ``recal_images`` 0, instead of computed again (for a ViT the second pass was half its evaluation time)."""
    t0 = time.perf_counter()
    if plain is not None and not has_batchnorm(model):
        out = {f"{k}_recal": plain[k] for k in RECAL_KEYS if k in plain}
        out.update({"recal_images": 0, "recal_seconds": time.perf_counter() - t0})
        return {**out, "recal_sizes": list(recal_sizes)} if recal_sizes else out
    if recal_sizes:
        cache = {} if cache is None else cache
        if protocol not in cache:
            cache[protocol] = recalibrated(model, train_split, list(recal_sizes), cfg, info, cfg.bn_recalibrate, protocol)
        m = cache[protocol]
    else:
        m = recalibrated(model, train_split, img_size, cfg, info, cfg.bn_recalibrate, protocol)
    ev = evaluate(m, split, img_size, cfg, info, cfg.limit_val, protocol=protocol, tta=cfg.tta != "none")
    out = {f"{k}_recal": ev[k] for k in RECAL_KEYS if k in ev}
    out.update({"recal_images": min(cfg.bn_recalibrate, len(train_split)), "recal_seconds": time.perf_counter() - t0})
    return {**out, "recal_sizes": list(recal_sizes)} if recal_sizes else out


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
                        protocols: list[str] | None = None, bn_recalibrate: int = 0,
                        recal_data: str | None = None, recal_sizes: list[int] | None = None) -> tuple[list[dict], Path]:
    """Top-1/top-5 of a checkpoint at every size and protocol ('resize' / 'canvas', see
    :func:`msaconv.data.to_eval_size`), with flip TTA when ``tta`` is 'flip' or 'both', and with
    ``bn_recalibrate`` > 0 also after :func:`recalibrated` with that many images of ``recal_data``
    (default: the embedded training set for ``data='embedded'``, ``<data>/train`` beside ``<data>/val``):
    at each evaluation size, or with ``recal_sizes`` once over those sizes mixed (one set of statistics
    for every evaluation size)."""
    m, cfg, classes = load_model_from_checkpoint(path, model, sets)
    cfg = apply_overrides(cfg, {"eval_batch_size": batch_size, "skip_bad": skip_bad, "limit_val": limit, "tta": tta,
                                "eval_protocols": protocols or ["resize"], "bn_recalibrate": bn_recalibrate}, "eval")
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
    if recal_sizes is not None and (not bn_recalibrate or not recal_sizes or any(s < 1 for s in recal_sizes)):
        raise ValueError(f"--recal-sizes {recal_sizes}: give positive sizes, with --bn-recalibrate N > 0 (the images "
                         f"that re-estimate the statistics), e.g. --bn-recalibrate 2000 --recal-sizes 24 32 40")
    info = D.DistInfo()
    split = load_split(cfg, val_path, False, limit, print)
    if classes is not None and split.classes != classes:
        raise ValueError(f"--data: its classes {split.classes[:4]}... differ from the checkpoint's {classes[:4]}...")
    train_split = None
    if bn_recalibrate:
        train_split = load_split(cfg, _recal_path(data, recal_data, cfg), False, None, print)
        if train_split.classes != split.classes:
            raise ValueError(f"--recal-data: its classes {train_split.classes[:4]}... differ from --data's "
                             f"{split.classes[:4]}...")
    n_params = sum(p.numel() for p in m.parameters())
    results = []
    mixed: dict = {}  # the model recalibrated over recal_sizes, per protocol
    for protocol in cfg.eval_protocols:
        for s in sizes:
            ev = evaluate(m, split, s, cfg, info, limit, protocol=protocol, tta=tta != "none")
            row = {"model": cfg.model, "top1": round(ev["top1"], 3), "top1_err": round(100 - ev["top1"], 3),
                   "top5": round(ev["top5"], 3), "top5_err": round(100 - ev["top5"], 3),
                   "param_count": round(n_params / 1e6, 3), "img_size": s, "protocol": protocol,
                   "images": ev["images"], "loss": ev["loss"], "seconds": ev["seconds"]}
            if "top1_flip" in ev:
                row.update(top1_flip=round(ev["top1_flip"], 3), top5_flip=round(ev["top5_flip"], 3))
            if train_split is not None:
                rc = recalibrated_scores(m, split, train_split, s, cfg, info, protocol, recal_sizes, mixed, plain=ev)
                row.update({k: round(v, 3) if k.startswith("top") else v for k, v in rc.items()})
            results.append(row)
    out = Path(json_path) if json_path else (Path(path) if Path(path).is_dir() else Path(path).parent) / "eval.json"
    doc = {**provenance(path, val_path, len(split)), "results": results}
    ckpt.atomic_write(out, (json.dumps(doc, indent=1) + "\n").encode())
    return results, out


def _recal_path(data: str, recal_data: str | None, cfg: TrainConfig) -> str:
    """The training images ``msaconv eval --bn-recalibrate`` reads (see :func:`evaluate_checkpoint`)."""
    if recal_data:
        if not Path(recal_data).exists():
            raise ValueError(f"--recal-data: {recal_data!r} does not exist; pass a folder / zip / tar of <class> images")
        return recal_data
    if data == "embedded":
        return resolve_data_paths(apply_overrides(cfg, {"data": "embedded"}, "eval"))[0]
    p = Path(data)
    for parent in (p, p.parent):
        if parent.is_dir() and (parent / "train").is_dir() and (parent / "val").is_dir():
            return str(parent / "train")
    raise ValueError(f"--bn-recalibrate: --data {data!r} has no train/ folder beside its val/ to re-estimate BatchNorm "
                     "statistics from; pass --recal-data PATH (training images, <class>/<image>)")


def provenance(checkpoint: str | Path, data: str, images: int) -> dict:
    """The header of an ``msaconv eval`` result: what was evaluated, on which data (with its SHA-256), by
    which command and commit, on which CPU."""
    return {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint), "data": str(data),
            "data_sha256": file_sha256(data), "images": images, "command": " ".join(["msaconv", *sys.argv[1:]]),
            "git_commit": git_commit(), "cpu_model": cpu_model(), "isa": cpu_isa(), "torch": torch.__version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
