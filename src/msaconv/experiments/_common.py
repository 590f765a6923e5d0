"""What every experiment shares: the training budget, one training run (cached and resumable), JSON lines
(with the environment stamp of :mod:`msaconv.bench.common`), paired statistics and markdown.

**The budget.** Every run trains with its family's recipe scaled to the budget: the budget's epochs and
batch (``BATCH``, 256; the main job has trained at 128 since the recipe A/B), the recipe's warm-up kept at
the same share of the run, all 20,000 embedded training images, the final evaluation on all 10,000 test images. The ConvNets (``tic_conv_nano`` and its variants,
``convnet_nano``) train with the main job's recipe (``tic_conv_nano.yaml``: SGD with Nesterov momentum,
lr 0.2); the transformers (every :class:`~msaconv.models.HierConfig` model: ``tic_nano``, the ViTs, the
``hier_nano`` mixers) with ``tic_nano.yaml`` (AdamW, lr 3e-3, weight decay 0.05), because SGD at lr 0.2
sends ``tic_nano``'s loss to NaN within the first epoch (steps 64-77 of 390, the reference backend too).
Both recipes share the schedule (one-cycle), label smoothing 0.1 and the augmentation (random crop + flip).
A run is fixed-size (32 px, ``mode='fixed'``) or multi-size (``mode='multi'``: the engine's ``train_sizes``
24, 32, 40). Its final evaluations at every
(size, protocol) the experiment asks for come from the run itself (the engine's ``eval_sizes`` and
``eval_protocols``).

**One run, once.** A run's folder under ``--scratch`` is named by the model, the mode, the seed and a hash
of every training setting (evaluation settings left out), so two experiments that need the same training
share one run: the second reuses the finished run (evaluating only the (size, protocol) pairs the first
did not ask for, from the run's final weights). A run killed midway continues from its last epoch
checkpoint. An experiment skips every (arm, mode, seed) that already has a record at the same budget in
its records file, so rerunning the same command resumes the experiment.

**Records of older budgets.** A record whose budget names no ``recipe`` was made by an earlier version of
these experiments, at a budget too short to decide anything; the report keeps such records out of every
table and lists them apart as superseded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

RESULTS_DIR = Path("results")
SCRATCH_DIR = Path("runs") / "experiments"  # run folders: git-ignored, shared by the experiments
RECIPE = "tic_conv_nano"  # the main job's recipe: optimiser, schedule, augmentation of the ConvNet arms
TRANSFORMER_RECIPE = "tic_nano"  # the transformer arms' (HierConfig models): SGD at lr 0.2 diverges on tic_nano
DEFAULT_MODEL = "tic_conv_nano"  # the default TiC: the main job's model, fixed 32 px training
DEFAULT_EPOCHS = 5  # 4 epochs gave the default arm 69.88 +- 0.21% (2 seeds): below BAR
BATCH = 256  # every experiment's batch: the recipe's until the recipe A/B moved the main job to 128 (batch128 arm);
# kept at 256 so the records made before stay one comparable set (the A/B's own arms are the comparison)
BAR = 70.0  # the default arm's top-1 (%) the budget must reach for its differences to mean anything
EVAL_SIZES = (16, 24, 32, 40, 48, 64)
PROTOCOLS = ("resize", "canvas")
# a protocol with BatchNorm statistics re-estimated at the size (msaconv.train.evaluate.recalibrated) is read from the
# evaluation's *_recal figures and named '<protocol>+bn'; RECAL_IMAGES training images re-estimate them
RECAL = "+bn"
RECAL_IMAGES = 2000
EVAL_KEYS = ("img_size", "protocol", "top1", "top5", "loss", "images", "seconds", "top1_recal", "top5_recal",
             "loss_recal", "recal_images", "recal_seconds")
MULTI_SIZES = (24, 32, 40)  # multi-size training: one of these per step
MODES = {"fixed": None, "multi": list(MULTI_SIZES)}  # mode -> the engine's train_sizes
SMOKE_EVAL_SIZES = (16, 32, 48)
EPOCH_EVAL_IMAGES = 500  # the engine's end-of-epoch check (once, at the end); the record uses the final evaluations
# TrainConfig keys that only say how a run is evaluated, logged, laid out in memory or where it goes: not part
# of the run's identity (channels_last, like threads, only changes how the sums round)
NOT_TRAINING = ("output", "name", "resume", "progress", "log_every", "checkpoint_every", "threads", "workers",
                "eval_sizes", "eval_protocols", "tta", "eval_batch_size", "channels_last", "bn_recalibrate")


# the experiments' records were made before the main job took per-size BatchNorm statistics (ConvNetConfig.size_bn)
# and bfloat16 autocast where the CPU has it (amp=auto): their runs keep nn.BatchNorm2d (unless an arm sets
# size_bn) and float32, so every record stays one comparable set
PINNED = {"size_bn": 0}


def default_output(name: str) -> Path:
    return RESULTS_DIR / name / "records.jsonl"


# --------------------------------------------------------------------------------------------- budget


@dataclass
class Budget:
    """One training budget for every run of an experiment (same images, epochs and batch; each model family's
    recipe: :meth:`recipe_for`)."""

    recipe: str = RECIPE  # the ConvNets'
    transformer_recipe: str = TRANSFORMER_RECIPE  # the transformers' (HierConfig models)
    epochs: int = DEFAULT_EPOCHS
    limit_train: int | None = None  # None: every image of ``data`` (20,000 embedded)
    limit_val: int | None = None  # None: the whole 10,000-image test set
    batch_size: int = BATCH  # not the recipe's since it moved to 128: see BATCH
    data: str = "embedded"  # 'embedded' (the 20,000-image subset in the package) or a zip / ImageFolder path
    threads: int = 1  # torch threads per run
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

    def recipe_for(self, model: str, model_kwargs: dict | None = None) -> str:
        """The recipe ``model`` trains with: :attr:`transformer_recipe` for a transformer (a model whose config
        is a :class:`~msaconv.models.HierConfig`), :attr:`recipe` for the others (the ConvNets)."""
        from ..models import HierConfig

        return self.transformer_recipe if isinstance(model_cfg(model, model_kwargs or {}), HierConfig) else self.recipe


BUDGET_FIELDS = tuple(f.name for f in fields(Budget))
SMOKE: dict[str, Any] = dict(epochs=1, limit_train=192, limit_val=96, batch_size=64, data="embedded", threads=1)


def budget_key(b: dict | None) -> str:
    """What makes two runs' budgets the same (threads and the data's folder left out)."""
    b = b or {}
    data = str(b.get("data", ""))
    # a record made before ``transformer_recipe`` existed had no transformer that trained (tic_nano's NaN only)
    return json.dumps([b.get("recipe"), b.get("transformer_recipe", TRANSFORMER_RECIPE), b.get("epochs"),
                       b.get("limit_train"), b.get("limit_val"), b.get("batch_size"),
                       data if data == "embedded" else Path(data).name, b.get("img_size")])


def is_current(rec: dict) -> bool:
    """A record made at a budget of this framework (its budget names the recipe); older ones are superseded."""
    b = rec.get("budget")
    return isinstance(b, dict) and bool(b.get("recipe"))


def add_budget_arguments(p: argparse.ArgumentParser, seeds: int = 3, workers: int = 1) -> None:
    """The knobs of a training budget (``--epochs``, ``--data``, ...), ``--smoke``, ``--output``, ``--scratch``."""
    b = Budget()
    g = p.add_argument_group("budget (the same for every run of the experiment)")
    g.add_argument("--epochs", type=int, default=b.epochs,
                   help="training epochs (default %(default)s); the recipe's warm-up share is kept")
    g.add_argument("--recipe", default=b.recipe,
                   help="the recipe of the ConvNet arms (default %(default)s: the main job's)")
    g.add_argument("--transformer-recipe", default=b.transformer_recipe,
                   help="the recipe of the transformer arms, tic_nano, the ViTs and the hier_nano mixers (default "
                        "%(default)s: AdamW; the ConvNets' SGD at lr 0.2 sends tic_nano's loss to NaN)")
    g.add_argument("--limit-train", type=_int_or_none, default=b.limit_train,
                   help="training images, a class-balanced subset chosen by the seed (default: all)")
    g.add_argument("--limit-val", type=_int_or_none, default=b.limit_val,
                   help="test images, always the same subset (default: all 10,000)")
    g.add_argument("--batch-size", type=int, default=b.batch_size, help="default %(default)s (the experiments' batch; the main job's recipe uses 128)")
    g.add_argument("--data", default=b.data,
                   help="'embedded' (default: the 20,000-image subset in the package) or a zip / ImageFolder dir, e.g. "
                        "../shared/data/cifar10/train.zip (an error if it does not exist; all of its images are a "
                        "different budget, reported apart); evaluation is always the embedded 10,000-image test set; "
                        "records store the data's SHA-256 and image count")
    g.add_argument("--seeds", type=int, default=seeds, help="seeds 0..N-1 per arm, paired by seed (default %(default)s)")
    g.add_argument("--workers", type=int, default=workers,
                   help="parallel training processes (default %(default)s: one run at a time, in this process)")
    g.add_argument("--threads", type=int, default=b.threads, help="torch threads per run (default %(default)s)")
    p.add_argument("--smoke", action="store_true",
                   help=f"a tiny run for CI: {SMOKE['limit_train']} images, {SMOKE['epochs']} epoch, 1 seed, few arms")
    p.add_argument("--output", default=None, help="JSON lines to append to (default results/<experiment>/records.jsonl)")
    p.add_argument("--scratch", default=str(SCRATCH_DIR),
                   help="where run folders go, shared by the experiments (default %(default)s, git-ignored)")
    p.add_argument("--fresh", action="store_true",
                   help="retrain, and rerun arms that already have a record, instead of reusing them")


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
    return Budget(recipe=getattr(args, "recipe", RECIPE),
                  transformer_recipe=getattr(args, "transformer_recipe", TRANSFORMER_RECIPE), epochs=args.epochs,
                  limit_train=args.limit_train, limit_val=args.limit_val, batch_size=args.batch_size, data=args.data,
                  threads=args.threads)


def output_path(args: argparse.Namespace, name: str) -> Path:
    return Path(args.output) if args.output else default_output(name)


def scratch_dir(args: argparse.Namespace) -> Path:
    return Path(args.scratch) / ("smoke" if args.smoke else "runs")


def eval_sizes(args: argparse.Namespace) -> list[int]:
    return list(SMOKE_EVAL_SIZES if args.smoke else EVAL_SIZES)


def command_line() -> str:
    return " ".join(["msaconv", *sys.argv[1:]])


def recipe_values(name: str = RECIPE) -> dict:
    from ..train.config import load_yaml

    return load_yaml(name)


def recipe_summary(b: dict) -> str:
    """One sentence: the two recipes and how the budget scales them."""
    convnet = _one_recipe(b.get("recipe") or RECIPE)
    transformer = _one_recipe(b.get("transformer_recipe", TRANSFORMER_RECIPE))
    return (f"the ConvNets with {convnet}, the transformers (tic_nano, the ViTs, the hier_nano mixers) with "
            f"{transformer}; batch {b.get('batch_size')} for both")


def _one_recipe(name: str) -> str:
    r = recipe_values(name)
    share = float(r.get("warmup_epochs", 0)) / float(r.get("epochs", 1))
    opt = r.get("optimizer", "?")
    extra = (f"momentum {r.get('momentum')}{', Nesterov' if r.get('nesterov') else ''}" if opt == "sgd"
             else f"betas {r.get('betas')}")
    return (f"recipe `{name}.yaml` ({opt}, lr {r.get('lr')}, {extra}, weight decay {r.get('weight_decay')}, "
            f"{r.get('schedule')} schedule with the warm-up kept at {share:.3g} of the run, label smoothing "
            f"{r.get('label_smoothing')}, random crop (pad {r.get('crop_pad')}) + flip)")


def describe_budget(b: dict, runs: Sequence[dict] = ()) -> str:
    """The budget in words, with the measured images, steps and test images of ``runs`` when given."""
    tr = sorted({r["train_images"] for r in runs if r.get("train_images")})
    steps = sorted({r["steps"] for r in runs if r.get("steps")})
    val = sorted({r["val_images"] for r in runs if r.get("val_images")})
    data = str(b.get("data"))
    images = (", ".join(f"{n:,}" for n in tr) if tr else (f"{b['limit_train']:,}" if b.get("limit_train") else "all"))
    return (f"{b.get('epochs')} epoch(s) of {images} training images ("
            + ("the embedded CIFAR-10 subset" if data == "embedded" else Path(data).name) + ")"
            + (f", {', '.join(map(str, steps))} optimizer steps" if steps else "") + f"; {recipe_summary(b)}; "
            f"final evaluation on " + (", ".join(f"{n:,}" for n in val) if val else
                                       (f"{b['limit_val']:,}" if b.get("limit_val") else "all 10,000"))
            + " test images")


# ------------------------------------------------------------------------------------------- training


def model_cfg(model: str, model_kwargs: dict):
    """The model's config dataclass (``model.cfg``), from a build on the meta device (no memory)."""
    import torch

    from ..models import create_model_from_config
    from . import _models  # noqa: F401  (registers the experiment-only models)

    with torch.device("meta"):
        return create_model_from_config(model, model_kwargs, 10).cfg


