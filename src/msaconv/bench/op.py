"""The operator benchmark (design/benchmarks.md §1): every msa_conv2d backend beside its peers.

Implementations, all timed in the same run, in their native layouts:

- each backend of :data:`msaconv.ops.backends.BACKENDS` (``cpu``, ``portable``, ``reference``, ...),
  called through :func:`msaconv.ops.msa_conv2d` with ``border='zeros'`` (the default); ``<backend>@<layout>``
  (``cpu@bhwd``) calls it in another layout, e.g. ``bhwd``, msa_conv2d's default, where the backend's own is
  ``bhdhw``: what a user calling with default arguments pays;
- ``sdpa_global``: ``F.scaled_dot_product_attention`` over all ``N = H*W`` tokens (what MSA-Conv replaces);
- ``sdpa_masked``: the same with a boolean ``[N, N]`` window mask (= ``border='mask'``), where N^2 fits;
- ``flex`` / ``flex_compiled``: FlexAttention with a 2-D window ``mask_mod``, eager (dense on CPU) and under
  ``torch.compile`` (its compile time recorded apart); FlexAttention has no CPU backward: recorded as such.

Per case and mode (``fwd``: forward under ``no_grad``; ``fwdbwd``: forward + gradients of q, k, v) the
record holds the median and p10/p90 of >= 5 timed runs after warm-up, the roofline bound of the call
(``max(FLOPs/peak, bytes/bandwidth)`` with FLOPs = 4*B*N*K*C, bytes = 4*B*N*C*elt; x3.5 FLOPs and
8*B*N*C*elt bytes for fwdbwd) and, for ``fwd``, the peak memory above the inputs (RSS high-water mark of a
child process). A peer whose one call takes longer than ``max_call_s`` is timed once and larger cases of it
are skipped; one whose memory estimate exceeds ``max_mem_gb`` is skipped; every skip says why.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import common, memory

PEERS: tuple[str, ...] = ("sdpa_global", "sdpa_masked", "flex", "flex_compiled")
MODES: tuple[str, ...] = ("fwd", "fwdbwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def backend_names() -> list[str]:
    from ..ops import backends

    return list(backends.BACKENDS)


LAYOUTS: tuple[str, ...] = ("bhwd", "bhdhw")


def implementation_names() -> list[str]:
    """Every name ``--backends`` takes: the backends, each backend in each layout (``cpu@bhwd``), the peers."""
    return backend_names() + [f"{b}@{lay}" for b in backend_names() for lay in LAYOUTS] + list(PEERS)


def _backend_and_layout(impl: str) -> tuple[str, str | None]:
    """``'cpu@bhwd'`` -> ``('cpu', 'bhwd')``; ``'cpu'`` -> ``('cpu', None)``: the backend's own layout."""
    name, _, layout = impl.partition("@")
    return name, layout or None


@dataclass(frozen=True)
class Case:
    """One shape of the sweep (stride 1, square kernel and dilation, as benchmarks.md §1)."""

    height: int
    width: int
    kernel: int
    dilation: int
    batch: int = 8
    heads: int = 4
    head_dim: int = 32
    dtype: str = "float32"

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @property
    def channels(self) -> int:
        return self.heads * self.head_dim

    @property
    def elt(self) -> int:
        return torch.tensor([], dtype=DTYPES[self.dtype]).element_size()

    def flops(self, mode: str) -> float:
        f = 4.0 * self.batch * self.tokens * self.kernel ** 2 * self.channels
        return f * (3.5 if mode == "fwdbwd" else 1.0)

    def bytes_moved(self, mode: str) -> float:
        per = self.batch * self.tokens * self.channels * self.elt
        return (8.0 if mode == "fwdbwd" else 4.0) * per

    def output_bytes(self) -> int:
        return self.batch * self.tokens * self.channels * self.elt

    def label(self) -> str:
        return f"{self.height}x{self.width}-k{self.kernel}-d{self.dilation}"


