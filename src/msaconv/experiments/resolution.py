"""``msaconv experiment resolution``: does TiC keep its accuracy at image sizes it was not trained at?

The paper's headline is that MSA-Conv runs at any resolution. Arms (:data:`ARMS`): both TiC readings
(``tic_conv_nano``, the ConvNet of MSA-Convs, and ``tic_nano``, the hierarchical transformer with MDCSM and
IPM), their ConvNet baseline ``convnet_nano``, the global-attention ViT ``vit_nano_global`` (conv position
encoding), the same ViT with a learned absolute position embedding bicubically interpolated to the new
grid (``vit_nano_abspe``, the textbook failure case), and three zoo mixers in the same ``hier_nano``
backbone (:data:`ZOO`; parameters matched to tic_nano's as in the mixers experiment; ``--arms`` adds any
other). Each arm trains twice per seed: at a fixed 32 px (``fixed``) and with multi-size training
(``multi``: 24, 32, 40 px, one size per step).

Each run's own final evaluations measure top-1 on all 10,000 test images at 16, 24, 32, 40, 48 and 64 px
under both protocols of :func:`msaconv.data.to_eval_size`: ``resize`` scales the whole image (the object's
scale changes), ``canvas`` keeps the scale and centre-crops or zero-pads to the size (the map size changes,
the object does not). Retention is top-1 at a size over top-1 at 32 px; the finding compares retention
between arms, paired by seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import _common as C

HELP = ("TiC (both readings), convnet_nano, two ViTs and 3 zoo mixers, trained at 32 px and multi-size, "
        "evaluated at 16-64 px, resize and canvas; retention paired by seed")

REFERENCE = "tic_conv_nano"
TICS = ("tic_conv_nano", "tic_nano")
BASELINES = ("convnet_nano", "vit_nano_global", "vit_nano_abspe")
# zoo mixers in hier_nano: ConViT's gated positional attention, HiLo (local windows + pooled global), axial.
# Any other registered mixer can be added with --arms (halo: about 10x the training time of these on a CPU).
ZOO = ("gpsa", "hilo", "axial")
# arm -> (model, description); a zoo mixer's model_kwargs are the matched MLP ratio (mixers.match_mlp_ratio)
ARMS: dict[str, tuple[str, str]] = {
    "tic_conv_nano": ("tic_conv_nano", "TiC as a ConvNet of MSA-Convs (the main job's model)"),
    "tic_nano": ("tic_nano", "TiC as a hierarchical transformer (MSA-Conv mixer, MDCSM + IPM)"),
    "convnet_nano": ("convnet_nano", "tic_conv_nano's skeleton with nn.Conv2d: the ConvNet baseline"),
    "vit_nano_global": ("vit_nano_global", "global attention, depthwise-conv position encoding"),
    "vit_nano_abspe": ("vit_nano_abspe", "global attention, learned absolute position embedding, interpolated"),
    **{m: (f"hier_nano_{m}", f"zoo mixer '{m}' in hier_nano, parameters matched to tic_nano's") for m in ZOO},
}
SMOKE_ARMS = ("tic_conv_nano", "tic_nano")
SMOKE_SIZES = (8, 16, 32, 48)


def add_arguments(p: argparse.ArgumentParser) -> None:
    C.add_budget_arguments(p, seeds=3)
    p.add_argument("--arms", default="all",
                   help=f"comma-separated arms (default all): {', '.join(ARMS)}, or any other zoo mixer name")
    p.add_argument("--modes", default="fixed,multi",
                   help="training modes: 'fixed' (32 px) and/or 'multi' (24, 32, 40 px; default %(default)s)")


def selected(args: argparse.Namespace) -> list[str]:
    from ..layers import list_token_mixers

    if args.arms == "all":
        return list(SMOKE_ARMS if args.smoke else ARMS)
    names = [n.strip() for n in args.arms.split(",") if n.strip()]
    allowed = [*ARMS, *[m for m in list_token_mixers() if m not in ARMS]]
    for n in names:
        if n not in allowed:
            from .._errors import unknown_name
            raise unknown_name("msaconv experiment resolution", "--arms entry (an arm or a zoo mixer)", n, allowed)
    return names


def arm_spec(name: str) -> tuple[str, str]:
    """(model, description) of an arm; a zoo mixer not in :data:`ARMS` runs in hier_nano like those that are."""
    return ARMS.get(name) or (f"hier_nano_{name}", f"zoo mixer '{name}' in hier_nano, parameters matched to tic_nano's")


def _modes(args: argparse.Namespace) -> list[str]:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in C.MODES:
            from .._errors import unknown_name
            raise unknown_name("msaconv experiment resolution", "--modes entry", m, list(C.MODES))
    return modes


def arm_kwargs(name: str) -> dict:
    """The model_kwargs of an arm: a zoo mixer's matched MLP ratio (the mixers experiment's), else none."""
    if arm_spec(name)[0].startswith("hier_nano_"):
        from . import mixers

        return {"mlp_ratio": mixers.match_mlp_ratio(name, mixers.target_params())["mlp_ratio"]}
    return {}


def run(args: argparse.Namespace) -> Path:
    budget = C.budget_from_args(args)
    out = C.output_path(args, "resolution")
    stamp = C.stamp("resolution", args.smoke)
    sizes = list(SMOKE_SIZES) if args.smoke else list(C.EVAL_SIZES)
    jobs = []
    for s in range(args.seeds):
        for mode in _modes(args):
            for name in selected(args):
                model, desc = arm_spec(name)
                jobs.append(C.make_job("resolution", name, model, arm_kwargs(name), s, budget, args, mode, sizes,
                                       extra={"description": desc}, bn_recalibrate=C.RECAL_IMAGES))
    C.run_training("resolution", args, jobs, stamp, out)
    return out


# ------------------------------------------------------------------------------------------------ render


def window_coverage(model: str, img_size: int) -> str | None:
    """How the MSA-Conv layers of ``model`` see an ``img_size`` image: the maps they run on against their
    windows, naming the maps a window covers whole (every query attends to the whole map: global attention at
    that size, local on larger maps) and those where IPM 'grid' is as fine as the map (the raw map as extra
    keys, no pooling). None for a model without MSA-Conv layers. Measured with forward hooks on one image."""
    import torch

    from ..layers import MSAConv2d, MSAttention2d
    from ..models import create_model
    from . import _models  # noqa: F401  (registers the experiment-only models)

    net = create_model(model).eval()
    seen: list[tuple[int, int, bool, bool, bool]] = []  # (map side, window extent, covers, IPM raw, MDCSM overlaps)

    def hook(mod, inputs, _out):
        a, side = mod.attn, min(inputs[0].shape[-2:])
        ext = C.window_extent(a.kernel_size, a.dilation)
        ip = a.inter_pool
        raw = ip is not None and ip.mode == "grid" and ip.grid_size(*inputs[0].shape[-2:]) == tuple(inputs[0].shape[-2:])
        seen.append((side, ext, side <= ext // 2 + 1, raw, a.shift is not None and side < 2 * ext))

    handles = [x.register_forward_hook(hook) for x in net.modules() if isinstance(x, (MSAConv2d, MSAttention2d))]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, img_size, img_size))
    finally:
        for h in handles:
            h.remove()
    if not seen:
        return None
    count: dict[tuple[int, int], int] = {}
    for side, ext, *_flags in seen:
        count[(side, ext)] = count.get((side, ext), 0) + 1

    def where(i: int) -> str:
        return " and ".join(dict.fromkeys(f"{x[0]}x{x[0]}" for x in seen if x[i]))

    out = (f"`{model}` at {img_size} px: MSA-Conv layers (count) on maps "
           f"{', '.join(f'{side}x{side} ({n})' for (side, _e), n in count.items())}, "
           f"{' / '.join(f'{e}x{e}' for e in sorted({e for _s, e in count}))} windows")
    if where(2):
        out += f"; on the {where(2)} maps each window covers the whole map (global attention at this size)"
    if where(3):
        out += f"; IPM 'grid' passes the raw {where(3)} maps as extra keys (no pooling)"
    if where(4):
        out += f"; MDCSM rolls {where(4)} maps, smaller than twice the window (the rolled window overlaps the query's own)"
    return out + "."


def _keep(r: dict, size: int, proto: str) -> float | None:
    """top-1 at (size, protocol) over top-1 at the training size (recalibrated there too for a '+bn' protocol)."""
    a = C.top1_at(r, size, proto)
    b = C.top1_at(r, r["budget"]["img_size"], "resize+bn" if proto.endswith(C.RECAL) else "resize")
    return a / b if a is not None and b else None


def summarise(runs: list[dict]) -> dict:
    """Per (arm, mode): seeds, top-1 and retention per (size, protocol), the paired difference at 32 px."""
    sizes = sorted({e["img_size"] for r in runs for e in r.get("evals", [])})
    val = max((r.get("val_images", 0) for r in runs), default=0)
    out: dict = {"sizes": sizes, "rows": {}, "val": val, "protocols": C.protocols_of(runs)}
    keys = list(dict.fromkeys((r["config"], r.get("mode", "fixed")) for r in runs))
    order = {n: i for i, n in enumerate(ARMS)}
    keys.sort(key=lambda k: (k[1] != "fixed", order.get(k[0], 99), k[0]))
    for arm, mode in keys:
        rs = [r for r in runs if r["config"] == arm and r.get("mode", "fixed") == mode]
        ref = {r["seed"]: r["top1"] for r in runs if r["config"] == REFERENCE and r.get("mode", "fixed") == mode}
        ref_stats = C.mean_spread(list(ref.values()))
        cell = {}
        for proto in out["protocols"]:
            for s in sizes:
                t = {r["seed"]: C.top1_at(r, s, proto) for r in rs}
                k = {r["seed"]: _keep(r, s, proto) for r in rs}
                cell[(s, proto)] = {"top1": C.mean_spread(list(t.values())), "keep": C.mean_spread(list(k.values())),
                                    "keep_by_seed": {sd: v for sd, v in k.items() if v is not None}}
        out["rows"][(arm, mode)] = {
            "arm": arm, "mode": mode, "seeds": sorted(r["seed"] for r in rs), "model": rs[0]["model"],
            "params": rs[0]["params"], "top1": C.mean_spread([r["top1"] for r in rs]), "cell": cell,
            "errors": {k: v for r in rs for k, v in r.get("eval_errors", {}).items()},
            "delta": C.verdict(C.paired({r["seed"]: r["top1"] for r in rs}, ref), ref_stats["std"],
                               C.binomial_se(ref_stats["mean"] if ref_stats["n"] else 50.0, val)),
            "train_min": C.mean_spread([C.train_minutes(r) for r in rs]),
            "eval_min": C.mean_spread([r.get("eval_seconds", 0) / 60 for r in rs])}
    return out


def keep_verdict(s: dict, tic: tuple[str, str], other: tuple[str, str], size: int, proto: str) -> dict:
    """TiC's retention minus ``other``'s at (size, protocol), paired by seed; the floor is the binomial standard
    error of TiC's top-1 at that size over its top-1 at 32 px."""
    a, b = s["rows"].get(tic), s["rows"].get(other)
    if a is None or b is None:
        return C.verdict([])
    ca, cb = a["cell"][(size, proto)], b["cell"][(size, proto)]
    floor = (C.binomial_se(ca["top1"]["mean"], s["val"]) / a["top1"]["mean"]
             if ca["top1"]["n"] and a["top1"]["mean"] else 0.0)
    return C.verdict(C.paired(ca["keep_by_seed"], cb["keep_by_seed"]), 0.0, floor)


