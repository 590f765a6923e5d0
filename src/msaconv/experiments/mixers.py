"""``msaconv experiment mixers``: the zoo, every token mixer in the same backbone at matched parameter count.

Each registered mixer runs in ``hier_nano_<mixer>`` (tic_nano's body: stem stride 4, three stages of 64,
128, 256 channels, depths 1, 2, 1). Mixers differ in their own parameters, so the parameter count is
matched to tic_nano's by the one free width of the body, the MLP ratio: the count is linear in it, so two
probes (ratio 2 and 3) give the ratio that hits tic_nano's count; the table shows the ratio used and the
count reached. Besides the zoo: ``tic_nano`` itself (the reference: MSA-Conv with MDCSM and IPM in that
body), the main job's ``tic_conv_nano`` and its ConvNet baseline ``convnet_nano`` (another skeleton, not
parameter-matched). Every run trains under the experiments' budget (:mod:`msaconv.experiments._common`),
2 seeds by default, and is evaluated at 32 px; the differences to tic_nano are paired by seed.

Speed is measured twice: the training loop's images/s and, after training, a timing pass in one process,
one model after another (same threads, batch, warm-up; median of timed calls) for inference and for a
training step, so the models are peers timed in the same run.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from . import _common as C

HELP = "every zoo mixer in hier_nano at tic_nano's parameter count, plus tic_conv_nano and convnet_nano: top-1, params, MACs, speed"

SMOKE_MIXERS = ("global",)
REFERENCE = "tic_nano"
OTHERS = {"tic_conv_nano": "TiC as a ConvNet of MSA-Convs (the main job's model; another skeleton)",
          "convnet_nano": "tic_conv_nano's skeleton with nn.Conv2d: the ConvNet baseline (another skeleton)"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    C.add_budget_arguments(p, seeds=2)
    p.add_argument("--mixers", default="all", help="comma-separated mixer names (default: every registered mixer)")
    p.add_argument("--match", choices=("params", "none"), default="params",
                   help="'params': MLP ratio chosen so params match tic_nano's (default); 'none': the body's ratio 3")
    p.add_argument("--no-reference", action="store_true",
                   help="leave out the tic_nano, tic_conv_nano and convnet_nano rows")
    p.add_argument("--timing-batch", type=int, default=128, help="batch of the timing pass (default %(default)s)")
    p.add_argument("--timing-runs", type=int, default=5, help="timed calls per model (default %(default)s)")
    p.add_argument("--timing-threads", type=int, default=1, help="torch threads of the timing pass (default %(default)s)")
    p.add_argument("--no-timing", action="store_true",
                   help="skip the timing pass (e.g. when adding seeds: the earlier pass's records stay the peers)")


def selected(args: argparse.Namespace) -> list[str]:
    from ..layers import list_token_mixers

    names = list_token_mixers()
    if args.mixers == "all":
        return list(SMOKE_MIXERS) if args.smoke else names
    chosen = [n.strip() for n in args.mixers.split(",") if n.strip()]
    for n in chosen:
        if n not in names:
            from .._errors import unknown_name
            raise unknown_name("msaconv experiment mixers", "mixer", n, names)
    return chosen


def _params(model_name: str, **kw) -> int:
    from ..models import count_params, create_model

    return count_params(create_model(model_name, num_classes=10, **kw))


@functools.lru_cache(maxsize=None)
def target_params() -> int:
    """The parameter count every zoo model is matched to: tic_nano's."""
    return _params(REFERENCE)


def match_mlp_ratio(mixer: str, target: int) -> dict:
    """The MLP ratio of ``hier_nano_<mixer>`` whose parameter count is nearest ``target`` (linear in the ratio)."""
    return dict(_match(mixer, target))


@functools.lru_cache(maxsize=None)
def _match(mixer: str, target: int) -> dict:
    name = f"hier_nano_{mixer}"
    p2, p3 = _params(name, mlp_ratio=2.0), _params(name, mlp_ratio=3.0)
    ratio = 3.0 if p3 == p2 else 3.0 + (target - p3) / (p3 - p2)
    ratio = round(min(8.0, max(0.25, ratio)), 4)
    return {"mlp_ratio": ratio, "params_at_ratio3": p3, "params": _params(name, mlp_ratio=ratio),
            "clamped": ratio in (0.25, 8.0)}


