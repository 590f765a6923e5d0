"""``msaconv experiment ablation``: the mechanisms of MSA-Conv, each switched in tic_conv_nano, where it is alive.

The model is the main job's, ``tic_conv_nano`` (TiC read as a ConvNet of MSA-Convs, trained at a fixed
32 px): a plain 3x3 stem and first conv at 32 px, then MSA-Convs (3x3 windows, head dim 32) reading maps of
16 | 16, 8 | 8, 4 px in its three stages. As registered it has no MDCSM and no IPM: that is the
``default`` arm. Each other arm changes one :class:`~msaconv.models.tic_conv.ConvNetConfig` field
(``--set model_kwargs.X=...`` in ``msaconv train``; per-stage values are lists, ``null`` is off in a
stage): MDCSM (``shift``: 'kv', 'input', 8 directions), IPM (``inter_pool``: 'grid', 'local'), both,
the border (``border``: mask, clamp), the kernel (``dilation``, ``depthwise``). The ``recipe`` arms keep
the model and change one training choice of the main job's recipe instead (:data:`TRAINING`: label
smoothing, batch size, learning rate, optimiser, EMA of weights), so each choice of the recipe gets its
A/B at the budget, paired by seed with the same ``default`` runs; they are evaluated at 32 px only.

**A mechanism must be alive where it is on.** :func:`mechanism_check` goes through every MSA-Conv layer
at the training size (the maps of :meth:`ConvNetConfig.layer_maps`, the layers' own windows, heads and
settings) and refuses an arm, with the reason and without training it, when

- MDCSM or IPM is on in a layer whose map is smaller than twice its window (the rolled window then
  overlaps the query's own and, at a map no larger than the window, the roll is a no-op; IPM's 4x4 grid
  at a map of 4 or less passes the raw map, which is global attention, not pooling), or
- the arm builds the same mechanism as an arm listed before it (e.g. 8 MDCSM directions where the layers
  have too few heads for more than the first groups of 4).

So MDCSM and IPM are on in stages 0-1 only (maps 16, 16 and 8 at 32 px: at least 6 = 2 x 3); the arms
with MDCSM or IPM in every stage are recorded as refused (stage 2's last conv reads a 4x4 map).

Every arm trains under the same budget (:mod:`msaconv.experiments._common`), 3 seeds paired by seed,
and is evaluated by its run at 16-64 px under both protocols ('resize', 'canvas').
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import _common as C

HELP = ("tic_conv_nano with MDCSM / IPM / border / dilated / depthwise switched, where each is alive, and "
        "the recipe's choices switched one at a time; 3 seeds, paired differences, evaluated at 16-64 px")

MODEL = C.DEFAULT_MODEL
ON2 = "stages 0-1 (maps 16, 16, 8 at 32 px); off in stage 2 (8, 4)"


def _two(value) -> list:
    """``value`` in stages 0 and 1, off (``None``) in stage 2."""
    return [value, value, None]


H16 = {"head_dim": 16}  # MDCSM 'kv' splits heads into a local and shifted groups: it needs >= 2 heads per layer

# name -> (group, model_kwargs for tic_conv_nano, description)
CONFIGS: dict[str, tuple[str, dict, str]] = {
    "default": ("default", {}, "tic_conv_nano as registered: 3x3 windows, head dim 32, no MDCSM, no IPM, border zeros"),
    "head_dim16": ("heads", dict(H16), "head dim 16 (twice the heads): the control of the MDCSM 'kv' arms"),
    "mdcsm_kv": ("mdcsm", {**H16, "shift": _two("kv")},
                 f"MDCSM 'kv' (K, V of half the heads rolled by half the map), head dim 16, in {ON2}"),
    "mdcsm_kv_8dir": ("mdcsm", {**H16, "shift": _two({"mode": "kv", "directions": 8})},
                      f"MDCSM 'kv' with 8 directions instead of 4, head dim 16, in {ON2}"),
    "mdcsm_kv_all": ("mdcsm", {**H16, "shift": "kv"}, "MDCSM 'kv' in every stage (stage 2 too), head dim 16"),
    "mdcsm_kv_h32": ("mdcsm", {"shift": _two("kv")}, f"MDCSM 'kv' at head dim 32 (1 head in 16 px layers), in {ON2}"),
    "mdcsm_input": ("mdcsm", {"shift": _two("input")},
                    f"MDCSM 'input' (channel groups of the input rolled before q, k, v) in {ON2}"),
    "mdcsm_input_8dir": ("mdcsm", {"shift": _two({"mode": "input", "directions": 8})},
                         f"MDCSM 'input' with 8 directions (diagonals too) instead of 4, in {ON2}"),
    "ipm_grid": ("ipm", {"inter_pool": _two("grid")}, f"IPM 'grid' (4x4 pooled keys added to every window) in {ON2}"),
    "ipm_local": ("ipm", {"inter_pool": _two("local")}, f"IPM 'local' (keys smoothed over 3x3) in {ON2}"),
    "ipm_grid_all": ("ipm", {"inter_pool": "grid"}, "IPM 'grid' in every stage (stage 2 too)"),
    "mdcsm_ipm": ("mdcsm+ipm", {**H16, "shift": _two("kv"), "inter_pool": _two("grid")},
                  f"MDCSM 'kv' and IPM 'grid' together (the paper's TiC block), head dim 16, in {ON2}"),
    "border_mask": ("border", {"border": "mask"}, "keys outside the map masked out instead of zero keys"),
    "border_clamp": ("border", {"border": "clamp"}, "window shifted inside the map (NATTEN's rule)"),
    "dilated": ("kernel", {"dilation": [2, 2, 1]}, "dilation 2 in stages 0-1 (the 3x3 window spans 5x5)"),
    "depthwise": ("kernel", {"depthwise": True}, "depthwise MSA-Conv: one head per channel, then a 1x1 conv"),
    "no_smoothing": ("recipe", {}, "label smoothing 0 instead of 0.1"),
    "batch128": ("recipe", {}, "batch 128 instead of 256 at the same lr and epochs (twice the steps)"),
    "batch64": ("recipe", {}, "batch 64 instead of 256 at the same lr and epochs (four times the steps)"),
    "lr0.1": ("recipe", {}, "peak lr 0.1 instead of 0.2"),
    "lr0.4": ("recipe", {}, "peak lr 0.4 instead of 0.2"),
    "adamw": ("recipe", {}, "AdamW (lr 3e-3, weight decay 0.05: the transformers' recipe) instead of SGD + Nesterov"),
    "ema": ("recipe", {}, "EMA of weights (decay 0.99: about the last 100 of 390 steps), evaluated with them"),
}
# a recipe arm -> the TrainConfig values it changes (the budget's batch too: ``batch128``)
TRAINING: dict[str, dict] = {
    "no_smoothing": {"label_smoothing": 0.0},
    "batch128": {"batch_size": 128},
    "batch64": {"batch_size": 64},
    "lr0.1": {"lr": 0.1},
    "lr0.4": {"lr": 0.4},
    "adamw": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05},
    "ema": {"ema_decay": 0.99},
}
# arm -> the arm it differs from by its mechanism alone (besides the default): its control
CONTROL: dict[str, str] = {n: "head_dim16" for n, (_g, kw, _d) in CONFIGS.items()
                           if kw.get("head_dim") == 16 and n != "head_dim16"}
SMOKE_CONFIGS = ("default", "mdcsm_kv", "mdcsm_kv_all")
GROUP_ORDER = ("default", "heads", "mdcsm", "ipm", "mdcsm+ipm", "border", "kernel", "recipe")


def add_arguments(p: argparse.ArgumentParser) -> None:
    C.add_budget_arguments(p, seeds=3)
    p.add_argument("--configs", default="all", help=f"comma-separated arms (default all): {', '.join(CONFIGS)}")


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


# ------------------------------------------------------------------------------------- mechanism check


def mechanism_check(model: str, model_kwargs: dict, img_size: int) -> dict:
    """Where MDCSM and IPM act in ``model`` (a ConvNet, e.g. tic_conv_nano) at ``img_size``.

    Returns ``notes`` (one line per MSA-Conv layer with a mechanism on), ``problems`` (why the arm is a
    no-op somewhere it is on; empty: alive everywhere) and ``signature`` (the mechanisms as they act, to
    find two arms that build the same thing). Layer maps come from ``ConvNetConfig.layer_maps``, the
    windows, heads and settings from the built layers.
    """
    import torch

    from ..layers import MSAConv2d
    from ..models import ConvNetConfig, create_model_from_config

    try:
        with torch.device("meta"):
            m = create_model_from_config(model, model_kwargs, 10)
    except ValueError as e:  # e.g. MDCSM 'kv' in a layer with one head
        return {"notes": [], "problems": [f"the model cannot be built: {e}"], "signature": f"error: {e}"}
    cfg = getattr(m, "cfg", None)
    if not isinstance(cfg, ConvNetConfig):
        raise ValueError(f"mechanism_check: {model} is not a ConvNet (ConvNetConfig); the ablation arms are "
                         f"tic_conv_nano variants")
    maps = cfg.layer_maps(img_size)
    convs = [x for x in m.modules() if isinstance(x, MSAConv2d)]
    positions = [(i, j) for i, d in enumerate(cfg.depths) for j in range(d)][cfg.plain_convs:] if convs else []
    if len(positions) != len(convs):
        raise RuntimeError(f"mechanism_check: {len(convs)} MSA-Conv layers but {len(positions)} MSA positions")
    notes: list[str] = []
    problems: list[str] = []
    signature = []
    for (i, j), conv in zip(positions, convs):
        a = conv.attn
        side, ext = maps[i][j], C.window_extent(a.kernel_size, a.dilation)
        where = f"stage {i} conv {j} ({side}x{side} map, {ext}x{ext} window, {a.num_heads} head(s))"
        sh, ip = a.shift, a.inter_pool
        sig: list = [i, j]
        if sh is not None:
            n = a.num_heads if sh.mode == "kv" else conv.in_channels
            bounds = sh.groups(n)
            offs = sh.offsets(side, side)
            used = sorted({(b, (oy % side, ox % side)) for b, (oy, ox) in zip(bounds[1:], offs) if b[1] > b[0]})
            shifts = sorted({o for _b, o in used if o != (0, 0)})
            what = (f"MDCSM '{sh.mode}' rolls {n - (bounds[0][1] - bounds[0][0])} of {n} "
                    f"{'heads' if sh.mode == 'kv' else 'channels'} by {len(shifts)} distinct shift(s) {shifts}")
            notes.append(f"{where}: {what}")
            if side < 2 * ext or not shifts:
                problems.append(f"{where}: MDCSM '{sh.mode}' is on but the map is smaller than twice the window "
                                f"({2 * ext}x{2 * ext}): the rolled window overlaps the query's own"
                                + (" and the roll is a no-op" if not shifts or side <= ext else ""))
            sig.append(("shift", sh.mode, bounds[0], tuple((b, o) for b, o in used)))
        if ip is not None:
            if ip.mode == "grid":
                g = ip.grid_size(side, side)
                raw = g == (side, side)
                notes.append(f"{where}: IPM 'grid' adds " + (f"the raw {side}x{side} map as extra keys (global "
                                                              f"attention, no pooling)" if raw else
                                                              f"{g[0]}x{g[1]} pooled keys"))
                sig.append(("pool", "grid", g))
            else:
                raw = False
                notes.append(f"{where}: IPM 'local' smooths keys over {ip.kernel}x{ip.kernel}")
                sig.append(("pool", "local", ip.kernel))
            if side < 2 * ext or raw:
                problems.append(f"{where}: IPM '{ip.mode}' is on but the map is smaller than twice the window "
                                f"({2 * ext}x{2 * ext})" + (": its grid passes the raw map (global attention, "
                                                            "not pooling)" if raw else ""))
        if len(sig) > 2:
            signature.append(tuple(sig))
    rest = {k: v for k, v in sorted(model_kwargs.items()) if k not in ("shift", "inter_pool")}
    return {"notes": notes, "problems": problems, "signature": repr((model, sorted(rest.items()), signature))}


def refusals(img_size: int, names: list[str] | None = None) -> dict[str, str]:
    """arm -> why it is refused at ``img_size`` (a mechanism that is a no-op where it is on, or the same
    mechanism as an arm listed before it), for ``names`` (default: every arm)."""
    seen: dict[str, str] = {}
    out: dict[str, str] = {}
    for name, (_group, kw, _desc) in CONFIGS.items():
        check = mechanism_check(MODEL, kw, img_size)
        if check["problems"]:
            out[name] = (f"refused at {img_size} px: " + "; ".join(check["problems"]))
        elif check["signature"] in seen and (kw.get("shift") is not None or kw.get("inter_pool") is not None):
            out[name] = (f"refused at {img_size} px: builds the same mechanism as `{seen[check['signature']]}` "
                         f"(" + "; ".join(check["notes"]) + ")")
        else:
            seen.setdefault(check["signature"], name)
    return {n: r for n, r in out.items() if names is None or n in names}


# ------------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> Path:
    budget = C.budget_from_args(args)
    names = selected(args)
    out = C.output_path(args, "ablation")
    stamp = C.stamp("ablation", args.smoke)
    refused = refusals(budget.img_size, names)
    old = {(r.get("config"), C.budget_key(r.get("budget")), r.get("refused")) for r in C.read_records(out)}
    new = [{**stamp, "config": n, "group": CONFIGS[n][0], "description": CONFIGS[n][2], "model": MODEL,
            "model_kwargs": CONFIGS[n][1], "seed": None, "refused": why, "budget": budget.as_dict()}
           for n, why in refused.items()]
    C.append(out, [r for r in new if (r["config"], C.budget_key(r["budget"]), r["refused"]) not in old])
    for n, why in refused.items():
        print(f"ablation: {n} {why}", flush=True)
    jobs = []
    for s in range(args.seeds):
        for n in names:
            if n in refused:
                continue
            group, kw, desc = CONFIGS[n]
            notes = mechanism_check(MODEL, kw, budget.img_size)["notes"]
            train = TRAINING.get(n)
            sizes = [budget.img_size] if train else C.eval_sizes(args)
            jobs.append(C.make_job("ablation", n, MODEL, kw, s, budget, args, "fixed", sizes,
                                   ["resize"] if train else C.PROTOCOLS, train_overrides=train,
                                   extra={"group": group, "description": desc, "mechanism": notes}))
    C.run_training("ablation", args, jobs, stamp, out)
    return out


def checkpoints(records: list[dict], config: str) -> dict[int, str]:
    """seed -> run folder of ``config``'s trained runs at the primary budget of ``records`` (that still exist)."""
    primary, _, _ = C.split_budgets(records)
    out = {}
    for r in primary:
        if r.get("config") == config and r.get("checkpoint") and "top1" in r and Path(r["checkpoint"]).is_dir():
            out[r["seed"]] = r["checkpoint"]
    return out


