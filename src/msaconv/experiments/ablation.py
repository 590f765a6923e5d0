"""``msaconv experiment ablation``: tic_nano-sized variants of MSA-Conv under one training budget.

Each switch of the spec is one :class:`~msaconv.models.tic.TiCConfig` field passed as ``model_kwargs``
(``--set model_kwargs.X=...`` in ``msaconv train``): kernel (standard / dilated / depthwise), MDCSM
(``shift``: off / 'kv' default / 'input'), IPM (``inter_pool``: off / 'grid' default / 'local') and the
border (zeros default / mask / clamp). "Off" is written ``False``: ``create_model`` drops keywords set to
None (timm's rule), so ``shift=None`` would silently keep the default. Every variant trains with the same images, epochs and schedule
(the tic_nano recipe scaled down), over several seeds; top-1 is reported as mean and spread.

``border='clamp'`` needs a whole window inside every stage's map (NATTEN's rule): tic_nano's last stage is
2x2 at 32 px, too small for its 3x3 window, so the plain clamp variant cannot run at 32 px. It is recorded
with its reason, and ``border_clamp`` runs with a 2x2 window in the last stage (which covers that whole
map, as the zeros 3x3 window does inside the image).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import _common as C

HELP = "tic_nano variants (kernel / MDCSM / IPM / border) under one budget, several seeds: top-1 mean and spread"

# name -> (group, model_kwargs for tic_nano, description)
CONFIGS: dict[str, tuple[str, dict, str]] = {
    "default": ("default", {}, "tic_nano as registered: 3x3 windows, MDCSM 'kv' (every block), IPM 'grid', border zeros"),
    "dilated": ("kernel", {"dilation": [2, 2, 1]}, "dilation 2 in stages 1-2 (3x3 window spans 5x5)"),
    "depthwise": ("kernel", {"depthwise": True}, "one head per channel (head dim 1)"),
    "mdcsm_off": ("mdcsm", {"shift": False}, "no cyclic shift"),
    "mdcsm_input": ("mdcsm", {"shift": "input"}, "MDCSM 'input': the block input is rolled, not the keys/values"),
    "ipm_off": ("ipm", {"inter_pool": False}, "no pooled keys"),
    "ipm_local": ("ipm", {"inter_pool": "local"}, "IPM 'local' reading instead of 'grid'"),
    "border_mask": ("border", {"border": "mask"}, "keys outside the map masked out"),
    "border_clamp": ("border", {"border": "clamp", "kernel_size": [3, 3, 2]},
                     "window shifted inside the map (NATTEN); last stage 2x2 window (a 3x3 cannot fit its 2x2 map)"),
    "mdcsm_ipm_off": ("mdcsm+ipm", {"shift": False, "inter_pool": False}, "neither MDCSM nor IPM (plain windows; for erf)"),
}
# recorded with the reason it cannot run at 32 px, never trained
CANNOT_RUN: dict[str, tuple[str, dict, str]] = {
    "border_clamp_k3": ("border", {"border": "clamp"}, "clamp with tic_nano's 3x3 windows in every stage"),
}
SMOKE_CONFIGS = ("default", "mdcsm_ipm_off")
GROUP_ORDER = ("default", "kernel", "mdcsm", "ipm", "border", "mdcsm+ipm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    C.add_budget_arguments(p, seeds=3, workers=2)
    p.add_argument("--configs", default="all",
                   help=f"comma-separated variants (default all): {', '.join(CONFIGS)}")


def selected(args: argparse.Namespace) -> list[str]:
    if args.smoke and args.configs == "all":
        return list(SMOKE_CONFIGS)
    if args.configs == "all":
        return list(CONFIGS)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    for n in names:
        if n not in CONFIGS:
            from .._errors import unknown_name
            raise unknown_name("msaconv experiment ablation", "--configs entry", n, list(CONFIGS))
    return names


def cannot_run_records(stamp: dict, budget: C.Budget) -> list[dict]:
    import torch

    from ..models import create_model, plain_overrides

    out = []
    for name, (group, kw, desc) in CANNOT_RUN.items():
        m = create_model("tic_nano", num_classes=10, **plain_overrides(kw))
        try:
            m(torch.zeros(1, 3, budget.img_size, budget.img_size))
            error = None
        except ValueError as e:
            error = str(e)
        out.append({**stamp, "config": name, "group": group, "description": desc, "model": "tic_nano",
                    "model_kwargs": kw, "seed": None, "error": error, "min_input_size": m.min_input_size,
                    "budget": budget.as_dict()})
    return out


def run(args: argparse.Namespace) -> Path:
    budget = C.budget_from_args(args)
    names = selected(args)
    out = C.output_path(args, "ablation")
    stamp = C.stamp("ablation", args.smoke)
    scratch = C.scratch_dir(args, "ablation")
    C.append(out, cannot_run_records(stamp, budget))
    jobs = [{"experiment": "ablation", "config": n, "seed": s, "model": "tic_nano",
             "model_kwargs": dict(CONFIGS[n][1]), "budget": budget.as_dict(), "scratch": str(scratch),
             "fresh": args.fresh, "extra": {"group": CONFIGS[n][0], "description": CONFIGS[n][2]}}
            for s in range(args.seeds) for n in names]
    C.run_jobs(jobs, args.workers, lambda rec: C.append(out, [{**stamp, **rec}]))
    return out


def checkpoints(records: list[dict], config: str) -> dict[int, str]:
    """seed -> checkpoint folder of ``config``'s trained runs in ``records`` (that still exist)."""
    out = {}
    for r in records:
        if r.get("config") == config and r.get("checkpoint") and "top1" in r and Path(r["checkpoint"]).is_dir():
            out[r["seed"]] = r["checkpoint"]
    return out