def jobs_for(mixers: list[str], args: argparse.Namespace, budget: C.Budget, reference: bool = True) -> list[dict]:
    """The training jobs (seed 0..seeds-1) of ``mixers`` (+ tic_nano, tic_conv_nano, convnet_nano), at 32 px."""
    target = target_params()
    match = {m: match_mlp_ratio(m, target) if args.match == "params" else {"mlp_ratio": 3.0, "clamped": False}
             for m in mixers}
    jobs = []
    for s in range(args.seeds):
        if reference:
            jobs.append(C.make_job("mixers", REFERENCE, REFERENCE, {}, s, budget, args, protocols=["resize"],
                                   extra={"kind": "train", "mixer": "msa_conv (tic_nano: MDCSM + IPM)", "mlp_ratio": 3.0,
                                          "params_at_ratio3": target, "target_params": target, "match": "reference"}))
            for name, desc in OTHERS.items():
                jobs.append(C.make_job("mixers", name, name, {}, s, budget, args, protocols=["resize"],
                                       extra={"kind": "train", "mixer": desc, "target_params": target,
                                              "match": "other skeleton"}))
        for m in mixers:
            mt = match[m]
            jobs.append(C.make_job("mixers", m, f"hier_nano_{m}",
                                   {"mlp_ratio": mt["mlp_ratio"]} if args.match == "params" else {}, s, budget, args,
                                   protocols=["resize"],
                                   extra={"kind": "train", "mixer": m, "mlp_ratio": mt["mlp_ratio"],
                                          "target_params": target, "params_at_ratio3": mt.get("params_at_ratio3"),
                                          "match": args.match, "match_clamped": mt["clamped"]}))
    return jobs


def timing(model_name: str, model_kwargs: dict, batch: int, runs: int, threads: int, img_size: int = 32) -> dict:
    """Inference and training-step images/s (median of ``runs`` calls after warm-up), GMACs, in this process."""
    import torch

    from ..bench.common import time_fn
    from ..models import count_flops, create_model, plain_overrides

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = create_model(model_name, num_classes=10, **plain_overrides(model_kwargs))
        flops = count_flops(model, (3, img_size, img_size))
        x = torch.randn(batch, 3, img_size, img_size)
        y = torch.randint(0, 10, (batch,))
        model.eval()

        def infer():
            with torch.no_grad():
                model(x)

        ti = time_fn(infer, warmup=1, runs=runs)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        tt = time_fn(step, warmup=1, runs=runs)
    finally:
        torch.set_num_threads(old)
    return {"gmacs": flops["gmacs"], "flops_msa_core": flops.get("msa_core"), "timing_batch": batch,
            "timing_threads": threads, "timing_runs": runs,
            "infer_img_s": batch / ti.median_s, "infer_step_ms": ti.median_s * 1e3,
            "infer_step_ms_p10": ti.p10_s * 1e3, "infer_step_ms_p90": ti.p90_s * 1e3,
            "train_img_s": batch / tt.median_s, "train_step_ms": tt.median_s * 1e3,
            "train_step_ms_p10": tt.p10_s * 1e3, "train_step_ms_p90": tt.p90_s * 1e3}


def run(args: argparse.Namespace) -> Path:
    budget = C.budget_from_args(args)
    mixers = selected(args)
    out = C.output_path(args, "mixers")
    stamp = C.stamp("mixers", args.smoke)
    jobs = jobs_for(mixers, args, budget, reference=not args.no_reference)
    C.run_training("mixers", args, jobs, stamp, out)
    # the timing pass: peers one after another in this process
    batch, runs = (16, 2) if args.smoke else (args.timing_batch, args.timing_runs)
    for j in [j for j in jobs if j["seed"] == 0 and not args.no_timing]:
        try:
            t = timing(j["model"], j["model_kwargs"], batch, runs, args.timing_threads, budget.img_size)
        except Exception as e:  # noqa: BLE001 - recorded
            t = {"error": f"{type(e).__name__}: {e}"}
        rec = {**stamp, "kind": "timing", "config": j["config"], "model": j["model"], "model_kwargs": j["model_kwargs"],
               "budget": budget.as_dict(), "loadavg_1m": C.load_average(), **t}
        C.append(out, [rec])
        print(f"timing {j['config']}: " + (f"infer {t['infer_img_s']:.0f} img/s, train {t['train_img_s']:.0f} img/s, "
                                           f"{t['gmacs'] * 1e3:.1f} MMACs" if "error" not in t else t["error"]),
              flush=True)
    return out


