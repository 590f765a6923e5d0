"""The paper's claims, each with a verdict computed from the committed records (the first section of
docs/results.md, made by ``msaconv experiment report``).

A verdict is one of:

- **supported** / **against**: the records decide it, at :data:`SEEDS` seeds or more, with a paired
  difference beyond twice its noise (``_common.verdict``) in the claim's direction or against it;
- **no difference**: decided, within the noise at :data:`SEEDS` seeds (the claim does not show here);
- **undecided**: fewer seeds than :data:`SEEDS` so far, or an arm not run yet (the numbers so far are given).

Claims and the comparisons that test them (TiC against its matched baseline, trained by the same command
under the same budget, paired by seed):

1. *Any resolution without retraining*: keep (top-1 at a size / top-1 at 32 px) of ``tic_conv_nano``
   minus ``convnet_nano``'s, and of ``tic_nano`` minus ``vit_nano_abspe``'s (the textbook failure), fixed
   32 px training, at every evaluated size but 32 px, both protocols (resolution experiment); where the
   multi-size runs exist, the same pairs trained at 24-40 px are judged beside it. Where the
   ``global`` arm ran, ``tic_nano`` minus it (global attention in the same body) is printed beside, as the
   body's control: a loss both share is the body's, not MSA-Conv's.
2. *Cheaper than global attention as images grow*: the fitted exponent of time against pixels of
   ``tic_tiny`` against the global-attention models (cost experiment; a measurement, no seeds).
3. *MDCSM helps*: ``mdcsm_kv`` against its control ``head_dim16`` and ``mdcsm_input`` against ``default``
   (ablation), and the ablation's other MDCSM arms (the number of directions, head dim 32) once they have
   :data:`SEEDS` seeds. 4. *IPM helps*: ``ipm_grid`` and ``ipm_local`` against ``default`` (ablation), and
   the other IPM arms likewise.
5. *Accuracy comparable with the other designs*: ``tic_conv_nano`` against ``convnet_nano`` (resolution,
   fixed 32 px) and ``tic_nano`` against each zoo mixer in the same backbone (mixers), at 32 px.
"""

from __future__ import annotations

from pathlib import Path

from . import _common as C

SEEDS = 3  # seeds a comparison needs before a verdict


def _records(results: Path, name: str) -> tuple[list[dict], str]:
    path = Path(results) / name / "records.jsonl"
    return C.read_records(path), f"results/{name}/records.jsonl"


WORDS = {"against": "**against**", "supported": "**supported**", "none": "**no difference** within the noise"}
# the accuracy claim is "comparable": TiC behind is against it, level with its peers meets it
ACCURACY_WORDS = {"against": "**against** (TiC behind)", "supported": "**supported**, TiC ahead",
                  "none": "**supported**: no difference within the noise"}


def _undecided(verdicts: list[tuple[str, dict]]) -> str | None:
    """Why the labelled differences cannot decide yet (too few seeds, an arm not run), or None."""
    have = [v for _k, v in verdicts if v["n"]]
    if not have:
        return "undecided: not run yet"
    n = min(v["n"] for v in have)
    missing = list(dict.fromkeys(k for k, v in verdicts if not v["n"]))
    if n < SEEDS or missing:
        return f"undecided: {n} seed(s) so far" + (f"; not run yet: {', '.join(missing)}" if missing else "")
    return None


def _decide(verdicts: list[tuple[str, dict]], words: dict[str, str] = WORDS) -> str:
    """One verdict from labelled paired differences (positive: in the claim's direction)."""
    waiting = _undecided(verdicts)
    if waiting:
        return waiting
    against = [k for k, v in verdicts if v["real"] and v["mean"] < 0]
    support = [k for k, v in verdicts if v["real"] and v["mean"] > 0]
    level = [k for k, v in verdicts if not v["real"]]
    others = "; ".join([*([f"for: {', '.join(support)}"] if support and against else []),
                        *([f"within the noise: {', '.join(level)}"] if level and (against or support) else [])])
    return _said(words, against, support, others, ", ")


def _said(words: dict[str, str], against: list[str], support: list[str], aside: str, sep: str) -> str:
    """The verdict's words: against when any difference is real against the claim, else supported when any is
    real for it, else no difference; the deciding comparisons joined by ``sep``, then ``aside`` in brackets."""
    if not against and not support:
        return words["none"]
    word, named = (words["against"], against) if against else (words["supported"], support)
    return f"{word}: " + sep.join(named) + (f" ({aside})" if aside else "")


def _fmt(label: str, v: dict) -> str:
    return f"{label} {C.fmt_verdict(v, 3 if abs(v.get('mean', 0) or 0) < 1 else 2)}" if v["n"] else f"{label}: not run"


# resolution cells: (TiC arm, its baseline) -> [(protocol, size, paired verdict of keep)]
Cells = dict[tuple[str, str], list[tuple[str, int, dict]]]


