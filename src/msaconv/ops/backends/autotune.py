"""``backend=None`` by measurement: the first call of a shape times the fused backends that can run it and
keeps the fastest, for that shape, from then on.

A shape is everything a backend's speed depends on: the problem's sizes, window, extra keys, dtype,
device, layout, whether gradients are needed, and the number of torch threads. The candidates are the
backends with an explicit backward (those that run inside the custom op) that can run the problem, less the
fallbacks (``fallback = True``: ``portable``, ``reference``), which run only where nothing fused can; a
backend's ``declines`` (a threshold measured on one machine) is not consulted. Each candidate runs its
forward (and its backward, when the call needs gradients) on random inputs of the same shape: one warm-up,
then ``REPEATS`` timed runs, the fastest of which counts. The candidates go in the fixed order of preference
(those that would not decline first), and one whose warm-up alone is ``CUTOFF`` times slower than the best
so far is not timed further.

The choices are kept in memory and in a JSON file (``$MSACONV_CACHE_DIR``, else ``~/.cache/msaconv``)
under a key naming the machine (CPU model, instruction set, torch version), so later processes on the same
machine make the same choice without measuring: two backends agree only to rounding, and a run that resumes
must compute what it computed before. Delete the file to measure again.

Nothing is measured while ``torch.jit.trace`` or ``torch.compile`` / ``torch.export`` trace the call, or while a
``TorchDispatchMode`` is active (``FlopCounterMode``: the candidates' runs would be counted as the model's work):
a choice already made for the shape holds there, else the fixed order decides (the compiled op measures when
it runs). ``MSACONV_AUTOTUNE=0`` (or :func:`set_enabled`)
turns the measurement off: ``backend=None`` then takes the
first backend in the order of :data:`msaconv.ops.backends.BACKENDS` that can run and does not decline.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..._provenance import cpu_isa, cpu_model
from .._checks import Problem

REPEATS = 3
CUTOFF = 3.0  # a candidate whose first call takes this many times the best so far is not timed further
#: ``backend=None`` passes over a backend whose call would allocate more temporaries than this (its
#: ``workspace_bytes``): ``dense`` on a 32x32 map of 32 heads at batch 250 wants 33.5 GB of logits, and
#: measuring it there ran a depthwise model's evaluation out of memory. A backend named explicitly still runs.
MAX_WORKSPACE_BYTES = 1 << 30
_enabled: bool | None = None  # None: from MSACONV_AUTOTUNE (default on)
_choices: dict[str, str] = {}  # shape key -> backend name, this process
_loaded = False


def enabled() -> bool:
    """Whether ``backend=None`` measures (``MSACONV_AUTOTUNE``, default on, unless :func:`set_enabled`)."""
    if _enabled is not None:
        return _enabled
    return os.environ.get("MSACONV_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")


def set_enabled(on: bool | None) -> None:
    """Turn the measurement on or off for this process (``None``: back to ``MSACONV_AUTOTUNE``)."""
    global _enabled
    _enabled = on


def cache_path() -> Path:
    root = os.environ.get("MSACONV_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "msaconv") / "backend_choices.json"


@functools.cache
def _machine() -> str:
    """CPU model, instruction set and torch version: read once per process (every automatic call builds a key)."""
    return f"{cpu_model()} | {cpu_isa()} | torch {torch.__version__}"


def shape_key(pb: Problem, candidates: Sequence[str]) -> str:
    w = pb.window
    return (f"{_machine()} | {pb.device.type} {pb.dtype} {pb.layout} B{pb.batch} h{pb.heads} {pb.height}x{pb.width} "
            f"D{pb.head_dim} M{pb.extra} k{w.kernel} d{w.dilation} s{w.stride} {w.border} "
            f"grad{int(pb.needs_grad)} threads{torch.get_num_threads()} | {','.join(candidates)}")


def _load() -> None:
    global _loaded
    _loaded = True
    try:
        stored = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return
    if isinstance(stored, dict):
        _choices.update({k: v for k, v in stored.items() if isinstance(k, str) and isinstance(v, str)})


def _store(key: str, name: str) -> None:
    """Add one choice to the file (merged with what other processes wrote; replaced atomically)."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {}
        stored = stored if isinstance(stored, dict) else {}
        stored[key] = name
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".backend_choices.")
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the choice still holds for this process


