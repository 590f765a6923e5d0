"""docs/main_job.md from committed run folders: the main job against its matched ConvNet baseline.

    python tools/main_job_report.py            # reads results/main_job/*/ and the shipped run folder

Every run folder holds the resolved config.yaml, metrics.jsonl (its first line names the command, the
commit, the CPU and the data's SHA-256) and summary.json, as `msaconv train` wrote them.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "src/msaconv/models/pretrained/tic_conv_nano"
RUNS = ROOT / "results/main_job"
SIZES = (16, 24, 32, 40, 48, 64)
# The main job's recipe, by generation (newest first); each comparison pairs runs of one generation only.
# 'sbn': per-size BatchNorm statistics (size_bn=4), 24 / 32 / 40 / 48 px, amp=auto (bfloat16 on a CPU with native
# bf16), batch 128; 'b128': plain BatchNorm, 24 / 32 / 40 px, float32, batch 128 (after the recipe A/B,
# results/ablation arm batch128); 'b256': the same at batch 256.
RECIPES = {
    "sbn": dict(label="per-size BatchNorm, 24-48 px, amp=auto (bfloat16 here), batch 128", epochs=14,
                bench=["benchmarks/model/step_vs_convnet_sbn_bf16_avx512.jsonl"]),
    "b128": dict(label="plain BatchNorm, 24-40 px, float32, batch 128", epochs=8,
                 bench=["benchmarks/model/step_vs_convnet_b128_avx512.jsonl"]),
    "b256": dict(label="plain BatchNorm, 24-40 px, float32, batch 256", epochs=8,
                 bench=["benchmarks/model/main_vs_convnet_2threads.jsonl", "benchmarks/model/main_vs_convnet_1thread.jsonl"]),
}
# the batch-256 shipped run (seed 0 of the batch-256 comparisons); older fresh_clone_* folders reproduce earlier
# shipped runs and are records only
PREVIOUS_SHIPPED = ("fresh_clone_fb12271", "fresh_clone_0787208")


def recipe(r: dict) -> str:
    """The generation of the main job's recipe a run trained with (:data:`RECIPES`)."""
    if r["cfg"].get("amp") in ("auto", "bf16"):
        return "sbn"
    return "b128" if r["cfg"]["batch_size"] == 128 else "b256"


SHIPPED_EVAL = RUNS / "shipped_eval.json"  # `msaconv eval` of the shipped weights: both protocols, 16-64 px
# the same with --bn-recalibrate 2000 --tta flip: the figures with BatchNorm statistics re-estimated at each size
SHIPPED_RECAL = "shipped_eval_recal.json"  # in RUNS for the shipped weights, in a run folder for a previous run's
# the same with --bn-recalibrate 2000 --recal-sizes 24 32 40: one set of statistics for every size
SHIPPED_RECAL_MIXED = "shipped_eval_recal_mixed.json"


def recal_file(run: Path, name: str = SHIPPED_RECAL) -> Path:
    """Where `msaconv eval --bn-recalibrate` of a run's weights is kept: results/main_job/ for the shipped run,
    the run's own folder for a previously shipped one."""
    return RUNS / name if run == SHIPPED else run / name


def load(run: Path) -> dict | None:
    if not (run / "summary.json").is_file():
        return None
    summary = json.loads((run / "summary.json").read_text())
    # add what the run's own final evaluation did not measure: `msaconv eval` of its weights (a previously shipped
    # run keeps its evaluation in its own folder)
    evaluation = SHIPPED_EVAL if run == SHIPPED else run / "shipped_eval.json"
    if evaluation.is_file():
        have = {(e["img_size"], e.get("protocol", "resize")) for e in summary["final"]}
        extra = json.loads(evaluation.read_text())["results"]
        summary["final"] += [e for e in extra if (e["img_size"], e["protocol"]) not in have]
    recal_path = recal_file(run)
    if recal_path.is_file():  # the same weights with BatchNorm re-estimated at each size
        recal = {(e["img_size"], e["protocol"]): e for e in json.loads(recal_path.read_text())["results"]}
        for e in summary["final"]:
            e.update({k: v for k, v in recal.get((e["img_size"], e.get("protocol", "resize")), {}).items()
                      if k.endswith("_recal")})
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return {"name": run.name, "summary": summary, "run": first, "cfg": cfg, "path": run.relative_to(ROOT)}