def window_extent(kernel: Sequence[int], dilation: Sequence[int]) -> int:
    """The side, in map pixels, of the larger axis of a (dilated) window: what a map must exceed for the window
    to be local."""
    return max((k - 1) * d + 1 for k, d in zip(kernel, dilation))


def runnable_sizes(model: str, model_kwargs: dict, sizes: Iterable[int]) -> tuple[list[int], dict[str, str]]:
    """(the sizes ``model`` runs at, {size: why not} for the others): one forward of a blank image each, so a
    run never fails in its final evaluations after hours of training."""
    key = json.dumps([model, model_kwargs, sorted(set(sizes))], sort_keys=True, default=str)
    if key not in _RUNNABLE:
        _RUNNABLE[key] = _runnable_sizes(model, model_kwargs, sorted(set(sizes)))
    ok, bad = _RUNNABLE[key]
    return list(ok), dict(bad)


_RUNNABLE: dict[str, tuple[list[int], dict[str, str]]] = {}


def _runnable_sizes(model: str, model_kwargs: dict, sizes: list[int]) -> tuple[list[int], dict[str, str]]:
    import torch

    from ..models import create_model_from_config
    from . import _models  # noqa: F401

    torch.manual_seed(0)
    m = create_model_from_config(model, model_kwargs, 10).eval()
    ok, bad = [], {}
    for s in sizes:
        try:
            with torch.no_grad():
                m(torch.zeros(1, 3, s, s))
            ok.append(s)
        except (ValueError, RuntimeError) as e:
            bad[str(s)] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return ok, bad


