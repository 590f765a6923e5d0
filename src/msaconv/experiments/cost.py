"""``msaconv experiment cost``: how inference time and peak memory grow with the image, MSA-Conv vs global attention.

The paper's claim: MSA-Conv is cheaper than global attention as images
grow. Measured here: for each model and square image size (default 64, 128, 256, 512, 768, 1024 px),
batch 1, eval mode under ``no_grad``:

- the median time of a forward (:func:`msaconv.bench.common.time_fn`: ``--runs`` timed calls after
  ``--warmup``; a call slower than ``--once-above-s`` is timed once);
- the peak memory of one forward above the memory before it (RSS high-water mark in a fresh child
  process per model and size, :mod:`msaconv.bench.memory`);
- GMACs per image from :func:`msaconv.models.count_flops` on a ``meta``-device copy (no compute, so also
  for the sizes that are skipped).

A size is skipped, with the reason in its record, when the time predicted from the model's smaller sizes
exceeds ``--max-call-s`` or the predicted memory exceeds ``--max-mem-gb`` (prediction: the last measured
value scaled by pixels to the power of the last two points' log-log slope, clamped to [1, 2]; 2 from a
single point), and every larger size of that model is skipped too.

The exponent ``a`` of ``time ~ pixels^a`` is the least-squares slope in log-log over the sizes whose time
is at least ``--overhead-factor`` (default 4) times the model's time at its smallest size (at small
images a forward is mostly fixed per-layer overhead, which would pull the slope toward 0); the points used
are reported. Fewer than two such points: the two largest measured sizes, and the table says so.

The models (``--models``; any registered name works too):

- ``tic_tiny``: the TiC model (MSA-Conv, 7x7 windows, four stages, stem stride 4), 20.2M params;
- ``vit_s16_global``: an isotropic global-attention ViT shaped like DeiT-S (patch 16, 384 wide, 12 blocks,
  6 heads, MLP ratio 4; a depthwise-conv position encoding instead of a fixed-size embedding, so it runs at
  any size), 22.0M params (+9% vs tic_tiny): similar params, different body and 16x16 tokens;
- ``tic_tiny_global``: tic_tiny's body (dims, depths, heads, MLP, stem) with global attention in every
  block and strided-conv downsampling, 19.96M params (-1.3%): the same tokens, only the mixer differs.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Callable

HELP = ("cost growth: inference time and peak memory of tic_tiny vs global-attention models of similar params "
        "at 64-1024 px; fitted exponent of time vs pixel count; log-log plots")

DEFAULT_OUTPUT = Path("results/cost/records.jsonl")
DEFAULT_MODELS = ("tic_tiny", "vit_s16_global", "tic_tiny_global")
DEFAULT_SIZES = (64, 128, 256, 512, 768, 1024)
SMOKE_MODELS = ("tic_nano", "vit_nano_global")
SMOKE_SIZES = (32, 64)
FIGURE = "cost_time_memory.png"


# ---- the models ---------------------------------------------------------------------------------------

def _vit_s16_global():
    from ..models import HierConfig, HierNet

    return HierNet(HierConfig(dims=(384,), depths=(12,), head_dim=64, token_mixer="global", mlp_ratio=4.0,
                              stem="patch", stem_stride=16, pos_conv=True, num_classes=1000, img_size=224))


def _tic_tiny_global():
    from ..models import HierConfig, HierNet
    from ..models.tic import CONFIGS

    t = CONFIGS["tic_tiny"]
    cfg = HierConfig(dims=t.dims, depths=t.depths, head_dim=t.head_dim, token_mixer="global",
                     mlp_ratio=t.mlp_ratio, stem=t.stem, stem_stride=t.stem_stride, downsample="conv",
                     num_classes=t.num_classes, img_size=t.img_size)
    return HierNet(cfg)


BUILDERS: dict[str, tuple[Callable, str]] = {
    "vit_s16_global": (_vit_s16_global, "isotropic global-attention ViT shaped like DeiT-S: patch 16, 384 wide, "
                                        "12 blocks, 6 heads, MLP 4, depthwise-conv position encoding"),
    "tic_tiny_global": (_tic_tiny_global, "tic_tiny's body with global attention in every block, conv downsampling"),
}


def build_model(name: str):
    """A model of this experiment (:data:`BUILDERS`) or any registered one (:func:`msaconv.create_model`)."""
    if name in BUILDERS:
        return BUILDERS[name][0]()
    from ..models import create_model, list_models

    if name not in list_models():
        from .._errors import did_you_mean
        names = list(BUILDERS) + list_models()
        raise ValueError(f"msaconv experiment cost: unknown model {name!r};{did_you_mean(name, names)} use one of "
                         f"{', '.join(BUILDERS)} or a registered model (msaconv.list_models())")
    return create_model(name)


DESCRIPTIONS = {"tic_tiny": "TiC: MSA-Conv with 7x7 windows in every block (MDCSM on every second block, IPM's "
                            "4x4 pooled keys in every block), 4 stages 64-512 wide, depths 3, 4, 6, 5, stem stride 4, "
                            "MSA-Conv downsampling"}


def describe(name: str) -> str:
    if name in BUILDERS:
        return BUILDERS[name][1]
    if name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    return "registered model (msaconv.create_model)"


def uses_global_attention(model) -> bool:
    from ..layers.mixers.global_attn import GlobalAttention2d

    return any(isinstance(m, GlobalAttention2d) for m in model.modules())


def forward_setup(name: str, img_size: int, batch_size: int = 1, seed: int = 0):
    """The memory child's entry point: one eval forward of ``name`` on a random ``img_size`` batch."""
    import torch

    model = build_model(name).eval()
    x = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))

    def call():
        with torch.no_grad():
            return model(x)

    return call, {"img_size": img_size}