def top1(r: dict, size: int, protocol: str = "resize", flip: bool = False, recal: bool = False) -> float | None:
    """A run's final top-1 at ``size`` (with flip TTA, with BatchNorm re-estimated at that size), None if unmeasured."""
    key = "top1" + ("_flip" if flip else "") + ("_recal" if recal else "")
    for ev in r["summary"]["final"]:
        if ev["img_size"] == size and ev.get("protocol", "resize") == protocol:
            return ev.get(key)
    if protocol == "canvas" and size == 32:
        return top1(r, size, "resize", flip, recal)
    return None


def fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def training(r: dict) -> str:
    sizes = r["cfg"].get("train_sizes")
    return "multi " + ",".join(map(str, sizes)) if sizes else f"fixed {r['cfg']['img_size']}"


def row(r: dict) -> str:
    s = r["summary"]
    cells = [f"`{r['path']}`", s["model"], training(r), str(r["cfg"].get("seed", 0)), str(s["epochs"]),
             str(r["cfg"]["batch_size"]), str(r["run"].get("threads")), cpu_minutes(s)]
    cells += [fmt(top1(r, z)) for z in SIZES] + [fmt(top1(r, 32, flip=True))]
    cells += [fmt(top1(r, z, "canvas")) for z in SIZES if z != 32]
    return "| " + " | ".join(cells) + " |"


def cpu_minutes(s: dict) -> str:
    if s.get("train_seconds", 0) < 1:  # resumed after its last step: the process only evaluated
        return f"{s['cpu_seconds'] / 60:.1f} (eval only: resumed after its last step)"
    return f"{s['cpu_seconds'] / 60:.1f}" if s.get("cpu_seconds") else ""


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f} ({len(values)} seeds)"


def arm(runs: list[dict], model: str, multi: bool, epochs: int | None = None, not_epochs: int | None = None,
        gen: str | None = None) -> list[dict]:
    return sorted([r for r in runs if r["summary"]["model"] == model and bool(r["cfg"].get("train_sizes")) == multi
                   and (epochs is None or r["summary"]["epochs"] == epochs)
                   and (gen is None or recipe(r) == gen)
                   and (not_epochs is None or r["summary"]["epochs"] != not_epochs)],
                  key=lambda r: int(r["cfg"].get("seed", 0)))


def difference(label: str, tic: list[dict], base: list[dict], size: int = 32, recal: bool = False) -> str:
    t = [v for v in (top1(r, size, recal=recal) for r in tic) if v is not None]
    b = [v for v in (top1(r, size, recal=recal) for r in base) if v is not None]
    seeds = {int(r["cfg"].get("seed", 0)): r for r in base}
    paired = [a - c for x in tic if (s := int(x["cfg"].get("seed", 0))) in seeds
              and (a := top1(x, size, recal=recal)) is not None and (c := top1(seeds[s], size, recal=recal)) is not None]
    epochs = sorted({r["summary"]["epochs"] for r in base})
    return (f"- {label} (ConvNet epochs {', '.join(map(str, epochs)) or 'n/a'}): TiC {mean_std(t)}, ConvNet "
            f"{mean_std(b)}, TiC minus ConvNet paired by seed {mean_std(paired) if paired else 'n/a'}")


def retention(r: dict, protocol: str) -> str:
    base = top1(r, 32)
    cells = [fmt(None if (v := top1(r, z, protocol)) is None or not base else v / base) for z in SIZES if z != 32]
    return (f"| `{r['path']}` | {r['summary']['model']} | {training(r)} | {r['cfg']['batch_size']} | {protocol} | "
            + " | ".join(cells) + " |")


