"""``msaconv experiment resolution``: weights trained at 32 px, evaluated unchanged at 16 to 64 px.

Models: tic_nano (the ablation's ``default`` run, seed 0), every zoo mixer in ``hier_nano_<mixer>`` (the
mixers experiment's runs), ``vit_nano_global`` (global attention with a conv position encoding) and
``vit_nano_abspe`` (the same with a learned absolute position embedding, bicubically interpolated at other
sizes: the classic failure case). Checkpoints of earlier experiments are reused when their records point at
folders that still exist; missing ones are trained here with the same budget. Images are resized
(bilinear, antialiased) from the 32 px test images; nothing else changes. A model that cannot run at a
size gets a row with the error's message instead of disappearing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import _common as C

HELP = "train at 32 px, evaluate the unchanged weights at 16-64 px: TiC, every mixer, a ViT with interpolated pos-embed"

SIZES = (16, 24, 32, 40, 48, 64)
SMOKE_SIZES = (8, 16, 32, 48)
VITS = ("vit_nano_global", "vit_nano_abspe")


def add_arguments(p: argparse.ArgumentParser) -> None:
    C.add_budget_arguments(p, seeds=1, workers=2)
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="evaluation sizes in px (default %(default)s)")
    p.add_argument("--eval-images", type=C._int_or_none, default=2000,
                   help="test images per size, the same fixed subset for every model ('none': all; default %(default)s)")
    p.add_argument("--models", default="all",
                   help="comma-separated subset of: tic_nano, the mixer names, vit_nano_global, vit_nano_abspe")
    p.add_argument("--ablation-records", default=str(C.default_output("ablation")),
                   help="where to find tic_nano's checkpoint (default %(default)s)")
    p.add_argument("--mixers-records", default=str(C.default_output("mixers")),
                   help="where to find the mixers' checkpoints (default %(default)s)")


def _sizes(args: argparse.Namespace) -> list[int]:
    if args.smoke and args.sizes == ",".join(map(str, SIZES)):
        return list(SMOKE_SIZES)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sizes: expected comma-separated ints, got {args.sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sizes: need positive sizes, got {args.sizes!r}")
    return sizes


def plan(args: argparse.Namespace, budget: C.Budget) -> tuple[list[dict], list[dict]]:
    """(models with a checkpoint, training jobs for the rest). Each model: name, model, checkpoint, source."""
    from . import ablation, mixers

    abl = C.read_records(args.ablation_records)
    mix = C.read_records(args.mixers_records)
    mixer_names = mixers.selected(argparse.Namespace(mixers="all", smoke=args.smoke))
    wanted = ["tic_nano", *mixer_names, *VITS]
    if args.models != "all":
        chosen = [m.strip() for m in args.models.split(",") if m.strip()]
        from ..layers import list_token_mixers

        allowed = ["tic_nano", *list_token_mixers(), *VITS]
        for m in chosen:
            if m not in allowed:
                from .._errors import unknown_name
                raise unknown_name("msaconv experiment resolution", "--models entry", m, allowed)
        wanted = chosen
    have, jobs = [], []
    tic = ablation.checkpoints(abl, "default").get(0)
    mix_ck = mixers.checkpoints(mix)
    for name in wanted:
        if name == "tic_nano":
            if tic:
                have.append({"name": name, "model": "tic_nano", "checkpoint": tic, "source": "ablation (default, seed 0)"})
            else:
                jobs.append({"experiment": "ablation", "config": "default", "seed": 0, "model": "tic_nano",
                             "model_kwargs": {}, "budget": budget.as_dict(),
                             "scratch": str(C.scratch_dir(args, "ablation")), "fresh": args.fresh,
                             "extra": {"resolution_name": name}})
        elif name in VITS:
            jobs.append({"experiment": "resolution", "config": name, "seed": 0, "model": name, "model_kwargs": {},
                         "budget": budget.as_dict(), "scratch": str(C.scratch_dir(args, "resolution")),
                         "fresh": args.fresh, "extra": {"resolution_name": name}})
        elif name in mix_ck:
            model, ck, _kw = mix_ck[name]
            have.append({"name": name, "model": model, "checkpoint": ck, "source": "mixers (seed 0)"})
        else:
            margs = argparse.Namespace(seeds=1, match="params", fresh=args.fresh)
            for j in mixers.jobs_for([name], margs, budget, C.scratch_dir(args, "mixers"), reference=False):
                jobs.append({**j, "extra": {**j["extra"], "resolution_name": name}})
    return have, jobs


def eval_job(job: dict) -> dict:
    """Evaluate one checkpoint at every size (top-level, for a process pool); a failing size keeps its reason."""
    import torch

    from ..data import embedded_path
    from ..train import distributed as D
    from ..train.config import apply_overrides
    from ..train.data import load_split
    from ..train.evaluate import evaluate, load_model_from_checkpoint
    from . import _models  # noqa: F401  (registers vit_nano_abspe)

    torch.set_num_threads(job["threads"])
    model, cfg, _classes = load_model_from_checkpoint(job["checkpoint"])
    cfg = apply_overrides(cfg, {"eval_batch_size": 250, "limit_val": job["images"]}, "resolution")
    split = load_split(cfg, str(embedded_path("test")), False, job["images"], lambda s: None)
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for s in job["sizes"]:
        base = {"config": job["name"], "model": job["model"], "img_size": s, "train_size": cfg.img_size,
                "checkpoint": job["checkpoint"], "source": job["source"], "params": params, "crop_pct": 1.0}
        try:
            ev = evaluate(model, split, s, cfg, D.DistInfo(), job["images"])
            rows.append({**base, "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"], "images": ev["images"],
                         "seconds": ev["seconds"]})
        except (ValueError, RuntimeError) as e:
            rows.append({**base, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"})
    return {"config": job["name"], "seed": 0, "rows": rows}


def run(args: argparse.Namespace) -> Path:
    budget = C.budget_from_args(args)
    sizes = _sizes(args)
    out = C.output_path(args, "resolution")
    stamp = C.stamp("resolution", args.smoke)
    have, jobs = plan(args, budget)
    trained = C.run_jobs(jobs, args.workers, lambda rec: None)
    for rec in trained:
        if "error" in rec:
            C.append(out, [{**stamp, "config": rec.get("resolution_name", rec["config"]), "model": rec["model"],
                            "img_size": budget.img_size, "error": f"training failed: {rec['error']}"}])
            continue
        have.append({"name": rec.get("resolution_name", rec["config"]), "model": rec["model"],
                     "checkpoint": rec["checkpoint"], "source": f"trained by {rec['experiment']} budget "
                     f"({rec['train_images']} images x {rec['epochs']} epochs)"})
    images = 64 if args.smoke else args.eval_images
    ejobs = [{**h, "sizes": sizes, "images": images, "threads": budget.threads} for h in have]
    C.run_jobs(ejobs, args.workers, lambda rec: C.append(out, [{**stamp, **r} for r in rec["rows"]]), job_fn=eval_job)
    return out


# ------------------------------------------------------------------------------------------------ render


def render(records: list[dict], figdir: Path) -> str:
    figdir = Path(figdir)
    recs = C.latest_batch(records, lambda r: (r["config"], r["img_size"]))
    models = list(dict.fromkeys(r["config"] for r in recs))
    sizes = sorted({r["img_size"] for r in recs})
    cell = {(r["config"], r["img_size"]): r for r in recs}
    parts = ["## Resolution: unchanged weights at other image sizes", C.provenance(records)]
    ok = [r for r in recs if "top1" in r]
    if not recs:
        return "\n\n".join(parts) + "\n"
    train = ok[0]["train_size"] if ok else 32
    parts.append(
        f"Trained at {train} px (each model's own run: see its source below), evaluated with the same weights at "
        f"{', '.join(map(str, sizes))} px on {ok[0]['images'] if ok else '?'} CIFAR-10 (JPEG copy) test images "
        f"(a fixed subset), resized bilinearly. Cells: top-1 %; 'x' marks a size the model cannot run, with the "
        f"reason below. 'keep@S' is top-1 at S px divided by top-1 at {train} px.")
    notes: dict[str, str] = {}
    table = []

    def keep(m: str, s: int) -> str:
        a, b = cell.get((m, s)), cell.get((m, train))
        if a and b and "top1" in a and "top1" in b and b["top1"] > 0:
            return f"{a['top1'] / b['top1']:.2f}"
        return "-"

    order = sorted(models, key=lambda m: -(cell.get((m, train), {}).get("top1") or -1))
    for m in order:
        row = [m]
        for s in sizes:
            r = cell.get((m, s))
            if r is None:
                row.append("")
            elif "top1" in r:
                row.append(f"{r['top1']:.1f}")
            else:
                key = r["error"]
                notes.setdefault(key, f"[{len(notes) + 1}]")
                row.append(f"x {notes[key]}")
        big = max(sizes)
        small = min(s for s in sizes if s > 8) if any(s > 8 for s in sizes) else min(sizes)
        row += [keep(m, small), keep(m, big)]
        table.append(row)
    big, small = max(sizes), (min(s for s in sizes if s > 8) if any(s > 8 for s in sizes) else min(sizes))
    parts.append(C.md_table(["model", *[f"{s} px" for s in sizes], f"keep@{small}", f"keep@{big}"], table))
    if notes:
        parts.append("\n".join(f"- {tag} {reason}" for reason, tag in notes.items()))
    srcs = {r["config"]: r.get("source", "?") for r in ok}
    parts.append("Sources of the weights: " + "; ".join(f"{m}: {s}" for m, s in srcs.items()) + ".")
    parts.append("Findings (computed):\n\n" + "\n".join(_findings(cell, order, train, small, big)))
    png = _plot(cell, order, sizes, figdir, train)
    if png:
        parts.append(C.image(figdir, png, "top-1 vs evaluation size"))
    return "\n\n".join(parts) + "\n"


def _findings(cell: dict, models: list[str], train: int, small: int, big: int) -> list[str]:
    out = []
    sizes = sorted({s for (_m, s) in cell})
    means = {s: C.mean_spread([cell[(m, s)]["top1"] for m in models if "top1" in cell.get((m, s), {})]) for s in sizes}
    out.append("- Mean top-1 over all models per size: " + ", ".join(f"{s} px {v['mean']:.1f}" for s, v in means.items()
                                                                  if v["n"])
               + " (the hierarchical models have total stride 16: other sizes give ragged stage maps).")
    for s in (small, big):
        if s == train:
            continue
        kept = [(m, cell[(m, s)]["top1"] / cell[(m, train)]["top1"]) for m in models
                if "top1" in cell.get((m, s), {}) and "top1" in cell.get((m, train), {}) and cell[(m, train)]["top1"] > 0]
        if not kept:
            continue
        kept.sort(key=lambda t: -t[1])
        rank = {m: i + 1 for i, (m, _) in enumerate(kept)}
        tic = next((k for m, k in kept if m == "tic_nano"), None)
        line = (f"- At {s} px: best kept {kept[0][0]} ({kept[0][1]:.2f} of its {train} px top-1), worst "
                f"{kept[-1][0]} ({kept[-1][1]:.2f})")
        if tic is not None:
            line += f"; tic_nano keeps {tic:.2f} (rank {rank['tic_nano']} of {len(kept)})"
        for v in VITS:
            k = next((k for m, k in kept if m == v), None)
            if k is not None:
                line += f"; {v} keeps {k:.2f}"
        out.append(line + ".")
    return out


def _plot(cell: dict, models: list[str], sizes: list[int], figdir: Path, train: int) -> str | None:
    plt = C.plt()
    if plt is None or not models:
        return None
    figdir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5))
    for m in models:
        pts = [(s, cell[(m, s)]["top1"]) for s in sizes if "top1" in cell.get((m, s), {})]
        if not pts:
            continue
        style = dict(lw=2.5, color="tab:red") if m == "tic_nano" else (
            dict(lw=2, ls="--", color="black") if m in VITS else dict(lw=0.9, alpha=0.6))
        ax.plot(*zip(*pts), marker="o", ms=3, label=m, **style)
    ax.axvline(train, color="gray", ls=":", lw=1)
    ax.set_xlabel("evaluation image size (px); trained at %d" % train)
    ax.set_ylabel("top-1 %")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figdir / "resolution_top1.png", dpi=110)
    plt.close(fig)
    return "resolution_top1.png"
