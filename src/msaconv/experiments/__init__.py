"""``msaconv experiment <name>``: the experiments that test TiC's claims, each one command.

Every experiment module exposes the same four names:

- ``HELP: str`` (one line for ``--help``);
- ``add_arguments(p: argparse.ArgumentParser) -> None`` (its knobs; the budget is always visible);
- ``run(args) -> Path``: runs, appends JSON lines to ``args.output`` (default
  ``results/<name>/records.jsonl``) and returns that path;
- ``render(records: list[dict], figdir: Path) -> str``: a markdown section made from the records only,
  writing its PNGs into ``figdir``.

``msaconv experiment report`` (:mod:`msaconv.experiments.report`) renders every experiment whose records
exist into ``docs/results.md``. Modules keep torch and friends inside their functions, so listing the
experiments (building the CLI parser) stays cheap.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module (every module has the contract above)
EXPERIMENTS: dict[str, str] = {
    "ablation": "msaconv.experiments.ablation",
    "mixers": "msaconv.experiments.mixers",
    "resolution": "msaconv.experiments.resolution",
    "cost": "msaconv.experiments.cost",
    "erf": "msaconv.experiments.erf",
}


def get_experiment(name: str) -> ModuleType:
    """The module of experiment ``name`` (a ValueError with did-you-mean for an unknown name)."""
    if name not in EXPERIMENTS:
        from .._errors import unknown_name
        raise unknown_name("msaconv experiment", "experiment", name, list(EXPERIMENTS))
    return importlib.import_module(EXPERIMENTS[name])


__all__ = ["EXPERIMENTS", "get_experiment"]