@dataclass
class OpBenchConfig:
    """What ``msaconv bench op`` sweeps; the defaults are benchmarks.md §1."""

    sizes: list[tuple[int, int]] = field(default_factory=lambda: [(14, 14), (28, 28), (56, 56), (112, 112), (57, 43)])
    kernels: list[int] = field(default_factory=lambda: [3, 7, 13])
    dilations: list[int] = field(default_factory=lambda: [1, 2])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    implementations: list[str] | None = None  # None: every backend and every peer
    batch: int = 8
    heads: int = 4
    head_dim: int = 32
    dtype: str = "float32"
    runs: int = 5
    warmup: int = 2
    max_call_s: float = 2.0
    max_mem_gb: float = 4.0
    max_predicted_s: float = 30.0  # global SDPA beyond --max-call-s: timed once while predicted below this
    memory: bool = True
    flex_compile: str = "k7d1"  # which cases compile FlexAttention: 'all', 'k7d1' or 'none'
    threads: int | None = None
    seed: int = 0
    roofline_matmul_n: int = 2048  # benchmarks.md: 2048x2048 fp32 matmul and a 256 MB copy, best of 9
    roofline_copy_mb: int = 256
    roofline_per_case: bool = False  # also measure the roofline right before each case (local bound)

    def validate(self) -> None:
        """Fail before anything is measured, naming the option, the value and what to pass instead."""
        counts = {"--batch": (self.batch, "8"), "--heads": (self.heads, "4"), "--head-dim": (self.head_dim, "32"),
                  "--runs": (self.runs, "5 for results")}
        if self.threads is not None:
            counts["--threads"] = (self.threads, "2")
        for flag, (v, eg) in counts.items():
            if v < 1:
                raise ValueError(f"msaconv bench op: {flag} must be >= 1, got {v}; e.g. {flag} {eg}")
        lists = {"--sizes": ([x for hw in self.sizes for x in hw], "14,28,56 or 57x43"),
                 "--kernels": (self.kernels, "3,7"), "--dilations": (self.dilations, "1,2")}
        for flag, (vals, eg) in lists.items():
            bad = [v for v in vals if v < 1]
            if bad or not vals:
                got = bad[0] if bad else "nothing"
                raise ValueError(f"msaconv bench op: {flag} entries must be >= 1, got {got}; e.g. {flag} {eg}")
        if self.warmup < 0:
            raise ValueError(f"msaconv bench op: --warmup must be >= 0, got {self.warmup}; e.g. --warmup 2")

    def cases(self) -> list[Case]:
        out = [Case(h, w, k, d, self.batch, self.heads, self.head_dim, self.dtype)
               for (h, w) in self.sizes for k in self.kernels for d in self.dilations]
        return sorted(out, key=lambda c: (c.tokens * c.kernel ** 2, c.tokens, c.kernel, c.dilation, c.height))

    def impls(self) -> list[str]:
        return list(self.implementations) if self.implementations else backend_names() + list(PEERS)


class Skip(Exception):
    """An implementation that cannot run a case; the message says why."""


# ----------------------------------------------------------------------------------------------------------
# The implementations: each builds its inputs once and returns the call to time.

