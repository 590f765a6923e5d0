"""``msaconv bench <what>``: benchmarks. ``op`` times msa_conv2d's backends beside their peers.

Each sub-command is a small function pair ``_add_<what>(parser)`` / ``_run_<what>(args)`` registered in
``SUBCOMMANDS``, so that ``msaconv bench model`` slots in beside ``msaconv bench op``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

HELP = ("benchmarks: `msaconv bench op` (the operator against its peers and the roofline), `msaconv bench model` "
        "(timm benchmark.py's columns and peak memory for any models)")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            if "x" in part:
                h, w = part.split("x")
                out.append((int(h), int(w)))
            else:
                out.append((int(part), int(part)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected sizes like 14,28,57x43, got {text!r}") from None
    return out


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_op(p: argparse.ArgumentParser) -> None:
    from ..bench.op import OpBenchConfig

    d = OpBenchConfig()
    g = p.add_argument_group("sweep")
    g.add_argument("--sizes", type=_sizes, default=None, help="map sizes, e.g. 14,28,56,112,57x43 (default)")
    g.add_argument("--kernels", type=_int_list, default=None, help="kernel sizes (default 3,7,13)")
    g.add_argument("--dilations", type=_int_list, default=None, help="dilations (default 1,2)")
    g.add_argument("--modes", type=_str_list, default=None, help="fwd,fwdbwd (default both)")
    g.add_argument("--backends", type=_str_list, default=None,
                   help="implementations to run: msa_conv2d backends (cpu, portable, reference, ...) in their own "
                        "layout, a backend in a given one (cpu@bhwd: msa_conv2d's default layout) and peers "
                        "(sdpa_global, sdpa_masked, flex, flex_compiled); default every backend and peer")
    g.add_argument("--quick", action="store_true",
                   help="a small sweep: sizes 14,28, kernels 3,7, dilation 1, no compiled FlexAttention")
    g.add_argument("--batch", type=int, default=d.batch)
    g.add_argument("--heads", type=int, default=d.heads)
    g.add_argument("--head-dim", type=int, default=d.head_dim)
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float64"], default=d.dtype)
    g.add_argument("--flex-compile", choices=["all", "k7d1", "none"], default=d.flex_compile,
                   help="cases that compile FlexAttention (compiling takes ~10 s each; default: k=7, dilation 1)")
    t = p.add_argument_group("timing")
    t.add_argument("--runs", type=int, default=d.runs, help="timed runs per case (>= 5 for results)")
    t.add_argument("--warmup", type=int, default=d.warmup)
    t.add_argument("--max-call-s", type=float, default=d.max_call_s,
                   help="a call slower than this is timed once and larger cases of it are skipped")
    t.add_argument("--max-predicted-s", type=float, default=d.max_predicted_s,
                   help="global SDPA slower than --max-call-s is still timed once while its predicted time "
                        "(scaled by N^2 from its last call) stays below this")
    t.add_argument("--max-mem-gb", type=float, default=d.max_mem_gb, help="skip calls estimated to need more")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    t.add_argument("--roofline-per-case", action="store_true",
                   help="also measure the roofline right before each case and report the ratio to that local "
                        "bound (shared machines: the load drifts during a sweep)")
    t.add_argument("--no-memory", action="store_true", help="skip the peak-memory child process")
    o = p.add_argument_group("output")
    o.add_argument("--output", default=None, help="JSON lines file to append the records to")
    o.add_argument("--markdown", default=None, help="write the results table (markdown) here")
    o.add_argument("--plot", default=None, help="write the time-vs-map-size plot (PNG) here")
    o.add_argument("--from", dest="from_file", default=None,
                   help="do not run: make --markdown/--plot from an existing JSON lines file")


def _run_op(args: argparse.Namespace) -> int:
    from ..bench import common, report
    from ..bench.op import OpBenchConfig, run_op_bench

    if args.from_file:
        records = list(common.read_jsonl(args.from_file))
    else:
        cfg = OpBenchConfig(batch=args.batch, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype,
                            runs=args.runs, warmup=args.warmup, max_call_s=args.max_call_s,
                            max_mem_gb=args.max_mem_gb, max_predicted_s=args.max_predicted_s,
                            memory=not args.no_memory, threads=args.threads,
                            flex_compile=args.flex_compile, implementations=args.backends,
                            roofline_per_case=args.roofline_per_case)
        if args.quick:
            cfg.sizes, cfg.kernels, cfg.dilations, cfg.flex_compile = [(14, 14), (28, 28)], [3, 7], [1], "none"
        for name in ("sizes", "kernels", "dilations", "modes"):
            if getattr(args, name) is not None:
                setattr(cfg, name, getattr(args, name))
        command = "msaconv " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else \
            "msaconv bench op"
        records = run_op_bench(cfg, command=command, output=args.output)
    if args.markdown:
        from pathlib import Path

        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        source = args.from_file or args.output
        regen = (f"Regenerate this file from the JSON lines: `msaconv bench op --from {source} --markdown "
                 f"{args.markdown}" + (f" --plot {args.plot}" if args.plot else "") + "`\n\n") if source else ""
        Path(args.markdown).write_text("# msa_conv2d operator benchmark\n\n" + regen + report.markdown(records))
        print(f"wrote {args.markdown}")
    if args.plot:
        print(f"wrote {report.plot(records, args.plot)}")
    if args.output and not args.from_file:
        print(f"appended {len(records)} records to {args.output}")
    return 0


def _add_model(p: argparse.ArgumentParser) -> None:
    # defaults of msaconv.bench.model.ModelBenchConfig, written out: building the parser imports no torch
    g = p.add_argument_group("models")
    g.add_argument("--models", type=_str_list, default=None,
                   help="comma-separated model names: msaconv's (msaconv.list_models()), and timm's with a 'timm:' "
                        "prefix or by a name msaconv does not have, when timm is installed (e.g. "
                        "tic_nano,hier_nano_global,timm:resnet50)")
    g.add_argument("--img-size", type=int, default=None, help="image side in px (default: each model's own input size)")
    g.add_argument("--batch-size", type=int, default=32)
    t = p.add_argument_group("timing")
    t.add_argument("--runs", type=int, default=5, help="timed steps per model and mode; the median is reported")
    t.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    t.add_argument("--no-train", action="store_true", help="inference only")
    t.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    t.add_argument("--memory-format", choices=("contiguous", "channels_last", "both"), default="contiguous",
                   help="model and input memory format (default %(default)s, NCHW); 'both': each model in NCHW, "
                        "then channels-last, in turn (an interleaved A/B)")
    t.add_argument("--amp", choices=("none", "bf16", "both"), default="none",
                   help="'bf16': the steps under bfloat16 autocast, as training with amp=bf16 (default float32); "
                        "'both': each model in float32, then bf16, in turn (an interleaved A/B)")
    o = p.add_argument_group("output")
    o.add_argument("--output", default=None, help="JSON lines file to append the records to")
    o.add_argument("--markdown", default=None, help="write the table (markdown) here")
    o.add_argument("--from", dest="from_file", default=None,
                   help="do not run: make --markdown from an existing JSON lines file")


def _run_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..bench import common
    from ..bench import model as bench_model

    if args.from_file:
        records = list(common.read_jsonl(args.from_file))
    else:
        if not args.models:
            raise ValueError("msaconv bench model: give --models, e.g. --models tic_nano,tic_micro,hier_nano_global")
        cfg = bench_model.ModelBenchConfig(models=args.models, img_size=args.img_size, batch_size=args.batch_size,
                                           runs=args.runs, warmup=args.warmup, train=not args.no_train,
                                           memory=not args.no_memory, threads=args.threads,
                                           memory_format=args.memory_format, amp=args.amp)
        command = "msaconv " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else \
            "msaconv bench model"
        records = bench_model.run_model_bench(cfg, command=command, output=args.output)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        source = args.from_file or args.output
        regen = (f"Regenerate this file from the JSON lines: `msaconv bench model --from {source} --markdown "
                 f"{args.markdown}`\n\n") if source else ""
        Path(args.markdown).write_text("# Model benchmark\n\n" + regen + bench_model.markdown(records))
        print(f"wrote {args.markdown}")
    if args.output and not args.from_file:
        print(f"appended {len(records)} records to {args.output}")
    return 0


SUBCOMMANDS = {
    "op": ("time msa_conv2d's backends beside global/masked SDPA and FlexAttention, with the roofline",
           _add_op, _run_op),
    "model": ("timm benchmark.py's columns (samples/s, step time, params, GMACs) and peak memory for any models",
              _add_model, _run_model),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    for name, (help_, add, run) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        add(sp)
        sp.set_defaults(_bench_run=run)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
