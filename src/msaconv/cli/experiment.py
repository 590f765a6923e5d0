"""``msaconv experiment <name>``: run one experiment into JSON lines, or ``report`` them into docs/results.md."""

from __future__ import annotations

import argparse
import sys

HELP = "run an experiment (ablation, mixers, resolution, cost, erf) into JSON lines, or 'report' them as docs/results.md"


def add_arguments(p: argparse.ArgumentParser) -> None:
    import importlib

    from ..experiments import EXPERIMENTS

    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for name, module in EXPERIMENTS.items():
        mod = importlib.import_module(module)
        q = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(q)
        q.set_defaults(_experiment_run=mod.run)
    from ..experiments import report

    q = sub.add_parser("report", help=report.HELP, description=report.HELP)
    report.add_arguments(q)
    q.set_defaults(_experiment_run=report.run)


def run(args: argparse.Namespace) -> int:
    path = args._experiment_run(args)
    print(f"msaconv experiment {args.experiment}: wrote {path}", file=sys.stderr)
    print(path)
    return 0