# ------------------------------------------------------------------------------------------------ render


def rows_of(records: list[dict]) -> list[dict]:
    """One row per model at the primary budget: top-1 over seeds, the paired difference to tic_nano, timing."""
    primary, _, _ = C.split_budgets(records)
    trains = C.latest_batch([r for r in primary if r.get("kind") == "train"], lambda r: (r["config"], r["seed"]))
    timings = {r["config"]: r for r in primary if r.get("kind") == "timing"}
    ok = [r for r in trains if "top1" in r]
    base = {r["seed"]: r["top1"] for r in ok if r["config"] == REFERENCE}
    bstat = C.mean_spread(list(base.values()))
    floor = C.binomial_se(bstat["mean"] if bstat["n"] else 50.0, max((r["val_images"] for r in ok), default=0))
    rows = []
    for cfg in dict.fromkeys(r["config"] for r in trains):
        rs = [r for r in ok if r["config"] == cfg]
        errs = [r for r in trains if r["config"] == cfg and "error" in r]
        t = timings.get(cfg, {})
        first = (rs or errs)[0]
        rows.append({"config": cfg, "model": first["model"], "mlp_ratio": first.get("mlp_ratio"),
                     "match": first.get("match"), "top1": C.mean_spread([r["top1"] for r in rs]), "seeds": len(rs),
                     "top5": C.mean_spread([r["top5"] for r in rs]),
                     "delta": C.verdict(C.paired({r["seed"]: r["top1"] for r in rs}, base), bstat["std"], floor),
                     "params": rs[0]["params"] if rs else None, "target": first.get("target_params"),
                     "loop_img_s": C.mean_spread([r["img_per_s"] for r in rs]),
                     "train_min": C.mean_spread([C.train_minutes(r) for r in rs]),
                     "gmacs": t.get("gmacs"), "infer_img_s": t.get("infer_img_s"), "train_img_s": t.get("train_img_s"),
                     "timing_error": t.get("error"), "error": errs[-1]["error"] if errs and not rs else None})
    return rows


