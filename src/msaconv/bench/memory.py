"""Peak memory of a call, measured as the RSS high-water mark of a child process (Linux).

``tracemalloc`` does not see torch's allocations; the CPU allocator keeps no peak statistics. So each
measurement runs in a child process started with glibc's mmap threshold fixed (large blocks are returned
to the OS when freed): the child builds the inputs, runs the call once to warm up (extension build,
caches), then resets the kernel's high-water mark (``/proc/self/clear_refs``), runs the call again and
reports ``VmHWM - VmRSS(before)``: the peak memory *above the inputs* during the call, outputs included.

A case is ``{"target": "package.module:function", "kwargs": {...}}``; the function returns
``(call, info)`` where ``call()`` runs the measured work and ``info`` is merged into the result.
Run ``python -m msaconv.bench.memory`` with a JSON list of cases on stdin; it prints one JSON line each.
"""

from __future__ import annotations

import gc
import importlib
import json
import subprocess
import sys
from pathlib import Path

from .common import child_env


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


def reset_peak() -> None:
    """Reset this process's RSS high-water mark (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_above_current(call) -> int:
    """Bytes by which the RSS rose above its current value while ``call()`` ran."""
    gc.collect()
    base = _status("VmRSS")
    reset_peak()
    call()
    return max(0, _status("VmHWM") - base)


def supported() -> str | None:
    """None when RSS peaks can be measured here, else why not."""
    try:
        _status("VmHWM")
        reset_peak()
    except OSError as e:
        return f"RSS high-water mark unavailable ({e})"
    return None


def allocation_probe(mb: int = 64):
    """A call that allocates and fills a ``mb`` MB tensor: the self-check of this method (peak ~ ``mb`` MB)."""
    import torch

    def call():
        t = torch.empty(mb * 2 ** 20 // 4)
        t.fill_(1.0)
        return float(t[-1])

    return call, {"expected_bytes": mb * 2 ** 20}


def run_case(case: dict) -> dict:
    module, _, fn = case["target"].partition(":")
    try:
        setup = getattr(importlib.import_module(module), fn)
        call, info = setup(**case.get("kwargs", {}))
        call()  # warm-up: one-off costs are not the call's memory
        peak = peak_above_current(call)
        del call
        return {**info, "peak_bytes_above_inputs": peak}
    except Exception as e:  # a peer that cannot run records why
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}


def measure_in_child(cases: list[dict], threads: int, timeout_s: float = 1800.0) -> list[dict]:
    """Run ``cases`` in one fresh child process; one result dict per case (``error`` when it failed)."""
    why = supported()
    if why is not None:
        return [{"error": why} for _ in cases]
    proc = subprocess.run([sys.executable, "-m", "msaconv.bench.memory"], input=json.dumps(cases),
                          capture_output=True, text=True, env=child_env(threads), timeout=timeout_s)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if len(results) < len(cases):
        err = (proc.stderr.strip().splitlines() or ["child exited early"])[-1]
        results += [{"error": f"memory child failed: {err}"[:300]}] * (len(cases) - len(results))
    return results


def main() -> int:
    import torch

    cases = json.loads(sys.stdin.read())  # threads: OMP_NUM_THREADS, set by measure_in_child
    torch.manual_seed(0)
    for case in cases:
        print(json.dumps(run_case(case)), flush=True)
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
