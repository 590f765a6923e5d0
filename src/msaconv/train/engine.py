"""The training engine, readable top to bottom: data -> model -> optimizer -> loop -> evaluation -> files.

Everything random is a pure function of ``(seed, epoch, step, rank)``: the epoch's permutation, each batch's
augmentation and the torch RNG seen by dropout / drop path (reseeded every step). Together with checkpoints
that hold every optimizer, EMA and schedule tensor, a run resumed after ``kill -9`` ends with the same
weights, bit for bit, as one never interrupted.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, cast

import torch
import torch.nn.functional as F

from ..data import (
    InMemoryImages,
    StreamingImages,
    collate_skip,
    derive_seed,
    embedded_path,
    generator,
    mixup_cutmix,
    normalize,
    rand_augment,
    random_crop_flip,
    resize,
    size_at,
    to_eval_size,
)
from ..layers import MOH_LOAD_BALANCE_WEIGHT, auxiliary_losses
from . import checkpoint as ckpt
from . import distributed as D
from .config import TrainConfig, dump_yaml
from .schedule import lr_at

# ---------------------------------------------------------------------------------------------- data


@dataclass
class Split:
    """A dataset in memory (``images``/``labels``) or streamed (``stream``)."""

    classes: list[str]
    source: str
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    stream: StreamingImages | None = None
    skipped: int = 0

    def __len__(self) -> int:
        if self.stream is not None:
            return len(self.stream)
        assert self.images is not None  # a split holds either a stream or images
        return self.images.shape[0]


def resolve_data_paths(cfg: TrainConfig) -> tuple[str, str | None]:
    if cfg.data == "embedded":
        train = str(embedded_path("train"))
        val = str(embedded_path("test")) if cfg.val_data == "auto" else cfg.val_data
    else:
        p = Path(cfg.data)
        train, val = cfg.data, None
        if p.is_dir() and (p / "train").is_dir():
            train = str(p / "train")
            for name in ("val", "validation", "test"):
                if (p / name).is_dir():
                    val = str(p / name)
                    break
        if cfg.val_data != "auto":
            val = cfg.val_data
    if val in ("none", "", None):
        val = None
    return train, val


def _memory_mode(cfg: TrainConfig, path: str) -> bool:
    if cfg.data_mode != "auto":
        return cfg.data_mode == "memory"
    p = Path(path)
    size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return size < 500e6  # compressed bytes: CIFAR-size sets decode to well under a few GB


def load_split(cfg: TrainConfig, path: str, train: bool, limit: int | None, log) -> Split:
    # a limited training set is a subset chosen by the run's seed; a limited validation set is always the same
    # subset (seed 0), so `msaconv eval --limit-val N` sees the images the run was evaluated on
    seed = cfg.seed if train else 0
    if _memory_mode(cfg, path):
        # small images are kept at their stored size (augmented, then resized to img_size on the batch)
        d = InMemoryImages.load(path, limit=limit, skip_bad=cfg.skip_bad, seed=seed)
        if d.skipped:
            log(f"data: skipped {len(d.skipped)} bad image(s) in {path} (first: {d.skipped[0]})")
        return Split(d.classes, path, d.images, d.labels, skipped=len(d.skipped))
    s = StreamingImages(path, cfg.img_size, train=train, limit=limit, skip_bad=cfg.skip_bad, seed=seed)
    return Split(s.classes, path, stream=s)


def batches(split: Split, order: torch.Tensor, batch_size: int, cfg: TrainConfig, epoch: int):
    """Yield ``(uint8 images, labels, n_bad)`` for consecutive ``batch_size`` chunks of ``order``."""
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if split.stream is None:
        images, labels = split.images, split.labels
        assert images is not None and labels is not None  # a split holds either a stream or images and labels
        for idx in chunks:
            yield images[idx], labels[idx], 0
        return
    split.stream.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(split.stream, batch_sampler=[c.tolist() for c in chunks],
                                         num_workers=cfg.workers, collate_fn=collate_skip,
                                         persistent_workers=False, prefetch_factor=4 if cfg.workers else None)
    yield from loader


# --------------------------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, num_classes: int | None) -> torch.nn.Module:
    from ..models import create_model_from_config

    return create_model_from_config(cfg.model, cfg.model_kwargs, num_classes)


def check_model_config(cfg: TrainConfig) -> None:
    """Build the model on the meta device (no memory, no data): a bad ``model_kwargs`` key or value fails
    here, with the model config's did-you-mean, before any data is read."""
    try:
        with torch.device("meta"):
            build_model(cfg, None)
    except (ValueError, TypeError):
        raise
    except Exception:  # noqa: BLE001 - an op the meta device lacks: the real build below checks the same config
        pass


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms (1-D) and the model's ``no_weight_decay()`` names."""
    skip = set(cast(Any, model).no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               foreach=False)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), foreach=False)