def paired_retention(tic: list[dict], base: list[dict], size: int, protocol: str) -> str:
    """Mean +- std over seeds of TiC's retention minus the ConvNet's of the same seed, or '' if unmeasured."""
    by_seed = {int(r["cfg"].get("seed", 0)): r for r in base}
    diffs = []
    for t in tic:
        b = by_seed.get(int(t["cfg"].get("seed", 0)))
        vals = [top1(t, size, protocol), top1(t, 32), top1(b, size, protocol) if b else None, top1(b, 32) if b else None]
        if all(v is not None for v in vals):
            diffs.append(vals[0] / vals[1] - vals[2] / vals[3])
    if not diffs:
        return ""
    return f"{diffs[0]:+.3f} (1 seed)" if len(diffs) == 1 else \
        f"{statistics.mean(diffs):+.3f} +- {statistics.stdev(diffs):.3f} ({len(diffs)} seeds)"


def step_time_ratios(gen: str) -> list[float]:
    """TiC's training-step time over the ConvNet's, for each interleaved (tic_conv_nano, convnet_nano) pair of
    the committed `msaconv bench model` records of that recipe (they set the same-time ConvNet's epochs)."""
    ratios = []
    for path in (ROOT / p for p in RECIPES[gen]["bench"]):
        if not path.is_file():
            continue
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for a, b in zip(recs[::2], recs[1::2]):
            if (a["model"], b["model"]) == ("tic_conv_nano", "convnet_nano"):
                ratios.append(a["train_step_time"] / b["train_step_time"])
    return ratios


def differences(runs: list[dict], gen: str) -> list[str]:
    """TiC minus ConvNet at 32 px for the runs of one recipe: same epochs, same time, fixed-size training."""
    main_epochs = RECIPES[gen]["epochs"]
    tic = arm(runs, "tic_conv_nano", True, main_epochs, gen=gen)
    out = [difference(f"same recipe, same epochs ({main_epochs})", tic,
                      arm(runs, "convnet_nano", True, main_epochs, gen=gen))]
    same_time = arm(runs, "convnet_nano", True, not_epochs=main_epochs, gen=gen)
    ratios = step_time_ratios(gen)
    if same_time and ratios:
        out += [difference("same training time", tic, same_time),
                f"  (the ConvNet's epochs for the same time: {main_epochs} x the median ratio of TiC's to the ConvNet's "
                f"training-step time, {statistics.median(ratios):.2f}, over {len(ratios)} interleaved pairs "
                f"({', '.join(f'{x:.2f}' for x in ratios)}) in "
                + ", ".join(f"`{Path(p).with_suffix('.md')}`" for p in RECIPES[gen]["bench"])
                + f" = {main_epochs * statistics.median(ratios):.1f}, rounded)"]
    fixed = (arm(runs, "tic_conv_nano", False, main_epochs, gen=gen), arm(runs, "convnet_nano", False, main_epochs, gen=gen))
    if any(fixed):
        out.append(difference("fixed 32-px training, same epochs", *fixed))
    return out


def reproduces(run: dict | None, shipped: dict | None) -> bool:
    """Whether ``run``'s final top-1 at 24 / 32 / 40 / 48 px equals the shipped run's to the last digit."""
    return run is not None and shipped is not None and all(top1(run, z) == top1(shipped, z) for z in (24, 32, 40, 48))