def _inputs(be, pb: Problem) -> tuple:
    g = torch.Generator(device=pb.device).manual_seed(0)
    B, h, H, W, D = pb.batch, pb.heads, pb.height, pb.width, pb.head_dim
    shape = (B, h, D, H, W) if be.layout == "bhdhw" else (B, h, H, W, D)
    q, k, v = (torch.randn(shape, generator=g, dtype=pb.dtype, device=pb.device) for _ in range(3))
    ek = ev = None
    if pb.extra:
        ek, ev = (torch.randn((B, h, pb.extra, D), generator=g, dtype=pb.dtype, device=pb.device) for _ in range(2))
    return q, k, v, ek, ev


def measure(be, pb: Problem, repeats: int = REPEATS, beat: float = float("inf")) -> float:
    """Seconds of one call of ``be`` on ``pb``'s shape (forward, plus backward when ``pb.needs_grad``); best of runs.

    ``beat``: the best time so far; a backend whose warm-up takes more than ``CUTOFF`` times it is not timed
    further (its warm-up time is returned)."""
    q, k, v, ek, ev = _inputs(be, pb)
    sync: Callable[[], None] = torch.cuda.synchronize if pb.device.type == "cuda" else (lambda: None)

    def call() -> None:
        out, stats = be.forward_with_stats(q, k, v, ek, ev, pb)
        if pb.needs_grad:
            be.backward(torch.ones_like(out), q, k, v, ek, ev, out, stats, pb)

    with torch.no_grad():
        t0 = time.perf_counter()
        call()
        sync()
        warm = time.perf_counter() - t0
        if warm > CUTOFF * beat:
            return warm
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            sync()
            best = min(best, time.perf_counter() - t0)
    return best


def workspace_reason(be: Any, pb: Problem) -> str | None:
    """Why ``backend=None`` passes over ``be`` for its memory: its ``workspace_bytes(pb)`` (where it says) is more
    than :data:`MAX_WORKSPACE_BYTES`; else None."""
    size = getattr(be, "workspace_bytes", None)
    need = size(pb) if size is not None else 0
    if need <= MAX_WORKSPACE_BYTES:
        return None
    return (f"its call would allocate {need / 2**30:.1f} GiB of temporaries, more than backend=None allows "
            f"({MAX_WORKSPACE_BYTES / 2**30:.1f} GiB, autotune.MAX_WORKSPACE_BYTES); name it to run it anyway")


def _out_of_memory(e: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(e)


def may_measure() -> bool:
    """False while a trace records the call (jit trace, torch.compile / export) or a ``TorchDispatchMode`` (e.g.
    ``FlopCounterMode``) sees every op: timing runs there would be recorded, or counted, as the caller's work."""
    from torch.utils._python_dispatch import is_in_torch_dispatch_mode

    return not (torch.jit.is_tracing() or torch.compiler.is_compiling() or is_in_torch_dispatch_mode())


def known(pb: Problem, candidates: Mapping[str, Any]) -> str | None:
    """The choice already made for ``pb``'s shape among ``candidates`` (this process or the file), or None."""
    names = list(candidates)
    if len(names) == 1:
        return names[0]
    if not _loaded:
        _load()
    name = _choices.get(shape_key(pb, sorted(names)))
    return name if name in candidates else None


def choose(pb: Problem, candidates: Mapping[str, Any]) -> str:
    """The name of the fastest of ``candidates`` (name -> backend, the likely fastest first) for ``pb``'s shape,
    measured once per shape."""
    made = known(pb, candidates)
    if made is not None:
        return made
    names = list(candidates)
    times: dict[str, float] = {}
    failed: BaseException | None = None
    for n in names:
        try:
            times[n] = measure(candidates[n], pb, beat=min(times.values(), default=float("inf")))
        except (RuntimeError, MemoryError) as e:
            if not _out_of_memory(e):
                raise
            times[n], failed = float("inf"), e  # out of memory on this shape: passed over
    if failed is not None and min(times.values()) == float("inf"):
        raise failed  # every candidate ran out of memory: the call would too
    key = shape_key(pb, sorted(names))
    _choices[key] = min(names, key=times.__getitem__)
    _store(key, _choices[key])
    return _choices[key]


def clear() -> None:
    """Forget this process's choices (the file stays; the next choice reads it again)."""
    global _loaded
    _choices.clear()
    _loaded = False
