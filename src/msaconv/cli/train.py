"""``msaconv train``: train a model (default: the main job, tic_conv_nano on the embedded CIFAR-10 subset)."""

from __future__ import annotations

import argparse
import sys

HELP = ("train a model (no arguments: the main job, tic_conv_nano on the embedded CIFAR-10 (JPEG copy) subset, "
        "~10 min on 2 cores)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name (msaconv.models.list_models()); default tic_conv_nano (the main job)")
    p.add_argument("--data", help="'embedded' (default), or an ImageFolder directory / zip / tar (<class>/<image>); "
                                  "a directory with train/ and val/ uses both")
    p.add_argument("--val-data", help="evaluation set: 'auto' (default), a path, or 'none'")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="images per process per step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--img-size", type=int, help="training image size (px)")
    p.add_argument("--train-sizes", type=size_list, metavar="N,N,...",
                   help="multi-size training: each step draws one of these sizes (deterministic under --seed), "
                        "e.g. 24,32,40; images are resized whole")
    p.add_argument("--tta", choices=("none", "flip", "both"),
                   help="final evaluation with horizontal-flip test-time augmentation ('both': with and without)")
    p.add_argument("--bn-recalibrate", type=int, metavar="N",
                   help="final evaluation also with BatchNorm statistics re-estimated at each size from N training "
                        "images (no labels, no gradient; 0: off)")
    p.add_argument("--seed", type=int)
    p.add_argument("--output", help="folder of run folders (default runs/)")
    p.add_argument("--name", help="run folder name (default <model>-<UTC time>)")
    p.add_argument("--resume", metavar="PATH|auto", help="continue a run: its folder, a last.json, or 'auto' (newest "
                                                          "complete checkpoint under --output[/--name])")
    p.add_argument("--limit-train", type=int, metavar="N", help="use N training images (class-balanced)")
    p.add_argument("--limit-val", type=int, metavar="N", help="evaluate on N images")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="leave out images that fail to decode (counted in the log) instead of stopping")
    p.add_argument("--config", metavar="FILE", help="YAML config file, or a recipe name (see --list-recipes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key (repeatable); values parsed as YAML, e.g. --set model_kwargs.drop_path_rate=0.1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def size_list(text: str) -> list[int]:
    """``"24,32,40"`` -> ``[24, 32, 40]`` (argparse type: a bad value is a usage error naming it)."""
    try:
        sizes = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of sizes; e.g. 24,32,40") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive sizes, e.g. 24,32,40")
    return sizes


def _flags(args: argparse.Namespace) -> dict:
    keys = ("model", "data", "val_data", "epochs", "batch_size", "lr", "img_size", "train_sizes", "tta", "bn_recalibrate",
            "seed", "output", "name", "resume",
            "limit_train", "limit_val", "skip_bad")
    out = {k: getattr(args, k) for k in keys}
    if args.no_progress:
        out["progress"] = False
    return out


def resolve_config(args: argparse.Namespace):
    """Defaults (or the resumed run's config.yaml) <- --config <- --set <- flags."""
    from ..train import config as C
    from ..train.engine import resolve_run_dir

    flags = _flags(args)
    cfg = C.resolve(args.config, args.set, flags)
    if cfg.resume:
        run_dir, doc = resolve_run_dir(cfg)
        if doc is not None and (run_dir / "config.yaml").is_file():
            base = C.load_yaml(run_dir / "config.yaml")
            base.pop("resume", None)
            cfg = C.apply_overrides(C.TrainConfig(), base, f"{run_dir / 'config.yaml'}")
            if args.config:
                cfg = C.apply_overrides(cfg, C.load_yaml(args.config), f"--config {args.config}")
            cfg = C.apply_overrides(cfg, C.parse_set(args.set), "--set")
            cfg = C.apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None}, "flags")
            if cfg.name is None:
                cfg = C.apply_overrides(cfg, {"name": run_dir.name, "output": str(run_dir.parent)}, "resume")
    return cfg


def run(args: argparse.Namespace) -> int:
    from ..train import config as C

    if args.list_recipes:
        for name in C.list_recipes():
            print(name)
        return 0
    cfg = resolve_config(args)
    if args.print_config:
        print(C.dump_yaml(cfg), end="")
        return 0
    from ..train.engine import format_summary, train

    summary = train(cfg)
    if summary["status"] == "interrupted":
        return 128 + int(summary.get("signal") or 2)
    if summary.get("final") is not None:
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            print(format_summary(summary))
            sys.stdout.flush()
    return 0
