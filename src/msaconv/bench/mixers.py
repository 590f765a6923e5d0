"""The ``msaconv mixers`` table: every registered mixer's paper, size, cost, speed and resolution behaviour.

:func:`mixer_table` measures; :func:`format_table` prints. Times are medians of warm forwards in eval mode
under ``torch.no_grad()``, each relative to ``global`` timed interleaved with it in the same run (absolute
milliseconds depend on the machine and its load; the ratio is what the table reports). GMACs are FLOPs / 2 from
:func:`msaconv.layers.mixers.flops.count_flops`; operators it cannot count are named in the notes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..layers import get_token_mixer, list_token_mixers, token_mixer_paper
from ..layers.mixers.flops import count_flops

# options a mixer needs to be built for the table's map (the spectral filter is sized at construction)
def _table_options(name: str, size: tuple[int, int]) -> dict:
    return {"size": size} if name == "spectral" else {}


@dataclass
class MixerRow:
    name: str
    paper: str
    params: int
    gmacs: float | None
    ms: float | None
    rel_time: float | None
    alt_size_ok: bool
    alt_size_note: str
    notes: str


def _paired_median_ms(m: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median forward times of ``m`` and of the reference, interleaved (m, ref, m, ref, ...) so that both
    see the same machine load -- on a shared machine the load drifts between mixers."""
    tm: list[float] = []
    tr: list[float] = []
    with torch.no_grad():
        m(x), ref(x)  # warm-up
        for _ in range(repeats):
            for mod, ts in ((m, tm), (ref, tr)):
                t0 = time.perf_counter()
                mod(x)
                ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(tm), statistics.median(tr)


def mixer_table(dim: int = 64, size=(56, 56), alt_size=(57, 43), num_heads: int = 4, repeats: int = 5,
                names: list[str] | None = None, seed: int = 0) -> list[MixerRow]:
    """Measure every mixer (or ``names``); ``global`` is always timed as the reference."""
    all_names = list_token_mixers()
    names = all_names if names is None else list(names)
    for n in names:
        if n not in all_names:
            get_token_mixer(n, dim)  # raises the registry's did-you-mean error
    H, W = size
    rows: dict[str, MixerRow] = {}
    torch.manual_seed(seed)
    ref = get_token_mixer("global", dim, num_heads=num_heads).eval()
    for name in names:
        torch.manual_seed(seed)
        notes = []
        try:
            m = get_token_mixer(name, dim, num_heads=num_heads, **_table_options(name, size)).eval()
        except ValueError as e:
            rows[name] = MixerRow(name, token_mixer_paper(name), 0, None, None, None, False, "", f"cannot build: {e}")
            continue
        params = sum(p.numel() for p in m.parameters())
        x = torch.randn(1, dim, H, W)
        with torch.no_grad():
            rep = count_flops(m, x)
        if rep.uncounted:
            notes.append("not counted: " + ", ".join(rep.uncounted))
        ms, ref_ms = _paired_median_ms(m, ref, x, repeats)
        try:
            with torch.no_grad():
                y = m(torch.randn(1, dim, *alt_size))
            ok, why = tuple(y.shape[-2:]) == tuple(alt_size), ""
        except ValueError as e:
            ok, why = False, str(e).split(";")[0]
        rows[name] = MixerRow(name, token_mixer_paper(name), params, rep.macs / 1e9, ms,
                              1.0 if name == "global" else ms / ref_ms, ok, why, "; ".join(notes))
    return [rows[n] for n in names]


def format_table(rows: list[MixerRow], dim: int, size, alt_size) -> str:
    H, W = size
    head = (f"{'name':<12} {'paper':<50} {'params':>8} {'GMACs':>8} {'time/global':>11} "
            f"{f'runs {alt_size[0]}x{alt_size[1]}':>11}  notes")
    lines = [f"token mixers at C={dim} on {H}x{W} (batch 1, eval, no_grad; time = median forward relative to "
             f"'global', timed interleaved with it)", head, "-" * len(head)]
    for r in rows:
        gm = "-" if r.gmacs is None else f"{r.gmacs:.4f}"
        rt = "-" if r.rel_time is None else (f"{r.rel_time:.2f}x" if r.rel_time >= 0.1 else f"{r.rel_time:.3f}x")
        alt = "yes" if r.alt_size_ok else "no"
        notes = "; ".join(x for x in (r.alt_size_note, r.notes) if x)
        lines.append(f"{r.name:<12} {r.paper[:50]:<50} {r.params:>8,} {gm:>8} {rt:>11} {alt:>11}  {notes}")
    return "\n".join(lines)


def rows_as_dicts(rows: list[MixerRow]) -> list[dict]:
    return [asdict(r) for r in rows]
