"""What every experiment shares: the training budget and its knobs, a pool of training workers, JSON lines
(with the environment stamp of :mod:`msaconv.bench.common`), mean and spread, markdown tables and links.

Training always goes through the public engine (:func:`msaconv.train.engine.train`) with a
:class:`~msaconv.train.config.TrainConfig` built from the ``tic_nano`` recipe (the main job's optimiser and
one-cycle schedule) with the budget's epochs, images and a warm-up scaled to the same share of the run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

RESULTS_DIR = Path("results")
SCRATCH_DIR = Path("runs") / "experiments"  # checkpoints: git-ignored, reused by later experiments
RECIPE = "tic_nano"  # optimiser and schedule of every experiment's training
RECIPE_EPOCHS, RECIPE_WARMUP = 12, 0.5  # the recipe's warm-up share (0.5 of 12 epochs) is kept


def default_output(name: str) -> Path:
    return RESULTS_DIR / name / "records.jsonl"


# --------------------------------------------------------------------------------------------- budget


@dataclass
class Budget:
    """One training budget for every model of an experiment (same images, epochs, batch and schedule)."""

    epochs: int = 3
    limit_train: int | None = 10000
    limit_val: int | None = None  # None: the whole 10,000-image test set
    batch_size: int = 128
    data: str = "embedded"  # 'embedded' (the 20,000-image subset in the package) or a zip / ImageFolder path
    threads: int = 1  # torch threads per worker
    img_size: int = 32

    def resolved_data(self) -> str:
        """``data`` checked: 'embedded', or a path that exists (never a silent fallback to another data set)."""
        if self.data == "embedded":
            return self.data
        if not Path(self.data).exists():
            raise ValueError(f"--data: {self.data!r} does not exist (from {Path.cwd()}); pass the CIFAR-10 train zip, "
                             f"e.g. --data ../shared/data/cifar10/train.zip, an ImageFolder dir, or --data embedded")
        return str(Path(self.data).resolve())

    def as_dict(self) -> dict:
        return {**asdict(self), "data": self.resolved_data()}


SMOKE: dict[str, Any] = dict(epochs=1, limit_train=192, limit_val=96, batch_size=64, data="embedded", threads=1)


def add_budget_arguments(p: argparse.ArgumentParser, seeds: int = 3, workers: int = 2, **defaults) -> None:
    """The knobs of a training budget (``--epochs``, ``--limit-train``, ...), ``--smoke``, ``--output``."""
    b = Budget(**defaults)
    g = p.add_argument_group("budget (the same for every model of the experiment)")
    g.add_argument("--epochs", type=int, default=b.epochs, help="training epochs (default %(default)s)")
    g.add_argument("--limit-train", type=_int_or_none, default=b.limit_train,
                   help="training images, a class-balanced subset chosen by the seed ('none': all; default %(default)s)")
    g.add_argument("--limit-val", type=_int_or_none, default=b.limit_val,
                   help="test images, always the same subset ('none': all 10,000; default %(default)s)")
    g.add_argument("--batch-size", type=int, default=b.batch_size, help="default %(default)s")
    g.add_argument("--data", default=b.data,
                   help="'embedded' (default: the 20,000-image subset in the package) or a zip / ImageFolder dir, e.g. "
                        "../shared/data/cifar10/train.zip (an error if it does not exist); evaluation is always the "
                        "embedded 10,000-image test set; records store the data's SHA-256 and image count")
    g.add_argument("--seeds", type=int, default=seeds, help="seeds 0..N-1 per configuration (default %(default)s)")
    g.add_argument("--workers", type=int, default=workers,
                   help="parallel training processes (default %(default)s; 1 runs in this process)")
    g.add_argument("--threads", type=int, default=b.threads, help="torch threads per worker (default %(default)s)")
    p.add_argument("--smoke", action="store_true",
                   help=f"a tiny run for CI: {SMOKE['limit_train']} images, {SMOKE['epochs']} epoch, 1 seed, few configs")
    p.add_argument("--output", default=None, help="JSON lines to append to (default results/<experiment>/records.jsonl)")
    p.add_argument("--scratch", default=str(SCRATCH_DIR),
                   help="where checkpoints go, reused by later experiments (default %(default)s, git-ignored)")
    p.add_argument("--fresh", action="store_true",
                   help="retrain even when a finished run with the same config is in --scratch")


def _int_or_none(text: str) -> int | None:
    return None if text.lower() in ("none", "all", "0") else int(text)


def budget_from_args(args: argparse.Namespace) -> Budget:
    if args.smoke:
        b = Budget(**SMOKE)
        args.seeds = 1
        args.workers = 1
        return b
    for k in ("epochs", "batch_size", "seeds", "workers", "threads"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    return Budget(epochs=args.epochs, limit_train=args.limit_train, limit_val=args.limit_val,
                  batch_size=args.batch_size, data=args.data, threads=args.threads)


def output_path(args: argparse.Namespace, name: str) -> Path:
    return Path(args.output) if args.output else default_output(name)


def scratch_dir(args: argparse.Namespace, name: str) -> Path:
    return Path(args.scratch) / (f"{name}-smoke" if args.smoke else name)


def command_line() -> str:
    return " ".join(["msaconv", *sys.argv[1:]])


# ------------------------------------------------------------------------------------------- training


def train_config(model: str, model_kwargs: dict, seed: int, budget: Budget, output: Path, name: str):
    """The :class:`TrainConfig` of one run: the tic_nano recipe scaled to the budget."""
    from ..data import embedded_path
    from ..train.config import resolve

    data = budget.resolved_data()
    flags = {
        "model": model, "model_kwargs": dict(model_kwargs), "data": data,
        "val_data": "auto" if data == "embedded" else str(embedded_path("test")),
        "epochs": budget.epochs, "limit_train": budget.limit_train, "limit_val": budget.limit_val,
        "batch_size": budget.batch_size, "warmup_epochs": budget.epochs * RECIPE_WARMUP / RECIPE_EPOCHS,
        "img_size": budget.img_size, "eval_sizes": [budget.img_size], "eval_every": budget.epochs,
        "epoch_eval_images": 200, "eval_batch_size": 250, "seed": seed, "output": str(output), "name": name,
        "threads": budget.threads, "progress": False, "log_every": 50, "checkpoint_every": 10**6,
    }
    return resolve(RECIPE, flags=flags)


_COMPARED = ("model", "model_kwargs", "data", "val_data", "epochs", "limit_train", "limit_val", "batch_size", "lr",
             "warmup_epochs", "schedule", "optimizer", "img_size", "seed", "weight_decay", "label_smoothing")


def _finished_summary(run_dir: Path, cfg) -> dict | None:
    """The summary of a finished run in ``run_dir`` made with the same config (None: train it)."""
    import yaml

    s, c = run_dir / "summary.json", run_dir / "config.yaml"
    if not (s.is_file() and c.is_file()):
        return None
    try:
        old = yaml.safe_load(c.read_text())
        summary = json.loads(s.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    new = cfg.to_dict()
    if summary.get("status") != "finished" or any(old.get(k) != new.get(k) for k in _COMPARED):
        return None
    return summary


def train_job(job: dict) -> dict:
    """Train (or reuse) one run; returns its record. A top-level function, so a process pool can run it.

    ``job``: ``experiment, config, seed, model, model_kwargs, budget (dict), scratch, fresh, extra``.
    """
    import torch

    from ..train.engine import train
    from . import _models  # noqa: F401  (registers the experiment-only models in this process)

    fields: dict[str, Any] = job["budget"]
    budget = Budget(**fields)
    torch.set_num_threads(budget.threads)
    name = job.get("run_name") or f"{job['config']}-s{job['seed']}"
    cfg = train_config(job["model"], job["model_kwargs"], job["seed"], budget, Path(job["scratch"]), name)
    run_dir = Path(job["scratch"]) / name
    summary = None if job.get("fresh") else _finished_summary(run_dir, cfg)
    reused = summary is not None
    if summary is None:
        summary = train(cfg, log=lambda s: None)
    final = next((e for e in summary.get("final", []) if e["img_size"] == budget.img_size), None)
    if final is None:
        raise ValueError(f"experiment {job['experiment']}: run {name} has no final evaluation at {budget.img_size} px")
    return {
        "experiment": job["experiment"], "config": job["config"], "seed": job["seed"], "model": job["model"],
        "model_kwargs": job["model_kwargs"], "top1": final["top1"], "top5": final["top5"], "loss": final["loss"],
        "val_images": final["images"], "train_images": summary["train_images"], "epochs": summary["epochs"],
        "steps": summary["steps"], "train_seconds": summary["train_seconds"],
        "total_seconds": summary["total_seconds"], "img_per_s": summary["img_per_s"], "params": summary["params"],
        "threads": summary["threads"], "checkpoint": str(run_dir), "reused_checkpoint": reused,
        "budget": budget.as_dict(), **data_identity(run_dir), **job.get("extra", {}),
    }


def data_identity(run_dir: Path) -> dict:
    """The training and test data of a run, from its metrics log's first line: paths and SHA-256 (the image
    counts are the record's ``train_images`` / ``val_images``)."""
    try:
        first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    except (OSError, IndexError, ValueError):
        return {}
    return {k: first.get(k) for k in ("train_data", "train_sha256", "val_data", "val_sha256")}


