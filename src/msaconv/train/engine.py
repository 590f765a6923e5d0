"""The training engine, read top to bottom as nanoGPT's train.py reads: set-up (run folder, data, model,
optimizer, resume), then the loop of single steps, what happens at the end of an epoch, and the end of the run.

Everything random is a pure function of ``(seed, epoch, step, rank)``: the epoch's permutation, each batch's
augmentation and the torch RNG seen by dropout / drop path (reseeded every step). Together with checkpoints
that hold every optimizer, EMA and schedule tensor, a run resumed after ``kill -9`` ends with the same
weights, bit for bit, as one never interrupted. The data lives in :mod:`.data`, the weight average in
:mod:`.ema`, evaluation in :mod:`.evaluate`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, cast

import torch
import torch.nn.functional as F

from .._provenance import cpu_isa, cpu_model, file_sha256, git_commit
from ..data import derive_seed
from ..layers import MOH_LOAD_BALANCE_WEIGHT, auxiliary_losses
from . import checkpoint as ckpt
from . import distributed as D
from .config import TrainConfig, dump_yaml
from .data import Split, augment, batches, check_splits, epoch_eval_indices, epoch_order, load_split, resolve_data_paths
from .ema import ModelEma
from .evaluate import amp_mode, autocast, evaluate, final_evaluations, native_bf16
from .schedule import lr_at


@dataclass(frozen=True)
class StepPlan:
    """How a run is cut into steps: ``micro`` images per forward on each rank, ``grad_accum`` forwards a step."""

    micro: int
    grad_accum: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @property
    def images_per_step(self) -> int:
        """Images one rank takes in a step."""
        return self.micro * self.grad_accum


@dataclass
class Run:
    """One training run once set up: what every step, end of epoch and the end of the run read and update."""

    cfg: TrainConfig
    info: D.DistInfo
    say: Callable[[str], None]
    run_dir: Path
    tr: Split
    va: Split | None
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: ModelEma | None
    plan: StepPlan
    step: int = 0
    best_top1: float = -1.0
    best_step: int | None = None
    resumed_from: int | None = None
    # training seconds and images of the processes before a resume (from the checkpoint), so a resumed run's
    # summary counts the whole training, not the part since the resume
    seconds_before: float = 0.0
    images_before: int = 0
    time_unknown_before: bool = False  # resumed from a checkpoint that predates the fields above
    ddp: torch.nn.Module = field(init=False)  # the model, in DistributedDataParallel over several processes
    metrics: MetricsLog = field(init=False)
    eval_idx: torch.Tensor | None = None  # the validation images of the per-epoch check (None: all)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights evaluated: the EMA when there is one."""
        return self.ema.module if self.ema else self.model

    @property
    def n_params(self) -> int:
        """The model's parameter count."""
        return sum(p.numel() for p in self.model.parameters())


@dataclass
class Tally:
    """Training figures: sums since the last log line (reset there), and the run's totals."""

    loss: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    aux: dict[str, float] = field(default_factory=dict)  # auxiliary losses (MoH load balance) x images
    log_images: int = 0
    t_log: float = field(default_factory=time.perf_counter)
    t_train: float = field(default_factory=time.perf_counter)
    images: int = 0
    bad: int = 0
    skipped_steps: int = 0
    train_seconds: float = 0.0

    def add(self, loss: float, out: torch.Tensor, y: torch.Tensor) -> None:
        """Count one micro-batch: its summed loss, its top-1 hits, its images."""
        self.loss += loss * len(y)
        self.correct += (out.argmax(1) == y).sum().item()
        self.seen += len(y)
        self.log_images += len(y)
        self.images += len(y)

    def start_log(self) -> None:
        """Begin the sums of the next log line."""
        self.loss = self.correct = self.seen = 0.0
        self.aux = {}
        self.t_log, self.log_images = time.perf_counter(), 0


