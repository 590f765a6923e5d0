"""Tables and plots made from the JSON lines of ``msaconv bench op`` (never from hand-typed numbers)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable

TARGET = {"height": 56, "width": 56, "kernel": 7, "dilation": 1}
# the targets at that shape (the issue "Attention at the speed of convolution"): time over the roofline bound,
# and speed-up over global SDPA on the same 3,136 tokens
TARGET_BOUND = {"fwd": 3.0, "fwdbwd": 4.0}
TARGET_VS_GLOBAL = 15.0
LOCAL_PEERS = ("sdpa_masked", "flex", "flex_compiled")


def _key(r: dict) -> tuple:
    """A case: map, kernel, dilation, then batch, heads and head_dim (a file may append runs of several)."""
    return (r["height"], r["width"], r["kernel"], r["dilation"], r.get("batch"), r.get("heads"), r.get("head_dim"))


def _label(key: tuple, several: bool) -> str:
    """The map column: ``HxW``, with ``B.. h..xD`` when the file mixes batch / heads / head_dim."""
    h, w, _k, _d, batch, heads, head_dim = key
    return f"{h}x{w}" + (f" (B{batch}, {heads}x{head_dim})" if several else "")


def _ordered_impls(records: list[dict]) -> list[str]:
    seen: list[str] = []
    for r in records:
        if r.get("kind") == "op" and r["impl"] not in seen:
            seen.append(r["impl"])
    return seen


def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    if "median_ms" not in r:
        why = r.get("skipped", "")
        if "longer than" in why or "took" in why:
            return "slow"
        if "GB" in why:
            return "mem"
        return "n/a"
    s = f"{r['median_ms']:.3g}"
    if r.get("runs", 0) == 1:
        s += "*"
    return s


def _summary(ops: list[dict], mems: list[dict]) -> list[str]:
    lines = []
    by = {(r["impl"], r["mode"], _key(r)[:4]): r for r in ops}
    tk = (TARGET["height"], TARGET["width"], TARGET["kernel"], TARGET["dilation"])
    glob = {}
    for r in ops:
        if r["impl"] == "sdpa_global" and "median_ms" in r:
            glob[(r["mode"], r["height"], r["width"])] = r
    for impl in sorted({r["impl"] for r in ops if r["impl"] not in ("sdpa_global",) + LOCAL_PEERS}):
        parts = []
        for mode, limit in TARGET_BOUND.items():
            cur = by.get((impl, mode, tk))
            if cur is None or "median_ms" not in cur:
                continue
            g = glob.get((mode, TARGET["height"], TARGET["width"]))
            speed = (f", {g['median_ms'] / cur['median_ms']:.1f}x faster than global SDPA "
                     f"({g['median_ms']:.0f} ms{', timed once' if g.get('runs') == 1 else ''}; target >= {TARGET_VS_GLOBAL:g}x)"
                     if g else ", global SDPA not timed here")
            p10 = f", p10 {cur['p10_ms'] / cur['bound_ms']:.2f}x" if cur.get("runs", 0) > 1 else ""
            if "ratio_to_local_bound" in cur:
                p10 += (f"; {cur['ratio_to_local_bound']:.2f}x the bound measured just before this case, "
                        f"{cur['local_bound_ms']:.2f} ms")
            parts.append(f"{mode} {cur['median_ms']:.2f} ms = {cur['ratio_to_bound']:.2f}x its bound "
                         f"({cur['bound_ms']:.2f} ms{p10}; target <= {limit:g}x){speed}")
        m = [x for x in mems if x["impl"] == impl and _key(x)[:4] == tk and "extra_over_output" in x]
        if m:
            parts.append(f"peak memory above inputs and output during forward = {m[0]['extra_over_output']:.2f}x "
                         f"the output size (target <= 2x)")
        if parts:
            lines.append(f"- **{impl}** at 56x56, k=7: " + "; ".join(parts) + ".")
    return lines


def markdown(records: Iterable[dict]) -> str:
    """The README table of an op-benchmark run: context, summary at the target shape, one table per mode."""
    records = list(records)
    ops = [r for r in records if r.get("kind") == "op"]
    mems = [r for r in records if r.get("kind") == "memory"]
    if not ops:
        return "No op records.\n"
    impls = _ordered_impls(records)
    out = _context(records, ops) + ["", HOW_TO_READ]
    out += ["", "### At the target shape (B=8, 4 heads x 32, 56x56, k=7, dilation 1)", ""]
    out += _summary(ops, mems) or ["(target shape not in this run)"]
    several = len({_key(r)[4:] for r in ops}) > 1
    for mode in ("fwd", "fwdbwd"):
        out += _time_table(mode, [r for r in ops if r["mode"] == mode], impls, several)
    out += _memory_table(mems, impls) + _legend(ops)
    return "\n".join(out) + "\n"


HOW_TO_READ = (
    "How to read: every implementation runs in its native layout (`cpu`: `[B, heads, head_dim, H, W]`; "
    "`portable`/`reference`: `[B, heads, H, W, head_dim]`; SDPA and FlexAttention: `[B, heads, N, head_dim]`). "
    "The msa_conv2d backends compute `border='zeros'`, the masked peers `border='mask'` (same cost). "
    "`fwd` runs under `no_grad`; `fwdbwd` adds the gradients of q, k and v. The bound is "
    "max(FLOPs / matmul peak, bytes / copy bandwidth) with FLOPs = 4*B*N*K*C (x3.5 for fwdbwd) and bytes = "
    "4*B*N*C*4 (8*B*N*C*4 for fwdbwd). `sdpa_global` does not depend on the window: one row per map size, "
    "shown on every row of that size.")


def _context(records: list[dict], ops: list[dict]) -> list[str]:
    """The command, the machine, its load during the run, the measured roofline and the CPU build."""
    roofs = [r for r in records if r.get("kind") == "roofline"]
    roof = next((r for r in roofs if r.get("case") is None), roofs[0] if roofs else None)
    build = next((r for r in records if r.get("kind") == "build"), None)
    first = ops[0]
    out = [f"Command: `{first['command']}`", "",
           f"torch {first['torch']}, {first['cpu']} ({first.get('cpu_capability', '?')}), {first['threads']} threads, "
           f"git {first['git_commit']}, {first['time_utc']}; dtype {first['dtype']}, batch {first['batch']}, "
           f"{first['heads']} heads x {first['head_dim']}."]
    loads = [r["loadavg_1m"] for r in ops if r.get("loadavg_1m") is not None]
    if loads:
        median = sorted(loads)[len(loads) // 2]
        threads = first.get("threads") or 1
        # the benchmark itself keeps `threads` cores busy: a load above that means other jobs were running
        busy = ("other jobs shared the cores, so compare ratios within this run, not absolute times"
                if median > threads + 0.5 else "no other job was busy (the load is the benchmark's own threads)")
        out.append(f"Machine load during the run (1-minute load average on {first.get('cpu_count', '?')} CPUs): "
                   f"{min(loads):.1f} to {max(loads):.1f}, median {median:.1f}; {busy}.")
    if roof:
        out.append(f"Roofline measured in the same run: fp32 matmul {roof['matmul_gflops']:.1f} GFLOP/s, copy "
                   f"{roof['copy_gbs']:.1f} GB/s (best of {roof['repeats']}).")
    local = [r for r in roofs if r.get("case") is not None]
    if local:
        gf = sorted(r["matmul_gflops"] for r in local)
        out.append(f"Roofline re-measured before each of {len(local)} cases: matmul {gf[0]:.1f} to {gf[-1]:.1f} "
                   f"GFLOP/s (the load drifts); the bound column uses the first measurement.")
    if build:
        out.append(f"cpu backend: {build['cpu_backend']}.")
    return out


def _case_order(k: tuple) -> tuple:
    return (k[0] * k[1], k[2], k[3], k[0])


def _time_table(mode: str, rows: list[dict], impls: list[str], several: bool) -> list[str]:
    """One mode's median times per case and implementation, with the best local one over the bound."""
    if not rows:
        return []
    title = "forward" if mode == "fwd" else "forward + backward"
    out = ["", f"### {title}: median ms (p10-p90 in the JSON lines); bound = roofline bound of the call", "",
           "| map | k | d | bound ms | " + " | ".join(impls) + " | best local / bound |",
           "|---|---|---|---|" + "---|" * len(impls) + "---|"]
    by = {(r["impl"], _key(r)): r for r in rows}
    glob_by_size = {(r["height"], r["width"]): r for r in rows if r["impl"] == "sdpa_global"}
    for ck in sorted({_key(r) for r in rows}, key=_case_order):
        h, w, k, d = ck[:4]
        any_r = next(r for r in rows if _key(r) == ck)
        cells = []
        best = None
        for impl in impls:
            r = glob_by_size.get((h, w)) if impl == "sdpa_global" else by.get((impl, ck))
            cells.append(_cell(r))
            if r is not None and "median_ms" in r and impl != "sdpa_global" and r.get("runs", 0) > 1:
                best = r["median_ms"] if best is None else min(best, r["median_ms"])
        ratio = f"{best / any_r['bound_ms']:.2f}x" if best is not None else ""
        out.append(f"| {_label(ck, several)} | {k} | {d} | {any_r['bound_ms']:.3g} | " + " | ".join(cells) + f" | {ratio} |")
    return out