def safe_train_job(job: dict) -> dict:
    """:func:`train_job`, with a failure returned as a record holding ``error`` (one bad run does not stop the rest)."""
    try:
        return train_job(job)
    except Exception as e:  # noqa: BLE001 - recorded, with its type, as the run's result
        return {"experiment": job["experiment"], "config": job["config"], "seed": job["seed"], "model": job["model"],
                "model_kwargs": job["model_kwargs"], "budget": job["budget"], "error": f"{type(e).__name__}: {e}",
                **job.get("extra", {})}


def run_jobs(jobs: Sequence[dict], workers: int, on_record: Callable[[dict], None],
             job_fn: Callable[[dict], dict] = safe_train_job) -> list[dict]:
    """Run ``jobs`` (``workers`` processes; 1: in this process), calling ``on_record`` as each one finishes."""
    out: list[dict] = []
    t0 = time.perf_counter()

    def done(rec: dict) -> None:
        out.append(rec)
        on_record(rec)
        top = f"top1 {rec['top1']:.2f}% " if isinstance(rec.get("top1"), (int, float)) else ""
        top += f"ERROR {rec['error']} " if rec.get("error") else ""
        print(f"[{len(out)}/{len(jobs)} {time.perf_counter() - t0:6.0f}s] {rec.get('config')} seed {rec.get('seed')}: "
              f"{top}{'(reused checkpoint)' if rec.get('reused_checkpoint') else ''}", file=sys.stderr, flush=True)

    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            done(job_fn(j))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(job_fn, j) for j in jobs]
        for f in as_completed(futures):
            done(f.result())
    return out


