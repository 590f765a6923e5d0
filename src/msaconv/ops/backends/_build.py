"""Build-on-first-use of the C++ kernels, cached, safe when several processes build at once.

The extension is compiled by ``torch.utils.cpp_extension.load`` into torch's extension cache
(``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``, torch's own rule) under a name that hashes
the sources, the flags, torch's and python's versions and what ``-march=native`` resolves to on this CPU
(:func:`native_target`): a changed source, flag or CPU never loads a stale binary, so a cache shared
between machines (a home directory on a cluster) never hands an AVX-512 build to an AVX2 node.
``MSACONV_MARCH`` (default ``native``) names another ``-march=`` target, e.g. ``x86-64-v3`` (AVX2) for one
binary for every node of a mixed cluster. ``MSACONV_VECTOR_BITS`` (default 256) caps the vector width the
kernels use; the tests build the 512-bit width too on an AVX-512 CPU, to check both widths on one machine. An
exclusive ``fcntl`` lock around the build serialises concurrent builders (``pytest -n 2``); the second
process waits, then loads what the first built. Any failure (no compiler, no ninja, a compile error) is
caught once and kept as the reason the backend cannot run; nothing here raises at import.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).with_name("csrc")
SOURCES = ("msa_conv_cpu.cpp",)
LDFLAGS = ("-fopenmp",)  # a tuple: torch's load() appends its libraries to the list it is given
MARCH_ENV = "MSACONV_MARCH"


def march() -> str:
    """The ``-march=`` target: ``$MSACONV_MARCH``, default ``native``; anything else is an error naming it."""
    value = os.environ.get(MARCH_ENV, "").strip() or "native"
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", value):
        raise ValueError(f"{MARCH_ENV}={value!r} is not a -march= target; use e.g. native (the default), "
                         f"x86-64-v3 (AVX2) or x86-64-v4 (AVX-512)")
    return value


VECTOR_ENV = "MSACONV_VECTOR_BITS"
VECTOR_BITS = (128, 256, 512)


def vector_bits() -> int:
    """The widest vectors the kernels use: ``$MSACONV_VECTOR_BITS`` (128, 256 or 512), default 256. On the AVX-512
    EPYC (Zen 4) of our benchmarks the 256-bit build beat the 512-bit one at every shape measured
    (``benchmarks/op/vector_width_avx512.md``); 512 may pay on CPUs with full-width AVX-512 units."""
    value = os.environ.get(VECTOR_ENV, "").strip() or "256"
    if value not in {str(b) for b in VECTOR_BITS}:
        raise ValueError(f"{VECTOR_ENV}={value!r} is not a vector width; use 128, 256 (the default) or 512")
    return int(value)


def cflags() -> list[str]:
    return ["-O3", f"-march={march()}", f"-DMSA_MAX_VECTOR_BYTES={vector_bits() // 8}", "-ffp-contract=fast",
            "-fopenmp", "-fno-math-errno"]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "module" or "reason", set once per process


NINJA_REASON = ("ninja is not installed, and torch needs it to build the fused CPU kernels: pip install ninja "
                "(msaconv[train] installs it)")


def ninja_available() -> bool:
    """Whether torch's builder finds ``ninja``. torch runs a bare ``ninja``, so when only the ``ninja`` wheel's
    copy exists (a venv used without activating it: its ``bin`` is not on PATH) that directory is put on PATH."""
    from torch.utils.cpp_extension import is_ninja_available

    if is_ninja_available():
        return True
    try:
        import ninja  # the PyPI wheel: its executable lives in ninja.BIN_DIR

        bin_dir = str(ninja.BIN_DIR)
    except Exception:
        return False
    path = os.environ.get("PATH", "")
    if not os.path.isfile(os.path.join(bin_dir, "ninja")) or bin_dir in path.split(os.pathsep):
        return False
    os.environ["PATH"] = bin_dir + os.pathsep + path
    if is_ninja_available():
        return True
    os.environ["PATH"] = path
    return False


def toolchain_reason() -> str | None:
    """Why no C++ extension can be built here (None when a compiler and ninja are found)."""
    if platform.system() == "Windows":
        return "the fused CPU kernels are built with g++/OpenMP, not supported on Windows"
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None and shutil.which("g++") is None:
        return f"no C++ compiler found ({cxx!r} or 'g++' on PATH); install g++ to enable it"
    try:
        import torch.utils.cpp_extension  # noqa: F401
    except ImportError:  # pragma: no cover - very old torch
        return "torch.utils.cpp_extension is unavailable"
    if not ninja_available():
        return NINJA_REASON
    return None


def _output(cmd: list[str]) -> str:
    """stdout + stderr of a command that succeeded, else ''."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout + r.stderr if r.returncode == 0 else ""


def native_target() -> str:
    """What ``-march=native`` (or ``$MSACONV_MARCH``) means on this CPU, as one line: part of the cache key.

    GCC: the ``-march=`` value and every enabled or valued ``-m`` option of ``-march=native -Q --help=target``;
    clang: the ``-target-cpu``/``-target-feature`` its driver passes for ``-march=native``; otherwise the CPU's
    instruction-set flags from ``/proc/cpuinfo``, or the machine name.
    """
    return _target(os.environ.get("CXX", "c++"), march())


@functools.lru_cache(maxsize=None)
def _target(cxx: str, arch: str) -> str:
    out = _output([cxx, f"-march={arch}", "-Q", "--help=target"])
    march = re.findall(r"^\s*-march=\s+(\S+)\s*$", out, flags=re.M)
    if march:
        opts = []
        for line in out.splitlines():
            m = re.match(r"^\s+(-m\S+)\s+(\S.*?)\s*$", line)
            if m and m.group(2) != "[disabled]":
                opts.append(m.group(1) if m.group(2) == "[enabled]" else f"{m.group(1)}{m.group(2)}")
        return "gcc " + " ".join(sorted(set(opts)))
    out = _output([cxx, f"-march={arch}", "-###", "-x", "c++", "-c", os.devnull, "-o", os.devnull])
    feats = re.findall(r'"-target-(?:cpu|feature)" "([^"]+)"', out)
    if feats:
        return "clang " + " ".join(feats)
    if arch != "native":
        return f"march {arch}"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return "cpuinfo " + " ".join(sorted(set(line.split(":", 1)[1].split())))
    except OSError:
        pass
    return f"machine {platform.machine()} {platform.processor()}"


def _ext_name() -> str:
    h = hashlib.sha256()
    for src in SOURCES:
        h.update((CSRC / src).read_bytes())
    h.update(" ".join(cflags() + list(LDFLAGS)).encode())
    h.update(torch.__version__.encode())
    h.update(sys.version.encode())
    h.update(native_target().encode())
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
            return load(name=name, sources=[str(CSRC / s) for s in SOURCES], extra_cflags=cflags(),
                        extra_ldflags=list(LDFLAGS), build_directory=str(build_dir), verbose=False)
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)


def _error_line(msg: str) -> str:
    """The line of a build error worth a log line: the compiler's first ``error:``, else the first line."""
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    for ln in lines:
        if re.search(r"\berror\b:", ln, flags=re.I) and not ln.startswith("Error building extension"):
            return ln[:300]
    return lines[0][:300] if lines else ""


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
                    _state["reason"] = f"building the C++ kernels failed ({type(e).__name__}: {_error_line(str(e))})"
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