def gmacs_at(name: str, img_size: int) -> dict:
    """count_flops of a ``meta``-device copy of the model at ``img_size`` (counts without computing)."""
    import torch

    from ..models import count_flops

    with torch.device("meta"):
        model = build_model(name)
    r = count_flops(model, (3, img_size, img_size), batch_size=1)
    return {"gmacs": r["gmacs"], "flops": r["flops"], "msa_core": r["msa_core"]}


# ---- timing -------------------------------------------------------------------------------------------

def time_call(call: Callable[[], object], warmup: int = 1, runs: int = 5, once_above_s: float | None = None) -> dict:
    """Wall time (``time.perf_counter``) and CPU time of this process (``time.process_time``, every thread)
    of ``call``: medians and p10/p90 of ``runs`` timed calls after ``warmup``; a call slower (wall) than
    ``once_above_s`` right after the first is the only one timed. The CPU time is what the call computed,
    whatever else the machine runs: on a shared machine its growth is the honest one."""
    import statistics
    import time

    from ..bench.common import percentile

    def one() -> tuple[float, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        call()
        return time.perf_counter() - w0, time.process_time() - c0

    first = one()[0]
    timed: list[tuple[float, float]] = []
    if once_above_s is not None:
        timed.append(one())
        if timed[0][0] > once_above_s:
            runs = 1
        else:
            timed.clear()
    for _ in range(max(0, warmup - 1 - (once_above_s is not None and runs > 1))):
        one()
    while len(timed) < runs:
        timed.append(one())
    w = [t[0] * 1e3 for t in timed]
    c = [t[1] * 1e3 for t in timed]
    return {"median_ms": statistics.median(w), "p10_ms": percentile(w, 10), "p90_ms": percentile(w, 90),
            "cpu_ms": statistics.median(c), "cpu_p10_ms": percentile(c, 10), "cpu_p90_ms": percentile(c, 90),
            "runs": len(timed), "first_call_ms": first * 1e3}


# ---- predictions and fits -----------------------------------------------------------------------------

def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den > 0 else float("nan")


def predict(points: list[tuple[float, float]], x: float) -> float | None:
    """The value at ``x`` extrapolated from measured ``(x, y)`` points (last value times (x/x_last)^e,
    e = last two points' slope clamped to [1, 2]; 2 from a single point); None without points."""
    pts = sorted(p for p in points if p[1] > 0)
    if not pts:
        return None
    e = 2.0 if len(pts) < 2 else min(2.0, max(1.0, slope([pts[-2][0], pts[-1][0]], [pts[-2][1], pts[-1][1]])))
    return pts[-1][1] * (x / pts[-1][0]) ** e


def fit(records: list[dict], key: str = "median_ms", overhead_factor: float = 4.0) -> dict[str, dict]:
    """Per model: the exponent of ``key`` against pixels over the sizes where it is at least
    ``overhead_factor`` times its value at the model's smallest size (else the two largest sizes)."""
    out: dict[str, dict] = {}
    for model in _models(records):
        pts = sorted((r["pixels"], r[key], r["img_size"], r.get("gmacs")) for r in records
                     if r.get("kind") == "cost" and r["model"] == model and r.get(key) and r[key] > 0)
        if len(pts) < 2:
            out[model] = {"exponent": None, "sizes": [p[2] for p in pts],
                          "note": f"{len(pts)} measured size(s): no fit"}
            continue
        floor = pts[0][1]
        used = [p for p in pts if p[1] >= overhead_factor * floor]
        note = f"sizes with {key} >= {overhead_factor:g}x the smallest size's"
        if len(used) < 2:
            used = pts[-2:]
            note = f"fewer than 2 sizes reach {overhead_factor:g}x the smallest size's {key}: the two largest"
        res = {"exponent": slope([p[0] for p in used], [p[1] for p in used]), "sizes": [p[2] for p in used],
               "exponent_all": slope([p[0] for p in pts], [p[1] for p in pts]), "sizes_all": [p[2] for p in pts],
               "local_exponent_largest": slope([p[0] for p in pts[-2:]], [p[1] for p in pts[-2:]]), "note": note}
        gm = [float(p[3]) for p in used if p[3]]
        if len(gm) == len(used):
            res["gmacs_exponent"] = slope([p[0] for p in used], gm)
        out[model] = res
    return out


def _models(records: list[dict]) -> list[str]:
    seen: list[str] = []
    for r in records:
        if r.get("kind") == "cost" and r["model"] not in seen:
            seen.append(r["model"])
    return seen


# ---- the run --------------------------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=_str_list, default=None,
                   help=f"comma-separated models (default {','.join(DEFAULT_MODELS)}; {', '.join(BUILDERS)} are "
                        "built here, any registered name works)")
    p.add_argument("--sizes", type=_int_list, default=None,
                   help=f"square image sizes in px (default {','.join(map(str, DEFAULT_SIZES))})")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--runs", type=int, default=5, help="timed forwards per size (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--once-above-s", type=float, default=2.0,
                   help="a forward slower than this is timed once (after one warm-up call)")
    p.add_argument("--max-call-s", type=float, default=30.0,
                   help="skip a size whose predicted forward time exceeds this (and the larger sizes)")
    p.add_argument("--max-mem-gb", type=float, default=4.0,
                   help="skip a size whose predicted peak memory exceeds this (and the larger sizes)")
    p.add_argument("--overhead-factor", type=float, default=4.0,
                   help="fit the exponent over sizes whose time is >= this times the smallest size's")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="what the budget and the fit use: 'cpu' (CPU time of this process, robust to other jobs on "
                        "a shared machine; default) or 'wall' (both are recorded)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON lines to append to (default {DEFAULT_OUTPUT})")
    p.add_argument("--smoke", action="store_true",
                   help=f"a tiny run: {','.join(SMOKE_MODELS)} at {','.join(map(str, SMOKE_SIZES))} px, 2 runs")


