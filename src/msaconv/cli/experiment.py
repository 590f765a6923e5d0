"""``msaconv experiment <name>``: run one experiment of issue 8 into JSON lines, or ``report`` them into docs/results.md."""

from __future__ import annotations

import argparse
import sys

HELP = "run an experiment (ablation, mixers, resolution, cost, erf) into JSON lines, or 'report' them as docs/results.md"


def add_arguments(p: argparse.ArgumentParser) -> None:
    import importlib

    from ..experiments import EXPERIMENTS

    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for name, module in EXPERIMENTS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError as e:  # e.g. an experiment another helper has not written yet
            q = sub.add_parser(name, help=f"(unavailable: {e})")
            q.set_defaults(_experiment_error=f"experiment {name!r} is unavailable: {e}")
            continue
        q = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(q)
        q.set_defaults(_experiment_run=mod.run)
    from ..experiments import report

    q = sub.add_parser("report", help=report.HELP, description=report.HELP)
    report.add_arguments(q)
    q.set_defaults(_experiment_run=report.run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "_experiment_error", None):
        raise ValueError(args._experiment_error)
    path = args._experiment_run(args)
    print(f"msaconv experiment {args.experiment}: wrote {path}", file=sys.stderr)
    print(path)
    return 0
