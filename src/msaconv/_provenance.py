"""Where a number comes from, for every record msaconv writes (run folders, benchmark and experiment JSON
lines, ``msaconv eval`` results): the code's git commit, the CPU and the instruction set torch's kernels
use on it, and the SHA-256 of a data or weights file."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from pathlib import Path

import torch


def git_commit(path: str | Path | None = None) -> str:
    """``HEAD``'s short hash of the repository holding ``path`` (default: this package), ``+dirty`` when
    tracked files under ``src/`` differ from it; ``'unknown'`` outside a git checkout."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=where, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str | None:
    """The vector instruction set torch's CPU kernels use here (``AVX2``, ``AVX512``, ...)."""
    return torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else None


def file_sha256(path: str | Path | None) -> str | None:
    """SHA-256 of a file (a dataset zip / tar, a weights file), read in 1 MiB chunks; None for a directory or
    no path."""
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