def render(records: list[dict], figdir: Path) -> str:
    figdir = Path(figdir)
    primary, other, superseded = C.split_budgets(records)
    runs = C.latest_batch([r for r in primary if "top1" in r], lambda r: (r["config"], r.get("mode"), r["seed"]))
    failed = C.open_failures(primary, lambda r: (r["config"], r.get("mode"), r["seed"]))
    parts = ["## Resolution: top-1 at 16-64 px of models trained at 32 px or at 24-40 px"]
    if primary:
        parts.append(C.provenance(primary))
    if not runs:
        parts.append(C.not_run_yet("resolution", "resolution"))
    else:
        s = summarise(runs)
        b = runs[-1]["budget"]
        sizes = s["sizes"]
        train = b["img_size"]
        n_seeds = max(len(r["seeds"]) for r in s["rows"].values())
        parts.append(
            f"Budget per run: {C.describe_budget(b, runs)}. Training: `fixed` at {train} px, `multi` at "
            f"{', '.join(map(str, C.MULTI_SIZES))} px (one size per step). Each run evaluates its final weights at "
            f"{', '.join(map(str, sizes))} px under two protocols: `resize` scales the whole image (the object's "
            f"scale changes), `canvas` keeps the scale and centre-crops / zero-pads (the map grows or shrinks, the "
            f"object does not); at {train} px both are the same images. {n_seeds} seed(s) per arm and mode, "
            f"paired by seed. keep = top-1 at the size / top-1 at {train} px."
            + (f" `resize+bn` / `canvas+bn`: the same images with BatchNorm's running statistics re-estimated at "
               f"each size from {C.RECAL_IMAGES} training images (no labels, no gradient, the trained weights; keep "
               f"relative to {train} px recalibrated too): what remains of the drop once the statistics fit the size "
               f"(a model without BatchNorm, such as the transformers, has nothing to re-estimate: its figures are "
               f"the plain ones)."
               if len(s["protocols"]) > len(C.PROTOCOLS) else ""))
        coverage = [c for c in (window_coverage(arm_spec(a)[0], train) for a in dict.fromkeys(a for a, _m in s["rows"]))
                    if c]
        if coverage:
            parts.append("Windows at the training size (computed from the models, `resolution.window_coverage`): "
                         + " ".join(coverage) + " A trained model whose window covers its map has learned global "
                         "attention there; at a larger size the same weights attend locally.")
        ref = s["rows"].get((REFERENCE, "fixed"))
        parts.append(C.bar_sentence(ref["top1"] if ref else C.mean_spread([]), f"`{REFERENCE}` (fixed {train} px)"))
        for proto in s["protocols"]:
            table = []
            for (arm, mode), r in s["rows"].items():
                cells = []
                for sz in sizes:
                    c = r["cell"][(sz, proto)]
                    if not c["top1"]["n"]:
                        cells.append("x")
                    elif sz == train:
                        cells.append(f"{c['top1']['mean']:.2f} ± {c['top1']['std']:.2f}")
                    else:
                        cells.append(f"{c['top1']['mean']:.1f} ({c['keep']['mean']:.2f})")
                table.append([arm, mode, len(r["seeds"]), *cells,
                              "-" if arm == REFERENCE else C.fmt_verdict(r["delta"])])
            parts.append(f"Protocol `{proto}`: top-1 % (mean over seeds; in brackets keep, the share of the {train} px "
                         f"top-1; x: cannot run at that size):\n\n"
                         + C.md_table(["arm", "training", "seeds", *[f"{sz} px" for sz in sizes],
                                       f"Δ top-1 at {train} px vs {REFERENCE} (same training), paired"], table,
                                      "ll" + "r" * (len(sizes) + 2)))
        parts.append(_keep_section(s, train))
        parts.append("Findings (computed from the tables; real: the paired difference of keep exceeds twice the noise "
                     "of `_common.verdict`):\n\n" + "\n".join(findings(s, train)))
        errors = {(arm, mode, sz): why for (arm, mode), r in s["rows"].items() for sz, why in r["errors"].items()}
        if errors:
            parts.append("Sizes an arm cannot run at:\n\n" + "\n".join(
                f"- {arm} ({mode}) at {sz} px: {why}" for (arm, mode, sz), why in errors.items()))
        costs = [f"{arm} ({mode}) {C.fmt(r['train_min']['mean'], 1)} + {C.fmt(r['eval_min']['mean'], 1)}"
                 for (arm, mode), r in s["rows"].items()]
        parts.append("Minutes per run, training + evaluation (mean over seeds, one thread): " + "; ".join(costs) + ".")
        missing = [f"{a} ({m})" for a in ARMS for m in C.MODES if (a, m) not in s["rows"]]
        if missing and not all(r.get("smoke") for r in runs):
            parts.append(f"**Not run yet**: {', '.join(missing)}. {C.how_to_run('resolution')}")
        png = _plot(s, figdir, train)
        if png:
            parts.append(C.image(figdir, png, "top-1 vs evaluation size"))
    if failed:
        parts.append("Failed runs:\n\n" + "\n".join(f"- `{r['config']}` ({r.get('mode')}) seed {r['seed']}: {r['error']}"
                                                    for r in failed))
    for extra in (C.other_budgets_section(other), C.superseded_section(superseded)):
        if extra:
            parts.append(extra)
    return "\n\n".join(p for p in parts if p) + "\n"