def _command() -> str:
    argv = sys.argv[1:]
    if argv[:2] == ["experiment", "cost"] or argv[:1] == ["cost"]:
        return "msaconv " + " ".join(shlex.quote(a) for a in argv)
    return "msaconv experiment cost"


def run(args: argparse.Namespace) -> Path:
    """Measure every model at every size; append the records to ``args.output``; return its path."""
    import torch

    from ..bench import common

    models = list(args.models or (SMOKE_MODELS if args.smoke else DEFAULT_MODELS))
    sizes = sorted(args.sizes or (SMOKE_SIZES if args.smoke else DEFAULT_SIZES))
    runs = min(args.runs, 2) if args.smoke else args.runs
    for arg, v in (("--batch-size", args.batch_size), ("--runs", runs)):
        if v < 1:
            raise ValueError(f"msaconv experiment cost: {arg} must be >= 1, got {v}")
    for name in models:  # unknown names fail before anything is timed
        if name not in BUILDERS:
            build_model(name)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = common.environment(_command())
    out = Path(args.output)
    state = {name: _prepare(name, sizes, args) for name in models}
    # size by size, every model at each size: a run stopped early still compares the models
    for size in sizes:
        for name in models:
            rec = _measure(name, size, state[name], args, runs, env)
            common.write_jsonl(out, [rec])
            shown = rec.get("skipped", "")
            if "median_ms" in rec:
                shown = f"{rec['median_ms']:10.1f} ms wall {rec['cpu_ms']:10.1f} ms CPU"
                shown += f"  peak {rec['peak_mb']:8.1f} MB" if "peak_mb" in rec else ""
            print(f"  {name:<18} {size:>5} px  {shown}", flush=True)
    state.clear()
    recs = [r for r in common.read_jsonl(out) if r.get("kind") == "cost" and r["model"] in models]
    for name, f in fit(_latest(recs), key=_CLOCKS[args.clock], overhead_factor=args.overhead_factor).items():
        if f["exponent"] is not None:
            print(f"{name}: time ~ pixels^{f['exponent']:.2f} over {f['sizes']} px")
    print(f"appended to {out}")
    return out