def timing_lines(shipped: dict | None) -> list[str]:
    """The README's main command, timed on a fresh clone (tools/time_main_job.sh)."""
    path = RUNS / "fresh_clone" / "timing.json"
    if not path.is_file():
        return []
    t = json.loads(path.read_text())
    fresh = load(RUNS / "fresh_clone")
    same = reproduces(fresh, shipped)
    # the shipped weights may be this very run (tools/ship_main_job.sh): then "reproduces" would say nothing
    itself = (fresh is not None and (RUNS / "fresh_clone" / "metrics.jsonl").read_bytes()
              == (SHIPPED / "metrics.jsonl").read_bytes())
    older = sorted(p.name for p in RUNS.glob("fresh_clone_*") if p.is_dir())
    lines = ["", "## The main command on a fresh clone", "",
            f"`results/main_job/fresh_clone/` (made by `bash tools/time_main_job.sh`, commit {t['commit']}, "
            f"{t['cpu_model']} x {t['cpus']}, {t['isa']}, load average {t['loadavg_1m_before']} before): "
            f"`{t['command']}` took **{t['total_seconds'] / 60:.1f} min** wall ({t['install_seconds']:.0f} s install, "
            f"{t['main_job_seconds'] / 60:.1f} min `msaconv` with the kernel build, "
            f"{fresh['summary']['train_seconds'] / 60:.1f} min of it training). "
            + ("It is the shipped run: `tools/ship_main_job.sh` made its final weights the package's"
               + (f"; the fresh-clone records of earlier shipped runs stay beside it ({', '.join(older)})."
                  if older else ".") if itself else
               "Its final top-1 at 24 / 32 / 40 / 48 px equals the shipped run's to the last digit: the main job "
               "is reproducible from a fresh clone." if same else "Its final top-1 differs from the shipped run's.")]
    return lines + other_timings(shipped)


def other_timings(shipped: dict | None) -> list[str]:
    """The same command timed again, on other machines or at later commits
    (``MSACONV_TIMING_OUT=results/main_job/timing_<name>``)."""
    out = []
    for path in sorted(RUNS.glob("timing_*/timing.json")):
        t, run = json.loads(path.read_text()), load(path.parent)
        same = reproduces(run, shipped)
        tops = " / ".join(fmt(top1(run, z)) for z in (24, 32, 40, 48)) if run else "n/a"
        out.append(f"- `{path.parent.relative_to(ROOT)}/`: commit {t['commit']}, {t['cpu_model']} x {t['cpus']}, "
                   f"{t['isa']}, load average {t['loadavg_1m_before']} before: **{t['total_seconds'] / 60:.1f} min** wall "
                   f"({t['install_seconds']:.0f} s install, {t['main_job_seconds'] / 60:.1f} min `msaconv`"
                   + (f", {run['summary']['train_seconds'] / 60:.1f} min training" if run else "")
                   + f"); top-1 at 24 / 32 / 40 / 48 px {tops}"
                   + (" (the shipped run's to the last digit)" if same else
                      f" (recipe {recipe(run)}: an earlier recipe than the shipped run's)" if run and shipped
                      and recipe(run) != recipe(shipped) else " (differs from the shipped run's: `backend=None` times each "
                      "shape's backends on first use and keeps the fastest, and another pick, commit or machine rounds "
                      "its sums in another order)" if run else "") + ".")
    return ["", "## The main command timed again (other machines or later commits)", ""] + out if out else []