def train(cfg: TrainConfig, log=None) -> dict:
    """Run (or resume) training as ``cfg`` says; returns the summary dict (also written as summary.json)."""
    info = D.setup()
    try:
        return _train(cfg, info, log)
    finally:
        D.teardown(info)


def _train(cfg: TrainConfig, info: D.DistInfo, log) -> dict:
    """Set up, loop, finish. A mistake in the model's options fails before any data is read."""
    say = (log or (lambda s: print(s, file=sys.stderr, flush=True))) if info.is_main else (lambda s: None)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    _set_threads(cfg, info)
    malloc = _allocator(info, say)
    run_dir, resume_doc = _open_run_dir(cfg, info)
    check_model_config(cfg)
    tr, va, train_path, val_path = _load_data(cfg, info, say)
    backend = _kernel_backend(info, say)
    amp = _precision(cfg, info, say)
    run = _set_up(cfg, info, say, run_dir, resume_doc, tr, va)
    run.metrics = _open_metrics(run, backend, train_path, val_path, amp, malloc)
    run.eval_idx = epoch_eval_indices(cfg, va)
    tally, stopped, signum = _loop(run)
    if stopped:
        return _interrupted(run, signum)
    return _finish(run, tally, t_start, cpu_start)


# --------------------------------------------------------------------------------------------- set-up


def _set_threads(cfg: TrainConfig, info: D.DistInfo) -> None:
    """``cfg.threads`` when set; with several processes on one machine, its cores shared out between them."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif info.world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))


def _allocator(info: D.DistInfo, say) -> str | None:
    """On CPU, glibc's malloc told to keep freed activation memory (``allocator.keep_freed_memory``), said."""
    if torch.device(info.device).type != "cpu":
        return None
    from .allocator import keep_freed_memory

    line = keep_freed_memory()
    say(line)
    return line


def _open_run_dir(cfg: TrainConfig, info: D.DistInfo) -> tuple[Path, dict | None]:
    """The run folder (made, with the config that drives it) and the checkpoint to resume from."""
    run_dir, resume_doc = resolve_run_dir(cfg)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write(run_dir / "config.yaml", dump_yaml(cfg).encode())
    D.barrier(info)
    return run_dir, resume_doc


def _load_data(cfg: TrainConfig, info: D.DistInfo, say) -> tuple[Split, Split | None, str, str | None]:
    """(train split, validation split, their paths). A first use of the CPU kernels compiles them meanwhile,
    in a thread."""
    if torch.device(info.device).type == "cpu":
        from ..ops import prepare

        prepare(background=True)
    train_path, val_path = resolve_data_paths(cfg)
    t0 = time.perf_counter()
    tr = load_split(cfg, train_path, True, cfg.limit_train, say)
    va = load_split(cfg, val_path, False, cfg.limit_val, say) if val_path else None
    check_splits(tr, va, train_path)
    say(f"data: {len(tr)} train images ({train_path}), {len(va) if va else 0} val images"
        f"{f' ({val_path})' if va else ''}, {len(tr.classes)} classes, loaded in {time.perf_counter() - t0:.1f}s")
    return tr, va, train_path, val_path


def _kernel_backend(info: D.DistInfo, say) -> str | None:
    """On CPU, the report of the kernels the model runs on, once their background build is done."""
    if torch.device(info.device).type != "cpu":
        return None
    from ..ops import backend_report

    backend = backend_report()
    say(backend)
    return backend


def _precision(cfg: TrainConfig, info: D.DistInfo, say) -> str:
    """The precision the run computes in (``cfg.amp`` with 'auto' resolved), said at start."""
    amp = amp_mode(cfg, info)
    why = native_bf16(torch.device(info.device))
    reason = (f" (amp=auto: {why} computes bfloat16 natively)" if amp == "bf16" else
              " (amp=auto: this device has no native bfloat16, so float32 is faster)") if cfg.amp == "auto" else ""
    say(f"precision: {'bfloat16 autocast' if amp == 'bf16' else 'float32'}{reason}")
    return amp