class ModelEma:
    """Exponential moving average of the weights (buffers copied); ``module`` is evaluated in their place."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(self.decay).add_(src[k].detach(), alpha=1 - self.decay)
            else:
                v.copy_(src[k])


# -------------------------------------------------------------------------------------------- evaluate


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
    n = len(split) if limit is None else min(limit, len(split))
    items = torch.arange(n) if indices is None else indices
    n = len(items)
    order = D.shard(items, info)
    if info.enabled and len(order) * info.world_size > n:  # padded items would be counted twice
        order = order[: len(range(info.rank, n, info.world_size))]
    sums = [0.0] * 7  # loss, top1, top5, count, then loss, top1, top5 with flip TTA
    t0 = time.perf_counter()
    ev_split = split
    base = cfg.img_size
    stream_size = img_size if protocol == "resize" else base
    if split.stream is not None and split.stream.size != stream_size:
        ev_split = Split(split.classes, split.source, stream=StreamingImages(
            split.source, stream_size, train=False, limit=split.stream.__len__(), skip_bad=cfg.skip_bad, seed=0))
    for x, y, _bad in batches(ev_split, order, cfg.eval_batch_size, cfg, 0):
        if len(y) == 0:
            continue
        x = to_eval_size(normalize(x, cfg.mean, cfg.std), img_size, protocol, base).to(info.device)
        y = y.to(info.device)
        views = [x, x.flip(-1)] if tta else [x]
        logits = []
        for v in views:
            if cfg.channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
            with _autocast(cfg, info):
                logits.append(model(v).float())
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


def _score(sums: list[float], at: int, out: torch.Tensor, y: torch.Tensor) -> None:
    """Add the summed loss, top-1 and top-5 hits of ``out`` for labels ``y`` to ``sums[at:at + 3]``."""
    sums[at] += F.cross_entropy(out, y, reduction="sum").item()
    top5 = out.topk(min(5, out.shape[1]), dim=1).indices
    sums[at + 1] += (top5[:, 0] == y).sum().item()
    sums[at + 2] += (top5 == y[:, None]).any(dim=1).sum().item()


def _autocast(cfg: TrainConfig, info: D.DistInfo):
    if cfg.amp == "bf16":
        return torch.autocast(info.device.type, dtype=torch.bfloat16)
    return torch.autocast(info.device.type, enabled=False)


# ---------------------------------------------------------------------------------------------- train


class _Stop:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint at the next step boundary and returns."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        if threading_main():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def file_sha256(path: str | None) -> str | None:
    """SHA-256 of a dataset file (zip / tar), None for a directory or no path."""
    if not path or not Path(path).is_file():
        return None
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cpu_description() -> dict[str, str | None]:
    """The CPU's model name and the vector instruction set torch's kernels use on it (``AVX2``, ``AVX512``):
    what every speed figure must name."""
    model = None
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), None)
    except OSError:
        pass
    isa = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else None
    return {"cpu_model": model or platform.processor() or None, "isa": isa}


def resolve_run_dir(cfg: TrainConfig) -> tuple[Path, dict | None]:
    """The run folder and the checkpoint to resume from (None: a fresh run)."""
    out = Path(cfg.output)
    if cfg.resume and cfg.resume != "auto":
        doc = ckpt.find_checkpoint(cfg.resume, "last")
        if doc is None:
            raise ValueError(f"--resume: no complete checkpoint at {cfg.resume!r}; pass a run folder, its last.json, "
                             "or 'auto'")
        return Path(doc["_dir"]), doc
    if cfg.resume == "auto":
        doc = ckpt.find_checkpoint(out / cfg.name if cfg.name else out, "last")
        if doc is not None:
            return Path(doc["_dir"]), doc
    name = cfg.name or f"{cfg.model}-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    return out / name, None


def model_meta(cfg: TrainConfig, classes: list[str], step: int, epoch: int) -> dict[str, str]:
    return {"model": cfg.model, "model_kwargs": json.dumps(cfg.model_kwargs), "num_classes": str(len(classes)),
            "classes": json.dumps(classes), "img_size": str(cfg.img_size), "mean": json.dumps(cfg.mean),
            "std": json.dumps(cfg.std), "epoch": str(epoch)}


class MetricsLog:
    """JSON lines in ``metrics.jsonl`` (rank 0). On resume, lines past the checkpoint's step are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.exists():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if rec.get("step", 0) <= resume_step and rec.get("type") != "final":
                    keep.append(line)
            ckpt.atomic_write(path, ("\n".join(keep) + "\n").encode() if keep else b"")
        elif enabled and resume_step is None:
            path.write_text("")

    def write(self, rec: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


def train(cfg: TrainConfig, log=None) -> dict:
    """Run (or resume) training as ``cfg`` says; returns the summary dict (also written as summary.json)."""
    info = D.setup()
    try:
        return _train(cfg, info, log)
    finally:
        D.teardown(info)


def _train(cfg: TrainConfig, info: D.DistInfo, log) -> dict:
    main = info.is_main
    say = (log or (lambda s: print(s, file=sys.stderr, flush=True))) if main else (lambda s: None)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif info.world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))

    run_dir, resume_doc = resolve_run_dir(cfg)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write(run_dir / "config.yaml", dump_yaml(cfg).encode())
    D.barrier(info)

    check_model_config(cfg)

    # -- data (a first-use compile of the CPU kernels runs meanwhile, in a thread)
    if torch.device(info.device).type == "cpu":
        from ..ops import prepare

        prepare(background=True)
    train_path, val_path = resolve_data_paths(cfg)
    t0 = time.perf_counter()
    tr = load_split(cfg, train_path, True, cfg.limit_train, say)
    va = load_split(cfg, val_path, False, cfg.limit_val, say) if val_path else None
    if va is not None and va.classes != tr.classes:
        raise ValueError(f"data: validation classes {va.classes[:5]}... differ from training classes "
                         f"{tr.classes[:5]}...; both need the same <class> folders")
    if len(tr.classes) < 2:
        raise ValueError(f"data: {train_path!r} holds one class folder ({tr.classes[0]!r}); a classifier needs at "
                         "least two <class> folders")
    say(f"data: {len(tr)} train images ({train_path}), {len(va) if va else 0} val images"
        f"{f' ({val_path})' if va else ''}, {len(tr.classes)} classes, loaded in {time.perf_counter() - t0:.1f}s")
    backend = None
    if torch.device(info.device).type == "cpu":
        from ..ops import backend_report

        backend = backend_report()  # waits for the background build started above
        say(backend)

    # -- model, optimizer
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(tr.classes)).to(info.device)
    if cfg.channels_last:
        # cast: torch's stubs leave out Module.to's memory_format keyword (torch accepts it)
        model = cast(Any, model).to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(cfg, model)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None

    per_rank = len(D.shard(torch.arange(len(tr)), info))
    micro = cfg.batch_size
    steps_per_epoch = max(1, per_rank // (micro * cfg.grad_accum))
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    start_step, best_top1, best_step = 0, -1.0, None
    if resume_doc is not None:
        w, _ = ckpt.load_checkpoint_file(resume_doc, "weights")
        model.load_state_dict(w)
        state, _ = ckpt.load_checkpoint_file(resume_doc, "state")
        optimizer.load_state_dict(ckpt.optimizer_from_flat(state, resume_doc["optimizer"]))
        if ema is not None:
            ema.module.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("ema.")})
        start_step = int(resume_doc["step"])
        best_top1 = float(resume_doc.get("best_top1", -1.0))
        best_step = resume_doc.get("best_step")
        if resume_doc.get("steps_per_epoch") not in (None, steps_per_epoch):
            raise ValueError(f"--resume: the checkpoint has {resume_doc['steps_per_epoch']} steps per epoch, this "
                             f"config gives {steps_per_epoch}; keep batch_size, grad_accum, limit_train and the "
                             "number of processes of the original run")
        say(f"resume: {run_dir} from step {start_step} (epoch {start_step / steps_per_epoch:.2f})")
    ddp = model
    if info.enabled:
        import warnings

        # 1x1 convolutions' weight gradients arrive with other strides than DDP's buckets: harmless, only a copy
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)

    metrics = MetricsLog(run_dir / "metrics.jsonl", main, start_step if resume_doc else None)
    if main and resume_doc is None:
        metrics.write({"type": "run", "step": 0, "model": cfg.model, "params": n_params, "torch": torch.__version__,
                       "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                       "threads": torch.get_num_threads(), "world_size": info.world_size, "git": _git_commit(),
                       "command": " ".join(sys.argv), "train_images": len(tr), "val_images": len(va) if va else 0,
                       "backend": backend, **cpu_description(), "train_data": train_path,
                       "train_sha256": file_sha256(train_path), "val_data": val_path,
                       "val_sha256": file_sha256(val_path)})
    say(f"model: {cfg.model} {n_params / 1e6:.2f}M params; {cfg.epochs} epochs x {steps_per_epoch} steps, batch "
        f"{micro}x{cfg.grad_accum}x{info.world_size}, {cfg.optimizer} lr {cfg.lr}, {torch.get_num_threads()} threads; "
        f"run folder {run_dir}")

    def save(tag: str, step: int):
        if main:
            epoch = step // steps_per_epoch
            ckpt.save_checkpoint(
                run_dir, tag, step=step, model_state=model.state_dict(),
                model_meta=model_meta(cfg, tr.classes, step, epoch), optimizer_state=optimizer.state_dict(),
                ema_state=ema.module.state_dict() if ema else None,
                info={"epoch": epoch, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                      "best_top1": best_top1, "best_step": best_step,
                      "scheduler": {"name": cfg.schedule, "lr": cfg.lr, "warmup_steps": warmup_steps,
                                    "total_steps": total_steps, "min_lr_ratio": cfg.min_lr_ratio, "step": step},
                      "rng": {"scheme": "derived from (seed, epoch, step, rank): permutation, augmentation and "
                                        "torch.manual_seed each step", "seed": cfg.seed},
                      "world_size": info.world_size})
        D.barrier(info)

    epoch_eval_idx = None  # a fixed, seeded subset of the validation images for the per-epoch check
    if va is not None and cfg.epoch_eval_images:
        n_val = len(va) if cfg.limit_val is None else min(cfg.limit_val, len(va))
        if cfg.epoch_eval_images < n_val:
            perm = torch.randperm(n_val, generator=generator(cfg.seed, 0xE7A1))
            epoch_eval_idx = perm[: cfg.epoch_eval_images].sort().values

    # -- loop
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=start_step, disable=not (main and cfg.progress), unit="step",
               dynamic_ncols=True, file=sys.stderr, smoothing=0.05)
    run_loss = run_correct = run_n = 0.0
    aux_sums: dict[str, float] = {}  # auxiliary losses (MoH load balance), summed over the logged images
    aux_weight = MOH_LOAD_BALANCE_WEIGHT if cfg.aux_loss_weight is None else cfg.aux_loss_weight
    bad_total = 0
    skipped_steps = 0
    t_train = time.perf_counter()
    t_log, n_log = time.perf_counter(), 0
    images_done = 0
    step = start_step
    status = "finished"
    ddp.train()
    with _Stop() as stop:
        epoch_iter = None
        while step < total_steps:
            epoch, it = divmod(step, steps_per_epoch)
            if epoch_iter is None:
                order = torch.randperm(len(tr), generator=generator(cfg.seed, epoch, 0xDA7A))
                mine = D.shard(order, info)[: steps_per_epoch * micro * cfg.grad_accum]
                mine = mine[it * micro * cfg.grad_accum :]
                epoch_iter = batches(tr, mine, micro, cfg, epoch)
            torch.manual_seed(derive_seed(cfg.seed, epoch, it, info.rank, 0xD0))
            lr = lr_at(step, cfg.schedule, cfg.lr, warmup_steps, total_steps, cfg.min_lr_ratio)
            for g in optimizer.param_groups:
                g["lr"] = lr
            nonfinite = None
            for m in range(cfg.grad_accum):
                x, y, nbad = next(epoch_iter)
                bad_total += nbad
                if len(y) == 0:
                    continue
                gen = generator(cfg.seed, epoch, it, m, info.rank)
                if cfg.crop_pad or cfg.hflip:
                    x = random_crop_flip(x, gen, cfg.crop_pad, cfg.hflip)
                if cfg.rand_augment_n:
                    x = rand_augment(x, gen, cfg.rand_augment_n, cfg.rand_augment_m)
                size = size_at(cfg.train_sizes, cfg.seed, epoch, it) if cfg.train_sizes else cfg.img_size
                x = normalize(resize(x, size), cfg.mean, cfg.std)
                x, target = mixup_cutmix(x, y, len(tr.classes), random.Random(derive_seed(cfg.seed, epoch, it, m, info.rank, 7)),
                                         cfg.mixup, cfg.cutmix, cfg.mix_prob, label_smoothing=cfg.label_smoothing)
                x, y, target = x.to(info.device), y.to(info.device), target.to(info.device)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                sync = (m == cfg.grad_accum - 1) or not info.enabled
                ctx: ContextManager[Any]
                if info.enabled and not sync:  # info.enabled: ddp is the DistributedDataParallel wrapper
                    ctx = cast(torch.nn.parallel.DistributedDataParallel, ddp).no_sync()
                else:
                    ctx = _null()
                with ctx:
                    with _autocast(cfg, info):
                        out = ddp(x)
                    loss = torch.sum(-target * F.log_softmax(out.float(), dim=-1), dim=-1).mean()
                    for aux_name, aux in auxiliary_losses(model).items():
                        loss = loss + aux_weight * aux
                        aux_sums[aux_name] = aux_sums.get(aux_name, 0.0) + aux.item() * len(y)
                    loss_value = loss.item()
                    if not math.isfinite(loss_value) and nonfinite is None:
                        nonfinite = loss_value
                    if nonfinite is not None:
                        continue  # the step is dropped; later micro-batches are still read (same data order)
                    (loss / cfg.grad_accum).backward()
                run_loss += loss_value * len(y)
                run_correct += (out.argmax(1) == y).sum().item()
                run_n += len(y)
                n_log += len(y)
                images_done += len(y)
            nonfinite = D.any_flag(nonfinite is not None, info) and (nonfinite if nonfinite is not None else math.nan)
            if nonfinite is not False:
                where = (f"loss is {nonfinite} at step {step + 1}/{total_steps} (epoch {epoch + 1}, batch {it + 1} "
                         f"of {steps_per_epoch})")
                metrics.write({"type": "nonfinite", "step": step + 1, "loss": str(nonfinite),
                               "action": cfg.nonfinite_loss})
                if cfg.nonfinite_loss == "stop":
                    last = ckpt.read_checkpoint(run_dir / "last.json") if main else None
                    kept = (f"the last good checkpoint {str(run_dir / 'last.json')!r} (step {last['step']}) is kept"
                            if last else "no checkpoint was written before it")
                    raise NonFiniteLossError(
                        f"train: {where}; stopped without saving, {kept}. Lower lr, set clip_grad, check the data, "
                        "or set nonfinite_loss=skip to skip such batches")
                say(f"train: {where}; batch skipped (nonfinite_loss=skip), weights unchanged")
                skipped_steps += 1
                optimizer.zero_grad(set_to_none=True)
            else:
                if cfg.clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
            step += 1
            ckpt.fault_point("step")
            bar.update(1)
            stop_now = D.any_flag(stop.signal is not None, info)
            end_of_epoch = step % steps_per_epoch == 0
            if step % cfg.log_every == 0 or end_of_epoch or step == total_steps or stop_now:
                ls, cs, ns, nl = D.all_reduce_sum([run_loss, run_correct, run_n, float(n_log)], info)
                dt = time.perf_counter() - t_log
                ips = nl / max(dt, 1e-9)
                rec = {"type": "train", "step": step, "epoch": round(step / steps_per_epoch, 4), "lr": lr,
                       "loss": ls / max(ns, 1), "acc": 100 * cs / max(ns, 1), "img_per_s": ips,
                       "elapsed_s": time.perf_counter() - t_train}
                for aux_name, total in aux_sums.items():
                    rec[aux_name] = D.all_reduce_sum([total], info)[0] / max(ns, 1)
                aux_sums = {}
                metrics.write(rec)
                bar.set_postfix_str(f"ep {epoch + 1}/{cfg.epochs} loss {rec['loss']:.3f} acc {rec['acc']:.1f}% "
                                    f"{ips:.0f} img/s lr {lr:.3g}")
                run_loss = run_correct = run_n = 0.0
                t_log, n_log = time.perf_counter(), 0
            if end_of_epoch:
                epoch_iter = None
                if va is not None and ((epoch + 1) % cfg.eval_every == 0 or step == total_steps):
                    ev = evaluate(ema.module if ema else model, va, cfg.img_size, cfg, info, cfg.limit_val, epoch_eval_idx)
                    metrics.write({"type": "val", "step": step, "epoch": epoch + 1, **ev,
                                   "elapsed_s": time.perf_counter() - t_train})
                    bar.write(f"epoch {epoch + 1}/{cfg.epochs}: val top1 {ev['top1']:.2f}% top5 {ev['top5']:.2f}% "
                              f"loss {ev['loss']:.3f} ({ev['images']} images, {ev['seconds']:.1f}s)") if main else None
                    if ev["top1"] > best_top1:
                        best_top1, best_step = ev["top1"], step
                        save("best", step)
            if end_of_epoch or step % cfg.checkpoint_every == 0 or stop_now:
                save("last", step)
            if stop_now:
                status = "interrupted"
                break
    bar.close()
    train_seconds = time.perf_counter() - t_train
    if bad_total:
        say(f"data: skipped {bad_total} bad image(s) while training")
    if status == "interrupted":
        name = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}.get(stop.signal, str(stop.signal))
        say(f"{name}: saved {run_dir / 'last.json'} at step {step}/{total_steps}; continue with "
            f"--resume {run_dir} (or --resume auto)")
        return {"status": status, "signal": stop.signal, "step": step, "run_dir": str(run_dir)}

    # -- final evaluation at several sizes with the same weights
    final_model = ema.module if ema else model
    evals = []
    if va is not None:
        sizes = sorted(set(cfg.eval_sizes) | {cfg.img_size})
        for protocol in cfg.eval_protocols:
            for s in sizes:
                if protocol != "resize" and s == cfg.img_size and "resize" in cfg.eval_protocols:
                    continue  # at the training size both protocols show the same images
                ev = evaluate(final_model, va, s, cfg, info, cfg.limit_val, protocol=protocol, tta=cfg.tta != "none")
                evals.append(ev)
                metrics.write({"type": "final", "step": step, **ev})
    total_seconds = time.perf_counter() - t_start
    summary = {
        "status": status, "model": cfg.model, "params": n_params, "run_dir": str(run_dir), "epochs": cfg.epochs,
        "steps": step, "train_images": len(tr), "val_images": len(va) if va else 0, "train_seconds": train_seconds,
        "total_seconds": total_seconds, "cpu_seconds": time.process_time() - cpu_start, "threads": torch.get_num_threads(),
        "img_per_s": images_done * info.world_size / max(train_seconds, 1e-9) if images_done else None,
        "best_top1": best_top1 if best_top1 >= 0 else None, "best_step": best_step, "final": evals,
        "world_size": info.world_size, "resumed_from": int(resume_doc["step"]) if resume_doc else None,
        "skipped_bad_images": tr.skipped + (va.skipped if va else 0) + bad_total,
        "skipped_nonfinite_steps": skipped_steps,
    }
    if main:
        ckpt.atomic_write(run_dir / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
        try:
            from .plots import plot_run

            plot_run(run_dir)
        except ImportError as e:
            say(f"plots skipped: {e}")
    D.barrier(info)
    return summary


class NonFiniteLossError(FloatingPointError, ValueError):
    """The loss became NaN or inf (``nonfinite_loss=stop``); the message names the step. A ValueError too, so the
    CLI prints one line."""


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def format_summary(summary: dict) -> str:
    """The final table: one line per evaluation size, then the run's totals."""
    lines = []
    if summary.get("final"):
        flip = any("top1_flip" in ev for ev in summary["final"])
        lines.append(f"{'model':<14} {'img_size':>8} {'protocol':>8} {'top1':>7}" + (f" {'flip':>7}" if flip else "")
                     + f" {'top5':>7} {'loss':>7} {'images':>7} {'eval s':>7}")
        for ev in summary["final"]:
            f_col = f" {ev['top1_flip']:>7.2f}" if "top1_flip" in ev else (f" {'':>7}" if flip else "")
            lines.append(f"{summary['model']:<14} {ev['img_size']:>8} {ev.get('protocol', 'resize'):>8} "
                         f"{ev['top1']:>7.2f}{f_col} {ev['top5']:>7.2f} {ev['loss']:>7.3f} {ev['images']:>7} "
                         f"{ev['seconds']:>7.1f}")
        if flip:
            lines.append("flip: top-1 with horizontal-flip test-time augmentation (mean of the two views' logits)")
    ips = summary.get("img_per_s")
    lines.append(f"params {summary['params'] / 1e6:.2f}M | {summary['epochs']} epochs, {summary['steps']} steps, "
                 f"{summary['train_images']} train images | train {summary['train_seconds'] / 60:.1f} min"
                 f"{f' at {ips:.0f} img/s' if ips else ''} | total {summary['total_seconds'] / 60:.1f} min wall, "
                 f"{summary['cpu_seconds'] / 60:.1f} min CPU on {summary['threads']} threads"
                 + (f" | best top1 {summary['best_top1']:.2f}% (step {summary['best_step']})" if summary.get('best_top1') is not None else ""))
    lines.append(f"run folder: {summary['run_dir']}")
    return "\n".join(lines)