def make_job(experiment: str, config: str, model: str, model_kwargs: dict, seed: int, budget: Budget,
             args: argparse.Namespace, mode: str = "fixed", sizes: Sequence[int] | None = None,
             protocols: Sequence[str] = PROTOCOLS, extra: dict | None = None,
             train_overrides: dict | None = None, bn_recalibrate: int = 0) -> dict:
    """One training job: arm ``config`` of ``experiment``, evaluated at ``sizes`` (those it can run) x ``protocols``;
    ``train_overrides``: TrainConfig values this arm changes in its recipe (a recipe A/B; part of the run's
    identity, and of its record); ``bn_recalibrate``: each evaluation also with BatchNorm statistics re-estimated
    from that many training images (part of the record's key: records without those figures are not reused). The job names the recipe its model's family trains with
    (:meth:`Budget.recipe_for`, decided here once)."""
    if mode not in MODES:
        raise ValueError(f"{experiment}: training mode {mode!r} is not one of {list(MODES)}")
    want = sorted(set(sizes if sizes is not None else [budget.img_size]) | {budget.img_size})
    ok, bad = runnable_sizes(model, model_kwargs, want)
    if budget.img_size not in ok:
        bad_at = bad.get(str(budget.img_size), "?")
        raise ValueError(f"{experiment}: arm {config} ({model}) cannot run at its training size "
                         f"{budget.img_size} px: {bad_at}")
    return {"experiment": experiment, "config": config, "mode": mode, "seed": seed, "model": model,
            "model_kwargs": dict(model_kwargs), "train_sizes": MODES[mode], "eval_sizes": ok,
            "eval_protocols": list(protocols), "eval_errors": bad, "budget": budget.as_dict(),
            "recipe": budget.recipe_for(model, model_kwargs), "scratch": str(scratch_dir(args)),
            "fresh": bool(args.fresh),
            "extra": {**dict(extra or {}), **({"train_overrides": dict(train_overrides)} if train_overrides else {}),
                      **({"bn_recalibrate": int(bn_recalibrate)} if bn_recalibrate else {})}}