def _real_sizes(items: list[tuple[str, int, dict]], sign: int) -> str:
    """'16, 24 px (resize), 40 px (canvas)': where the difference is real with the given sign."""
    parts = []
    for proto in dict.fromkeys(p for p, _s, _v in items):
        sizes = [s for p, s, v in items if p == proto and v["n"] and v["real"] and v["mean"] * sign > 0]
        if sizes:
            parts.append(f"{', '.join(map(str, sizes))} px ({proto})")
    return ", ".join(parts)


def _resolution_verdict(cells: Cells) -> str:
    """The verdict, grouped by comparison and protocol: which sizes keep less (against) or more (for)."""
    waiting = _undecided([(f"{a} − {b}", v) for (a, b), items in cells.items() for _p, _s, v in items])
    if waiting:
        return waiting
    said = {sign: [f"{a} keeps {word} than {b} at {where}" for (a, b), items in cells.items()
                   if (where := _real_sizes(items, sign))] for sign, word in ((-1, "less"), (1, "more"))}
    aside = f"for: {'; '.join(said[1])}" if said[-1] and said[1] else ""
    return _said(WORDS, said[-1], said[1], aside, "; ")


def _resolution_numbers(cells: Cells) -> str:
    """Per comparison and protocol: the paired difference of keep at each size (* real)."""
    lines = []
    for (a, b), items in cells.items():
        for proto in dict.fromkeys(p for p, _s, _v in items):
            vs = [(s, v) for p, s, v in items if p == proto and v["n"]]
            if vs:
                diffs = ", ".join(f"{s} px {v['mean']:+.3f} ± {v['std']:.3f}{'*' if v['real'] else ''}" for s, v in vs)
                noise = sorted({f"{v['noise']:.3f}" for _s, v in vs}, key=float)
                lines.append(f"{a} − {b}, {proto}: {diffs} (n {min(v['n'] for _s, v in vs)}; "
                             f"noise {'-'.join(dict.fromkeys([noise[0], noise[-1]]))})")
    return "; ".join(lines)


def resolution_claim(results: Path) -> tuple[str, str, str, str]:
    from . import resolution as R

    records, path = _records(results, "resolution")
    primary, _, _ = C.split_budgets(records)
    runs = C.latest_batch([r for r in primary if "top1" in r], lambda r: (r["config"], r.get("mode"), r["seed"]))
    if not runs:
        return (RESOLUTION_CLAIM, "undecided: not run yet", "no runs at the budget yet", path)
    s = R.summarise(runs)
    train = runs[-1]["budget"]["img_size"]
    pairs = (("tic_conv_nano", "convnet_nano"), ("tic_nano", "vit_nano_abspe"))
    # fixed 32 px training (as the paper's models) decides; multi-size training, where run, is said beside it
    cells: Cells = {pair: _keep_cells(s, runs, pair, train) for pair in pairs}
    verdict, numbers = _resolution_verdict(cells), [_resolution_numbers(cells)]
    if any((tic, "multi") in s["rows"] for tic, _other in pairs):
        multi: Cells = {pair: _keep_cells(s, runs, pair, train, "multi") for pair in pairs}
        verdict += f"; with multi-size training: {_resolution_verdict(multi)}"
        numbers.append(f"multi-size training: {_resolution_numbers(multi)}")
    if ("global", "fixed") in s["rows"] and ("tic_nano", "fixed") in s["rows"]:
        # the body's control: global attention in tic_nano's body, so a loss both share is the body's, not MSA-Conv's
        control: Cells = {("tic_nano", "global"): _keep_cells(s, runs, ("tic_nano", "global"), train)}
        numbers.append("control, not in the verdict (global attention in tic_nano's own body): "
                       + _resolution_numbers(control))
    said = "; ".join(n for n in numbers if n)
    return (RESOLUTION_CLAIM, verdict, (said + "; * real: beyond twice the noise") if said else
            "no runs at the budget yet", path)


def _keep_cells(s: dict, runs: list[dict], pair: tuple[str, str], train: int,
                mode: str = "fixed") -> list[tuple[str, int, dict]]:
    """(protocol, size, paired verdict of keep) of ``pair`` (both trained the same way, ``mode``) at every size
    but the training size; the '+bn' protocols only where re-estimating BatchNorm changed a figure of the pair."""
    from . import resolution as R

    tic, other = pair
    protos = [p for p in s["protocols"] if not p.endswith(C.RECAL) or _recalibrates(runs, pair)]
    return [(proto, size, R.keep_verdict(s, (tic, mode), (other, mode), size, proto))
            for proto in protos for size in s["sizes"] if size != train]


def _recalibrates(runs: list[dict], arms: tuple[str, ...]) -> bool:
    """Whether re-estimating BatchNorm changed a figure of these arms (a model without BatchNorm, such as
    tic_nano and the ViTs, has '+bn' figures equal to the plain ones: those protocols would repeat them)."""
    return any(e.get("recal_images") and e.get("top1_recal") != e.get("top1")
               for r in runs if r["config"] in arms for e in r.get("evals", []))


RESOLUTION_CLAIM = "Any resolution without retraining (keep of TiC minus keep of its baseline, paired)"