# ----------------------------------------------------------------------------------------- records


def stamp(experiment: str, smoke: bool) -> dict:
    """The environment every record carries (torch, CPU, threads, git commit, the command, the time)."""
    from ..bench.common import environment

    return {"experiment": experiment, "smoke": bool(smoke), "env": environment(command_line())}


def append(path: Path, records: Iterable[dict]) -> None:
    from ..bench.common import write_jsonl

    write_jsonl(path, records, append=True)


def read_records(path: str | Path) -> list[dict]:
    from ..bench.common import read_jsonl

    p = Path(path)
    return list(read_jsonl(p)) if p.is_file() else []


def latest_batch(records: list[dict], key: Callable[[dict], Any]) -> list[dict]:
    """Keep the last record of each ``key`` (a rerun supersedes older lines of the same config and seed)."""
    last: dict = {}
    for r in records:
        last[key(r)] = r
    return list(last.values())


def commands(records: list[dict]) -> list[str]:
    seen: list[str] = []
    for r in records:
        c = r.get("env", {}).get("command")
        if c and c not in seen:
            seen.append(c)
    return seen


def provenance(records: list[dict]) -> str:
    """The markdown lines saying which command(s), commit(s) and machine made ``records``."""
    cmds = commands(records)
    envs = [r.get("env", {}) for r in records]
    commits = sorted({e.get("git_commit", "?") for e in envs})
    cpus = sorted({e.get("cpu", "?") for e in envs})
    times = sorted(e.get("time_utc", "") for e in envs if e.get("time_utc"))
    lines = ["Produced by " + ", ".join(f"`{c}`" for c in cmds) + "." if cmds else "Produced by: (no command recorded)."]
    lines.append(f"{len(records)} records; git {', '.join(commits)}; torch {envs[0].get('torch', '?') if envs else '?'}; "
                 f"{', '.join(cpus)}" + (f"; {times[0]} to {times[-1]} UTC." if times else "."))
    if any(r.get("smoke") for r in records):
        lines.append("**Smoke records** (a few images and steps, for CI): the numbers mean nothing.")
    return "\n\n".join(lines)


def mean_spread(xs: Sequence[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min, max and n of ``xs`` (NaN-free)."""
    v = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "min": min(v),
            "max": max(v), "n": len(v)}


def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "-" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align``: one of 'l'/'r' per column (default: first left, rest right)."""
    al = align or "l" + "r" * (len(headers) - 1)
    sep = ["---" if a == "l" else "---:" for a in al]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


def image(figdir: Path, filename: str, alt: str) -> str:
    """A markdown image link to ``figdir/filename`` (the report rewrites it relative to the document)."""
    return f"![{alt}]({(Path(figdir) / filename).as_posix()})"


def plt():
    """matplotlib's pyplot with the non-interactive backend (None when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        return None
    return pyplot


def env_summary(records: list[dict]) -> dict:
    e = records[0].get("env", {}) if records else {}
    return {k: e.get(k) for k in ("torch", "cpu", "threads", "git_commit", "cpu_count")}


def load_average() -> float | None:
    from ..bench.common import load_average as la

    return la()