def render(records: list[dict], figdir: Path) -> str:
    figdir = Path(figdir)
    primary, other, superseded = C.split_budgets(records)
    rows = rows_of(records)
    trains = [r for r in primary if r.get("kind") == "train" and "top1" in r]
    parts = ["## Mixers: the zoo in one backbone, with the ConvNet baseline"]
    if primary:
        parts.append(C.provenance(primary))
    if not trains:
        parts.append(C.not_run_yet("mixers", "mixers"))
    else:
        b = trains[-1]["budget"]
        tim = next((r for r in primary if r.get("kind") == "timing" and "timing_batch" in r), {})
        seeds = min(r["seeds"] for r in rows if not r["error"])
        target = next((r["target"] for r in rows if r.get("target")), None)
        parts.append(
            f"Every mixer in `hier_nano_<mixer>` (tic_nano's body), parameters matched to tic_nano's "
            + (f"({target / 1e6:.3f}M) " if target else "")
            + "by the MLP ratio (the only width that changes; the count is linear in it, two probes solve for it; "
              "column 'MLP ratio'); `tic_conv_nano` and `convnet_nano` are the main job's model and its ConvNet "
              f"baseline, another skeleton (not parameter-matched). Budget per run: {C.describe_budget(b, trains)}; "
              f"top-1 at {b['img_size']} px. At least **{seeds} seed(s)** per model (column 'seeds'); Δ is paired by "
              f"seed against {REFERENCE}. MACs per 32 px image from `msaconv.models.count_flops`. Images/s: 'loop' is "
              f"the training loop's own rate; 'infer' and 'train step' come from one timing pass after training, all "
              f"models one after another in one process "
            + (f"(batch {tim.get('timing_batch')}, {tim.get('timing_threads')} thread(s), median of "
               f"{tim.get('timing_runs')} calls): compare them as ratios, not as absolute speeds." if tim else
               "(not run yet: no timing record at this budget)."))
        ref = next((r for r in rows if r["config"] == REFERENCE), None)
        table = []
        for r in sorted(rows, key=lambda r: -(r["top1"]["mean"] if r["top1"]["n"] else -1)):
            if r["error"]:
                table.append([r["config"], f"failed: {r['error']}", *[""] * 10])
                continue
            rel = (f"{r['infer_img_s'] / ref['infer_img_s']:.2f}x" if ref and ref.get("infer_img_s") and r.get("infer_img_s")
                   else "-")
            name = r["config"] + (" (other skeleton)" if r["match"] == "other skeleton" else "")
            table.append([name, f"{r['top1']['mean']:.2f} ± {r['top1']['std']:.2f}", r["seeds"],
                          "-" if r["config"] == REFERENCE else C.fmt_verdict(r["delta"]), C.fmt(r["top5"]["mean"]),
                          f"{r['params'] / 1e6:.3f}", C.fmt(r["mlp_ratio"], 3),
                          C.fmt(r["gmacs"] * 1e3 if r["gmacs"] is not None else None, 1),
                          C.fmt(r["loop_img_s"]["mean"], 0), C.fmt(r["infer_img_s"], 0) + f" ({rel})",
                          C.fmt(r["train_img_s"], 0), C.fmt(r["train_min"]["mean"], 1)])
        parts.append(C.md_table(["model", "top-1 % (mean ± std)", "seeds", f"Δ top-1 vs {REFERENCE}, paired by seed",
                                 "top-5 %", "params (M)", "MLP ratio", "MMACs", "loop img/s",
                                 f"infer img/s (vs {REFERENCE})", "train-step img/s", "train min"], table))
        real = [f"{r['config']} {r['delta']['mean']:+.2f}" for r in rows if r["delta"]["n"] and r["delta"]["real"]]
        parts.append("Findings (computed; real: the paired difference exceeds twice the noise of `_common.verdict`): "
                     + (f"real differences to {REFERENCE}: {', '.join(real)}." if real else
                        f"no model differs from {REFERENCE} beyond the noise."))
        from ..layers import list_token_mixers

        missing = [m for m in [*list_token_mixers(), *OTHERS] if m not in {r["config"] for r in rows}]
        if missing and not all(r.get("smoke") for r in trains):
            parts.append(f"**Not run yet**: {', '.join(missing)}. {C.how_to_run('mixers')}")
        png = _plot(rows, figdir)
        if png:
            parts.append(C.image(figdir, png, "mixers: top-1 vs MACs"))
    for extra in (C.other_budgets_section([r for r in other if r.get("kind") == "train"]),
                  C.superseded_section([r for r in superseded if r.get("kind") != "timing"])):
        if extra:
            parts.append(extra)
    return "\n\n".join(p for p in parts if p) + "\n"


def _plot(rows: list[dict], figdir: Path) -> str | None:
    plt = C.plt()
    ok = [r for r in rows if r["top1"]["n"] and r.get("gmacs")]
    if plt is None or not ok:
        return None
    figdir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "gmacs", "MMACs per 32 px image"), (axes[1], "infer_img_s", "inference img/s (timing pass)")):
        for r in ok:
            if r.get(key) is None:
                continue
            x = r[key] * (1e3 if key == "gmacs" else 1)
            ax.scatter(x, r["top1"]["mean"], color="tab:red" if "msa_conv" in r["config"] or r["config"] == REFERENCE else "tab:blue")
            ax.annotate(r["config"], (x, r["top1"]["mean"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    fig.suptitle("zoo mixers in hier_nano at tic_nano's parameter count, same budget")
    fig.tight_layout()
    fig.savefig(figdir / "mixers_top1.png", dpi=110)
    plt.close(fig)
    return "mixers_top1.png"