_CLOCKS = {"cpu": "cpu_ms", "wall": "median_ms"}  # --clock -> the record's time key the fit reads


def _case(name: str, size: int, batch_size: int) -> dict:
    """A memory-measurement case for :func:`msaconv.bench.memory.measure_in_child`."""
    return {"target": "msaconv.experiments.cost:forward_setup",
            "kwargs": {"name": name, "img_size": size, "batch_size": batch_size}}


def _prepare(name: str, sizes: list[int], args: argparse.Namespace) -> dict:
    """A model's measuring state: the model, its size, the points measured so far and why it stopped."""
    import torch

    from ..bench import memory

    model = build_model(name).eval()
    st: dict = {"model": model, "params": sum(p.numel() for p in model.parameters()),
                "global": uses_global_attention(model), "times": [], "mems": [], "stop": None, "pre": {}}
    if args.smoke and not args.no_memory:  # tiny sizes: one child for all of them (a child per size elsewhere)
        st["pre"] = dict(zip(sizes, memory.measure_in_child([_case(name, s, args.batch_size) for s in sizes],
                                                            torch.get_num_threads())))
    print(f"{name}: {st['params'] / 1e6:.2f}M params, {'global attention' if st['global'] else 'no global attention'}")
    return st


def _measure(name: str, size: int, st: dict, args: argparse.Namespace, runs: int, env: dict) -> dict:
    """One model at one size: its record (MACs, predicted cost, peak memory, time, or why it was skipped).
    A skip stops the model's larger sizes (``st['stop']``)."""
    from ..bench import common

    px = size * size
    rec: dict = {**env, "loadavg_1m": common.load_average(), "kind": "cost", "model": name,
                 "description": describe(name), "params": st["params"], "global_attention": st["global"],
                 "img_size": size, "pixels": px, "batch_size": args.batch_size,
                 "overhead_factor": args.overhead_factor, "smoke": bool(args.smoke), "clock": args.clock}
    try:
        rec.update(gmacs_at(name, size))
    except Exception as e:  # e.g. below the model's minimum size
        rec["gmacs_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    predicted_skip = _predicted_skip(rec, st, args)  # the prediction is recorded for a skipped size too
    st["stop"] = st["stop"] or predicted_skip
    if st["stop"] is not None:
        rec["skipped"] = st["stop"]
        return rec
    if not args.no_memory:
        st["stop"] = _measure_memory(rec, st, args)
    if st["stop"] is None:
        st["stop"] = _measure_time(rec, st, args, runs)
    return rec


def _predicted_skip(rec: dict, st: dict, args: argparse.Namespace) -> str | None:
    """Record the time and memory predicted from the smaller sizes; the reason to skip if over a limit."""
    size = rec["img_size"]
    pt, pm = predict(st["times"], rec["pixels"]), predict(st["mems"], rec["pixels"])
    if pt is not None:
        rec["predicted_s"] = pt / 1e3
    if pm is not None:
        rec["predicted_mem_gb"] = pm * 2 ** 20 / 2 ** 30
    if pt is not None and pt / 1e3 > args.max_call_s:
        return f"predicted {pt / 1e3:.0f} s ({args.clock} time) per forward at {size} px > --max-call-s {args.max_call_s:g}"
    if pm is not None and pm * 2 ** 20 > args.max_mem_gb * 2 ** 30:
        return f"predicted {pm / 1024:.1f} GB peak at {size} px > --max-mem-gb {args.max_mem_gb:g}"
    return None


def _measure_memory(rec: dict, st: dict, args: argparse.Namespace) -> str | None:
    """Peak memory of one forward, in a child process; the reason to stop if the child failed."""
    import torch

    from ..bench import memory

    size = rec["img_size"]
    res = st["pre"][size] if size in st["pre"] else memory.measure_in_child(
        [_case(rec["model"], size, args.batch_size)], torch.get_num_threads())[0]
    if "error" not in res:
        rec["peak_mb"] = res["peak_bytes_above_inputs"] / 2 ** 20
        st["mems"].append((rec["pixels"], max(rec["peak_mb"], 1e-3)))
        return None
    rec["memory_error"] = res["error"]
    if res["error"].startswith("memory child failed"):  # e.g. killed: do not run it in here
        rec["skipped"] = f"the memory child failed at {size} px: {res['error']}"[:300]
        return rec["skipped"]
    return None


def _measure_time(rec: dict, st: dict, args: argparse.Namespace, runs: int) -> str | None:
    """Time of one forward (``time_call``); the reason to stop if it failed."""
    import torch

    model, size = st["model"], rec["img_size"]
    try:
        x = torch.randn(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))

        def call(x=x):
            with torch.no_grad():
                return model(x)

        rec.update(time_call(call, args.warmup, runs, args.once_above_s))
        st["times"].append((rec["pixels"], rec[_CLOCKS[args.clock]]))
        return None
    except (RuntimeError, ValueError, MemoryError) as e:
        rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        rec["skipped"] = f"failed at {size} px: {rec['error']}"
        return rec["skipped"]