# ------------------------------------------------------------------------------------------------ render


def summarise(runs: list[dict]) -> list[dict]:
    """One row per arm: top-1 mean and spread over its seeds, the paired difference to the default and its
    verdict, at 32 px and at every (size, protocol) of the runs."""
    base = {r["seed"]: r["top1"] for r in runs if r["config"] == "default"}
    base_std = C.mean_spread(list(base.values()))["std"] if base else 0.0
    val = max((r.get("val_images", 0) for r in runs), default=0)
    floor = C.binomial_se(C.mean_spread(list(base.values()))["mean"] if base else 50.0, val)
    pairs = sorted({(e["img_size"], e.get("protocol", "resize")) for r in runs for e in r.get("evals", [])},
                   key=lambda t: (t[1] != "resize", t[0]))
    rows = []
    for name in [*CONFIGS, *sorted({r["config"] for r in runs} - set(CONFIGS))]:
        rs = [r for r in runs if r["config"] == name]
        if not rs:
            continue
        at = {}
        for s, p in pairs:
            vals = {r["seed"]: C.top1_at(r, s, p) for r in rs}
            bvals = {r["seed"]: C.top1_at(r, s, p) for r in runs if r["config"] == "default"}
            at[(s, p)] = {"top1": C.mean_spread(list(vals.values())),
                          "delta": C.verdict(C.paired({k: v for k, v in vals.items() if v is not None},
                                                      {k: v for k, v in bvals.items() if v is not None}),
                                             C.mean_spread(list(bvals.values()))["std"], floor)}
        rows.append({"config": name, "group": rs[0].get("group", "?"), "description": rs[0].get("description", ""),
                     "seeds": sorted(r["seed"] for r in rs), "top1": C.mean_spread([r["top1"] for r in rs]),
                     "top5": C.mean_spread([r["top5"] for r in rs]), "params": rs[0]["params"],
                     "img_per_s": C.mean_spread([r["img_per_s"] for r in rs]),
                     "train_min": C.mean_spread([C.train_minutes(r) for r in rs]),
                     "delta": C.verdict(C.paired({r["seed"]: r["top1"] for r in rs}, base), base_std, floor),
                     "control": CONTROL.get(name), "control_delta": _vs(rs, runs, CONTROL.get(name), floor),
                     "at": at, "mechanism": rs[0].get("mechanism", [])})
    return rows