def train_config(job: dict):
    """The :class:`TrainConfig` of one job: the budget's recipe, scaled to its epochs."""
    from ..data import embedded_path
    from ..train.config import apply_overrides, resolve

    b = Budget(**job["budget"])
    data = b.resolved_data()
    recipe = job["recipe"]
    r = recipe_values(recipe)
    share = float(r.get("warmup_epochs", 0)) / float(r.get("epochs", 1))
    flags = {
        "model": job["model"], "model_kwargs": pinned_model_kwargs(job["model"], job["model_kwargs"]), "data": data,
        "val_data": "auto" if data == "embedded" else str(embedded_path("test")),
        "epochs": b.epochs, "batch_size": b.batch_size, "warmup_epochs": b.epochs * share, "img_size": b.img_size,
        "eval_sizes": list(job["eval_sizes"]), "eval_protocols": list(job["eval_protocols"]), "tta": "none",
        "eval_every": b.epochs, "epoch_eval_images": EPOCH_EVAL_IMAGES, "eval_batch_size": 250, "seed": job["seed"],
        "bn_recalibrate": job.get("extra", {}).get("bn_recalibrate", 0),
        "output": job["scratch"], "threads": b.threads, "progress": False, "log_every": 50,
        "checkpoint_every": 10**6,  # plus every epoch end: a killed run continues from its last epoch
        "amp": "none",  # float32, as every record before the main job's amp=auto (see PINNED)
    }
    cfg = resolve(recipe, flags=flags)
    # resolve() leaves None flags out: the values that mean "all images" / "one size" are set here
    cfg = apply_overrides(cfg, {"limit_train": b.limit_train, "limit_val": b.limit_val,
                                "train_sizes": job["train_sizes"]}, "experiment")
    overrides = job.get("extra", {}).get("train_overrides")
    if overrides:  # a recipe A/B arm
        cfg = apply_overrides(cfg, overrides, f"experiment arm {job['config']}")
    return apply_overrides(cfg, {"name": run_name(job, cfg)}, "experiment")


