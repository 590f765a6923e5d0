"""``msaconv mixers``: a table of every token mixer: paper, params, GMACs, speed vs ``global``, other sizes."""

from __future__ import annotations

import argparse

HELP = "list the token mixers with their paper, params, GMACs, speed relative to 'global' and resolution behaviour"


def _size(text: str) -> tuple[int, int]:
    try:
        h, _, w = text.lower().partition("x")
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 56x56, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dim", type=int, default=64, help="channels C (default: 64)")
    p.add_argument("--size", type=_size, default=(56, 56), help="map size HxW for params/GMACs/time (default: 56x56)")
    p.add_argument("--alt-size", type=_size, default=(57, 43),
                   help="a second size to run with unchanged weights (default: 57x43)")
    p.add_argument("--heads", type=int, default=4, help="num_heads passed to every mixer (default: 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed forwards per mixer; the median is used (default: 5)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these mixers ('global' is still timed)")
    p.add_argument("--json", metavar="PATH", help="also append the rows as JSON lines to PATH")


def run(args: argparse.Namespace) -> int:
    import json
    import platform

    import torch

    from .. import __version__
    from ..bench.mixers import format_table, mixer_table, rows_as_dicts

    rows = mixer_table(args.dim, args.size, args.alt_size, args.heads, args.repeats, args.only)
    print(format_table(rows, args.dim, args.size, args.alt_size))
    print(f"msaconv {__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    if args.json:
        meta = {"msaconv": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
                "machine": platform.machine(), "dim": args.dim, "size": list(args.size),
                "alt_size": list(args.alt_size), "heads": args.heads, "repeats": args.repeats}
        with open(args.json, "a", encoding="utf-8") as f:
            for r in rows_as_dicts(rows):
                f.write(json.dumps({**meta, **r}) + "\n")
    return 0