def _set_up(cfg: TrainConfig, info: D.DistInfo, say, run_dir: Path, resume_doc: dict | None, tr: Split,
            va: Split | None) -> Run:
    """Model, optimizer, EMA and step plan, with the state of ``resume_doc`` (when given) loaded into them."""
    model = _make_model(cfg, info, len(tr.classes))
    optimizer = make_optimizer(cfg, model)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    run = Run(cfg, info, say, run_dir, tr, va, model, optimizer, ema, plan_steps(cfg, len(tr), info))
    if resume_doc is not None:
        _resume(run, resume_doc)
    run.ddp = _wrap_ddp(model, info)
    return run


def _make_model(cfg: TrainConfig, info: D.DistInfo, num_classes: int) -> torch.nn.Module:
    """The model, its initial weights drawn from ``cfg.seed``, on the device (channels-last when asked)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, num_classes).to(info.device)
    if cfg.channels_last:
        # cast: torch's stubs leave out Module.to's memory_format keyword (torch accepts it)
        model = cast(Any, model).to(memory_format=torch.channels_last)
    return model


def plan_steps(cfg: TrainConfig, n_train: int, info: D.DistInfo) -> StepPlan:
    """Steps per epoch from this rank's share of ``n_train`` images (a last partial step is dropped)."""
    per_rank = len(D.shard(torch.arange(n_train), info))
    steps_per_epoch = max(1, per_rank // (cfg.batch_size * cfg.grad_accum))
    return StepPlan(cfg.batch_size, cfg.grad_accum, steps_per_epoch, steps_per_epoch * cfg.epochs,
                    round(cfg.warmup_epochs * steps_per_epoch))


def _resume(run: Run, doc: dict) -> None:
    """Load weights, optimizer, EMA, step and best score from checkpoint ``doc``; it must cut epochs into as
    many steps as this config does, or the data order would differ."""
    w, _ = ckpt.load_checkpoint_file(doc, "weights")
    run.model.load_state_dict(w)
    state, _ = ckpt.load_checkpoint_file(doc, "state")
    run.optimizer.load_state_dict(ckpt.optimizer_from_flat(state, doc["optimizer"]))
    if run.ema is not None:
        run.ema.module.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("ema.")})
    run.step = run.resumed_from = int(doc["step"])
    run.seconds_before = float(doc.get("train_seconds", 0.0))
    run.images_before = int(doc.get("train_images_seen", 0))
    run.time_unknown_before = run.step > 0 and "train_seconds" not in doc
    run.best_top1 = float(doc.get("best_top1", -1.0))
    run.best_step = doc.get("best_step")
    steps_per_epoch = run.plan.steps_per_epoch
    if doc.get("steps_per_epoch") not in (None, steps_per_epoch):
        raise ValueError(f"--resume: the checkpoint has {doc['steps_per_epoch']} steps per epoch, this "
                         f"config gives {steps_per_epoch}; keep batch_size, grad_accum, limit_train and the "
                         "number of processes of the original run")
    run.say(f"resume: {run.run_dir} from step {run.step} (epoch {run.step / steps_per_epoch:.2f})")


def _wrap_ddp(model: torch.nn.Module, info: D.DistInfo) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else ``model`` itself."""
    if not info.enabled:
        return model
    import warnings

    # 1x1 convolutions' weight gradients arrive with other strides than DDP's buckets: harmless, only a copy
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)


def _open_metrics(run: Run, backend: str | None, train_path: str, val_path: str | None, amp: str,
                  malloc: str | None) -> MetricsLog:
    """metrics.jsonl, cut back to the resumed step, or new with the run's record (machine, data, code)."""
    cfg, info, plan = run.cfg, run.info, run.plan
    metrics = MetricsLog(run.run_dir / "metrics.jsonl", info.is_main, run.resumed_from)
    if info.is_main and run.resumed_from is None:
        metrics.write({**_run_record(run, backend, train_path, val_path, amp), "malloc": malloc})
    run.say(f"model: {cfg.model} {run.n_params / 1e6:.2f}M params; {cfg.epochs} epochs x {plan.steps_per_epoch} "
            f"steps, batch {plan.micro}x{cfg.grad_accum}x{info.world_size}, {cfg.optimizer} lr {cfg.lr}, "
            f"{torch.get_num_threads()} threads; run folder {run.run_dir}")
    return metrics