def _memory_table(mems: list[dict], impls: list[str]) -> list[str]:
    """Peak forward memory above the inputs, in units of the output, per case and implementation."""
    if not mems:
        return []
    out = ["", "### forward: peak memory above the inputs, in units of the output size (RSS high-water mark "
           "of a child process; 1.0 = the output alone)", ""]
    mimpls = [i for i in impls if any(m["impl"] == i for m in mems)]
    out += ["| map | k | d | output MB | " + " | ".join(mimpls) + " |", "|---|---|---|---|" + "---|" * len(mimpls)]
    by = {(m["impl"], _key(m)): m for m in mems}
    for ck in sorted({_key(m) for m in mems}, key=_case_order):
        h, w, k, d = ck[:4]
        any_m = next(m for m in mems if _key(m) == ck)
        cells = []
        for impl in mimpls:
            m = by.get((impl, ck))
            cells.append("" if m is None else ("err" if "peak_bytes_above_inputs" not in m else
                                               f"{m['peak_bytes_above_inputs'] / m['output_bytes']:.2f}"))
        out.append(f"| {h}x{w} | {k} | {d} | {any_m['output_bytes'] / 2 ** 20:.1f} | " + " | ".join(cells) + " |")
    return out


def _legend(ops: list[dict]) -> list[str]:
    """Why cases were skipped, and FlexAttention's compile times."""
    out: list[str] = []
    skipped = sorted({(r["impl"], r["mode"], r["skipped"]) for r in ops if "skipped" in r})
    if skipped:
        out += ["", "Legend: `*` = slower than `--max-call-s`, timed once; `slow` = a smaller case already was; "
                "`mem` = would not fit `--max-mem-gb`; `n/a` = cannot run. Reasons given:", ""]
        reasons = defaultdict(set)
        for impl, mode, why in skipped:
            if "smaller case" in why or "GB" in why:
                continue
            reasons[(impl, why)].add(mode)
        for (impl, why), modes in sorted(reasons.items()):
            out.append(f"- {impl} ({', '.join(sorted(modes))}): {why}")
    compiles = [r for r in ops if "compile_s" in r]
    if compiles:
        out += ["", "FlexAttention compile time (first call, excluded from the times above): " +
                ", ".join(f"{r['height']}x{r['width']} k{r['kernel']}: {r['compile_s']:.1f} s" for r in compiles) + "."]
    return out


