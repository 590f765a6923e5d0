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
   32 px training, at every evaluated size but 32 px, both protocols (resolution experiment).
2. *Cheaper than global attention as images grow*: the fitted exponent of time against pixels of
   ``tic_tiny`` against the global-attention models (cost experiment; a measurement, no seeds).
3. *MDCSM helps*: ``mdcsm_kv`` against its control ``head_dim16`` and ``mdcsm_input`` against ``default``
   (ablation). 4. *IPM helps*: ``ipm_grid`` and ``ipm_local`` against ``default`` (ablation).
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


def _decide(verdicts: list[tuple[str, dict]], words: dict[str, str] = WORDS) -> str:
    """One verdict from labelled paired differences (positive: in the claim's direction)."""
    have = [(k, v) for k, v in verdicts if v["n"]]
    if not have:
        return "undecided: not run yet"
    n = min(v["n"] for _k, v in have)
    if n < SEEDS or len(have) < len(verdicts):
        return f"undecided: {n} seed(s) so far" + ("" if len(have) == len(verdicts) else ", some arms not run yet")
    against = [k for k, v in have if v["real"] and v["mean"] < 0]
    support = [k for k, v in have if v["real"] and v["mean"] > 0]
    if against:
        return f"{words['against']}: " + ", ".join(against) + (f" (for: {', '.join(support)})" if support else "")
    if support:
        return f"{words['supported']}: " + ", ".join(support)
    return words["none"]


def _fmt(label: str, v: dict) -> str:
    return f"{label} {C.fmt_verdict(v, 3 if abs(v.get('mean', 0) or 0) < 1 else 2)}" if v["n"] else f"{label}: not run"


def resolution_claim(results: Path) -> tuple[str, str, str, str]:
    from . import resolution as R

    records, path = _records(results, "resolution")
    primary, _, _ = C.split_budgets(records)
    runs = C.latest_batch([r for r in primary if "top1" in r], lambda r: (r["config"], r.get("mode"), r["seed"]))
    verdicts: list[tuple[str, dict]] = []
    if runs:
        s = R.summarise(runs)
        train = runs[-1]["budget"]["img_size"]
        for tic, other in (("tic_conv_nano", "convnet_nano"), ("tic_nano", "vit_nano_abspe")):
            for proto in s["protocols"]:
                for size in [z for z in s["sizes"] if z != train]:
                    v = R.keep_verdict(s, (tic, "fixed"), (other, "fixed"), size, proto)
                    verdicts.append((f"{tic} − {other} at {size} px {proto}", v))
    else:
        verdicts = [("resolution runs", C.verdict([]))]
    numbers = "; ".join(_fmt(k, v) for k, v in verdicts if v["n"]) or "no runs at the budget yet"
    return ("Any resolution without retraining (keep of TiC minus keep of its baseline, paired)",
            _decide(verdicts), numbers, path)


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


def mechanism_claim(results: Path, what: str, arms: dict[str, str]) -> tuple[str, str, str, str]:
    """``arms``: arm -> the arm it is compared with (its control or ``default``)."""
    from . import ablation as A

    records, path = _records(results, "ablation")
    primary, _, _ = C.split_budgets(records)
    runs = C.latest_batch([r for r in primary if "top1" in r], lambda r: (r["config"], r["seed"]))
    rows = {r["config"]: r for r in A.summarise(runs)} if runs else {}
    verdicts = []
    for arm, ref in arms.items():
        row = rows.get(arm)
        v = C.verdict([]) if row is None else (row["control_delta"] if ref != "default" else row["delta"])
        verdicts.append((f"{arm} − {ref}", v))
    numbers = "; ".join(_fmt(k + " (top-1 points)", v) for k, v in verdicts)
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
            mechanism_claim(results, "MDCSM", {"mdcsm_kv": "head_dim16", "mdcsm_input": "default"}),
            mechanism_claim(results, "IPM", {"ipm_grid": "default", "ipm_local": "default"}),
            accuracy_claim(results)]
    table = C.md_table(["the paper's claim", "our verdict", "the numbers (mean ± std over seeds; n; noise)", "records"],
                       [list(r) for r in rows], "llll")
    return ("## The paper's claims against our records\n\n"
            f"Computed by `msaconv.experiments.claims` from the records below (a verdict needs {SEEDS} seeds; "
            "real: a paired difference beyond twice its noise). For accuracy, *supported* means TiC is not "
            "behind; the claim of comparable accuracy is then met, not exceeded.\n\n" + table + "\n")
