"""Issue 20's device check: the triton backend on one GPU, checked against the reference, then timed.

Phases, in order of priority, all under one deadline (``--budget-s``; a job that would not fit is recorded
as skipped, so the run always ends with its files written):

1. ``check``: replayable cases of tests/ops/cases.py (and the target shape) on CUDA against the float64
   reference on the same rounded inputs, forward and every gradient, both backward variants: max error
   relative to each tensor's scale, within 1e-5 (float32) and 2e-2 (bfloat16).
2. ``op``: forward and forward+backward at B=8, 4 heads x 32, 56x56, k=7 (the target) and at tic_tiny's
   224-px stage shapes (56/28/14/7 px, 2/4/8/16 heads of 32, k=7, 16 IPM keys), bfloat16 and float32:
   the triton backend (deterministic and atomic backward), the portable backend, SDPA over all tokens
   and compiled FlexAttention with a neighbourhood block mask (its compile times as separate records).
3. ``model``: a tic_tiny training step (batch 32, 224 px, bfloat16 autocast, SGD) on triton and portable.
4. ``tiles``: the forward at the target shape over a few tile sizes and warp counts (for tuning).

Writes ``<out>/<gpu>.jsonl`` (one JSON object per line, appended as they come) and ``<out>/<gpu>.md``
(tables with the GPU's name and % of its peak). Run from the repository root (``bash benchmarks/gpu/run.sh``);
needs torch with CUDA, triton and ``pip install --no-deps -e .``; downloads nothing. ``--dry-run`` runs
the plan, the writer and the tables with synthetic numbers and no GPU (tests/bench/test_gpu_script.py).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import re
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("check", "op", "model", "tiles")
#: published dense peaks: bfloat16 tensor-core FLOP/s, float32 CUDA-core FLOP/s, HBM bytes/s (first match wins)
PEAKS = [
    ("H200", dict(bf16=989e12, fp32=67e12, bandwidth=4.8e12)),
    ("H100 PCIe", dict(bf16=756e12, fp32=51e12, bandwidth=2.0e12)),
    ("H100", dict(bf16=989e12, fp32=67e12, bandwidth=3.35e12)),
    ("GH200", dict(bf16=989e12, fp32=67e12, bandwidth=4.0e12)),
    ("A100", dict(bf16=312e12, fp32=19.5e12, bandwidth=2.0e12)),
    ("L40S", dict(bf16=362e12, fp32=91.6e12, bandwidth=0.864e12)),
    ("A10G", dict(bf16=70e12, fp32=31.2e12, bandwidth=0.6e12)),
]
TOL = {"float32": 1e-5, "bfloat16": 2e-2}
#: where the real jobs run: "cuda", or "cpu" for ``--smoke`` (tiny shapes, Triton's interpreter, eager FlexAttention)
DEVICE = "cuda"


@dataclass(frozen=True)
class Shape:
    """One op benchmark shape: ``[B, heads, H, W, head_dim]``, a k x k window, M extra keys."""

    label: str
    batch: int
    heads: int
    size: int
    head_dim: int = 32
    kernel: int = 7
    extra: int = 0
    layout: str = "bhwd"
    border: str = "zeros"

    @property
    def tokens(self) -> int:
        return self.size * self.size

    def flops(self, mode: str) -> float:
        """Useful FLOPs of the task (the op's FLOP formula): 4*B*h*P*(K+M)*D forward, 3x with the backward."""
        fwd = 4.0 * self.batch * self.heads * self.tokens * (self.kernel ** 2 + self.extra) * self.head_dim
        return fwd if mode == "fwd" else 3.0 * fwd

    def bytes(self, mode: str, elem: int) -> float:
        """The least memory traffic: read q, k, v (+ extras), write out; the backward reads q, k, v, out,
        dout and writes dq, dk, dv."""
        plane = self.batch * self.heads * self.tokens * self.head_dim * elem
        extra = 2 * self.batch * self.heads * self.extra * self.head_dim * elem
        fwd = 4 * plane + extra
        return fwd if mode == "fwd" else fwd + 8 * plane + 2 * extra


def target_shapes(batch: int) -> list[Shape]:
    """The issue's target, then tic_tiny's four stages at 224 px (channels-first, as MSAttention2d calls it)."""
    out = [Shape("target 56x56 h4", batch, 4, 56)]
    for size, heads in ((56, 2), (28, 4), (14, 8), (7, 16)):
        out.append(Shape(f"tic_tiny {size}x{size} h{heads} M16", batch, heads, size, extra=16, layout="bhdhw"))
    return out


# ------------------------------------------------------------------------------------------------------
# records: JSON lines and the markdown tables


class Records:
    """Appends each record to a JSON-lines file as it comes (a killed run keeps what it measured)."""

    def __init__(self, path: Path, context: dict):
        self.path = path
        self.context = context
        self.items: list[dict] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("a")

    def add(self, kind: str, **fields: Any) -> dict:
        rec = {"kind": kind, **fields, "run": self.context.get("run")}
        self.items.append(rec)
        self._f.write(json.dumps(rec, default=str) + "\n")
        self._f.flush()
        return rec

    def close(self) -> None:
        self._f.close()


def _fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render_markdown(records: list[dict]) -> str:
    """The tables of one run: environment, check summary, op times, compile times, model step, tiles."""
    env = next((r for r in records if r["kind"] == "env"), {})
    lines = [f"# msa_conv2d on {env.get('gpu', '?')}: the triton backend (issue 20)", ""]
    lines.append(f"- GPU: **{env.get('gpu', '?')}** (compute capability {env.get('capability', '?')}, "
                 f"{env.get('memory_gib', '?')} GiB); torch {env.get('torch', '?')}, triton {env.get('triton', '?')}, "
                 f"msaconv {env.get('commit', '?')}; {env.get('date', '?')}")
    peaks = env.get("peaks") or {}
    if peaks:
        lines.append(f"- peaks for %: bfloat16 {peaks.get('bf16', 0) / 1e12:.0f} TFLOP/s (dense tensor cores), "
                     f"float32 {peaks.get('fp32', 0) / 1e12:.1f} TFLOP/s (CUDA cores), HBM "
                     f"{peaks.get('bandwidth', 0) / 1e12:.2f} TB/s (published); measured copy bandwidth "
                     f"{(env.get('measured_bandwidth') or 0) / 1e12:.2f} TB/s")
    else:
        lines.append("- peaks: this GPU is not in bench_gpu.PEAKS; % of peak left out")
    if env.get("dry_run"):
        lines.append("- **dry run: synthetic numbers, no GPU**")
    lines.append("")

    checks = [r for r in records if r["kind"] == "check"]
    if checks:
        lines += ["## Check against the reference", "",
                  "| dtype | backward | cases | agree | worst error / scale | tolerance |", "| --- | --- | --- | --- | --- | --- |"]
        groups: dict[tuple, list[dict]] = {}
        for r in checks:
            groups.setdefault((r["dtype"], r["backward"]), []).append(r)
        for (dtype, bwd), rs in sorted(groups.items()):
            ok = sum(bool(r["ok"]) for r in rs)
            worst = max((r["worst"] for r in rs if r.get("worst") is not None), default=None)
            lines.append(f"| {dtype} | {bwd} | {len(rs)} | {ok} | {'-' if worst is None else f'{worst:.1e}'} | "
                         f"{rs[0]['tol']:.0e} |")
        bad = [r for r in checks if not r["ok"]]
        for r in bad[:20]:
            lines.append(f"- FAILED {r['case']} {r['dtype']} {r['backward']}: {r.get('error') or r.get('errors')}")
        lines.append("")

    ops = [r for r in records if r["kind"] == "op"]
    if ops:
        lines += ["## Op times (median ms; CUDA-graph replay in brackets where captured)", "",
                  "x portable / x flex: how many times faster the triton backend's row is than that peer, same "
                  "shape, dtype and mode. % FLOP and % BW: the task's useful FLOPs (4*B*h*P*(K+M)*D, 3x with the "
                  "backward) and least bytes over the time, against the peaks above.", "",
                  "| shape | dtype | mode | impl | ms | x portable | x flex | % FLOP | % BW |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        by_key: dict[tuple, dict[str, dict]] = {}
        for r in ops:
            by_key.setdefault((r["shape"], r["dtype"], r["mode"]), {})[r["impl"]] = r
        for (shape, dtype, mode), impls in by_key.items():
            base = impls.get("portable", {}).get("median_ms")
            flex = impls.get("flex", {}).get("median_ms")
            for name, r in impls.items():
                t = r.get("median_ms")
                vs_p = f"{base / t:.1f}" if (t and base and name.startswith("triton")) else ""
                vs_f = f"{flex / t:.2f}" if (t and flex and name.startswith("triton")) else ""
                ms = _fmt_ms(t) if t is not None else f"skipped: {r.get('skipped', '?')}"
                if r.get("graph_ms") is not None:
                    ms += f" [{_fmt_ms(r['graph_ms'])}]"
                lines.append(f"| {shape} | {dtype} | {mode} | {name} | {ms} | {vs_p} | {vs_f} | "
                             f"{_pct(r.get('flop_frac'))} | {_pct(r.get('bw_frac'))} |")
        lines.append("")

    for r in (r for r in records if r["kind"] == "peer_check"):
        lines += [f"FlexAttention's neighbourhood mask against our border='mask' ({r['shape']}, bfloat16): max error "
                  f"{r['rel_err']:.1e} of the output scale ({'agree' if r['ok'] else 'DISAGREE'}).", ""]

    comp = [r for r in records if r["kind"] == "compile"]
    if comp:
        lines += ["## Compile times (first call minus a steady call, s)", "", "| what | shape | dtype | forward | backward |",
                  "| --- | --- | --- | --- | --- |"]
        for r in comp:
            lines.append(f"| {r['impl']} | {r['shape']} | {r['dtype']} | {r.get('fwd_s', '-')} | {r.get('bwd_s', '-')} |")
        lines.append("")

    model = [r for r in records if r["kind"] == "model"]
    if model:
        lines += ["## tic_tiny training step (batch 32, 224 px, bfloat16 autocast, SGD)", "",
                  "| backend | backward | step ms (median) | images/s | first step s | peak memory GiB |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in model:
            if r.get("median_ms") is None:
                lines.append(f"| {r['backend']} | {r.get('backward', '-')} | skipped: {r.get('skipped', '?')} | | | |")
                continue
            lines.append(f"| {r['backend']} | {r.get('backward', '-')} | {_fmt_ms(r['median_ms'])} | "
                         f"{r['images_per_s']:.0f} | {r['first_step_s']:.1f} | {r['peak_mem_gib']:.1f} |")
        lines.append("")

    tiles = [r for r in records if r["kind"] == "tiles"]
    if tiles:
        lines += ["## Forward tile sweep at the target shape (bfloat16)", "", "| query tile | key chunk | warps | ms |",
                  "| --- | --- | --- | --- |"]
        for r in tiles:
            lines.append(f"| {r['query_tile']} | {r['key_chunk']} | {r['warps']} | "
                         f"{_fmt_ms(r.get('median_ms')) if r.get('median_ms') else r.get('skipped', '-')} |")
        lines.append("")

    skipped = [r for r in records if r["kind"] == "skipped"]
    if skipped:
        lines += ["## Skipped", ""] + [f"- {r['what']}: {r['why']}" for r in skipped] + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# the plan


@dataclass
class Job:
    phase: str
    what: str
    est_s: float
    run: Callable[[], None]
    until: float = 1.0  # may start only while less than this fraction of the budget is spent


class Deadline:
    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        return self.end - time.monotonic()


def gpu_peaks(name: str) -> dict | None:
    for key, peaks in PEAKS:
        if key.lower() in name.lower():
            return dict(peaks)
    return None


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="issue 20's GPU check and benchmark of the triton backend")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu" / "results"), help="results folder")
    p.add_argument("--budget-s", type=float, default=250.0, help="stop starting jobs after this many seconds")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {', '.join(PHASES)}")
    p.add_argument("--batch", type=int, default=8, help="batch of the op benchmarks")
    p.add_argument("--model-batch", type=int, default=32, help="batch of the tic_tiny training step")
    p.add_argument("--check-cases", type=int, default=60, help="replayable cases checked in float32 (a third in bf16)")
    p.add_argument("--dry-run", action="store_true", help="no GPU: synthetic numbers through the plan, writer, tables")
    p.add_argument("--smoke", action="store_true",
                   help="no GPU: every real job once on CPU tensors at tiny shapes (needs TRITON_INTERPRET=1)")
    args = p.parse_args(argv)
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    bad = [x for x in phases if x not in PHASES]
    if bad or not phases:
        p.error(f"--phases: unknown {bad or phases}; choose from {', '.join(PHASES)}")
    args.phases = phases
    if args.dry_run and args.smoke:
        p.error("--dry-run and --smoke exclude each other")
    if args.budget_s <= 0 or args.batch < 1 or args.model_batch < 1 or args.check_cases < 0:
        p.error("--budget-s, --batch and --model-batch must be positive, --check-cases >= 0")
    return args


def _check_cases(n: int) -> list:
    sys.path.insert(0, str(ROOT))
    from tests.ops.cases import Case, random_cases

    cases = random_cases(200, seed=0)[:n]
    cases.append(Case(990, 2, 4, 56, 56, 32, (7, 7), (1, 1), (1, 1), "zeros", 16, 990))  # the target shape + IPM keys
    cases.append(Case(991, 1, 2, 14, 15, 128, (7, 7), (2, 1), (2, 1), "clamp", 4, 991))  # head_dim 128
    return cases


# ------------------------------------------------------------------------------------------------------
# GPU work (imported lazily: the dry run needs no CUDA)


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


class _WallEvent:
    """``torch.cuda.Event``'s interface on the host clock (``--smoke``)."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, other: "_WallEvent") -> float:
        return (other.t - self.t) * 1e3


def _event():
    import torch

    return torch.cuda.Event(enable_timing=True) if DEVICE == "cuda" else _WallEvent()


def time_cuda(fn: Callable[[], Any], budget_s: float = 0.4, min_reps: int = 5, max_reps: int = 30) -> dict:
    """Median/p10/p90 ms per call; each sample times enough back-to-back calls to last ~2 ms."""
    if DEVICE != "cuda":
        min_reps, max_reps, budget_s = 1, 2, 0.0
    fn()
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    one = time.perf_counter() - t0
    inner = max(1, min(50, int(2e-3 / max(one, 1e-6))))
    samples: list[float] = []
    end = time.perf_counter() + budget_s
    while len(samples) < min_reps or (time.perf_counter() < end and len(samples) < max_reps):
        a, b = _event(), _event()
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b) / inner)
    samples.sort()
    q = lambda f: samples[min(len(samples) - 1, int(f * len(samples)))]  # noqa: E731
    return {"median_ms": q(0.5), "p10_ms": q(0.1), "p90_ms": q(0.9), "samples": len(samples), "inner": inner}


def time_graph(fn: Callable[[], Any]) -> float | None:
    """ms per replay of ``fn`` captured in a CUDA graph (no Python in the loop), or None if capture fails."""
    import torch

    if DEVICE != "cuda":
        return None
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        return time_cuda(g.replay, budget_s=0.2)["median_ms"]
    except Exception:
        return None


def _rel_errors(got: list, want: list) -> list[float]:
    out = []
    for a, b in zip(got, want):
        scale = b.double().abs().max().clamp_min(0.1)
        out.append(float((a.double() - b.double()).abs().max() / scale))
    return out


def check_job(rec: Records, case, dtype_name: str, deterministic: bool) -> None:
    import torch

    from msaconv.ops import msa_conv2d
    from msaconv.ops.backends import triton as tb

    dtype = getattr(torch, dtype_name)
    base = [None if t is None else t.to(DEVICE) for t in case.tensors(torch.float64, requires_grad=False)]
    ins = [None if t is None else t.to(dtype).requires_grad_() for t in base]
    ref = [None if t is None else t.detach().double().requires_grad_() for t in ins]

    def run(ts, backend):
        q, k, v, ek, ev = ts
        out = msa_conv2d(q, k, v, extra_k=ek, extra_v=ev, backend=backend, **case.kwargs())
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(case.seed + 1), dtype=torch.float64)
        grads = torch.autograd.grad(out, [t for t in ts if t is not None], g.to(out.device, out.dtype))
        return [out.detach(), *grads]

    want = run(ref, "reference")
    tb.BACKEND.deterministic = deterministic
    try:
        got = run(ins, "triton")
    finally:
        tb.BACKEND.deterministic = None
    errs = _rel_errors(got, want)
    names = ["out", "dq", "dk", "dv", "d_extra_k", "d_extra_v"][: len(errs)]
    worst = max(errs)
    rec.add("check", case=case.id, dtype=dtype_name, backward="deterministic" if deterministic else "atomic",
            errors=dict(zip(names, errs)), worst=worst, tol=TOL[dtype_name], ok=bool(worst <= TOL[dtype_name]))


def _inputs(shape: Shape, dtype, grad: bool):
    import torch

    B, h, S, D = shape.batch, shape.heads, shape.size, shape.head_dim
    g = torch.Generator(device=DEVICE).manual_seed(0)
    mk = (lambda *s: torch.randn(*s, device=DEVICE, generator=g).to(dtype).requires_grad_(grad))
    if shape.layout == "bhwd":
        q, k, v = (mk(B, h, S, S, D) for _ in range(3))
    else:
        q, k, v = (mk(B, h, D, S, S) for _ in range(3))
    ek = ev = None
    if shape.extra:
        ek, ev = (mk(B, h, shape.extra, D) for _ in range(2))
    return q, k, v, ek, ev


def _flat(shape: Shape, q, k, v, ek, ev):
    """``[B, h, N(+M), D]`` contiguous copies for the token-sequence peers (outside the timed region)."""
    import torch

    def seq(t):
        if shape.layout == "bhdhw":
            t = t.permute(0, 1, 3, 4, 2)
        return t.reshape(shape.batch, shape.heads, shape.tokens, shape.head_dim)

    qf, kf, vf = seq(q), seq(k), seq(v)
    if ek is not None:
        kf, vf = torch.cat([kf, ek], 2), torch.cat([vf, ev], 2)
    return [t.detach().contiguous().requires_grad_(q.requires_grad) for t in (qf, kf, vf)]


def _neighbourhood_mask(shape: Shape):
    """FlexAttention block mask: |dy|, |dx| <= k//2 (our border='mask'), plus every extra key."""
    from torch.nn.attention.flex_attention import create_block_mask

    W, N, r = shape.size, shape.tokens, shape.kernel // 2

    def mask_mod(b, h, q_idx, kv_idx):
        near = ((q_idx // W - kv_idx // W).abs() <= r) & ((q_idx % W - kv_idx % W).abs() <= r)
        return near | (kv_idx >= N)

    return create_block_mask(mask_mod, None, None, N, N + shape.extra, device=DEVICE)


_FLEX: dict = {}


def _compiled_flex():
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if DEVICE == "cuda" else flex_attention  # eager: --smoke


def op_job(rec: Records, shape: Shape, dtype_name: str, mode: str, impl: str, peaks: dict | None) -> None:
    import torch
    import torch.nn.functional as F

    from msaconv.ops import msa_conv2d
    from msaconv.ops.backends import triton as tb

    dtype = getattr(torch, dtype_name)
    grad = mode == "fwdbwd"
    q, k, v, ek, ev = _inputs(shape, dtype, grad)
    extra: dict = {}
    if impl.startswith("triton") or impl == "portable":
        backend = "triton" if impl.startswith("triton") else "portable"

        def f():
            return msa_conv2d(q, k, v, shape.kernel, border=shape.border, extra_k=ek, extra_v=ev, backend=backend,
                              layout=shape.layout)
        inputs = [t for t in (q, k, v, ek, ev) if t is not None]
    else:
        qf, kf, vf = _flat(shape, q, k, v, ek, ev)
        inputs = [qf, kf, vf]
        if impl == "sdpa":
            def f():
                return F.scaled_dot_product_attention(qf, kf, vf)
        else:  # flex
            from torch.nn.attention.flex_attention import flex_attention

            key = (shape, dtype_name)
            if key not in _FLEX:
                t0 = time.perf_counter()
                bm = _neighbourhood_mask(shape)
                mask_s = time.perf_counter() - t0
                _FLEX[key] = (_compiled_flex(), bm, mask_s)
            flex, bm, mask_s = _FLEX[key]

            def f():
                return flex(qf, kf, vf, block_mask=bm)
            extra["block_mask_s"] = round(mask_s, 3)
    if grad:
        gout = torch.randn_like(f())

        def step():
            return torch.autograd.grad(f(), inputs, gout)
    else:
        def step():
            return f()

    tb.BACKEND.deterministic = impl != "triton-atomic"
    try:
        t0 = time.perf_counter()
        step()
        _sync()
        first_s = time.perf_counter() - t0
        timing = time_cuda(step)
        if impl == "flex":
            steady = timing["median_ms"] / 1e3
            rec.add("compile", impl="flex", shape=shape.label, dtype=dtype_name,
                    **({"bwd_s": round(first_s - steady, 2)} if grad else {"fwd_s": round(first_s - steady, 2)}))
        graph_ms = time_graph(step) if mode == "fwd" else None
    finally:
        tb.BACKEND.deterministic = None
    t = timing["median_ms"] / 1e3
    elem = 2 if dtype_name == "bfloat16" else 4
    flop_frac = bw_frac = None
    if peaks:
        flop_frac = shape.flops(mode) / t / peaks["bf16" if dtype_name == "bfloat16" else "fp32"]
        bw_frac = shape.bytes(mode, elem) / t / peaks["bandwidth"]
    rec.add("op", shape=shape.label, dtype=dtype_name, mode=mode, impl=impl, **timing, graph_ms=graph_ms,
            first_call_s=round(first_s, 3), flop_frac=flop_frac, bw_frac=bw_frac, shape_fields=asdict(shape),
            **extra)


def peer_check_job(rec: Records, shape: Shape) -> None:
    """FlexAttention's neighbourhood mask computes our border='mask': the two agree (bfloat16)."""
    import torch

    from msaconv.ops import msa_conv2d

    q, k, v, ek, ev = _inputs(shape, torch.bfloat16, False)
    ours = msa_conv2d(q, k, v, shape.kernel, border="mask", extra_k=ek, extra_v=ev, backend="triton", layout=shape.layout)
    qf, kf, vf = _flat(shape, q, k, v, ek, ev)
    from torch.nn.attention.flex_attention import flex_attention

    flex, bm, _ = _FLEX.get((shape, "bfloat16"), (_compiled_flex(), _neighbourhood_mask(shape), 0))
    theirs = flex(qf, kf, vf, block_mask=bm)
    if shape.layout == "bhdhw":
        ours = ours.permute(0, 1, 3, 4, 2)
    ours = ours.reshape(theirs.shape)
    err = float((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max())
    rec.add("peer_check", shape=shape.label, peer="flex", border="mask", rel_err=err, ok=err < 2e-2)


def model_job(rec: Records, backend: str, batch: int, deterministic: bool | None) -> None:
    import torch
    import torch.nn.functional as F

    import msaconv
    from msaconv.ops.backends import triton as tb

    torch.manual_seed(0)
    size = 224 if DEVICE == "cuda" else 32
    model = msaconv.create_model("tic_tiny", backend=backend).to(DEVICE).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=DEVICE)
    y = torch.randint(0, 1000, (batch,), device=DEVICE)

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    tb.BACKEND.deterministic = deterministic
    cuda = DEVICE == "cuda"
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        step()
        _sync()
        first = time.perf_counter() - t0
        timing = time_cuda(step, budget_s=2.0, min_reps=3, max_reps=10)
    finally:
        tb.BACKEND.deterministic = None
    rec.add("model", model="tic_tiny", backend=backend,
            backward="-" if backend != "triton" else ("deterministic" if deterministic else "atomic"),
            batch=batch, **timing, images_per_s=batch / (timing["median_ms"] / 1e3), first_step_s=first,
            peak_mem_gib=torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else 0.0, image_size=size)


def tiles_job(rec: Records, shape: Shape, query_tile: int, key_chunk: int, warps: int) -> None:
    import torch

    from msaconv.ops import msa_conv2d
    from msaconv.ops.backends import triton as tb

    q, k, v, _, _ = _inputs(shape, torch.bfloat16, False)
    old = (tb.QUERY_TILE, tb.KEY_CHUNK, tb.NUM_WARPS)
    tb.QUERY_TILE, tb.KEY_CHUNK, tb.NUM_WARPS = query_tile, key_chunk, warps
    try:
        timing = time_cuda(lambda: msa_conv2d(q, k, v, shape.kernel, backend="triton", layout=shape.layout))
    finally:
        tb.QUERY_TILE, tb.KEY_CHUNK, tb.NUM_WARPS = old
    rec.add("tiles", shape=shape.label, query_tile=query_tile, key_chunk=key_chunk, warps=warps, **timing)


def environment(dry_run: bool, smoke: bool = False) -> dict:
    env: dict = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "python": platform.python_version(), "command": " ".join(sys.argv), "dry_run": dry_run,
                 "smoke": smoke}
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        env["torch"] = None
    try:
        sys.path.insert(0, str(ROOT / "src"))
        from msaconv.bench.common import git_commit

        env["commit"] = git_commit(ROOT)
    except Exception:
        env["commit"] = "unknown"
    if dry_run:
        env.update(gpu="dry-run (no GPU)", capability="-", memory_gib=0, triton="-", peaks=dict(PEAKS[0][1]),
                   measured_bandwidth=None)
        return env
    import torch

    if smoke:
        import triton

        env.update(gpu="cpu smoke (Triton interpreter)", capability="-", memory_gib=0, triton=triton.__version__,
                   peaks=None, measured_bandwidth=None)
        return env

    props = torch.cuda.get_device_properties(0)
    env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2 ** 30),
               sms=props.multi_processor_count, peaks=gpu_peaks(props.name))
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    x = torch.empty(2 ** 28, dtype=torch.uint8, device="cuda")  # 256 MiB
    y = torch.empty_like(x)
    ms = time_cuda(lambda: y.copy_(x), budget_s=0.3)["median_ms"]
    env["measured_bandwidth"] = 2 * x.numel() / (ms / 1e3)
    return env


def plan(args: argparse.Namespace, rec: Records, peaks: dict | None) -> list[Job]:
    """Jobs in order of priority; ``until`` keeps time for what comes later (the model step)."""
    jobs: list[Job] = []
    shapes = target_shapes(args.batch)
    if DEVICE != "cuda":  # --smoke: the same jobs at toy sizes
        shapes = [Shape("smoke 8x8 h2", 1, 2, 8, head_dim=16, kernel=3),
                  Shape("smoke tic 6x6 h2 M4", 1, 2, 6, head_dim=16, kernel=3, extra=4, layout="bhdhw")]
    target, stages = shapes[0], shapes[1:]

    def op(shape: Shape, dtype_name: str, impls: tuple[str, ...], until: float) -> None:
        for mode in ("fwd", "fwdbwd"):
            for impl in impls:
                if impl == "triton-atomic" and mode == "fwd":
                    continue  # the same forward
                est = 45.0 if impl == "flex" else (6.0 if impl == "portable" else 2.0)
                jobs.append(Job("op", f"op {shape.label} {dtype_name} {mode} {impl}", est,
                                lambda s=shape, d=dtype_name, m=mode, i=impl: op_job(rec, s, d, m, i, peaks), until))

    if "check" in args.phases:
        cases = _check_cases(args.check_cases) if DEVICE == "cuda" else _check_cases(2)[:2]
        for c in cases:
            jobs.append(Job("check", f"check {c.id} float32", 1.5, lambda c=c: check_job(rec, c, "float32", True), 0.25))
        for c in cases[: max(1, len(cases) // 3)] + cases[-2:]:
            jobs.append(Job("check", f"check {c.id} bfloat16", 1.5, lambda c=c: check_job(rec, c, "bfloat16", True), 0.25))
        for c in cases[:: max(1, len(cases) // 10)]:
            jobs.append(Job("check", f"check {c.id} float32 atomic", 1.5,
                            lambda c=c: check_job(rec, c, "float32", False), 0.25))
    if "op" in args.phases:
        base = ("triton", "triton-atomic", "portable", "sdpa")
        op(target, "bfloat16", base + ("flex",), 0.62)
        jobs.append(Job("op", f"peer check flex {target.label}", 5.0, lambda: peer_check_job(rec, target), 0.62))
        op(target, "float32", base, 0.62)
        for shape in stages:
            op(shape, "bfloat16", base, 0.62)
    if "model" in args.phases and DEVICE != "cuda":  # the interpreter would take minutes over 18 blocks
        jobs.append(Job("model", "tic_tiny step portable", 40.0, lambda: model_job(rec, "portable", 2, None), 1.0))
    elif "model" in args.phases:
        jobs.append(Job("model", "tic_tiny step triton (atomic backward)", 25.0,
                        lambda: model_job(rec, "triton", args.model_batch, False), 0.92))
        jobs.append(Job("model", "tic_tiny step portable", 40.0,
                        lambda: model_job(rec, "portable", args.model_batch, None), 0.92))
        jobs.append(Job("model", "tic_tiny step triton (deterministic backward)", 15.0,
                        lambda: model_job(rec, "triton", args.model_batch, True), 0.92))
    if "op" in args.phases:  # what is left: float32 at the stages, FlexAttention's other compiles
        for shape in stages:
            op(shape, "float32", ("triton", "portable", "sdpa"), 1.0)
        op(target, "float32", ("flex",), 1.0)
        for shape in stages:
            op(shape, "bfloat16", ("flex",), 1.0)
    if "tiles" in args.phases:
        for qt, kc, w in ((64, 64, 4), (64, 64, 8), (128, 64, 4), (128, 64, 8), (64, 32, 4), (32, 64, 4), (128, 32, 8)):
            jobs.append(Job("tiles", f"tiles {qt}/{kc}/{w}", 4.0,
                            lambda qt=qt, kc=kc, w=w: tiles_job(rec, target, qt, kc, w), 1.0))
    return jobs


def _dry_record(rec: Records, job: Job, i: int, peaks: dict) -> None:
    """Synthetic numbers shaped like the real records (the writer and the tables see every kind)."""
    w = job.what.split()
    if job.phase == "check":
        dtype = w[2]
        rec.add("check", case=w[1], dtype=dtype, backward="atomic" if "atomic" in w else "deterministic",
                errors={"out": 1e-7}, worst=1e-7 * (1 + i % 3), tol=TOL[dtype], ok=True)
    elif job.phase == "op" and w[0] == "peer":
        rec.add("peer_check", shape=" ".join(w[3:]), peer="flex", border="mask", rel_err=1e-3, ok=True)
    elif job.phase == "op":
        impl, mode, dtype = w[-1], w[-2], w[-3]
        label = " ".join(w[1:-3])
        base = {"triton": 0.05, "triton-atomic": 0.045, "portable": 1.5, "sdpa": 0.4, "flex": 0.08}[impl]
        ms = base * (3 if mode == "fwdbwd" else 1) * (2 if dtype == "float32" else 1)
        if impl == "flex":
            rec.add("compile", impl="flex", shape=label, dtype=dtype, **({"bwd_s": 30.0} if mode == "fwdbwd" else {"fwd_s": 12.0}))
        rec.add("op", shape=label, dtype=dtype, mode=mode, impl=impl, median_ms=ms, p10_ms=ms * 0.95, p90_ms=ms * 1.05,
                samples=5, inner=1, graph_ms=ms * 0.8 if mode == "fwd" else None, first_call_s=0.1,
                flop_frac=0.1, bw_frac=0.2)
    elif job.phase == "model":
        backend = w[2]
        ms = 120.0 if backend == "triton" else 900.0
        rec.add("model", model="tic_tiny", backend=backend, backward="atomic" if "atomic" in job.what else
                ("deterministic" if backend == "triton" else "-"), batch=32, median_ms=ms, p10_ms=ms, p90_ms=ms,
                samples=3, inner=1, images_per_s=32 / (ms / 1e3), first_step_s=5.0, peak_mem_gib=10.0)
    elif job.phase == "tiles":
        qt, kc, wp = (int(x) for x in w[1].split("/"))
        rec.add("tiles", shape="target 56x56 h4", query_tile=qt, key_chunk=kc, warps=wp, median_ms=0.05 + 0.001 * i)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.budget_s)
    global DEVICE
    DEVICE = "cpu" if args.smoke else "cuda"
    if args.smoke:
        import os

        if os.environ.get("TRITON_INTERPRET") != "1":
            print("bench_gpu --smoke: set TRITON_INTERPRET=1 (Triton's interpreter runs the kernels on the CPU)",
                  file=sys.stderr)
            return 2
    elif not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("bench_gpu: no CUDA device (use --dry-run to check the script without one)", file=sys.stderr)
            return 2
    env = environment(args.dry_run, args.smoke)
    name = "dry-run" if args.dry_run else ("smoke" if args.smoke else _slug(env["gpu"]))
    out = Path(args.out)
    env["run"] = env["date"]
    jsonl = out / f"{name}.jsonl"
    rec = Records(jsonl, env)
    rec.add("env", **env)
    peaks = env.get("peaks")
    from msaconv.ops import backends

    jobs: list[Job] = []
    if not args.dry_run and "triton" not in backends.BACKENDS:
        rec.add("skipped", what="everything", why=f"the triton backend is unavailable: {backends.UNAVAILABLE.get('triton')}")
    else:
        jobs = plan(args, rec, peaks)
    start = time.monotonic()
    done = 0
    try:
        for i, job in enumerate(jobs):
            if args.dry_run:
                _dry_record(rec, job, i, peaks or {})
                done += 1
                continue
            spent = time.monotonic() - start
            if deadline.left() < job.est_s or spent + min(job.est_s, 5.0) > job.until * args.budget_s:
                rec.add("skipped", what=job.what, why=f"budget ({spent:.0f} s of {args.budget_s:.0f} s spent)")
                continue
            t0 = time.monotonic()
            try:
                job.run()
                done += 1
            except Exception as e:  # a failed job is a record, not the end of the run
                first = str(e).splitlines()[0][:300] if str(e) else ""
                rec.add("skipped", what=job.what, why=f"{type(e).__name__}: {first}")
                if job.phase == "check":
                    w = job.what.split()
                    rec.add("check", case=w[1], dtype=w[2], backward="atomic" if "atomic" in w else "deterministic",
                            errors={}, worst=None, tol=TOL[w[2]], ok=False, error=traceback.format_exc(limit=4)[-1200:])
            print(f"[{time.monotonic() - start:6.1f} s] {job.what} ({time.monotonic() - t0:.1f} s)", flush=True)
    except KeyboardInterrupt:  # run.sh's timeout: keep what was measured, still write the tables
        rec.add("skipped", what="the rest of the plan", why="interrupted (time limit)")
    rec.close()
    md = out / f"{name}.md"
    md.write_text(render_markdown(rec.items))
    checks = [r for r in rec.items if r["kind"] == "check"]
    failed = [r for r in checks if not r["ok"]]
    print(f"bench_gpu: {done}/{len(jobs)} jobs, {len(checks) - len(failed)}/{len(checks)} checks agree; "
          f"wrote {jsonl} and {md}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