# ----------------------------------------------------------------------------------------------- loop


def _loop(run: Run) -> tuple[Tally, bool, int | None]:
    """Steps until the last one or a stop signal on any rank: (figures, stopped early, the signal seen here)."""
    from tqdm import tqdm

    cfg, plan = run.cfg, run.plan
    bar = tqdm(total=plan.total_steps, initial=run.step, disable=not (run.info.is_main and cfg.progress),
               unit="step", dynamic_ncols=True, file=sys.stderr, smoothing=0.05)
    tally, stop_now = Tally(), False
    run.ddp.train()
    with _Stop() as stop:
        epoch_iter = None
        while run.step < plan.total_steps and not stop_now:
            epoch, it = divmod(run.step, plan.steps_per_epoch)
            if epoch_iter is None:
                epoch_iter = _epoch_batches(run, epoch, it)
            lr = _step(run, tally, epoch_iter, epoch, it)
            run.step += 1
            ckpt.fault_point("step")
            bar.update(1)
            stop_now = D.any_flag(stop.signal is not None, run.info)
            end_of_epoch = run.step % plan.steps_per_epoch == 0
            if run.step % cfg.log_every == 0 or end_of_epoch or run.step == plan.total_steps or stop_now:
                _log_train(run, tally, bar, lr, epoch)
            if end_of_epoch:
                epoch_iter = None
                _end_of_epoch(run, tally, bar, epoch)
            if end_of_epoch or run.step % cfg.checkpoint_every == 0 or stop_now:
                _save(run, tally, "last")
    bar.close()
    tally.train_seconds = time.perf_counter() - tally.t_train
    if tally.bad:
        run.say(f"data: skipped {tally.bad} bad image(s) while training")
    return tally, stop_now, stop.signal


def _epoch_batches(run: Run, epoch: int, it: int) -> Iterator:
    """This rank's micro-batches of ``epoch`` from step ``it`` on."""
    per_step = run.plan.images_per_step
    order = epoch_order(len(run.tr), run.cfg, run.info, epoch, run.plan.steps_per_epoch * per_step, it * per_step)
    return batches(run.tr, order, run.plan.micro, run.cfg, epoch)


# ------------------------------------------------------------------------------------------- one step


def _step(run: Run, tally: Tally, epoch_iter: Iterator, epoch: int, it: int) -> float:
    """One optimizer step: ``grad_accum`` micro-batches forward and backward, then the update; a loss that is
    not finite on any rank stops the run or skips the update (``nonfinite_loss``). Returns the step's lr."""
    cfg, info = run.cfg, run.info
    torch.manual_seed(derive_seed(cfg.seed, epoch, it, info.rank, 0xD0))
    lr = lr_at(run.step, cfg.schedule, cfg.lr, run.plan.warmup_steps, run.plan.total_steps, cfg.min_lr_ratio)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    nonfinite = None
    for m in range(cfg.grad_accum):
        x, y, nbad = next(epoch_iter)
        tally.bad += nbad
        if len(y) == 0:
            continue
        value = _forward_backward(run, tally, x, y, epoch, it, m, backward=nonfinite is None)
        if not math.isfinite(value) and nonfinite is None:
            nonfinite = value
    if D.any_flag(nonfinite is not None, info):
        _skip_or_stop(run, tally, nonfinite if nonfinite is not None else math.nan, epoch, it)
    else:
        _update(run)
    return lr


