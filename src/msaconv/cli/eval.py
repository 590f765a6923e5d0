"""``msaconv eval``: top-1/top-5 of a checkpoint at one or more image sizes (timm validate.py-style table)."""

from __future__ import annotations

import argparse

HELP = "evaluate a checkpoint at several image sizes with the same weights; prints a table and writes JSON"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a run folder (its best checkpoint), a best.json/last.json, a .safetensors, or a .pt/.pth "
                        "state dict (loaded with weights_only=True)")
    p.add_argument("--data", default="embedded",
                   help="'embedded' (the shipped 10,000 CIFAR-10 test images) or an ImageFolder dir / zip / tar")
    p.add_argument("--img-size", type=int, nargs="+", metavar="N", help="evaluation sizes (default: the training size)")
    p.add_argument("--model", help="model name, when the weights file does not record it")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--limit-val", type=int, metavar="N", help="evaluate on N images (class-balanced)")
    p.add_argument("--skip-bad", action="store_true", help="leave out images that fail to decode")
    p.add_argument("--json", metavar="FILE", help="where to write the results (default: eval.json beside the checkpoint)")
    p.add_argument("--tta", choices=("none", "flip", "both"), default="none",
                   help="horizontal-flip test-time augmentation: 'flip' adds a flip column, 'both' the same")
    p.add_argument("--protocol", nargs="+", choices=("resize", "canvas"), default=["resize"],
                   help="how images reach each size: 'resize' the whole image (object scale changes), 'canvas' keep "
                        "the training scale and centre-crop / pad (map size changes); both may be given")
    p.add_argument("--bn-recalibrate", type=int, default=0, metavar="N",
                   help="also evaluate with BatchNorm statistics re-estimated at each size from N training images "
                        "(no labels, no gradient; the weights stay the trained ones): adds a 'recal' column")
    p.add_argument("--recal-sizes", type=int, nargs="+", metavar="N",
                   help="with --bn-recalibrate: re-estimate the statistics once over these sizes mixed (e.g. the "
                        "training sizes 24 32 40) instead of at each evaluation size: one set for every size")
    p.add_argument("--recal-data", metavar="PATH",
                   help="the training images --bn-recalibrate reads (default: the embedded training set with --data "
                        "embedded, <data>/train when --data is a folder holding train/ and val/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model_kwargs.KEY=VALUE overrides for a weights file without metadata")


def run(args: argparse.Namespace) -> int:
    from ..train.evaluate import evaluate_checkpoint

    results, out_path = evaluate_checkpoint(args.checkpoint, data=args.data, sizes=args.img_size, model=args.model,
                                            batch_size=args.batch_size, limit=args.limit_val, skip_bad=args.skip_bad,
                                            json_path=args.json, sets=args.set, tta=args.tta,
                                            protocols=args.protocol, bn_recalibrate=args.bn_recalibrate,
                                            recal_data=args.recal_data, recal_sizes=args.recal_sizes)
    flip = args.tta != "none"
    recal = ("top1_recal",) + (("top1_flip_recal",) if flip else ()) if args.bn_recalibrate else ()
    cols = ("model", "top1") + (("top1_flip",) if flip else ()) + recal + ("top1_err", "top5", "top5_err", "param_count",
                                                                    "img_size", "protocol", "images")
    print(" ".join(f"{c:>12}" if i else f"{c:<14}" for i, c in enumerate(cols)))
    for r in results:
        f_col = "".join(f" {r[c]:>12.3f}" for c in cols[2:2 + flip + len(recal)])
        print(f"{r['model']:<14} {r['top1']:>12.3f}{f_col} {r['top1_err']:>12.3f} {r['top5']:>12.3f} "
              f"{r['top5_err']:>12.3f} {r['param_count']:>12.3f} {r['img_size']:>12} {r['protocol']:>12} "
              f"{r['images']:>12}")
    if recal:
        where = (f"once over {', '.join(map(str, args.recal_sizes))} px mixed" if args.recal_sizes else "at each size")
        print(f"top1_recal: BatchNorm statistics re-estimated {where} from {args.bn_recalibrate} training images")
    print(f"results: {out_path}")
    return 0