def _vs(rs: list[dict], runs: list[dict], other: str | None, floor: float) -> dict:
    """The paired difference of runs ``rs`` to arm ``other``'s runs at 32 px (n 0 when there are none)."""
    ref = {r["seed"]: r["top1"] for r in runs if other and r["config"] == other}
    return C.verdict(C.paired({r["seed"]: r["top1"] for r in rs}, ref), C.mean_spread(list(ref.values()))["std"]
                     if ref else 0.0, floor)


def render(records: list[dict], figdir: Path) -> str:
    figdir = Path(figdir)
    primary, other, superseded = C.split_budgets(records)
    runs = C.latest_batch([r for r in primary if "top1" in r], lambda r: (r["config"], r["seed"]))
    refused = C.latest_batch([r for r in primary if r.get("refused")], lambda r: r["config"])
    failed = C.open_failures(primary, lambda r: (r["config"], r["seed"]))
    parts = [f"## Ablation: the mechanisms of MSA-Conv in {MODEL}"]
    if primary:
        parts.append(C.provenance(primary))
    if not runs:
        parts.append(C.not_run_yet("ablation", "ablation"))
    else:
        b = runs[-1]["budget"]
        rows = summarise(runs)
        base = next((r for r in rows if r["config"] == "default"), None)
        n_seeds = max(len(r["seeds"]) for r in rows)
        parts.append(f"Budget per run: {C.describe_budget(b, runs)}; trained at {b['img_size']} px (fixed); "
                     f"{n_seeds} seed(s) per arm (the seed draws the initialisation and the augmentation; the same "
                     f"seed is the same draw in every arm, so differences are paired by seed).")
        parts.append(C.bar_sentence(base["top1"] if base else C.mean_spread([]), f"Default arm (`{MODEL}`, fixed 32 px)"))
        table = []
        for r in rows:
            t, d = r["top1"], r["delta"]
            table.append([r["group"], r["config"], r["description"], len(r["seeds"]),
                          f"{t['mean']:.2f} ± {t['std']:.2f}", f"{t['min']:.2f}-{t['max']:.2f}",
                          "-" if r["config"] == "default" else C.fmt_verdict(d),
                          (f"vs {r['control']}: " + (C.fmt_verdict(r["control_delta"]) if r["control_delta"]["n"]
                                                       else "control not run yet")) if r["control"] else "-",
                          f"{r['top5']['mean']:.2f}",
                          f"{r['params'] / 1e6:.3f}", C.fmt(r["img_per_s"]["mean"], 0), C.fmt(r["train_min"]["mean"], 1)])
        parts.append(C.md_table(["group", "arm", "what", "seeds", "top-1 % (mean ± std)", "min-max",
                                 "Δ top-1 vs default, paired by seed (real: beyond 2x noise)",
                                 "Δ top-1 vs its control (same heads, mechanism off)", "top-5 %",
                                 "params (M)", "train img/s", "train min"], table, "lllrrrrrrrrr"))
        missing = [n for n in CONFIGS if n not in {r["config"] for r in rows} | {r["config"] for r in refused}]
        few = [r["config"] for r in rows if len(r["seeds"]) < n_seeds]
        if (missing or few) and not all(r.get("smoke") for r in runs):
            parts.append("**Not run yet**: " + (f"arms {', '.join(missing)}" if missing else "")
                         + ("; " if missing and few else "") + (f"fewer seeds for {', '.join(few)}" if few else "")
                         + f". {C.how_to_run('ablation')}")
        parts.append("Findings (computed; noise as defined in `_common.verdict`: the largest of the per-seed spread of "
                     "the paired differences, the default's spread over seeds and the binomial standard error of one "
                     "top-1 on the test images; real: beyond twice the noise):\n\n" + "\n".join(findings(rows)))
        parts.append(_sizes_section(rows))
        png = _plot(rows, figdir)
        if png:
            parts.append(C.image(figdir, png, "ablation top-1"))
        notes = [f"- `{r['config']}`: " + "; ".join(r["mechanism"]) for r in rows if r["mechanism"]]
        if notes:
            parts.append(f"Where each mechanism acts at {b['img_size']} px (`ablation.mechanism_check`):\n\n"
                         + "\n".join(notes))
    if refused:
        parts.append("Refused arms (recorded, never trained: a mechanism on where it is a no-op, or the same "
                     "mechanism as an earlier arm):\n\n"
                     + "\n".join(f"- `{r['config']}` ({r['description']}): {r['refused']}" for r in refused))
    if failed:
        parts.append("Failed runs:\n\n" + "\n".join(f"- `{r['config']}` seed {r['seed']}: {r['error']}" for r in failed))
    old_note = ("and in tic_nano at 32 px MDCSM was a no-op in the last stage and IPM global attention in stages "
                "1-2, so those arms did not test the mechanisms they name")
    for extra in (C.other_budgets_section(other), C.superseded_section(superseded, old_note)):
        if extra:
            parts.append(extra)
    return "\n\n".join(p for p in parts if p) + "\n"