def _keep_section(s: dict, train: int) -> str:
    sizes = [sz for sz in s["sizes"] if sz != train]
    rows = []
    for proto in s["protocols"]:
        for tic in TICS:
            for mode in C.MODES:
                if (tic, mode) not in s["rows"]:
                    continue
                for other in dict.fromkeys(a for a, _m in s["rows"]):
                    if other in TICS or (other, mode) not in s["rows"]:
                        continue
                    cells = []
                    for sz in sizes:
                        v = keep_verdict(s, (tic, mode), (other, mode), sz, proto)
                        cells.append("-" if not v["n"] else f"{v['mean']:+.3f} ± {v['std']:.3f}"
                                     + (" **real**" if v["real"] else ""))
                    rows.append([proto, f"{tic} − {other}", mode, *cells])
    if not rows:
        return ""
    return ("Keep of TiC minus keep of the other arm, paired by seed (positive: TiC keeps more of its "
            f"{train} px accuracy):\n\n" + C.md_table(["protocol", "arms", "training", *[f"{sz} px" for sz in sizes]],
                                                      rows, "lll" + "r" * len(sizes)))


def findings(s: dict, train: int) -> list[str]:
    """Per protocol, TiC reading and training mode: where TiC keeps more / less than each baseline (real only)."""
    out = []
    sizes = [sz for sz in s["sizes"] if sz != train]
    for proto in s["protocols"]:
        for tic in TICS:
            for mode in C.MODES:
                if (tic, mode) not in s["rows"]:
                    continue
                more: list[str] = []
                less: list[str] = []
                same: list[str] = []
                for other in BASELINES:
                    if (other, mode) not in s["rows"]:
                        continue
                    for sz in sizes:
                        v = keep_verdict(s, (tic, mode), (other, mode), sz, proto)
                        if not v["n"]:
                            continue
                        item = f"{other} at {sz} px ({v['mean']:+.3f})"
                        (more if v["real"] and v["mean"] > 0 else less if v["real"] else same).append(item)
                if not (more or less or same):
                    continue
                r = s["rows"][(tic, mode)]
                ext = [f"{sz} px {r['cell'][(sz, proto)]['keep']['mean']:.2f}" for sz in sorted({min(sizes), max(sizes)})
                       if r["cell"][(sz, proto)]["keep"]["n"]] if sizes else []
                out.append(f"- `{proto}`, {tic} ({mode}; keeps {', '.join(ext)}): keeps more (real) than: "
                           + (", ".join(more) or "none") + "; less (real) than: " + (", ".join(less) or "none")
                           + f"; within the noise: {len(same)} (arm, size) pair(s).")
    return out or ["- (no pair of TiC and a baseline with the same training mode yet)"]