def recal_section(run: Path) -> list[str]:
    """A shipped run's weights with BatchNorm's running statistics as trained and re-estimated at each size."""
    path, path_m = recal_file(run), recal_file(run, SHIPPED_RECAL_MIXED)
    if not path.is_file():
        return []
    doc = json.loads(path.read_text())
    rows = doc["results"]
    n = rows[0].get("recal_images")
    doc_m = json.loads(path_m.read_text()) if path_m.is_file() else {"results": []}
    mixed = {(r["protocol"], r["img_size"]): r for r in doc_m["results"]}
    at32 = {k: next(r[k] for r in rows if r["img_size"] == 32 and r["protocol"] == "resize") for k in ("top1", "top1_recal")}
    title = "The shipped weights" if run == SHIPPED else f"The weights of `{run.relative_to(ROOT)}` (shipped before)"
    out = ["", f"## {title} with BatchNorm statistics re-estimated at each size", "",
           f"`{path.relative_to(ROOT)}` (`{doc['command']}`, commit {doc['git_commit']}, {doc['cpu_model']}, "
           f"{doc['isa']}, data SHA-256 {doc['data_sha256'][:12]}...): the same weights evaluated with BatchNorm's running "
           f"statistics as trained, and re-estimated at each size from {n} training images shown the way the protocol "
           "shows the test images (no labels, no gradient step: `msaconv eval --bn-recalibrate`). keep: top-1 over "
           "the same column's 32-px top-1.", "",
           "| protocol | size | top-1 as trained | keep | top-1 BN re-estimated | keep | flip, BN re-estimated |"
           + (" BN re-estimated once over the training sizes | keep |" if mixed else ""),
           "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if mixed else "")]
    at32_mixed = mixed.get(("resize", 32), {}).get("top1_recal")
    for r in rows:
        line = (f"| {r['protocol']} | {r['img_size']} | {r['top1']:.2f} | {r['top1'] / at32['top1']:.2f} | "
                f"{r['top1_recal']:.2f} | {r['top1_recal'] / at32['top1_recal']:.2f} | {fmt(r.get('top1_flip_recal'))} |")
        if mixed:
            v = mixed.get((r["protocol"], r["img_size"]), {}).get("top1_recal")
            line += f" {fmt(v)} | {fmt(v / at32_mixed if v is not None and at32_mixed else None)} |"
        out.append(line)
    if mixed:
        sizes = next(iter(mixed.values()))["recal_sizes"]
        out += ["", f"The last two columns: `{path_m.relative_to(ROOT)}` (`{doc_m['command']}`, commit "
                f"{doc_m['git_commit']}, {doc_m['cpu_model']}, {doc_m['isa']}): one set of statistics re-estimated over "
                f"{' / '.join(map(str, sizes))} px mixed, used at every size, as a model that must serve several "
                "sizes without a calibration pass per size would carry."]
    return out


def recal_runs_section(runs: list[dict]) -> list[str]:
    """TiC against the ConvNet with BatchNorm re-estimated at each size, for the runs whose final evaluation (or,
    for the shipped run, `msaconv eval` of its weights) has those figures."""
    have = [r for r in runs if top1(r, 32, recal=True) is not None]
    if not have:
        return []
    other = [z for z in SIZES if z != 32]
    n = " / ".join(map(str, sorted({ev["recal_images"] for r in have for ev in r["summary"]["final"]
                                    if "recal_images" in ev})))
    out = ["", "## TiC and ConvNet with BatchNorm re-estimated at each size", "",
           f"Runs trained with `--bn-recalibrate {n}` (a shipped run: its weights evaluated so, "
           f"`{SHIPPED_RECAL}` beside them): top-1 (resize, no TTA) with BatchNorm's running statistics "
           f"re-estimated at each size from {n} training images, and what each keeps of its own re-estimated "
           "32-px top-1.", "",
           "| run folder | model | training | batch | seed | " + " | ".join(map(str, SIZES)) + " | "
           + " | ".join(f"keep {z}" for z in other) + " |", "|---|---|---|---:|---:|" + "---:|" * (2 * len(SIZES) - 1)]
    for r in have:
        base = top1(r, 32, recal=True)
        vals = [top1(r, z, recal=True) for z in SIZES]
        keeps = [v for z, v in zip(SIZES, vals) if z != 32]
        out.append(f"| `{r['path']}` | {r['summary']['model']} | {training(r)} | {r['cfg']['batch_size']} | "
                   f"{r['cfg'].get('seed', 0)} | " + " | ".join(fmt(v) for v in vals) + " | "
                   + " | ".join(fmt(None if v is None else v / base) for v in keeps) + " |")
    out.append("")
    for gen, rc in RECIPES.items():
        tic = arm(have, "tic_conv_nano", True, rc["epochs"], gen=gen)
        base_runs = arm(have, "convnet_nano", True, rc["epochs"], gen=gen)
        if tic and base_runs:
            out += [difference(f"{rc['label']}, multi-size, same epochs ({rc['epochs']}), BatchNorm re-estimated, "
                               f"{z} px", tic, base_runs, z, recal=True) for z in SIZES
                    if any(top1(b, z, recal=True) is not None for b in base_runs)]
    return out


def differences_section(runs: list[dict]) -> list[str]:
    out = ["", "## TiC minus ConvNet at 32 px (resize, no TTA)", "",
           "Each comparison pairs runs of one recipe (newest first): "
           + "; ".join(f"**{k}**: {v['label']}, TiC {v['epochs']} epochs" for k, v in RECIPES.items()) + "."]
    for gen in RECIPES:
        out += ["", f"Recipe {gen}:", ""] + differences(runs, gen)
    return out


def retention_section(runs: list[dict]) -> list[str]:
    other = [z for z in SIZES if z != 32]
    out = ["", "## What each model keeps at other sizes", "",
           "Top-1 at each size divided by the same model's 32-px top-1 (resize, no TTA).", "",
           "| run folder | model | training | batch | protocol | " + " | ".join(map(str, other)) + " |",
           "|---|---|---|---:|---|" + "---:|" * len(other)]
    for r in runs:
        out += [retention(r, p) for p in ("resize", "canvas") if any(top1(r, z, p) is not None for z in other)]
    out += ["", "TiC's retention minus the ConvNet's, paired by seed (same recipe, training mode and epochs): "
            "positive = TiC keeps more of its 32-px accuracy.", "",
            "| training | recipe | protocol | " + " | ".join(map(str, other)) + " |", "|---|---|---|" + "---:|" * len(other)]
    for multi in (True, False):
        for gen, rc in RECIPES.items():
            tic = arm(runs, "tic_conv_nano", multi, rc["epochs"], gen=gen)
            base = arm(runs, "convnet_nano", multi, rc["epochs"], gen=gen)
            for protocol in ("resize", "canvas"):
                cells = [paired_retention(tic, base, z, protocol) for z in other]
                if any(cells):
                    out.append(f"| {'multi-size' if multi else 'fixed 32'} | {gen} | {protocol} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    # fresh_clone_<commit>: an earlier shipped run's reproduction (it reproduced to the last digit), kept as a record
    runs = [r for r in [load(SHIPPED)] + [load(p) for p in sorted(RUNS.glob("*"))
                                          if p.is_dir() and (p.name in PREVIOUS_SHIPPED
                                                             or not p.name.startswith(("fresh_clone_", "timing_")))] if r]
    other = [z for z in SIZES if z != 32]
    out = ["# The main job against its matched ConvNet",
           "",
           "Generated by `python tools/main_job_report.py` from the committed run folders below (each folder's "
           "metrics.jsonl names the command, commit, CPU and data SHA-256). Top-1 (%) on the 10,000 CIFAR-10 "
           "(JPEG copy) test images, one model per row, no TTA unless marked flip. `resize`: the whole image "
           "resized (object scale and map size change together); `canvas`: the image kept at the 32-px scale and "
           "centre-cropped (16, 24) or padded with the mean colour (40, 48, 64): only the map size changes. "
           "CPU min: CPU time of training and evaluation (on a shared machine the wall time swings with the other "
           "jobs; compare speed with `msaconv bench model`). The shipped run's 16 / 64 px and canvas columns come from "
           "`msaconv eval` of its weights (`results/main_job/shipped_eval.json`, which names the command, commit, CPU "
           "and data SHA-256); its other columns reproduce the run's own final evaluation exactly.",
           "",
           "| run folder | model | training | seed | epochs | batch | threads | CPU min | "
           + " | ".join(map(str, SIZES)) + " | 32 flip | " + " | ".join(f"canvas {z}" for z in other) + " |",
           "|---|---|---|---:|---:|---:|---:|---:|" + "---:|" * (len(SIZES) + 1 + len(other))]
    out += [row(r) for r in runs]
    out += timing_lines(runs[0] if runs and runs[0]["path"] == SHIPPED.relative_to(ROOT) else None)
    runs = [r for r in runs if r["name"] != "fresh_clone"]  # a reproduction of the shipped run, not another seed
    out += differences_section(runs) + retention_section(runs)
    out += recal_runs_section(runs)
    for folder in [SHIPPED] + [RUNS / p for p in PREVIOUS_SHIPPED]:
        out += recal_section(folder)
    (ROOT / "docs/main_job.md").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
