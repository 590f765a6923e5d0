"""Keep freed activation memory in the process while training on a CPU (glibc's malloc only).

By default glibc serves every block above its mmap threshold (128 KiB, raised as blocks are freed, at most
32 MiB) with fresh pages from the kernel and hands them back when the block is freed, and it trims the top of
its heap once more than twice that threshold is free there. A training step allocates and frees activations
and gradients of a few MiB to a few tens of MiB, sizes that change with the map size of a multi-size run, so
step after step the same memory is unmapped and faulted in again, page by page. On the project's 2-core EPYC
(one thread, interleaved A/B, `benchmarks/model/probes/malloc_ab_avx512.md`) a `tic_conv_nano` step of the
experiments (fp32, batch 256) took 26,000 minor page faults at 32 px and 71,000 at 24-40 px, 500 and 2,700 with
the settings below, and 0.93x and 0.85x the time (medians of three pairs); a `tic_nano` step 0.91x; the main job's
step (bf16 autocast, batch 128, 24-48 px) 0.95x.

:func:`keep_freed_memory` sets, with ``mallopt``: the mmap threshold to its largest value, 32 MiB (larger
blocks still come from the kernel); the trim threshold to 1 GiB; and a top pad of 256 MiB (the heap grows in
large steps). The process keeps its peak heap instead of returning it, which a training process reuses at the
next step anyway. It does nothing where the C library is not glibc, where ``MSACONV_MALLOC_TUNE=0``, and where
the user has chosen for themselves (a ``MALLOC_*`` variable, malloc in ``GLIBC_TUNABLES``, or another allocator
in ``LD_PRELOAD``).
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

ENV = "MSACONV_MALLOC_TUNE"
# mallopt parameters (glibc's malloc.h) and the values set
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = ((M_MMAP_THRESHOLD, 32 << 20, "mmap threshold 32 MiB"), (M_TRIM_THRESHOLD, 1 << 30, "trim threshold 1 GiB"),
            (M_TOP_PAD, 256 << 20, "top pad 256 MiB"))
USER_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
             "MALLOC_ARENA_MAX")


def why_not(environ: Mapping[str, str] | None = None) -> str | None:
    """Why :func:`keep_freed_memory` leaves the allocator as it is here, or None when it will tune it."""
    env = os.environ if environ is None else environ
    if env.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{ENV}={env[ENV]}"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    chosen = [v for v in USER_VARS if v in env]
    if "malloc" in env.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    if any(a in env.get("LD_PRELOAD", "") for a in ("jemalloc", "tcmalloc", "mimalloc")):
        chosen.append("LD_PRELOAD")
    if chosen:
        return f"the environment sets it ({', '.join(chosen)})"
    return None


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> str:
    """Tune glibc's malloc as the module says (calling it again changes nothing); one line saying what was done
    or why not."""
    reason = why_not(environ)
    if reason is not None:
        return f"malloc: left as it is ({reason})"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as e:
        return f"malloc: left as it is (no mallopt: {e})"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    refused = [what for param, value, what in SETTINGS if mallopt(param, value) != 1]
    done = [what for _p, _v, what in SETTINGS if what not in refused]
    if not done:
        return f"malloc: left as it is (mallopt refused {', '.join(refused)})"
    return (f"malloc: keeps freed memory ({', '.join(done)}"
            + (f"; refused: {', '.join(refused)}" if refused else "") + f"; {ENV}=0 leaves it as it is)")