# ---- the report -------------------------------------------------------------------------------------

def _latest(records: list[dict]) -> list[dict]:
    """The newest record of each (model, size, batch): a file appended to by several runs shows the last."""
    by: dict[tuple, dict] = {}
    for r in records:
        if r.get("kind") == "cost":
            by[(r["model"], r["img_size"], r["batch_size"])] = r
    return list(by.values())


def exponents(records: list[dict]) -> dict[str, dict]:
    """:func:`fit` of what the section shows: the newest non-smoke records (if any), on their run's clock."""
    recs = [r for r in records if r.get("kind") == "cost"]
    if any(not r.get("smoke") for r in recs):
        recs = [r for r in recs if not r.get("smoke")]
    recs = _latest(recs)
    if not recs:
        return {}
    return fit(recs, key=_clock_key(recs), overhead_factor=float(recs[0].get("overhead_factor", 4.0)))


def _clock_key(records: list[dict]) -> str:
    """The time the records' run budgeted and fitted on: ``cpu_ms`` or ``median_ms`` (wall)."""
    clocks = {r.get("clock", "wall") for r in records}
    return "cpu_ms" if clocks == {"cpu"} else "median_ms"


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def plot(records: list[dict], path: Path) -> Path:
    """Log-log: forward time and peak memory against pixels, one line per model, slope-1 and -2 guides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clock = _clock_key(records)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], clock, f"forward {'CPU' if clock == 'cpu_ms' else 'wall'} time (ms, median)"),
                           (axes[1], "peak_mb", "peak memory above inputs (MB)")):
        anchor = None
        ys: list[float] = []
        for i, model in enumerate(_models(records)):
            pts = sorted((r["pixels"], r[key]) for r in records if r["model"] == model and r.get(key))
            ys += [p[1] for p in pts]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{i % 10}", label=model)
                if anchor is None:
                    anchor = pts[0]
            if key == "cpu_ms":  # the wall time beside it, faint
                wall = sorted((r["pixels"], r["median_ms"]) for r in records if r["model"] == model and r.get(key))
                if wall:
                    ax.plot([p[0] for p in wall], [p[1] for p in wall], ":", color=f"C{i % 10}", alpha=0.5,
                            label=f"{model} (wall)")
        if anchor is not None:
            ax.set_ylim(min(ys) / 2, max(ys) * 2)  # the guides must not set the scale
            ax.set_autoscaley_on(False)
            xs = sorted({r["pixels"] for r in records})
            for e, style in ((1, ":"), (2, "--")):
                ax.plot(xs, [anchor[1] * (x / anchor[0]) ** e for x in xs], "k" + style, lw=0.8,
                        label=f"slope {e} (pixels^{e})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels per image (H*W)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if anchor is not None:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    if records:
        r = records[0]
        fig.suptitle(f"batch {r['batch_size']}, eval forward, torch {r['torch']}, {r['threads']} threads, {r['cpu']}",
                     fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(records: list[dict], figdir: Path) -> str:
    """The markdown section (tables of the measurements and the fitted exponents) and the plot in ``figdir``."""
    recs = [r for r in records if r.get("kind") == "cost"]
    if any(not r.get("smoke") for r in recs):  # a real run's records hide the smoke runs' in the same file
        recs = [r for r in recs if not r.get("smoke")]
    recs = _latest(recs)
    if not recs:
        return "## Cost growth\n\n(no cost records)\n"
    models = _models(recs)
    cpu = _clock_key(recs) == "cpu_ms"
    out = _header(recs, models) + _time_table(recs, models, cpu) + _fit_table(recs, models, cpu)
    png = plot(recs, Path(figdir) / FIGURE)
    out += ["", f"![time and peak memory against pixels, log-log]({Path(figdir).as_posix()}/{png.name})", "",
            "Reading: an exponent near 1 means cost proportional to the number of pixels (local windows), near 2 "
            "quadratic (every token attends to every token); a model's exponent sits between the two when the "
            "per-pixel parts (projections, MLPs, convolutions) are still a large share at the sizes measured."]
    return "\n".join(out) + "\n"


def _header(recs: list[dict], models: list[str]) -> list[str]:
    """The question, the commands and machine, one row per model, the machine's load."""
    first = recs[0]
    params = {m: next(r["params"] for r in recs if r["model"] == m) for m in models}
    commands = list(dict.fromkeys(r["command"] for r in recs))
    out = ["## Cost growth: time and memory against image size", "",
           "Does MSA-Conv stay cheaper than global attention as images grow (the paper's claim)? Inference of "
           "each model at each size, batch as below; records in the JSON lines, this section made from them.", "",
           ("Commands (later runs replace the same model and size): " if len(commands) > 1 else "Command: ")
           + "; ".join(f"`{c}`" for c in commands)
           + f"; torch {first['torch']}, {first['cpu']}, {first['threads']} thread{'s' if first['threads'] != 1 else ''}, "
           f"commit {first['git_commit']}, {first['time_utc']}; batch {first['batch_size']}, eval forward under "
           f"`no_grad`.", "", "| model | params (M) | vs first | global attention | what it is |", "|---|---:|---:|---|---|"]
    for m in models:
        r = next(r for r in recs if r["model"] == m)
        out.append(f"| {m} | {params[m] / 1e6:.2f} | {params[m] / params[models[0]] - 1:+.1%} | "
                   f"{'yes' if r.get('global_attention') else 'no'} | "
                   f"{describe(m) if m in BUILDERS or m in DESCRIPTIONS else r.get('description', '')} |")
    loads = [r["loadavg_1m"] for r in recs if r.get("loadavg_1m") is not None]
    if loads:
        out += ["", f"Machine load during the run (1-minute load average on {first.get('cpu_count', '?')} CPUs): "
                    f"{min(loads):.1f} to {max(loads):.1f}."]
    return out


