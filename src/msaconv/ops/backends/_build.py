"""Build-on-first-use of the C++ kernels, cached, safe when several processes build at once.

The extension is compiled by ``torch.utils.cpp_extension.load`` into torch's extension cache
(``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``, torch's own rule) under a name that hashes
the sources, the flags, torch's and python's versions: a changed source never loads a stale binary.
An exclusive ``fcntl`` lock around the build serialises concurrent builders (``pytest -n 2``); the
second process waits, then loads what the first built. Any failure (no compiler, no ninja, a compile
error) is caught once and kept as the reason the backend cannot run; nothing here raises at import.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).with_name("csrc")
SOURCES = ("msa_conv_cpu.cpp",)
CFLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-fno-math-errno"]
LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "module" or "reason", set once per process


def toolchain_reason() -> str | None:
    """Why no C++ extension can be built here (None when a compiler and ninja are found)."""
    if platform.system() == "Windows":
        return "the fused CPU kernels are built with g++/OpenMP, not supported on Windows"
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None and shutil.which("g++") is None:
        return f"no C++ compiler found ({cxx!r} or 'g++' on PATH); install g++ to enable it"
    try:
        from torch.utils.cpp_extension import is_ninja_available
    except ImportError:  # pragma: no cover - very old torch
        return "torch.utils.cpp_extension is unavailable"
    if not is_ninja_available():
        return "ninja is not installed (pip install ninja); torch needs it to build C++ extensions"
    return None


def _ext_name() -> str:
    h = hashlib.sha256()
    for src in SOURCES:
        h.update((CSRC / src).read_bytes())
    h.update(" ".join(CFLAGS + LDFLAGS).encode())
    h.update(torch.__version__.encode())
    h.update(sys.version.encode())
    return f"msaconv_cpu_{h.hexdigest()[:12]}"


def _build() -> ModuleType:
    import fcntl

    from torch.utils.cpp_extension import _get_build_directory, load

    name = _ext_name()
    build_dir = Path(_get_build_directory(name, verbose=False))
    with open(build_dir / "msaconv.flock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # released when the file closes
        try:
            # Holding the lock, no other msaconv process is building here: a leftover torch baton
            # file is from a build that died, and would make torch wait forever.
            (build_dir / "lock").unlink(missing_ok=True)
            if not (build_dir / f"{name}.so").exists():
                print(f"msaconv: compiling the fused CPU kernels into {build_dir} (first use only, under a "
                      f"minute) ...", file=sys.stderr, flush=True)
            return load(name=name, sources=[str(CSRC / s) for s in SOURCES], extra_cflags=CFLAGS,
                        extra_ldflags=LDFLAGS, build_directory=str(build_dir), verbose=False)
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)


def extension() -> tuple[ModuleType | None, str | None]:
    """``(module, None)`` once built and loaded, else ``(None, reason)``; tried once per process."""
    if "module" in _state or "reason" in _state:
        return _state.get("module"), _state.get("reason")  # type: ignore[return-value]
    with _lock:
        if "module" not in _state and "reason" not in _state:
            reason = toolchain_reason()
            if reason is None:
                try:
                    _state["module"] = _build()
                except Exception as e:  # a compile or load error: keep it as the reason, never crash
                    msg = str(e).strip().splitlines()
                    _state["reason"] = f"building the C++ kernels failed ({type(e).__name__}: {msg[-1] if msg else ''})"
            else:
                _state["reason"] = reason
    return _state.get("module"), _state.get("reason")  # type: ignore[return-value]


def reset() -> None:
    """Forget the cached build result (tests simulate a missing toolchain with it)."""
    with _lock:
        _state.clear()


def build_in_background() -> threading.Thread | None:
    """Start :func:`extension` in a daemon thread, so a first-use compile overlaps other start-up work
    (the trainer loads its data meanwhile). ``None`` when it is already built or known not to build."""
    if "module" in _state or "reason" in _state:
        return None
    t = threading.Thread(target=extension, name="msaconv-build", daemon=True)
    t.start()
    return t