def _plot(s: dict, figdir: Path, train: int) -> str | None:
    plt = C.plt()
    if plt is None or not s["rows"]:
        return None
    figdir.mkdir(parents=True, exist_ok=True)
    protos = s["protocols"]
    fig, axes = plt.subplots(1, len(protos), figsize=(6 * len(protos), 4.5), sharey=True)
    colors = {"tic_conv_nano": "tab:red", "tic_nano": "tab:orange", "convnet_nano": "black",
              "vit_nano_global": "tab:blue", "vit_nano_abspe": "tab:cyan"}
    for ax, proto in zip(axes, protos):
        for (arm, mode), r in s["rows"].items():
            pts = [(sz, r["cell"][(sz, proto)]["keep"]["mean"]) for sz in s["sizes"] if r["cell"][(sz, proto)]["keep"]["n"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=colors.get(arm, "gray"), ls="-" if mode == "fixed" else "--",
                        lw=2 if arm in colors else 0.8, label=f"{arm} ({mode})")
        ax.axvline(train, color="gray", ls=":", lw=1)
        ax.set_title(f"protocol '{proto}'")
        ax.set_xlabel("evaluation size (px)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"keep: top-1 / top-1 at {train} px")
    axes[-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(figdir / "resolution_top1.png", dpi=110)
    plt.close(fig)
    return "resolution_top1.png"
