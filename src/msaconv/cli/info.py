"""``msaconv info``: version, torch, threads and whether each backend of msa_conv2d can run here."""

from __future__ import annotations

import argparse
import platform

HELP = "show msaconv's version and which msa_conv2d backends can run on this machine"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="device to check the backends on (default: cpu)")


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__
    from ..ops import available_backends

    print(f"msaconv {__version__}  torch {torch.__version__}  python {platform.python_version()}  "
          f"threads {torch.get_num_threads()}  machine {platform.machine()}")
    print(f"msa_conv2d backends on {args.device} (in order of preference):")
    for name, reason in available_backends(args.device).items():
        print(f"  {name:<12} {'can run' if reason is None else 'cannot run: ' + reason}")
    return 0