def _time_table(recs: list[dict], models: list[str], cpu: bool) -> list[str]:
    """Time, peak memory and GMACs per size and model; skipped sizes point to their numbered reason."""
    out = ["", "### Forward time (ms, median; `*` = timed once) and peak memory above the inputs (MB)", ""]
    if cpu:
        out += ["Time is the CPU time of the measuring process (all its threads) per forward: what the forward "
                "computed, unaffected by other jobs on the machine; wall time (also recorded) grows with the "
                "machine's load as well. The budget and the fit use the CPU time.", ""]
    cols = ["CPU ms", "wall ms", "MB", "GMACs"] if cpu else ["ms", "MB", "GMACs"]
    out += ["| size (px) | pixels | " + " | ".join(f"{m} {c}" for m in models for c in cols) + " |",
            "|---:|---:|" + "---:|" * (len(cols) * len(models))]
    by = {(r["model"], r["img_size"]): r for r in recs}
    reasons: list[str] = []
    for s in sorted({r["img_size"] for r in recs}):
        cells = []
        for m in models:
            r = by.get((m, s))
            if r is None:
                cells += [""] * len(cols)
                continue
            g = _fmt(r.get("gmacs"))
            if "median_ms" in r:
                once = "*" if r.get("runs") == 1 else ""
                mem = _fmt(r.get("peak_mb")) or ("err" if "memory_error" in r else "")
                times = [_fmt(r.get("cpu_ms")) + once, _fmt(r["median_ms"]) + once] if cpu else [_fmt(r["median_ms"]) + once]
                cells += times + [mem, g]
            else:
                why = r.get("skipped", r.get("error", "not run"))
                if why not in reasons:
                    reasons.append(why)
                cells += [f"skipped ({reasons.index(why) + 1})"] + [""] * (len(cols) - 2) + [g]
        out.append(f"| {s} | {s * s} | " + " | ".join(cells) + " |")
    if reasons:
        out += [""] + [f"({i + 1}) {why}" for i, why in enumerate(reasons)]
    return out


