"""``msaconv experiment erf``: effective receptive field (and attention distance) with MDCSM / IPM on and off.

The paper says the cyclic shift (MDCSM) and inter-pooling (IPM) "establish long-distance connections
between tokens and enlarge the effective receptive field". This measures it on the ablation's
tic_conv_nano arms (``default``, ``ipm_grid``, ``head_dim16``, ``mdcsm_kv``, ``mdcsm_ipm``: every seed
found in the ablation's records at the same budget; missing runs are trained with that budget, into the
run folders the ablation shares), and on the same architectures at initialisation:

- ERF (:func:`msaconv.analysis.effective_receptive_field`): the mean |gradient| of each stage's centre
  feature with respect to the input image; summarised by the radius (image pixels) holding 50% / 90% of
  its mass, at the training size and at 2x;
- mean attention distance per layer (:func:`msaconv.analysis.mean_attention_distance`), in image pixels,
  for models whose mixers expose their attention weights (hierarchical MSA-Conv models; the ConvNet's
  MSAConv2d layers do not, so their records hold the ERF only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import _common as C

HELP = "ERF radius of tic_conv_nano with MDCSM / IPM on and off (the ablation's runs), trained and at init"

CONFIGS = ("default", "ipm_grid", "head_dim16", "mdcsm_kv", "mdcsm_ipm")
SMOKE_CONFIGS = ("default", "mdcsm_kv")
SHARES = (0.5, 0.9)


def add_arguments(p: argparse.ArgumentParser) -> None:
    C.add_budget_arguments(p, seeds=3)
    p.add_argument("--images", type=int, default=64, help="test images averaged per ERF (default %(default)s)")
    p.add_argument("--sizes", default="32,64", help="input sizes of the ERF (default %(default)s)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="ablation arms (default %(default)s)")
    p.add_argument("--ablation-records", default=str(C.default_output("ablation")),
                   help="where to find the ablation's runs (default %(default)s)")
    p.add_argument("--no-init", action="store_true", help="skip the untrained (initialisation) models")


def analyse(model, x_by_size: dict, config: str, seed: int, state: str, keep_maps: bool) -> list[dict]:
    """ERF records (one per stage and size) and attention-distance records (one per layer, when the model's
    mixers have attention weights to measure) of ``model``."""
    from ..analysis import effective_receptive_field, mean_attention_distance

    out = []
    for size, x in x_by_size.items():
        for e in effective_receptive_field(model, x, shares=SHARES):
            rec = {"kind": "erf", "config": config, "seed": seed, "state": state, "img_size": size, "stage": e.stage,
                   **{f"radius{int(100 * s)}": r for s, r in e.radius.items()}}
            if keep_maps:
                rec["map"] = [[float(f"{v:.4g}") for v in row] for row in e.map.tolist()]
            out.append(rec)
        try:
            dists = mean_attention_distance(model, x)
        except ValueError:  # no mixer with window weights (a ConvNet of MSAConv2d layers)
            continue
        layers = list(dict.fromkeys(d.layer for d in dists))
        for layer in layers:
            hs = [d for d in dists if d.layer == layer]
            out.append({"kind": "distance", "config": config, "seed": seed, "state": state, "img_size": size,
                        "layer": layer, "map_size": list(hs[0].map_size), "reduction": hs[0].reduction,
                        "distance_px": sum(d.distance_px for d in hs) / len(hs),
                        "heads_px": [round(d.distance_px, 4) for d in hs]})
    return out


def run(args: argparse.Namespace) -> Path:
    import torch

    from ..data import embedded_path
    from ..data.transforms import normalize, resize
    from ..models import create_model_from_config
    from ..train.config import TrainConfig, apply_overrides
    from ..train.data import load_split
    from ..train.evaluate import load_model_from_checkpoint
    from . import ablation

    budget = C.budget_from_args(args)
    out = C.output_path(args, "erf")
    stamp = C.stamp("erf", args.smoke)
    configs = list(SMOKE_CONFIGS) if args.smoke and args.configs == ",".join(CONFIGS) else \
        [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in ablation.CONFIGS:
            from .._errors import unknown_name
            raise unknown_name("msaconv experiment erf", "--configs entry", c, list(ablation.CONFIGS))
    refused = ablation.refusals(budget.img_size, configs)
    if refused:
        raise ValueError("msaconv experiment erf: " + "; ".join(f"{n} {why}" for n, why in refused.items()))
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    key = C.budget_key(budget.as_dict())
    found: dict[str, dict[int, str]] = {c: {} for c in configs}
    for r in C.read_records(args.ablation_records):
        if (r.get("config") in found and "top1" in r and C.is_current(r) and C.budget_key(r["budget"]) == key
                and Path(r.get("checkpoint", "")).is_dir()):
            found[r["config"]][r["seed"]] = r["checkpoint"]
    jobs = [C.make_job("ablation", c, ablation.MODEL, ablation.CONFIGS[c][1], s, budget, args, "fixed",
                       C.eval_sizes(args), extra={"group": ablation.CONFIGS[c][0], "description": ablation.CONFIGS[c][2]})
            for c in configs for s in range(args.seeds) if s not in found[c]]
    for rec in C.run_jobs(jobs, args.workers, lambda rec: None):
        if "checkpoint" in rec:
            found[rec["config"]][rec["seed"]] = rec["checkpoint"]

    torch.set_num_threads(max(1, budget.threads * max(1, args.workers)))
    n_images = 8 if args.smoke else args.images
    tcfg = apply_overrides(TrainConfig(), {"data": "embedded"}, "erf")
    split = load_split(tcfg, str(embedded_path("test")), False, n_images, lambda s: None)
    assert split.images is not None  # the embedded test set is always loaded into memory
    x32 = split.images[:n_images]
    xs = {s: normalize(resize(x32, s) if s != x32.shape[-1] else x32, tcfg.mean, tcfg.std) for s in sizes}
    base = {**stamp, "budget": budget.as_dict(), "model": ablation.MODEL}
    # (config, seed, state, size) already analysed at this budget: skipped (a rerun resumes), unless --fresh
    done = set() if args.fresh else {
        (r["config"], r["seed"], r["state"], r["img_size"], r.get("checkpoint")) for r in C.read_records(out)
        if r.get("kind") == "erf" and C.is_current(r) and C.budget_key(r["budget"]) == key}
    for c in configs:
        for seed, ck in sorted(found[c].items()):
            if all((c, seed, "trained", s, ck) in done for s in sizes):
                continue
            model, _cfg, _ = load_model_from_checkpoint(str(Path(ck) / "last.json"))
            recs = analyse(model, xs, c, seed, "trained", keep_maps=seed == 0)
            C.append(out, [{**base, "checkpoint": ck, **r} for r in recs])
            print(f"erf {c} seed {seed}: " + ", ".join(f"{r['stage']}@{r['img_size']} r50 {r['radius50']:.1f}"
                                                      for r in recs if r["kind"] == "erf"), flush=True)
        if not args.no_init and not all((c, 0, "init", s, None) in done for s in sizes):
            torch.manual_seed(0)
            model = create_model_from_config(ablation.MODEL, ablation.CONFIGS[c][1], 10).eval()
            C.append(out, [{**base, **r} for r in analyse(model, xs, c, 0, "init", keep_maps=True)])
    return out


# ------------------------------------------------------------------------------------------------ render


def render(records: list[dict], figdir: Path) -> str:
    figdir = Path(figdir)
    primary, other, superseded = C.split_budgets(records)
    tail = [t for t in (C.other_budgets_section(other), C.superseded_section(superseded)) if t]
    erf = [r for r in primary if r.get("kind") == "erf"]
    dist = [r for r in primary if r.get("kind") == "distance"]
    parts = ["## ERF: effective receptive field with MDCSM / IPM on and off"]
    if primary:
        parts.append(C.provenance(primary))
    if not erf:
        parts.append(C.not_run_yet("erf", "erf"))
        return "\n\n".join(parts + tail) + "\n"
    erf = C.latest_batch(erf, lambda r: (r["config"], r["seed"], r["state"], r["img_size"], r["stage"]))
    dist = C.latest_batch(dist, lambda r: (r["config"], r["seed"], r["state"], r["img_size"], r["layer"]))
    configs = list(dict.fromkeys(r["config"] for r in erf))
    sizes = sorted({r["img_size"] for r in erf})
    stages = list(dict.fromkeys(r["stage"] for r in erf))
    seeds = sorted({r["seed"] for r in erf if r["state"] == "trained"})
    model = next((r.get("model") for r in erf if r.get("model")), "?")
    parts.append(
        f"The ablation's `{model}` arms (MDCSM = cyclic shift 'kv', IPM = 'grid' pooled keys, in stages 0-1; see the "
        f"ablation section) trained at its budget ({C.describe_budget(erf[-1]['budget'])}; {len(seeds)} seed(s)), "
        f"and the same architectures at initialisation (seed 0). ERF radius: image pixels from the centre holding "
        f"50% (r50) / 90% (r90) of the mean |d centre feature / d input| (mean ± std over seeds); measured at "
        f"{', '.join(map(str, sizes))} px inputs (weights from 32 px training).")
    rows = []
    for state in ("trained", "init"):
        for c in configs:
            for s in sizes:
                row = [c, state, f"{s}"]
                for st in stages:
                    rs = [r for r in erf if r["config"] == c and r["state"] == state and r["img_size"] == s and r["stage"] == st]
                    if not rs:
                        row.append("-")
                        continue
                    a, b = C.mean_spread([r["radius50"] for r in rs]), C.mean_spread([r["radius90"] for r in rs])
                    row.append(f"{a['mean']:.1f} ± {a['std']:.1f} / {b['mean']:.1f} ± {b['std']:.1f}")
                ds = [r for r in dist if r["config"] == c and r["state"] == state and r["img_size"] == s]
                if dist:
                    row.append(C.fmt(C.mean_spread([r["distance_px"] for r in ds])["mean"], 1) if ds else "-")
                rows.append(row)
    parts.append(C.md_table(["variant", "weights", "input px", *[f"{st} r50 / r90" for st in stages],
                             *(["mean attn distance (px, all layers)"] if dist else [])], rows,
                            "lll" + "r" * (len(stages) + bool(dist))))
    parts.append("Findings (computed, trained weights):\n\n" + "\n".join(_findings(erf, dist, configs, sizes, stages)))
    layers = list(dict.fromkeys(r["layer"] for r in dist))
    if layers:
        parts.append("Attention distance per layer (trained, mean over seeds and heads, image px):")
        drows = []
        for c in configs:
            for s in sizes:
                vals = []
                for layer in layers:
                    px = [r["distance_px"] for r in dist if r["config"] == c and r["state"] == "trained"
                          and r["img_size"] == s and r["layer"] == layer]
                    vals.append(C.fmt(C.mean_spread(px)["mean"], 1) if px else "-")
                drows.append([c, s, *vals])
        parts.append(C.md_table(["variant", "input px", *layers], drows))
    for png in (_plot_maps(erf, configs, stages, figdir), _plot_radius(erf, configs, stages, sizes, figdir)):
        if png:
            parts.append(C.image(figdir, png, png[:-4]))
    return "\n\n".join(parts + tail) + "\n"


def _mean_radius(erf: list[dict], c: str, size: int, stage: str, key: str = "radius50", state: str = "trained") -> float:
    return C.mean_spread([r[key] for r in erf if r["config"] == c and r["state"] == state and r["img_size"] == size
                          and r["stage"] == stage])["mean"]


def _findings(erf: list[dict], dist: list[dict], configs: list[str], sizes: list[int], stages: list[str]) -> list[str]:
    """Per input size: each stage's r90 (and r50 of the last) for every variant, then the attention distance."""
    out: list[str] = []
    for s in sizes:
        for st in stages:
            for key in ("radius90", "radius50") if st == stages[-1] else ("radius90",):
                vals = {c: C.mean_spread([r[key] for r in erf if r["config"] == c and r["state"] == "trained"
                                          and r["img_size"] == s and r["stage"] == st]) for c in configs}
                std = max((v["std"] for v in vals.values() if v["n"]), default=0.0)
                out.append(f"- {st} at {s} px, {key.replace('radius', 'r')}: "
                           + ", ".join(f"{c} {v['mean']:.1f}" for c, v in sorted(vals.items(), key=lambda t: -t[1]["mean"]))
                           + f" px (largest seed std {std:.1f}).")
        dd = {c: C.mean_spread([r["distance_px"] for r in dist if r["config"] == c and r["state"] == "trained"
                                and r["img_size"] == s])["mean"] for c in configs}
        dd = {c: v for c, v in dd.items() if v == v}  # NaN: no distance records (a ConvNet)
        if not dd:
            continue
        out.append(f"- mean attention distance at {s} px (all layers): "
                   + ", ".join(f"{c} {v:.1f}" for c, v in sorted(dd.items(), key=lambda t: -t[1])) + " px.")
    return out