def plot(records: Iterable[dict], path: str | Path, kernel: int = 7, dilation: int = 1) -> Path:
    """Time vs map size (tokens), log-log, one line per implementation, forward and forward+backward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    ops = [r for r in records if r.get("kind") == "op" and "median_ms" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, mode in zip(axes, ("fwd", "fwdbwd")):
        rows = [r for r in ops if r["mode"] == mode and (r["impl"] == "sdpa_global" or
                                                         (r["kernel"], r["dilation"]) == (kernel, dilation))]
        for i, impl in enumerate(_ordered_impls(records)):
            pts = sorted((r["tokens"], r["median_ms"], r.get("runs", 0) == 1) for r in rows if r["impl"] == impl)
            if pts:  # one colour per implementation in both panels
                line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl, color=f"C{i % 10}")
                once = [p for p in pts if p[2]]
                if once:  # slower than --max-call-s: a single call, drawn hollow
                    ax.plot([p[0] for p in once], [p[1] for p in once], "o", mfc="white", mec=line.get_color())
        bound = sorted({(r["tokens"], r["bound_ms"]) for r in rows if r["impl"] != "sdpa_global"})
        if bound:
            ax.plot(*zip(*bound), "k--", label="roofline bound")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("map size H*W (tokens)")
        ax.set_title(f"{'forward' if mode == 'fwd' else 'forward + backward'}, k={kernel}, dilation {dilation}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median time per call (ms); hollow = timed once")
    for ax in axes:
        ax.legend(fontsize=8)
    if ops:
        r = ops[0]
        fig.suptitle(f"msa_conv2d, B={r['batch']}, {r['heads']} heads x {r['head_dim']}, {r['dtype']}, "
                     f"{r['threads']} threads, {r['cpu']}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