def _fit_table(recs: list[dict], models: list[str], cpu: bool) -> list[str]:
    """The fitted exponents of time (and wall time, memory, GMACs) against pixels, per model."""
    factor = float(recs[0].get("overhead_factor", 4.0))
    fits = fit(recs, key="cpu_ms" if cpu else "median_ms", overhead_factor=factor)
    wfits = fit(recs, key="median_ms", overhead_factor=factor)
    mfits = fit(recs, key="peak_mb", overhead_factor=factor)
    what = "CPU time" if cpu else "time"
    out = ["", f"### Fitted exponent a of {what} ~ pixels^a (least squares in log-log)", "",
           f"Fitted over the sizes whose {what} is at least {factor:g}x the model's at its smallest size (below "
           "that a forward is mostly fixed per-layer overhead). For comparison: the slope over all measured sizes, "
           "the local slope between the two largest measured sizes, the GMACs slope over the fitted sizes (what "
           "the arithmetic alone predicts)" + (", the same fit of the wall time" if cpu else "") +
           " and of the peak memory.", "",
           "| model | exponent | fitted sizes (px) | all sizes | two largest | GMACs exponent | "
           + ("wall-time exponent | " if cpu else "") + "memory exponent | memory sizes (px) |",
           "|---|---:|---|---:|---:|---:|" + ("---:|" if cpu else "") + "---:|---|"]

    def num(d: dict, k: str) -> str:
        v = d.get(k)
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    for m in models:
        f, wf, mf = fits.get(m, {}), wfits.get(m, {}), mfits.get(m, {})
        sz = ", ".join(map(str, f.get("sizes", [])))
        if "two largest" in f.get("note", ""):
            sz += " (two largest: too few above overhead)"
        out.append(f"| {m} | {num(f, 'exponent')} | {sz} | {num(f, 'exponent_all')} | "
                   f"{num(f, 'local_exponent_largest')} | {num(f, 'gmacs_exponent')} | "
                   + (f"{num(wf, 'exponent')} | " if cpu else "") +
                   f"{num(mf, 'exponent')} | {', '.join(map(str, mf.get('sizes', [])))} |")
    return out