def cost_claim(results: Path) -> tuple[str, str, str, str]:
    from . import cost

    records, path = _records(results, "cost")
    fits = cost.exponents(records)
    tic = {m: f["exponent"] for m, f in fits.items() if f.get("exponent") is not None and "global" not in m}
    glob = {m: f["exponent"] for m, f in fits.items() if f.get("exponent") is not None and "global" in m}
    if not tic or not glob:
        return ("Cheaper than global attention as images grow", "undecided: not run yet", "-", path)
    numbers = ", ".join(f"{m} pixels^{a:.2f}" for m, a in {**tic, **glob}.items())
    grows_slower = max(tic.values()) < min(glob.values())
    verdict = ("**supported**: time grows more slowly with the pixel count than every global-attention model's"
               if grows_slower else "**against**: a global-attention model's time grows as slowly or more slowly")
    return ("Cheaper than global attention as images grow (fitted exponent of time ~ pixels^a)", verdict,
            numbers, path)


def mechanism_claim(results: Path, what: str, core: tuple[str, ...], group: str) -> tuple[str, str, str, str]:
    """``core``: the arms that must be decided; the ablation's other arms of ``group`` join the verdict once
    they have :data:`SEEDS` seeds (before that their numbers are shown, marked). Each arm is compared with
    its control (same heads, mechanism off) where it has one, else with ``default``."""
    from . import ablation as A

    records, path = _records(results, "ablation")
    primary, _, _ = C.split_budgets(records)
    runs = C.latest_batch([r for r in primary if "top1" in r], lambda r: (r["config"], r["seed"]))
    rows = {r["config"]: r for r in A.summarise(runs)} if runs else {}
    more = [a for a, (g, _kw, _d) in A.CONFIGS.items() if g == group and a not in core and a in rows]
    verdicts: list[tuple[str, dict]] = []
    waiting: list[tuple[str, dict]] = []
    for arm in (*core, *more):
        ref = A.CONTROL.get(arm, "default")
        row = rows.get(arm)
        v = C.verdict([]) if row is None else (row["control_delta"] if ref != "default" else row["delta"])
        (verdicts if arm in core or v["n"] >= SEEDS else waiting).append((f"{arm} − {ref}", v))
    numbers = "; ".join([*(_fmt(k + " (top-1 points)", v) for k, v in verdicts),
                         *(_fmt(k + " (top-1 points; not in the verdict until it has "
                                f"{SEEDS} seeds)", v) for k, v in waiting)])
    return (f"{what} helps (top-1 at 32 px, paired)", _decide(verdicts), numbers, path)


def accuracy_claim(results: Path) -> tuple[str, str, str, str]:
    from . import mixers as M
    from . import resolution as R

    verdicts: list[tuple[str, dict]] = []
    records, rpath = _records(results, "resolution")
    primary, _, _ = C.split_budgets(records)
    runs = C.latest_batch([r for r in primary if "top1" in r], lambda r: (r["config"], r.get("mode"), r["seed"]))
    conv = R.summarise(runs)["rows"].get(("convnet_nano", "fixed")) if runs else None
    # rows' delta is the arm minus the reference: TiC minus its baseline is the negative
    verdicts.append(("tic_conv_nano − convnet_nano", _negated(conv["delta"]) if conv else C.verdict([])))
    mrecords, mpath = _records(results, "mixers")
    for row in M.rows_of(mrecords) if mrecords else []:
        if row["config"] != M.REFERENCE and row["config"] not in M.OTHERS:  # a zoo mixer in tic_nano's body
            verdicts.append((f"tic_nano − {row['config']}", _negated(row["delta"])))
    numbers = "; ".join(_fmt(k + " (top-1 points)", v) for k, v in verdicts)
    return ("Accuracy comparable with its baselines and the other designs (top-1 at 32 px, paired)",
            _decide(verdicts, ACCURACY_WORDS), numbers, f"{rpath}, {mpath}")


def _negated(v: dict) -> dict:
    return {**v, "mean": -v["mean"], "min": -v["max"], "max": -v["min"]} if v["n"] else v


def render(results: Path) -> str:
    """The claims table (markdown) from ``results/<experiment>/records.jsonl``."""
    rows = [resolution_claim(results), cost_claim(results),
            mechanism_claim(results, "MDCSM", ("mdcsm_kv", "mdcsm_input"), "mdcsm"),
            mechanism_claim(results, "IPM", ("ipm_grid", "ipm_local"), "ipm"),
            accuracy_claim(results)]
    table = C.md_table(["the paper's claim", "our verdict", "the numbers (mean ± std over seeds; n; noise)", "records"],
                       [list(r) for r in rows], "llll")
    return ("## The paper's claims against our records\n\n"
            f"Computed by `msaconv.experiments.claims` from the records below (a verdict needs {SEEDS} seeds; "
            "real: a paired difference beyond twice its noise). For accuracy, *supported* means TiC is not "
            "behind; the claim of comparable accuracy is then met, not exceeded.\n\n" + table + "\n")