def _forward_backward(run: Run, tally: Tally, x: torch.Tensor, y: torch.Tensor, epoch: int, it: int, m: int,
                      backward: bool) -> float:
    """Augment micro-batch ``m`` and run it forward; unless ``backward`` is False or the loss is not finite,
    run it backward too (gradients summed over the step) and count it. Returns the loss.

    After a non-finite loss the step's later micro-batches are still read and run forward, so the data order
    and the auxiliary-loss sums are those of any other step."""
    cfg, info = run.cfg, run.info
    x, target = augment(x, y, len(run.tr.classes), cfg, epoch, it, m, info.rank)
    x, y, target = x.to(info.device), y.to(info.device), target.to(info.device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    aux_weight = MOH_LOAD_BALANCE_WEIGHT if cfg.aux_loss_weight is None else cfg.aux_loss_weight
    with _no_sync(run, last=m == cfg.grad_accum - 1):
        with autocast(cfg, info):
            out = run.ddp(x)
        loss = torch.sum(-target * F.log_softmax(out.float(), dim=-1), dim=-1).mean()
        for name, aux in auxiliary_losses(run.model).items():
            loss = loss + aux_weight * aux
            tally.aux[name] = tally.aux.get(name, 0.0) + aux.item() * len(y)
        value = loss.item()
        if not backward or not math.isfinite(value):
            return value
        (loss / cfg.grad_accum).backward()
    tally.add(value, out, y)
    return value


def _no_sync(run: Run, last: bool) -> ContextManager[Any]:
    """DDP's ``no_sync()`` for each micro-batch but a step's last, so gradients are all-reduced once a step."""
    if run.info.enabled and not last:  # info.enabled: ddp is the DistributedDataParallel wrapper
        return cast(torch.nn.parallel.DistributedDataParallel, run.ddp).no_sync()
    return contextlib.nullcontext()


def _update(run: Run) -> None:
    """Clip (when set), step the optimizer, clear the gradients, move the EMA."""
    if run.cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip_grad)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(run.model)


def _skip_or_stop(run: Run, tally: Tally, loss: float, epoch: int, it: int) -> None:
    """A non-finite ``loss`` at this step: record it, then raise (``nonfinite_loss=stop``, nothing saved) or
    drop the step's gradients (``skip``)."""
    cfg, plan, step = run.cfg, run.plan, run.step + 1
    where = (f"loss is {loss} at step {step}/{plan.total_steps} (epoch {epoch + 1}, batch {it + 1} "
             f"of {plan.steps_per_epoch})")
    run.metrics.write({"type": "nonfinite", "step": step, "loss": str(loss), "action": cfg.nonfinite_loss})
    if cfg.nonfinite_loss == "stop":
        last = ckpt.read_checkpoint(run.run_dir / "last.json") if run.info.is_main else None
        kept = (f"the last good checkpoint {str(run.run_dir / 'last.json')!r} (step {last['step']}) is kept"
                if last else "no checkpoint was written before it")
        raise NonFiniteLossError(
            f"train: {where}; stopped without saving, {kept}. Lower lr, set clip_grad, check the data, "
            "or set nonfinite_loss=skip to skip such batches")
    run.say(f"train: {where}; batch skipped (nonfinite_loss=skip), weights unchanged")
    tally.skipped_steps += 1
    run.optimizer.zero_grad(set_to_none=True)


def _log_train(run: Run, tally: Tally, bar, lr: float, epoch: int) -> None:
    """A metrics line of the steps since the last one (summed over ranks), and the progress bar's text."""
    info = run.info
    ls, cs, ns, nl = D.all_reduce_sum([tally.loss, tally.correct, tally.seen, float(tally.log_images)], info)
    ips = nl / max(time.perf_counter() - tally.t_log, 1e-9)
    rec = {"type": "train", "step": run.step, "epoch": round(run.step / run.plan.steps_per_epoch, 4), "lr": lr,
           "loss": ls / max(ns, 1), "acc": 100 * cs / max(ns, 1), "img_per_s": ips,
           "elapsed_s": time.perf_counter() - tally.t_train}
    for name, total in tally.aux.items():
        rec[name] = D.all_reduce_sum([total], info)[0] / max(ns, 1)
    run.metrics.write(rec)
    bar.set_postfix_str(f"ep {epoch + 1}/{run.cfg.epochs} loss {rec['loss']:.3f} acc {rec['acc']:.1f}% "
                        f"{ips:.0f} img/s lr {lr:.3g}")
    tally.start_log()