def _plot_maps(erf, configs, stages, figdir: Path) -> str | None:
    plt = C.plt()
    maps = [r for r in erf if "map" in r and r["state"] == "trained" and r["seed"] == 0]
    if plt is None or not maps:
        return None
    import numpy as np

    size = min(r["img_size"] for r in maps)
    figdir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(configs), len(stages), figsize=(2.2 * len(stages), 2.2 * len(configs)), squeeze=False)
    for i, c in enumerate(configs):
        for j, st in enumerate(stages):
            ax = axes[i][j]
            r = next((r for r in maps if r["config"] == c and r["stage"] == st and r["img_size"] == size), None)
            if r is not None:
                m = np.asarray(r["map"])
                ax.imshow(np.log10(m + 1e-6), cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(c, fontsize=8)
            if i == 0:
                ax.set_title(st, fontsize=8)
    fig.suptitle(f"ERF (log10 share of |grad|), trained, seed 0, {size} px", fontsize=9)
    fig.tight_layout()
    fig.savefig(figdir / "erf_maps.png", dpi=100)
    plt.close(fig)
    return "erf_maps.png"


def _plot_radius(erf, configs, stages, sizes, figdir: Path) -> str | None:
    plt = C.plt()
    if plt is None:
        return None
    figdir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.5), squeeze=False)
    width = 0.8 / max(1, len(configs))
    for k, s in enumerate(sizes):
        ax = axes[0][k]
        for i, c in enumerate(configs):
            ms = [C.mean_spread([r["radius50"] for r in erf if r["config"] == c and r["state"] == "trained"
                                 and r["img_size"] == s and r["stage"] == st]) for st in stages]
            ax.bar([j + i * width for j in range(len(stages))], [m["mean"] for m in ms], width,
                   yerr=[m["std"] for m in ms], capsize=2, label=c)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(stages))], stages)
        ax.set_ylabel("ERF r50 (image px)")
        ax.set_title(f"{s} px input")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figdir / "erf_radius.png", dpi=110)
    plt.close(fig)
    return "erf_radius.png"