def _inputs(case: Case, layout: str, grad: bool, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, h, D, H, W = case.batch, case.heads, case.head_dim, case.height, case.width
    shape = {"bhdhw": (B, h, D, H, W), "bhwd": (B, h, H, W, D), "bhnd": (B, h, H * W, D)}[layout]
    return [torch.randn(shape, generator=g).to(DTYPES[case.dtype]).requires_grad_(grad) for _ in range(3)]


def window_mask(case: Case) -> torch.Tensor:
    """``[N, N]`` boolean: key j is in query i's window and inside the image (``border='mask'``)."""
    H, W, k, d = case.height, case.width, case.kernel, case.dilation
    reach = d * (k - 1) // 2
    ys, xs = torch.arange(H), torch.arange(W)

    def axis(n: torch.Tensor) -> torch.Tensor:
        off = n[None, :] - n[:, None] + reach  # [q, key]
        return (off >= 0) & (off <= d * (k - 1)) & (off % d == 0)

    return (axis(ys)[:, None, :, None] & axis(xs)[None, :, None, :]).reshape(H * W, H * W)


def _flex_mask_mod(case: Case):
    H, W, k, d = case.height, case.width, case.kernel, case.dilation
    reach, span = d * (k - 1) // 2, d * (k - 1)

    def mask_mod(b, h, q_idx, kv_idx):
        dy = kv_idx // W - q_idx // W + reach
        dx = kv_idx % W - q_idx % W + reach
        return (dy >= 0) & (dy <= span) & (dy % d == 0) & (dx >= 0) & (dx <= span) & (dx % d == 0)

    return mask_mod


def _runner(fn: Callable[[], torch.Tensor], inputs: list[torch.Tensor], mode: str) -> Callable[[], object]:
    if mode == "fwd":
        def call():
            with torch.no_grad():
                return fn()
        return call
    grad_out: list[torch.Tensor] = []

    def call():  # type: ignore[no-redef]  # the fwd+bwd variant of the runner above
        out = fn()
        if not grad_out:
            grad_out.append(torch.ones_like(out))
        return torch.autograd.grad(out, inputs, grad_out[0])
    return call


def estimate_bytes(impl: str, case: Case, mode: str) -> float:
    """A rough upper estimate of the extra memory of one call (to skip what cannot fit)."""
    B, h, D, N, K, elt = case.batch, case.heads, case.head_dim, case.tokens, case.kernel ** 2, case.elt
    bwd = 2.5 if mode == "fwdbwd" else 1.0
    if impl == "reference":
        return 4.0 * B * h * N * K * D * max(elt, 4) * bwd
    if impl in ("sdpa_masked", "flex"):
        return 3.0 * B * h * N * N * max(elt, 4) * bwd + N * N
    if impl == "sdpa_global":
        return 3.0 * B * h * N * D * 4 * bwd
    return 2.0 * B * h * N * (K + D) * 4 * bwd


def work(impl: str, case: Case) -> float:
    """What an implementation's cost grows with: N*K for the local ones, N^2 for the dense ones."""
    if impl in ("sdpa_global", "sdpa_masked", "flex", "flex_compiled"):
        return float(case.tokens) ** 2 * (1 + case.kernel * 1e-3)
    return float(case.tokens) * case.kernel ** 2


def setup(impl: str, case: Case, mode: str, seed: int = 0) -> tuple[Callable[[], object], dict]:
    """``(call, info)`` for one implementation, case and mode; raises :class:`Skip` with the reason."""
    info: dict = {}
    name, layout = _backend_and_layout(impl)
    if name in backend_names():
        from ..ops import backends, msa_conv2d
        from ..ops import check_msa_conv2d
        be = backends.BACKENDS[name]
        layout = layout or be.layout
        inputs = _inputs(case, layout, mode == "fwdbwd", seed)
        q, k, v = inputs
        pb = check_msa_conv2d("bench", q, k, v, case.kernel, case.dilation, 1, "zeros", None, None, None, layout)
        reason = be.can_run(pb)
        if reason is not None:
            raise Skip(reason)
        info["layout"] = layout
        fn = lambda: msa_conv2d(q, k, v, case.kernel, case.dilation, border="zeros", backend=name,  # noqa: E731
                                layout=layout)
        return _runner(fn, inputs, mode), info
    if impl in ("sdpa_global", "sdpa_masked"):
        inputs = _inputs(case, "bhnd", mode == "fwdbwd", seed)
        q, k, v = inputs
        mask = window_mask(case) if impl == "sdpa_masked" else None
        info["layout"] = "bhnd"
        fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
        return _runner(fn, inputs, mode), info
    if impl in ("flex", "flex_compiled"):
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except ImportError as e:
            raise Skip(f"FlexAttention is not in this torch ({e})") from None
        if mode == "fwdbwd":
            raise Skip("FlexAttention has no CPU backward in this torch (NotImplementedError)")
        inputs = _inputs(case, "bhnd", False, seed)
        q, k, v = inputs
        N = case.tokens
        t0 = time.perf_counter()
        block_mask = create_block_mask(_flex_mask_mod(case), None, None, N, N, device="cpu")
        info["block_mask_s"] = time.perf_counter() - t0
        info["layout"] = "bhnd"
        if impl == "flex":
            import warnings

            def fn():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return flex_attention(q, k, v, block_mask=block_mask)
            return _runner(fn, inputs, mode), info
        torch._dynamo.reset()
        compiled = torch.compile(flex_attention, dynamic=False, fullgraph=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            compiled(q, k, v, block_mask=block_mask)
        info["compile_s"] = time.perf_counter() - t0
        return _runner(lambda: compiled(q, k, v, block_mask=block_mask), inputs, mode), info
    raise Skip(f"unknown implementation {impl!r}")


def memory_setup(impl: str, case: dict, seed: int = 0):
    """The memory child's entry point: forward of ``impl`` on ``case``; info has the output size."""
    c = Case(**case)
    call, _ = setup(impl, c, "fwd", seed)
    return call, {"output_bytes": c.output_bytes()}


# ----------------------------------------------------------------------------------------------------------

def run_op_bench(cfg: OpBenchConfig, command: str | None = None, output: str | Path | None = None,
                 log: Callable[[str], None] = print) -> list[dict]:
    """Run the sweep; return the records (and append them to ``output`` as JSON lines as they come)."""
    cfg.validate()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    env = common.environment(command)
    impls = cfg.impls()
    _check_names(impls, cfg.modes)
    records: list[dict] = []

    def emit(rec: dict) -> None:
        rec = {**env, "loadavg_1m": common.load_average(), **rec}
        records.append(rec)
        if output is not None:
            common.write_jsonl(output, [rec])

    log(f"measuring the roofline (best of 9: {cfg.roofline_matmul_n}^2 fp32 matmul, {cfg.roofline_copy_mb} MB copy) ...")
    roof = common.measure_roofline(cfg.roofline_matmul_n, cfg.roofline_copy_mb)
    emit({"kind": "roofline", "case": None, **asdict(roof)})
    log(f"  matmul {roof.matmul_gflops:.1f} GFLOP/s, copy {roof.copy_gbs:.1f} GB/s")
    from ..ops.backends import cpu as cpu_backend

    emit({"kind": "build", "cpu_backend": cpu_backend.BACKEND.info()})

    too_slow: dict[tuple[str, str], tuple[float, float]] = {}  # (impl, mode) -> (work, seconds) of a slow call
    timed_fwd: list[tuple[str, Case]] = []
    for case in cfg.cases():
        local = None
        if cfg.roofline_per_case:  # the machine now: on a shared machine the load drifts during a sweep
            local = common.measure_roofline(cfg.roofline_matmul_n, cfg.roofline_copy_mb)
            emit({"kind": "roofline", "case": case.label(), **asdict(local)})
        for mode in cfg.modes:
            for impl in impls:
                if not _runs_on(impl, case, cfg):
                    continue
                rec = _op_record(impl, case, mode, roof, local)
                reason = _skip_reason(impl, case, mode, cfg, too_slow)
                if reason is None:
                    reason = _time_one(rec, impl, case, mode, cfg, too_slow)
                if reason is not None:
                    rec["skipped"] = reason
                elif mode == "fwd" and rec.get("runs", 0) > 1:
                    timed_fwd.append((impl, case))
                emit(rec)
                shown = f"{rec['median_ms']:9.2f} ms ({rec['ratio_to_bound']:6.1f}x bound)" if "median_ms" in rec \
                    else rec["skipped"][:70]
                log(f"  {case.label():<18} {mode:<6} {impl:<14} {shown}")

    if cfg.memory and timed_fwd:
        log(f"peak memory of {len(timed_fwd)} forward calls in a child process ...")
        for rec in _memory_records(timed_fwd, cfg.seed):
            emit(rec)
    return records


def _check_names(impls: list[str], modes: Sequence[str]) -> None:
    """Unknown implementations or modes fail before anything is measured, naming what exists."""
    from .._errors import unknown_name

    known = implementation_names()
    for name in impls:
        if name not in known:
            raise unknown_name("msaconv bench op", "implementation", name, known)
    for m in modes:
        if m not in MODES:
            raise unknown_name("msaconv bench op", "mode", m, MODES)


def _runs_on(impl: str, case: Case, cfg: OpBenchConfig) -> bool:
    """Whether ``impl`` has a record for ``case`` at all (global attention: one per map size; the compiled
    FlexAttention: where ``--flex-compile`` asks for it)."""
    if impl == "sdpa_global" and (case.kernel, case.dilation) != (cfg.kernels[0], cfg.dilations[0]):
        return False  # global attention does not depend on the window: one record per map size
    if impl == "flex_compiled" and cfg.flex_compile != "all":
        return cfg.flex_compile != "none" and (case.kernel, case.dilation) == (7, 1)
    return True


def _op_record(impl: str, case: Case, mode: str, roof: common.Roofline, local: common.Roofline | None) -> dict:
    """The record of one call before it is timed: the case, its work and its roofline bounds."""
    flops, moved = case.flops(mode), case.bytes_moved(mode)
    rec = {"kind": "op", "impl": impl, "mode": mode, **asdict(case), "case": case.label(), "tokens": case.tokens,
           "flops": flops, "bytes": moved, "bound_ms": roof.bound_s(flops, moved) * 1e3}
    if local is not None:
        rec["local_bound_ms"] = local.bound_s(flops, moved) * 1e3
    return rec


def _skip_reason(impl: str, case: Case, mode: str, cfg: OpBenchConfig,
                 too_slow: dict[tuple[str, str], tuple[float, float]]) -> str | None:
    """Why not to time this call: a smaller case was already too slow, or it would not fit in memory."""
    w = work(impl, case)
    if (impl, mode) in too_slow and w >= too_slow[(impl, mode)][0]:
        w0, t0 = too_slow[(impl, mode)]
        predicted = t0 * w / w0
        # global attention is the peer the targets are stated against: time it once while the
        # prediction from its last slow call stays under --max-predicted-s
        if impl != "sdpa_global" or predicted > cfg.max_predicted_s:
            return (f"skipped: a smaller case already took longer than --max-call-s {cfg.max_call_s:g} s"
                    + (f" (predicted {predicted:.0f} s > --max-predicted-s {cfg.max_predicted_s:g})"
                       if impl == "sdpa_global" else ""))
    need = estimate_bytes(impl, case, mode)
    if need > cfg.max_mem_gb * 2 ** 30:
        return f"skipped: needs about {need / 2 ** 30:.1f} GB > --max-mem-gb {cfg.max_mem_gb:g}"
    return None


def _time_one(rec: dict, impl: str, case: Case, mode: str, cfg: OpBenchConfig,
              too_slow: dict[tuple[str, str], tuple[float, float]]) -> str | None:
    """Time one call into ``rec``; remember a call slower than ``--max-call-s``; the reason if it cannot run."""
    try:
        call, info = setup(impl, case, mode, cfg.seed)
        t = common.time_fn(call, cfg.warmup, cfg.runs, cfg.max_call_s)
        del call
    except Skip as e:
        return str(e)
    except (RuntimeError, NotImplementedError, ValueError, MemoryError) as e:
        msg = str(e).strip().splitlines()
        return f"failed: {type(e).__name__}: {msg[0] if msg else ''}"[:300]
    rec.update(info)
    rec.update(t.as_ms())
    rec["ratio_to_bound"] = t.median_s * 1e3 / rec["bound_ms"]
    if "local_bound_ms" in rec:
        rec["ratio_to_local_bound"] = t.median_s * 1e3 / rec["local_bound_ms"]
    if t.runs == 1:
        rec["note"] = f"one call took {t.median_s:.2f} s > --max-call-s {cfg.max_call_s:g}: timed once"
        w = work(impl, case)
        if w < too_slow.get((impl, mode), (math.inf, 0.0))[0] or impl == "sdpa_global":
            too_slow[(impl, mode)] = (w, t.median_s)  # global attention: predict from the latest call
    return None


def _memory_records(timed: list[tuple[str, Case]], seed: int) -> list[dict]:
    """Peak memory of each timed forward call, measured in one child process."""
    jobs = [{"target": "msaconv.bench.op:memory_setup",
             "kwargs": {"impl": impl, "case": asdict(case), "seed": seed}} for impl, case in timed]
    out = []
    for (impl, case), res in zip(timed, memory.measure_in_child(jobs, torch.get_num_threads())):
        rec = {"kind": "memory", "impl": impl, "mode": "fwd", **asdict(case), "case": case.label(),
               "tokens": case.tokens, "output_bytes": case.output_bytes()}
        if "error" in res:
            rec["skipped"] = res["error"]
        else:
            peak = res["peak_bytes_above_inputs"]
            rec["peak_bytes_above_inputs"] = peak
            rec["extra_over_output"] = (peak - case.output_bytes()) / case.output_bytes()
        out.append(rec)
    return out
