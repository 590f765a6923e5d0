"""``msaconv analyze``: attention distance, head importance, effective receptive field, attention maps."""

from __future__ import annotations

import argparse

HELP = "analyse a model: mean attention distance, head importance, effective receptive field, attention maps"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..analysis.run import KINDS

    p.add_argument("kind", choices=KINDS, help="which analysis")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="PATH", help="a trained run folder or weights file")
    src.add_argument("--model", help="an untrained registered model (e.g. tic_nano), for a quick look")
    p.add_argument("--data", default="embedded", help="images: 'embedded' (CIFAR-10 test set) or an ImageFolder dir/zip/tar")
    p.add_argument("--images", type=int, default=64, metavar="N", help="how many images to average over (default 64)")
    p.add_argument("--img-size", type=int, metavar="PX", help="image size (default: the model's training size)")
    p.add_argument("--output", default="analysis", metavar="DIR", help="where JSON lines and PNGs go (default analysis/)")
    p.add_argument("--layer", help="attention: the mixer's module name (default: the first)")
    p.add_argument("--pixel", type=int, nargs=2, metavar=("ROW", "COL"), help="attention: the query pixel (default: centre)")


def run(args: argparse.Namespace) -> int:
    from ..analysis.run import AnalysisConfig, run_analysis

    cfg = AnalysisConfig(kind=args.kind, checkpoint=args.checkpoint, model=args.model, data=args.data,
                         images=args.images, img_size=args.img_size, output=args.output, layer=args.layer,
                         pixel=tuple(args.pixel) if args.pixel else None)
    res = run_analysis(cfg)
    rows = res["rows"]
    if rows:
        keys = [k for k in rows[0] if not isinstance(rows[0][k], (list, tuple, dict))]
        print("  ".join(f"{k:>12}" for k in keys))
        for r in rows:
            print("  ".join(f"{r[k]:>12.4g}" if isinstance(r[k], float) else f"{str(r[k]):>12}" for k in keys))
    print(f"results: {res['jsonl']}" + (f"  plot: {res['plot']}" if res["plot"] else ""))
    return 0