# ------------------------------------------------------------------------------------------------ render


def summarise(records: list[dict]) -> list[dict]:
    """One row per variant: mean and spread of top-1 over its seeds (latest record per config and seed)."""
    runs = C.latest_batch([r for r in records if "top1" in r], lambda r: (r["config"], r["seed"]))
    base = {r["seed"]: r["top1"] for r in runs if r["config"] == "default"}
    rows = []
    for name in [*CONFIGS, *sorted({r["config"] for r in runs} - set(CONFIGS))]:
        rs = [r for r in runs if r["config"] == name]
        if not rs:
            continue
        top1 = C.mean_spread([r["top1"] for r in rs])
        rows.append({"config": name, "group": rs[0].get("group", "?"), "description": rs[0].get("description", ""),
                     "seeds": sorted(r["seed"] for r in rs), "top1": top1,
                     "top5": C.mean_spread([r["top5"] for r in rs]), "loss": C.mean_spread([r["loss"] for r in rs]),
                     "params": rs[0]["params"], "img_per_s": C.mean_spread([r["img_per_s"] for r in rs]),
                     "train_seconds": C.mean_spread([r["train_seconds"] for r in rs]),
                     # paired by seed: the same training subset, augmentation stream and test images as the default
                     "delta": C.mean_spread([r["top1"] - base[r["seed"]] for r in rs if r["seed"] in base])})
    return rows


def findings(rows: list[dict], val_images: int) -> list[str]:
    """Per group: the best variant, and whether its lead over the runner-up exceeds the noise.

    Noise: the largest of the std of the paired per-seed differences, the default's std over seeds, and
    the binomial standard error of one top-1 on ``val_images`` test images (a floor: two or three seeds
    cannot estimate a spread by themselves). "Clear" means a lead of more than twice that.
    """
    import math

    base = next((r for r in rows if r["config"] == "default"), None)
    if base is None:
        return []
    p = base["top1"]["mean"] / 100
    se = 100 * math.sqrt(max(p * (1 - p), 1e-9) / max(val_images, 1))
    out = []
    for group in GROUP_ORDER[1:]:
        members = [base] + [r for r in rows if r["group"] == group]
        if len(members) < 2:
            continue
        ranked = sorted(members, key=lambda r: -r["top1"]["mean"])
        best, second = ranked[0], ranked[1]
        lead = best["top1"]["mean"] - second["top1"]["mean"]
        paired = [r["delta"]["std"] for r in (best, second) if r is not base and r["delta"]["n"] > 1]
        noise = max([se, base["top1"]["std"], *paired])
        others = ", ".join(f"{r['config']} {r['top1']['mean']:.2f}" for r in members)
        clear = lead > 2 * noise
        out.append(f"- {group}: {'**' + best['config'] + '**' if clear else best['config']} ranks first, "
                   f"{lead:.2f} points ahead of {second['config']}; noise {noise:.2f} points, so "
                   + ("a clear lead" if clear else "not a clear difference") + f" ({others}).")
    return out


