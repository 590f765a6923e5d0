"""``msaconv <command>``: a thin layer that parses arguments into library configs and calls the library.

Each command is a module of this package with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Nothing below this package sees argparse.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module; each module keeps its heavy imports inside run(), so building the parser stays cheap
COMMANDS: dict[str, str] = {
    "info": "msaconv.cli.info",
    "bench": "msaconv.cli.bench",
    "mixers": "msaconv.cli.mixers",
    "train": "msaconv.cli.train",
    "eval": "msaconv.cli.eval",
    "export": "msaconv.cli.export",
    "analyze": "msaconv.cli.analyze",
    "experiment": "msaconv.cli.experiment",
}

DEFAULT_COMMAND = "train"  # a bare `msaconv` runs the main job


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="msaconv",
        description="Attention inside convolution: MSA-Conv, TiC models and a zoo of vision token mixers.",
    )
    parser.add_argument("--version", action="version", version=f"msaconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv or [DEFAULT_COMMAND])
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("msaconv: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as e:  # our documented user errors: one clear line, no traceback
        print(f"msaconv {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