# ------------------------------------------------------------------------------------------ epoch end


def _end_of_epoch(run: Run, tally: Tally, bar, epoch: int) -> None:
    """Every ``eval_every`` epochs and after the last: evaluate, log, and keep the best weights as 'best'."""
    cfg = run.cfg
    if run.va is None or not ((epoch + 1) % cfg.eval_every == 0 or run.step == run.plan.total_steps):
        return
    ev = evaluate(run.eval_model, run.va, cfg.img_size, cfg, run.info, cfg.limit_val, run.eval_idx)
    run.metrics.write({"type": "val", "step": run.step, "epoch": epoch + 1, **ev,
                       "elapsed_s": time.perf_counter() - tally.t_train})
    if run.info.is_main:
        bar.write(f"epoch {epoch + 1}/{cfg.epochs}: val top1 {ev['top1']:.2f}% top5 {ev['top5']:.2f}% "
                  f"loss {ev['loss']:.3f} ({ev['images']} images, {ev['seconds']:.1f}s)")
    if ev["top1"] > run.best_top1:
        run.best_top1, run.best_step = ev["top1"], run.step
        _save(run, tally, "best")


def _save(run: Run, tally: Tally, tag: str) -> None:
    """Checkpoint ``tag`` ('last' / 'best') at the current step, written by rank 0 while the others wait."""
    if run.info.is_main:
        epoch = run.step // run.plan.steps_per_epoch
        ckpt.save_checkpoint(
            run.run_dir, tag, step=run.step, model_state=run.model.state_dict(),
            model_meta=model_meta(run.cfg, run.tr.classes, run.step, epoch),
            optimizer_state=run.optimizer.state_dict(), ema_state=run.ema.module.state_dict() if run.ema else None,
            info=_checkpoint_info(run, tally, epoch))
    D.barrier(run.info)


def _checkpoint_info(run: Run, tally: Tally, epoch: int) -> dict:
    """What a checkpoint records beside the tensors: position, best score, schedule, RNG scheme."""
    cfg, plan = run.cfg, run.plan
    seconds, images = _trained(run, tally)
    return {"epoch": epoch, "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
            "train_seconds": seconds, "train_images_seen": images,
            "best_top1": run.best_top1, "best_step": run.best_step,
            "scheduler": {"name": cfg.schedule, "lr": cfg.lr, "warmup_steps": plan.warmup_steps,
                          "total_steps": plan.total_steps, "min_lr_ratio": cfg.min_lr_ratio, "step": run.step},
            "rng": {"scheme": "derived from (seed, epoch, step, rank): permutation, augmentation and "
                              "torch.manual_seed each step", "seed": cfg.seed},
            "world_size": run.info.world_size}


def _trained(run: Run, tally: Tally) -> tuple[float, int]:
    """(seconds, images) trained so far by this run, the processes before a resume included (images per rank)."""
    now = tally.train_seconds or time.perf_counter() - tally.t_train
    return run.seconds_before + now, run.images_before + tally.images


# -------------------------------------------------------------------------------------------- run end


def _interrupted(run: Run, signum: int | None) -> dict:
    """A run stopped by SIGINT / SIGTERM: its last checkpoint is saved; say how to continue it."""
    name = signal.Signals(signum).name if signum in (signal.SIGINT, signal.SIGTERM) else str(signum)
    run.say(f"{name}: saved {run.run_dir / 'last.json'} at step {run.step}/{run.plan.total_steps}; continue with "
            f"--resume {run.run_dir} (or --resume auto)")
    return {"status": "interrupted", "signal": signum, "step": run.step, "run_dir": str(run.run_dir)}