def render(records: list[dict], figdir: Path) -> str:
    figdir = Path(figdir)
    rows = summarise(records)
    errors = C.latest_batch([r for r in records if "error" in r], lambda r: r["config"])
    runs = [r for r in records if "top1" in r]
    parts = ["## Ablation: MSA-Conv variants of tic_nano", C.provenance(records)]
    if runs:
        b = runs[-1]["budget"]
        n_seeds = max(len(r["seeds"]) for r in rows)
        parts.append(
            f"Budget per run: {b['limit_train'] or 'all'} training images ({Path(str(b['data'])).name}) x {b['epochs']} "
            f"epochs, batch {b['batch_size']}, the tic_nano recipe's AdamW + one-cycle schedule scaled to the run, "
            f"evaluated at {b['img_size']} px on {runs[-1]['val_images']} CIFAR-10 (JPEG copy) test images; "
            f"{n_seeds} seed(s) per variant (the seed picks the training subset, the initialisation and the "
            f"augmentation); {b['threads']} torch thread(s) per run. Short training: these are early-training "
            f"accuracies, far below the main recipe's (tic_nano.yaml, 11 epochs of 20,000 images).")
        table = []
        for r in rows:
            t = r["top1"]
            d = r["delta"]
            table.append([r["group"], r["config"], r["description"], len(r["seeds"]),
                          f"{t['mean']:.2f} ± {t['std']:.2f}", f"{t['min']:.2f}-{t['max']:.2f}",
                          "-" if r["config"] == "default" or not d["n"] else f"{d['mean']:+.2f} ± {d['std']:.2f}",
                          f"{r['top5']['mean']:.2f}", f"{r['loss']['mean']:.3f}", f"{r['params'] / 1e6:.3f}",
                          f"{r['img_per_s']['mean']:.0f}"])
        parts.append(C.md_table(["group", "variant", "what", "seeds", "top-1 % (mean ± std)", "top-1 min-max",
                                 "Δ top-1 vs default, paired by seed", "top-5 %", "loss", "params (M)", "train img/s"],
                                table, "lllrrrrrrrr"))
        missing = [n for n in CONFIGS if n not in {r["config"] for r in rows}]
        few = [r["config"] for r in rows if len(r["seeds"]) < n_seeds]
        if (missing or few) and not all(r.get("smoke") for r in runs):
            parts.append("**Not run within the budget**: " + (f"variants {', '.join(missing)}" if missing else "")
                         + ("; " if missing and few else "") + (f"fewer seeds for {', '.join(few)}" if few else "") + ".")
        parts.append("Findings (computed from the table; 'noise' is defined in `ablation.findings`: the largest of "
                     "the paired per-seed spread, the default's spread and the binomial standard error of one "
                     "top-1 on the test images):\n\n" + "\n".join(findings(rows, runs[-1]["val_images"])))
        png = _plot(rows, figdir)
        if png:
            parts.append(C.image(figdir, png, "ablation top-1"))
    for e in errors:
        parts.append(f"- `{e['config']}` ({e['description']}): "
                     + (f"cannot run at {e['budget']['img_size']} px: {e['error']}" if e.get("error")
                        else "runs (no error recorded)."))
    return "\n\n".join(parts) + "\n"


def _plot(rows: list[dict], figdir: Path) -> str | None:
    plt = C.plt()
    if plt is None or not rows:
        return None
    figdir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    colors = {"default": "black", "kernel": "tab:blue", "mdcsm": "tab:orange", "ipm": "tab:green",
              "border": "tab:red", "mdcsm+ipm": "tab:purple"}
    xs = range(len(rows))
    ax.bar(xs, [r["top1"]["mean"] for r in rows], yerr=[r["top1"]["std"] for r in rows], capsize=3,
           color=[colors.get(r["group"], "gray") for r in rows])
    for i, r in enumerate(rows):
        seeds_top1 = r["top1"]
        ax.plot([i, i], [seeds_top1["min"], seeds_top1["max"]], "k.", ms=3)
    ax.set_xticks(list(xs), [r["config"] for r in rows], rotation=30, ha="right")
    lo = min(r["top1"]["min"] for r in rows)
    hi = max(r["top1"]["max"] for r in rows)
    ax.set_ylim(max(0, lo - 3), hi + 2)
    ax.set_ylabel("top-1 % (mean ± std; dots: min/max)")
    ax.set_title("tic_nano variants, same budget")
    fig.tight_layout()
    fig.savefig(figdir / "ablation_top1.png", dpi=110)
    plt.close(fig)
    return "ablation_top1.png"