def pinned_model_kwargs(model: str, model_kwargs: dict) -> dict:
    """``model_kwargs`` with the model options of :data:`PINNED` that the arm leaves unset."""
    cfg = model_cfg(model, model_kwargs)
    return {**{k: v for k, v in PINNED.items() if hasattr(cfg, k)}, **dict(model_kwargs)}


def training_identity(cfg_dict: dict) -> dict:
    """The settings that decide what a run learns: every TrainConfig key but :data:`NOT_TRAINING`, kept only where
    it differs from TrainConfig's default (so a new config key with a default does not rename every run)."""
    from ..train.config import TrainConfig

    default = TrainConfig().to_dict()
    return {k: v for k, v in sorted(cfg_dict.items()) if k not in NOT_TRAINING and default.get(k, object()) != v}


def run_name(job: dict, cfg) -> str:
    digest = hashlib.sha256(json.dumps(training_identity(cfg.to_dict()), sort_keys=True, default=str).encode())
    return f"{job['model']}-{job['mode']}-s{job['seed']}-{digest.hexdigest()[:10]}"


def _finished_summary(run_dir: Path, cfg) -> dict | None:
    """The summary of a finished run in ``run_dir`` that trained exactly as ``cfg`` says (None: train it)."""
    import yaml

    s, c = run_dir / "summary.json", run_dir / "config.yaml"
    if not (s.is_file() and c.is_file()):
        return None
    try:
        old = yaml.safe_load(c.read_text())
        summary = json.loads(s.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if summary.get("status") != "finished" or training_identity(old) != training_identity(cfg.to_dict()):
        return None
    return summary


def _pairs(cfg) -> list[tuple[int, str]]:
    """The (size, protocol) pairs of a run's final evaluations (the engine runs 'canvas' at the training size as
    'resize': the same images)."""
    sizes = sorted(set(cfg.eval_sizes) | {cfg.img_size})
    return [(s, p) for p in cfg.eval_protocols for s in sizes
            if not (p != "resize" and s == cfg.img_size and "resize" in cfg.eval_protocols)]


def evaluate_run(run_dir: Path, cfg, pairs: Sequence[tuple[int, str]]) -> list[dict]:
    """Evaluate a finished run's final weights (``last.json``) at ``pairs``, as the engine's final evaluations do
    (with ``cfg.bn_recalibrate``, the recalibrated figures too)."""
    from ..data import embedded_path
    from ..train import distributed as D
    from ..train.data import load_split, resolve_data_paths
    from ..train.evaluate import evaluate, load_model_from_checkpoint, recalibrated_scores

    model, _, _ = load_model_from_checkpoint(str(run_dir / "last.json"))
    val = str(embedded_path("test")) if cfg.val_data in ("auto", None) else cfg.val_data
    split = load_split(cfg, val, False, cfg.limit_val, lambda s: None)
    train = (load_split(cfg, resolve_data_paths(cfg)[0], True, cfg.limit_train, lambda s: None)  # the run's images
             if cfg.bn_recalibrate else None)
    out = []
    for s, p in pairs:
        ev = evaluate(model, split, s, cfg, D.DistInfo(), cfg.limit_val, protocol=p)
        if train is not None:
            ev.update(recalibrated_scores(model, split, train, s, cfg, D.DistInfo(), p, plain=ev))
        out.append(ev)
    return out


def train_job(job: dict) -> dict:
    """Train (or reuse) one run; returns its record. A top-level function, so a process pool can run it."""
    import torch

    from ..train.config import apply_overrides
    from ..train.engine import train
    from . import _models  # noqa: F401  (registers the experiment-only models in this process)

    budget = Budget(**job["budget"])
    torch.set_num_threads(budget.threads)
    cfg = train_config(job)
    run_dir = Path(cfg.output) / str(cfg.name)
    summary = None if job.get("fresh") else _finished_summary(run_dir, cfg)
    reused = summary is not None
    if summary is None:
        cfg = apply_overrides(cfg, {"resume": None if job.get("fresh") else "auto"}, "experiment")
        summary = train(cfg, log=lambda s: None)
        if summary.get("status") != "finished":
            raise RuntimeError(f"run {run_dir} did not finish: {summary.get('status')}")
    evals = [{k: e[k] for k in EVAL_KEYS if k in e} for e in summary.get("final", [])]
    if cfg.bn_recalibrate:  # a run reused from an experiment that did not recalibrate: evaluate it again
        evals = [e for e in evals if "top1_recal" in e]
    have = {(e["img_size"], e.get("protocol", "resize")) for e in evals}
    missing = [p for p in _pairs(cfg) if p not in have]
    if missing:  # a run reused from an experiment that asked for fewer evaluations
        evals += [{k: e[k] for k in EVAL_KEYS if k in e} for e in evaluate_run(run_dir, cfg, missing)]
    wanted = set(_pairs(cfg))
    evals = [e for e in evals if (e["img_size"], e.get("protocol", "resize")) in wanted]
    main = next((e for e in evals if e["img_size"] == budget.img_size and e.get("protocol", "resize") == "resize"), None)
    if main is None:
        raise ValueError(f"experiment {job['experiment']}: run {run_dir} has no final evaluation at {budget.img_size} px")
    return {
        "experiment": job["experiment"], "config": job["config"], "mode": job["mode"], "seed": job["seed"],
        "model": job["model"], "model_kwargs": job["model_kwargs"], "train_sizes": job["train_sizes"],
        "recipe": job["recipe"], "top1": main["top1"], "top5": main["top5"], "loss": main["loss"],
        "val_images": main["images"],
        "evals": evals, "eval_errors": job.get("eval_errors", {}), "evals_from_weights": len(missing),
        "train_images": summary["train_images"], "epochs": summary["epochs"], "steps": summary["steps"],
        "train_seconds": summary["train_seconds"], "cpu_seconds": summary.get("cpu_seconds"),
        "eval_seconds": sum(e.get("seconds", 0.0) for e in evals), "total_seconds": summary["total_seconds"],
        "img_per_s": summary["img_per_s"], "params": summary["params"], "threads": summary["threads"],
        **({"train_seconds_partial": True} if summary.get("train_seconds_partial") else {}),
        "checkpoint": str(run_dir), "reused_checkpoint": reused, "budget": budget.as_dict(),
        **data_identity(run_dir), **job.get("extra", {}),
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
        return {"experiment": job["experiment"], "config": job["config"], "mode": job.get("mode"), "seed": job["seed"],
                "model": job["model"], "model_kwargs": job["model_kwargs"], "budget": job["budget"],
                "error": f"{type(e).__name__}: {e}", **job.get("extra", {})}


def record_key(r: dict) -> tuple:
    recal = r.get("bn_recalibrate", (r.get("extra") or {}).get("bn_recalibrate", 0))
    return (r.get("config"), r.get("mode", "fixed"), r.get("seed"), budget_key(r.get("budget")), recal)


def pending(jobs: Sequence[dict], records: Iterable[dict], fresh: bool = False) -> tuple[list[dict], int]:
    """(the jobs without a successful record at the same budget in ``records``, how many were skipped)."""
    if fresh:
        return list(jobs), 0
    done = {record_key(r) for r in records if is_current(r) and "top1" in r and not r.get("error")}
    todo = [j for j in jobs if record_key(j) not in done]
    return todo, len(jobs) - len(todo)


def run_jobs(jobs: Sequence[dict], workers: int, on_record: Callable[[dict], None],
             job_fn: Callable[[dict], dict] = safe_train_job) -> list[dict]:
    """Run ``jobs`` (``workers`` processes; 1: in this process, one after another), calling ``on_record`` as each
    one finishes."""
    out: list[dict] = []
    t0 = time.perf_counter()

    def done(rec: dict) -> None:
        out.append(rec)
        on_record(rec)
        top = f"top1 {rec['top1']:.2f}% " if isinstance(rec.get("top1"), (int, float)) else ""
        top += f"ERROR {rec['error']} " if rec.get("error") else ""
        print(f"[{len(out)}/{len(jobs)} {time.perf_counter() - t0:6.0f}s] {rec.get('config')} {rec.get('mode', '')} "
              f"seed {rec.get('seed')}: {top}{'(reused run)' if rec.get('reused_checkpoint') else ''}",
              file=sys.stderr, flush=True)

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


def run_training(name: str, args: argparse.Namespace, jobs: Sequence[dict], stamp_: dict, out: Path,
                 extra: Callable[[dict], dict] | None = None) -> list[dict]:
    """Skip the jobs already recorded in ``out``, run the rest, append each record as it comes."""
    todo, skipped = pending(jobs, read_records(out), args.fresh)
    if skipped:
        print(f"{name}: {skipped} of {len(jobs)} runs already have a record at this budget in {out}: skipped",
              file=sys.stderr, flush=True)
    return run_jobs(todo, args.workers,
                    lambda rec: append(out, [{**stamp_, **(extra(rec) if extra else {}), **rec}]))


# ----------------------------------------------------------------------------------------- records


def stamp(experiment: str, smoke: bool) -> dict:
    """The environment every record carries (torch, CPU, threads, git commit, the command, the time)."""
    from ..bench.common import environment

    return {"experiment": experiment, "smoke": bool(smoke), "env": environment(command_line())}


def append(path: Path, records: Iterable[dict]) -> None:
    from ..bench.common import write_jsonl

    records = list(records)
    if records:  # no empty file for a run that recorded nothing
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


def open_failures(records: list[dict], key: Callable[[dict], Any]) -> list[dict]:
    """The newest failed record of each ``key`` that no successful record (``top1``) came after: a run that
    failed and then trained (a retry, a fixed recipe) is not a failure any more."""
    runs = latest_batch([r for r in records if r.get("error") or "top1" in r], key)
    return [r for r in runs if r.get("error")]


def split_budgets(records: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(records at the primary budget, records at other budgets of this framework, superseded records).

    The primary budget is that of the newest current record (:func:`is_current`); a record without a budget
    of this framework (no ``recipe``) is superseded. Every record an experiment writes carries its budget.
    """
    current = [r for r in records if is_current(r)]
    superseded = [r for r in records if not is_current(r)]
    if not current:
        return [], [], superseded
    key = budget_key(current[-1]["budget"])
    return ([r for r in current if budget_key(r["budget"]) == key],
            [r for r in current if budget_key(r["budget"]) != key], superseded)


def top1_at(rec: dict, size: int, protocol: str = "resize") -> float | None:
    """A record's top-1 at (size, protocol); 'canvas' at the training size is the 'resize' evaluation; a
    protocol ending in :data:`RECAL` ('resize+bn') reads the figure with BatchNorm statistics re-estimated."""
    base, key = (protocol[: -len(RECAL)], "top1_recal") if protocol.endswith(RECAL) else (protocol, "top1")
    for e in rec.get("evals", []):
        if e["img_size"] == size and e.get("protocol", "resize") == base:
            return float(e[key]) if key in e else None
    if base != "resize" and size == rec.get("budget", {}).get("img_size", 32):
        return top1_at(rec, size, "resize" + protocol[len(base):])
    return None


def protocols_of(records: Iterable[dict]) -> list[str]:
    """:data:`PROTOCOLS`, then each with :data:`RECAL` where some record holds recalibrated figures."""
    recal = any("top1_recal" in e for r in records for e in r.get("evals", []))
    return [*PROTOCOLS, *([p + RECAL for p in PROTOCOLS] if recal else [])]


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


def how_to_run(name: str, extra: str = "") -> str:
    """The commands that make an experiment's records from a fresh clone, naming the data they train on."""
    tail = f" {extra}" if extra else ""
    return (f"Run from a fresh clone (`pip install -e .`), on the embedded 20,000-image subset: "
            f"`msaconv experiment {name} --data embedded --workers 1 --threads 1{tail}` (reruns skip the arms "
            f"already recorded; `tools/run_issue19.sh` runs every experiment in order). With "
            f"`--data ../shared/data/cifar10/train.zip` the runs train on that zip's 50,000 images: another budget, "
            f"reported apart.")


def not_run_yet(name: str, title: str, extra: str = "") -> str:
    return f"**Not run yet** at the budget: no record of `{name}` at this budget. {how_to_run(name, extra)}"


def other_budgets_section(other: list[dict]) -> str:
    if not other:
        return ""
    keys = list(dict.fromkeys(budget_key(r["budget"]) for r in other))
    lines = [f"Records at {len(keys)} other budget(s) ({len(other)} records) are not mixed into the tables above: "]
    for k in keys:
        rs = [r for r in other if budget_key(r["budget"]) == k]
        lines.append(f"- {describe_budget(rs[0]['budget'], rs)}: {len(rs)} record(s).")
    return "\n".join(lines)


def superseded_section(records: list[dict], note: str = "") -> str:
    """The marked section listing records of a budget too small to decide (kept apart from every table)."""
    if not records:
        return ""
    b: dict = next((r["budget"] for r in records if isinstance(r.get("budget"), dict)), {})
    steps = sorted({r["steps"] for r in records if r.get("steps")})
    runs = latest_batch([r for r in records if "top1" in r and r.get("img_size", 32) == 32],
                        lambda r: (r.get("config"), r.get("seed")))
    by: dict[str, list[float]] = {}
    for r in runs:
        by.setdefault(str(r.get("config")), []).append(float(r["top1"]))
    what = (f" ({b.get('limit_train')} training images x {b.get('epochs')} epoch(s)"
            + (f", {', '.join(map(str, steps))} optimizer steps" if steps else "") + ")") if b else ""
    text = ["### Superseded: budget too small to decide",
            f"{len(records)} older record(s) in this file were made before the budget above existed{what}, by "
            + ", ".join(f"`{c}`" for c in commands(records)) + ". At that budget every difference is inside the "
            "noise, so these records decide nothing" + (f" ({note})" if note else "") + "; they are listed here "
            "for the record and left out of every table and finding above."]
    if by:
        text.append(md_table(["arm (old budget)", "seeds", "top-1 % at 32 px (mean; decides nothing)"],
                             [[c, len(v), f"{statistics.fmean(v):.2f}"] for c, v in by.items()]))
    return "\n\n".join(text)


# ----------------------------------------------------------------------------------------- statistics


def mean_spread(xs: Sequence[float | None]) -> dict:
    """Mean, sample standard deviation (0 for one value), min, max and n of ``xs`` (NaN-free)."""
    v = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "min": min(v),
            "max": max(v), "n": len(v)}


def train_minutes(record: dict) -> float | None:
    """A run record's training minutes; None where the run was resumed from a checkpoint older than the
    cumulative training time (its process trained nothing, or only the part after the resume): the record
    cannot say how long the run took."""
    if record.get("img_per_s") is None or record.get("train_seconds_partial"):
        return None
    return record["train_seconds"] / 60


def binomial_se(top1: float, images: int) -> float:
    """The standard error (points) of one top-1 of ``top1`` % measured on ``images`` test images."""
    p = min(max(top1 / 100, 0.0), 1.0)
    return 100 * math.sqrt(max(p * (1 - p), 1e-9) / max(images, 1))


def paired(arm: dict[int, float], base: dict[int, float]) -> list[float]:
    """Per-seed differences ``arm - base`` over the seeds both have (the same seed: the same initialisation
    draw, augmentation stream and test images)."""
    return [arm[s] - base[s] for s in sorted(arm) if s in base and arm[s] is not None and base[s] is not None]


def verdict(diffs: Sequence[float], base_std: float = 0.0, floor: float = 0.0) -> dict:
    """A paired difference and whether it is real.

    noise = the largest of the standard deviation of the per-seed differences, the reference's standard
    deviation over seeds and ``floor`` (the binomial standard error of one top-1 on the test images: two or
    three seeds cannot estimate a spread by themselves). The difference is **real** when its mean exceeds
    twice the noise and at least two seeds measured it.
    """
    d = mean_spread(diffs)
    noise = max([x for x in (d["std"], base_std, floor) if not math.isnan(x)] or [0.0])
    real = d["n"] >= 2 and abs(d["mean"]) > 2 * noise
    return {**d, "noise": noise, "real": real}


def fmt_verdict(v: dict, digits: int = 2) -> str:
    if not v["n"]:
        return "-"
    said = "**real**" if v["real"] else "within noise" if v["n"] >= 2 else "one seed, no verdict"
    return f"{v['mean']:+.{digits}f} ± {v['std']:.{digits}f} (n {v['n']}; noise {v['noise']:.{digits}f}: {said})"


def bar_sentence(top1: dict, what: str) -> str:
    """The default arm's measured top-1 against the 70% bar."""
    if not top1["n"]:
        return f"{what}: not run yet at this budget."
    s = f"{what}: top-1 {top1['mean']:.2f} ± {top1['std']:.2f} % ({top1['n']} seed(s)) at 32 px"
    return s + (f", **below the {BAR:.0f}% bar**: the budget is too short to decide." if top1["mean"] < BAR
                else f", at or above the {BAR:.0f}% bar.")


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