def _finish(run: Run, tally: Tally, t_start: float, cpu_start: float) -> dict:
    """The final evaluations (several sizes, same weights), summary.json and the plots; ``t_start`` /
    ``cpu_start`` are the wall and CPU clocks when the run began."""
    evals = []
    if run.va is not None:
        for ev in final_evaluations(run.eval_model, run.va, run.cfg, run.info, run.tr):
            evals.append(ev)
            run.metrics.write({"type": "final", "step": run.step, **ev})
    summary = _summary(run, tally, evals, time.perf_counter() - t_start, time.process_time() - cpu_start)
    if run.info.is_main:
        ckpt.atomic_write(run.run_dir / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
        try:
            from .plots import plot_run

            plot_run(run.run_dir)
        except ImportError as e:
            run.say(f"plots skipped: {e}")
    D.barrier(run.info)
    return summary


def _summary(run: Run, tally: Tally, evals: list[dict], total_seconds: float, cpu_seconds: float) -> dict:
    """summary.json: what ran, how long it took, its best and final scores, what was skipped."""
    cfg, info, va = run.cfg, run.info, run.va
    seconds, images = _trained(run, tally)
    return {
        "status": "finished", "model": cfg.model, "params": run.n_params, "run_dir": str(run.run_dir),
        "epochs": cfg.epochs, "steps": run.step, "train_images": len(run.tr), "val_images": len(va) if va else 0,
        "train_seconds": seconds, "total_seconds": total_seconds, "cpu_seconds": cpu_seconds,
        "threads": torch.get_num_threads(), "img_per_s": images * info.world_size / max(seconds, 1e-9) if images else None,
        "best_top1": run.best_top1 if run.best_top1 >= 0 else None, "best_step": run.best_step, "final": evals,
        "world_size": info.world_size, "resumed_from": run.resumed_from,
        # train_seconds then counts only the training since the resume (the checkpoint did not carry the time)
        **({"train_seconds_partial": True} if run.time_unknown_before else {}),
        "skipped_bad_images": run.tr.skipped + (va.skipped if va else 0) + tally.bad,
        "skipped_nonfinite_steps": tally.skipped_steps,
    }


# ----------------------------------------------------------------------------------- model, optimizer


def build_model(cfg: TrainConfig, num_classes: int | None) -> torch.nn.Module:
    """The model ``cfg.model`` names, with ``cfg.model_kwargs`` and ``num_classes`` outputs."""
    from ..models import create_model_from_config

    return create_model_from_config(cfg.model, cfg.model_kwargs, num_classes)


def check_model_config(cfg: TrainConfig) -> None:
    """Build the model on the meta device (no memory, no data): a bad ``model_kwargs`` key or value fails
    here, with the model config's did-you-mean, before any data is read."""
    try:
        with torch.device("meta"):
            model = build_model(cfg, None)
    except (ValueError, TypeError):
        raise
    except Exception:  # noqa: BLE001 - an op the meta device lacks: the real build below checks the same config
        return
    check_size_slots(cfg, model)


def check_size_slots(cfg: TrainConfig, model: torch.nn.Module) -> None:
    """Multi-size training into per-size BatchNorm statistics needs a slot per training size: refused here, not
    at the first step of the size that finds none free."""
    from ..layers import SizeBatchNorm2d

    slots = [m.slots for m in model.modules() if isinstance(m, SizeBatchNorm2d)]
    sizes = sorted(set(cfg.train_sizes or [cfg.img_size]))
    if slots and len(sizes) > min(slots):
        raise ValueError(f"train_sizes: {len(sizes)} sizes ({', '.join(map(str, sizes))}), but {cfg.model}'s BatchNorm "
                         f"keeps statistics for {min(slots)} (size_bn={min(slots)}); give at most {min(slots)} sizes or "
                         f"--set model_kwargs.size_bn={len(sizes)}")


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
    """SGD or AdamW, as ``cfg.optimizer`` says, over :func:`param_groups`."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               foreach=False)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), foreach=False)


# ----------------------------------------------------------------------- run folder, records, signals


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


def _run_record(run: Run, backend: str | None, train_path: str, val_path: str | None, amp: str) -> dict:
    """The first metrics line of a run: software, machine, command, data files (with their hashes)."""
    info, va = run.info, run.va
    return {"type": "run", "step": 0, "model": run.cfg.model, "params": run.n_params, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "world_size": info.world_size, "git": git_commit(),
            "command": " ".join(sys.argv), "train_images": len(run.tr), "val_images": len(va) if va else 0,
            "backend": backend, "amp": amp, **cpu_description(), "train_data": train_path,
            "train_sha256": file_sha256(train_path), "val_data": val_path, "val_sha256": file_sha256(val_path)}


def cpu_description() -> dict[str, str | None]:
    """The CPU's model name and the vector instruction set torch's kernels use on it (``AVX2``, ``AVX512``):
    what every speed figure must name."""
    return {"cpu_model": cpu_model() or None, "isa": cpu_isa()}


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


class NonFiniteLossError(FloatingPointError, ValueError):
    """The loss became NaN or inf (``nonfinite_loss=stop``); the message names the step. A ValueError too, so the
    CLI prints one line."""



def format_summary(summary: dict) -> str:
    """The final table: one line per evaluation size, then the run's totals."""
    lines = []
    if summary.get("final"):
        final = summary["final"]
        cols = [k for k in ("top1_flip", "top1_recal", "top1_flip_recal") if any(k in ev for ev in final)]
        names = {"top1_flip": "flip", "top1_recal": "recal", "top1_flip_recal": "r+flip"}
        lines.append(f"{'model':<14} {'img_size':>8} {'protocol':>8} {'top1':>7}" + "".join(f" {names[c]:>7}" for c in cols)
                     + f" {'top5':>7} {'loss':>7} {'images':>7} {'eval s':>7}")
        for ev in final:
            extra = "".join(f" {ev[c]:>7.2f}" if c in ev else f" {'':>7}" for c in cols)
            lines.append(f"{summary['model']:<14} {ev['img_size']:>8} {ev.get('protocol', 'resize'):>8} "
                         f"{ev['top1']:>7.2f}{extra} {ev['top5']:>7.2f} {ev['loss']:>7.3f} {ev['images']:>7} "
                         f"{ev['seconds'] + ev.get('recal_seconds', 0):>7.1f}")
        if "top1_flip" in cols:
            lines.append("flip: top-1 with horizontal-flip test-time augmentation (mean of the two views' logits)")
        if "top1_recal" in cols:
            n = next(ev["recal_images"] for ev in final if "recal_images" in ev)
            lines.append(f"recal: top-1 with BatchNorm statistics re-estimated at that size from {n} training images "
                         "(no labels, no gradient; the weights are the trained ones); r+flip: the same with flip"
                         if n else "recal: the model has no BatchNorm, so nothing to re-estimate: the trained figures")
    ips = summary.get("img_per_s")
    lines.append(f"params {summary['params'] / 1e6:.2f}M | {summary['epochs']} epochs, {summary['steps']} steps, "
                 f"{summary['train_images']} train images | train {summary['train_seconds'] / 60:.1f} min"
                 f"{f' at {ips:.0f} img/s' if ips else ''} | total {summary['total_seconds'] / 60:.1f} min wall, "
                 f"{summary['cpu_seconds'] / 60:.1f} min CPU on {summary['threads']} threads"
                 + (f" | best top1 {summary['best_top1']:.2f}% (step {summary['best_step']})" if summary.get('best_top1') is not None else ""))
    lines.append(f"run folder: {summary['run_dir']}")
    return "\n".join(lines)
