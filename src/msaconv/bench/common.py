"""Helpers every msaconv benchmark shares: environment capture, timing, the roofline, JSON lines.

Habits (design/benchmarks.md): a result is a ratio against a peer timed in the same run; times are
medians with p10/p90 over >= 5 timed runs after warm-up; the machine's peak and bandwidth are the best of
9 runs; every record carries its context (torch, CPU, threads, git commit, the command).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .._provenance import cpu_isa, cpu_model, git_commit  # noqa: F401  (bench records name them)


def environment(command: str | None = None) -> dict:
    """The context every JSON line carries."""
    from .. import __version__

    cap = cpu_isa() or "unknown"
    return {
        "msaconv": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_capability": cap,
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "command": command if command is not None else " ".join(["msaconv"] + sys.argv[1:]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": load_average(),
    }


def load_average() -> float | None:
    """The 1-minute load average when the record is made: a shared machine's noise, in one number."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


@dataclass
class Timing:
    """Seconds per call: median and 10th/90th percentiles of ``runs`` timed calls (after warm-up)."""

    median_s: float
    p10_s: float
    p90_s: float
    runs: int
    first_call_s: float  # the first warm-up call (includes any one-off cost: builds, caches)

    def as_ms(self) -> dict:
        return {"median_ms": self.median_s * 1e3, "p10_ms": self.p10_s * 1e3, "p90_ms": self.p90_s * 1e3,
                "runs": self.runs, "first_call_ms": self.first_call_s * 1e3}


def percentile(xs: list[float], p: float) -> float:
    """Linear-interpolated percentile ``p`` in [0, 100] of ``xs``."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * p / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def time_fn(fn: Callable[[], object], warmup: int = 2, runs: int = 5, max_call_s: float | None = None) -> Timing:
    """Time ``fn``: ``warmup`` untimed calls, then ``runs`` timed ones.

    When the second call (the first after a warm-up) takes longer than ``max_call_s``, it is the only
    measurement (``runs=1``): the caller records it as such instead of spending minutes on a peer that is
    far off anyway.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    ts = []
    if max_call_s is not None:
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
        if ts[0] > max_call_s:
            return Timing(ts[0], ts[0], ts[0], 1, first)
        ts.clear()
    for _ in range(max(0, warmup - 1 - (max_call_s is not None))):
        fn()
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return Timing(statistics.median(ts), percentile(ts, 10), percentile(ts, 90), runs, first)


@dataclass
class Roofline:
    """What this machine can do, measured now: best-of-n fp32 matmul GFLOP/s and copy GB/s."""

    matmul_gflops: float
    copy_gbs: float
    matmul_n: int
    copy_mb: int
    repeats: int

    def bound_s(self, flops: float, bytes_moved: float) -> float:
        """The roofline bound of one call: ``max(flops / peak, bytes / bandwidth)``."""
        return max(flops / (self.matmul_gflops * 1e9), bytes_moved / (self.copy_gbs * 1e9))


def measure_roofline(matmul_n: int = 2048, copy_mb: int = 256, repeats: int = 9) -> Roofline:
    """Best of ``repeats`` runs of an ``n x n`` fp32 matmul and of a ``copy_mb`` MB tensor copy.

    The copy moves ``2 * copy_mb`` MB (read + write) per run.
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randn(matmul_n, matmul_n, generator=g)
    b = torch.randn(matmul_n, matmul_n, generator=g)
    c = torch.empty(matmul_n, matmul_n)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    gflops = 2.0 * matmul_n ** 3 / best / 1e9
    del a, b, c
    n = copy_mb * 1024 * 1024 // 4
    x = torch.ones(n)
    y = torch.empty_like(x)
    y.copy_(x)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        y.copy_(x)
        best = min(best, time.perf_counter() - t0)
    gbs = 2.0 * n * 4 / best / 1e9
    return Roofline(gflops, gbs, matmul_n, copy_mb, repeats)


def write_jsonl(path: str | Path, records: Iterable[dict], append: bool = True) -> None:
    """Append (or write) records as JSON lines, flushing each so a long run leaves partial results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if append else "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
            f.flush()


def read_jsonl(path: str | Path) -> Iterator[dict]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                yield json.loads(line)


def dataclass_dict(obj) -> dict:
    return asdict(obj)


def child_env(threads: int) -> dict:
    """Environment for a measuring child process: same threads, and glibc's mmap threshold fixed so that
    large freed blocks go back to the OS at once (the RSS high-water mark then shows real peaks)."""
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["OMP_NUM_THREADS"] = str(threads)
    return env