def findings(rows: list[dict]) -> list[str]:
    """Per arm: its paired difference to the default at 32 px, real or within the noise; then every (size,
    protocol) at which an arm's paired difference is real."""
    out = []
    for r in rows:
        if r["config"] == "default" or not r["delta"]["n"]:
            continue
        d, c = r["delta"], r["control_delta"]
        line = (f"- {r['config']} ({r['group']}): {d['mean']:+.2f} points vs default at 32 px, "
                + ("**real**" if d["real"] else "within the noise") + f" (noise {d['noise']:.2f}, {d['n']} seeds)")
        if r["control"] and c["n"]:
            line += (f"; {c['mean']:+.2f} vs its control {r['control']}, "
                     + ("**real**" if c["real"] else "within the noise") + f" (noise {c['noise']:.2f})")
        out.append(line + ".")
    elsewhere = [f"{r['config']} at {s} px {p} {v['delta']['mean']:+.2f}" for r in rows if r["config"] != "default"
                 for (s, p), v in r["at"].items() if s != 32 and v["delta"]["real"]]
    out.append("- Real paired differences at other sizes: " + (", ".join(elsewhere) if elsewhere else "none") + ".")
    return out


def _sizes_section(rows: list[dict]) -> str:
    pairs = sorted({k for r in rows for k in r["at"]}, key=lambda t: (t[1] != "resize", t[0]))
    if not pairs:
        return ""
    parts = []
    for proto in ("resize", "canvas"):
        sizes = [s for s, p in pairs if p == proto] or []
        if not sizes:
            continue
        if proto == "canvas":
            sizes = sorted(set(sizes) | {32})
        table = []
        for r in rows:
            cells = []
            for s in sizes:
                v = r["at"].get((s, proto)) or r["at"].get((s, "resize"))
                if v is None or not v["top1"]["n"]:
                    cells.append("x")
                    continue
                d = v["delta"]
                mark = "" if r["config"] == "default" or not d["n"] else f" ({d['mean']:+.1f}{'*' if d['real'] else ''})"
                cells.append(f"{v['top1']['mean']:.1f}{mark}")
            table.append([r["config"], *cells])
        parts.append(f"Top-1 % at other sizes, protocol '{proto}' (mean over seeds; in brackets the paired Δ vs "
                     f"default, * real; x: the arm cannot run at that size):\n\n"
                     + C.md_table(["arm", *[f"{s} px" for s in sizes]], table))
    return "\n\n".join(parts)


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
        ax.plot([i, i], [r["top1"]["min"], r["top1"]["max"]], "k.", ms=3)
    ax.set_xticks(list(xs), [r["config"] for r in rows], rotation=30, ha="right")
    lo = min(r["top1"]["min"] for r in rows)
    hi = max(r["top1"]["max"] for r in rows)
    ax.set_ylim(max(0, lo - 3), hi + 2)
    ax.set_ylabel("top-1 % at 32 px (mean ± std; dots: min/max)")
    ax.set_title(f"{MODEL} arms, same budget")
    fig.tight_layout()
    fig.savefig(figdir / "ablation_top1.png", dpi=110)
    plt.close(fig)
    return "ablation_top1.png"
