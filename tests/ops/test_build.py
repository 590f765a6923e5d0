"""The kernel build: its cache key (sources, flags, the CPU), the ninja-less fallback, backend_report, and CI.

The cache-key tests build a tiny Python C extension through the same ``_build._build`` (a few seconds), not the
real kernels, into a temporary extension cache.
"""

from __future__ import annotations

import os
import platform
import sys
import uuid

import pytest
import torch

from msaconv.ops import backend_report, choose_backend, msa_conv2d, prepare
from msaconv.ops._checks import check_msa_conv2d
from msaconv.ops.backends import _build, portable

TINY = """// %s
#include <Python.h>
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define STR2(a) #a
#define STR(a) STR2(a)
static PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(%d); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, ""}, {nullptr, nullptr, 0, nullptr}};
static PyModuleDef module = {PyModuleDef_HEAD_INIT, STR(TORCH_EXTENSION_NAME), nullptr, -1, methods};
PyMODINIT_FUNC CAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&module); }
"""


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def saved_state():
    """Run a test with a fresh build state, then restore this process's (the real kernels stay loaded)."""
    saved = dict(_build._state)
    _build.reset()
    yield
    _build.reset()
    _build._state.update(saved)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """``_build`` pointed at a tiny source in a temporary extension cache; ``tiny.write(n)`` rewrites it."""
    if _build.toolchain_reason() is not None:
        pytest.skip(f"no toolchain here: {_build.toolchain_reason()}")
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    token = uuid.uuid4().hex  # a name of its own: torch versions a name loaded twice in one process (_v1)

    class Tiny:
        cache = tmp_path / "cache"

        @staticmethod
        def write(n: int) -> None:
            (csrc / "tiny.cpp").write_text(TINY % (token, n))

        @staticmethod
        def build():
            """``(module, name, .so path, whether it compiled)``."""
            name = _build._ext_name()
            so = Tiny.cache / name / f"{name}.so"
            before = so.stat().st_mtime_ns if so.exists() else None
            module = _build._build()
            assert so.exists()
            return module, name, so, before != so.stat().st_mtime_ns

    Tiny.write(1)
    monkeypatch.setattr(_build, "CSRC", csrc)
    monkeypatch.setattr(_build, "SOURCES", ("tiny.cpp",))
    monkeypatch.setattr(_build, "cflags", lambda: ["-O0", "-march=native"])
    monkeypatch.setattr(_build, "LDFLAGS", ())
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(Tiny.cache))
    yield Tiny
    for name in [n for n in sys.modules if n.startswith("msaconv_cpu_")]:
        if getattr(sys.modules[name], "__file__", "").startswith(str(tmp_path)):
            del sys.modules[name]


# -------------------------------------------------------------------------------------------- cache key

def test_native_target_is_what_march_native_resolved_to():
    target = _build.native_target()
    assert target and "native" not in target
    if target.startswith("gcc "):  # g++: the resolved -march and the instruction sets it enables
        march = [t for t in target.split() if t.startswith("-march=")]
        assert len(march) == 1 and march[0] != "-march="


def test_cache_name_changes_with_the_cpu(monkeypatch):
    name = _build._ext_name()
    assert name.startswith("msaconv_cpu_") and len(name) == len("msaconv_cpu_") + 12
    assert _build._ext_name() == name
    monkeypatch.setattr(_build, "native_target", lambda: "gcc -march=skylake-avx512 -mavx512f")
    other = _build._ext_name()
    monkeypatch.setattr(_build, "native_target", lambda: "gcc -march=haswell -mavx2")
    assert len({name, other, _build._ext_name()}) == 3


def test_msaconv_march_names_another_target(monkeypatch):
    """MSACONV_MARCH: another -march= target is another flag and another resolved target, so another cache key."""
    native = _build._ext_name()
    monkeypatch.setenv("MSACONV_MARCH", "x86-64-v3")
    assert "-march=x86-64-v3" in _build.cflags() and "-march=native" not in _build.cflags()
    assert _build._ext_name() != native
    monkeypatch.setenv("MSACONV_MARCH", "")  # empty: the default
    assert _build.march() == "native" and _build._ext_name() == native


def test_bad_msaconv_march_is_a_reason_naming_it(monkeypatch, saved_state):
    monkeypatch.setenv("MSACONV_MARCH", "native; rm -rf ~")
    with pytest.raises(ValueError, match="MSACONV_MARCH='native; rm -rf ~' is not a -march= target.*x86-64-v3"):
        _build.march()
    module, reason = _build.extension()
    assert module is None and "MSACONV_MARCH" in reason


def test_the_cache_key_is_the_same_after_a_build():
    """torch's load() appends its libraries to the ldflags list it is given: the key must not see that, or a
    second build in one process (after reset()) would compile again under another name."""
    name = _build._ext_name()
    if _build.extension()[0] is None:
        pytest.skip(f"cpu backend unavailable here: {_build.extension()[1]}")
    assert _build._ext_name() == name and _build.LDFLAGS == ("-fopenmp",)


def _cpu_has(flag: str) -> bool:
    try:
        return f" {flag}" in open("/proc/cpuinfo").read()
    except OSError:
        return False


# The builds the main run does not test, each with what the CPU needs to run it and what build_info() must say.
# The default build is 256-bit vectors for -march=native: on an AVX-512 CPU its code may use AVX-512's 32 vector
# registers (the forward's row pairs block 8 slots or channels per row then, 4 with AVX2's 16), so the AVX2 code
# of an AVX2-only node is a separate build (MSACONV_MARCH=x86-64-v3), tested here too.
OTHER_BUILDS = [
    pytest.param({"MSACONV_VECTOR_BITS": "512"}, "avx512f", "vector bytes 64 (AVX-512)", id="avx512-512bit"),
    pytest.param({"MSACONV_MARCH": "x86-64-v3"}, "avx2", "vector bytes 32 (AVX2)", id="avx2-x86-64-v3"),
]


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("env_vars, needs, info_line", OTHER_BUILDS)
def test_other_builds_match_the_reference(tmp_path, env_vars, needs, info_line):
    """Every vector width and register file tested on one CPU: the fused-kernel tests run again in a fresh process
    against another build (in an empty extension cache) where the CPU can run it."""
    import subprocess

    if not _cpu_has(needs) or platform.machine() != "x86_64":
        pytest.skip(f"this CPU has no {needs}: it cannot run the build {env_vars}")
    if _build.extension()[0] is None:
        pytest.skip(f"cpu backend unavailable here: {_build.extension()[1]}")
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), **env_vars)
    info = subprocess.run([sys.executable, "-c", "from msaconv.ops.backends import _build; m, r = _build.extension(); "
                           "print(m.build_info() if m else r)"], env=env, capture_output=True, text=True, timeout=1200)
    assert info_line in info.stdout, info.stdout + info.stderr
    tests = os.path.join(os.path.dirname(__file__), "test_cpu_fused.py")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", tests,
                          "-k", "matches_reference or edge_shapes or gradcheck or any_strides or read_any"],
                         env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " skipped" not in run.stdout, run.stdout[-2000:]


AARCH64_CXX = "aarch64-linux-gnu-g++"


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("vector_bits", ["256", "128"])
def test_the_kernels_compile_for_aarch64(tmp_path, monkeypatch, vector_bits):
    """The AArch64 branches of the kernels (NEON vectors, the 'w' register constraint of keep_in_register) compile
    with a cross compiler, with the build's own flags but the target's -march: where the CPU cannot run them, at
    least they build. Skips without ``aarch64-linux-gnu-g++`` (Debian: ``apt install g++-aarch64-linux-gnu``)."""
    import shutil
    import subprocess
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    cxx = shutil.which(AARCH64_CXX)
    if cxx is None:
        pytest.skip(f"no {AARCH64_CXX} here (apt install g++-aarch64-linux-gnu)")
    monkeypatch.setenv("MSACONV_MARCH", "armv8.2-a")
    monkeypatch.setenv("MSACONV_VECTOR_BITS", vector_bits)
    flags = _build.cflags()
    assert "-march=armv8.2-a" in flags and f"-DMSA_MAX_VECTOR_BYTES={int(vector_bits) // 8}" in flags
    obj = tmp_path / "msa_conv_cpu.o"
    incs = [f"-I{p}" for p in [*include_paths(), sysconfig.get_paths()["include"]]]
    run = subprocess.run([cxx, "-std=c++17", "-fPIC", *flags, "-DTORCH_EXTENSION_NAME=msaconv_cpu_aarch64",
                          "-w", "-c", str(_build.CSRC / "msa_conv_cpu.cpp"), *incs, "-o", str(obj)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    header = obj.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # e_machine EM_AARCH64


def test_msaconv_vector_bits_is_part_of_the_key_and_checked(monkeypatch, saved_state):
    default = _build._ext_name()
    assert "-DMSA_MAX_VECTOR_BYTES=32" in _build.cflags()
    monkeypatch.setenv("MSACONV_VECTOR_BITS", "512")
    assert "-DMSA_MAX_VECTOR_BYTES=64" in _build.cflags() and _build._ext_name() != default
    monkeypatch.setenv("MSACONV_VECTOR_BITS", "1024")
    with pytest.raises(ValueError, match="MSACONV_VECTOR_BITS='1024' is not a vector width; use 128, 256"):
        _build.cflags()
    module, reason = _build.extension()
    assert module is None and "MSACONV_VECTOR_BITS" in reason


@pytest.mark.compile
def test_another_cpu_never_loads_this_cpus_binary(tiny, monkeypatch):
    """Same key: the cached binary is loaded, not rebuilt. Another CPU: a new name, a new build beside it."""
    m1, name1, so1, compiled = tiny.build()
    assert compiled and m1.answer() == 1
    mtime1 = so1.stat().st_mtime_ns

    m1b, name1b, _, compiled = tiny.build()  # same sources, flags and CPU: the cached build
    assert name1b == name1 and not compiled and m1b.answer() == 1

    monkeypatch.setattr(_build, "native_target", lambda: "gcc -march=some-other-cpu -mavx512f")
    m2, name2, so2, compiled = tiny.build()
    assert name2 != name1 and so2.parent != so1.parent
    assert compiled and m2.answer() == 1
    assert so1.stat().st_mtime_ns == mtime1  # the first CPU's binary is left alone


@pytest.mark.compile
def test_a_changed_source_or_flag_never_loads_a_stale_binary(tiny, monkeypatch):
    """A changed source or flag must never load a stale binary: each is built anew under its own name."""
    m1, name1, _, compiled = tiny.build()
    assert compiled and m1.answer() == 1

    tiny.write(2)  # a changed source
    m2, name2, _, compiled = tiny.build()
    assert name2 != name1 and compiled and m2.answer() == 2

    monkeypatch.setattr(_build, "cflags", lambda: ["-O1", "-march=native"])  # a changed flag, same source
    m3, name3, _, compiled = tiny.build()
    assert name3 not in (name1, name2) and compiled and m3.answer() == 2


# ------------------------------------------------------------------------------------------------- ninja

@pytest.fixture
def no_ninja(monkeypatch, saved_state):
    """A compiler but neither a system ninja nor the ninja wheel: what torch's builder and ``_build`` look for
    is gone."""
    import shutil

    import torch.utils.cpp_extension as ce

    which = shutil.which
    compilers = (os.environ.get("CXX", "c++"), "g++")
    monkeypatch.setattr(_build.shutil, "which", lambda name, *a, **k: f"/usr/bin/{name}" if name in compilers
                        else which(name, *a, **k))
    monkeypatch.setattr(ce, "is_ninja_available", lambda: False)
    monkeypatch.setitem(sys.modules, "ninja", None)  # `import ninja` raises ImportError
    yield


def test_no_ninja_reason_names_ninja_and_the_fix(no_ninja):
    reason = prepare()
    assert reason is not None and reason == _build.NINJA_REASON
    assert "ninja is not installed" in reason and "pip install ninja" in reason


def test_no_ninja_backend_none_runs_the_portable_backend(no_ninja):
    q, k, v = (torch.randn(2, 2, 9, 11, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pb = check_msa_conv2d("t", q, k, v, 3, 1, 1, "zeros", None, None, None, "bhwd")
    assert choose_backend(pb, None) is portable.BACKEND
    out = msa_conv2d(q, k, v, 3)
    ref = msa_conv2d(q, k, v, 3, backend="reference")
    torch.testing.assert_close(out, ref)
    g = torch.autograd.grad(out.sum(), (q, k, v))
    g_ref = torch.autograd.grad(ref.sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_the_ninja_wheel_is_found_outside_path(monkeypatch, tmp_path):
    """A venv used without activating it: its ninja is not on PATH, ``_build`` puts the wheel's bin dir there."""
    ninja = pytest.importorskip("ninja")
    if not os.path.isfile(os.path.join(ninja.BIN_DIR, "ninja")):
        pytest.skip("the ninja wheel has no executable here")
    monkeypatch.setenv("PATH", str(tmp_path))  # no ninja, no compiler
    import torch.utils.cpp_extension as ce

    assert not ce.is_ninja_available()
    assert _build.ninja_available()
    assert os.environ["PATH"].split(os.pathsep)[0] == str(ninja.BIN_DIR)


# -------------------------------------------------------------------------------------------- the report

def test_backend_report_names_the_fused_kernels_when_they_run():
    reason = prepare()
    if reason is not None:
        pytest.skip(f"cpu backend unavailable here: {reason}")
    line = backend_report()
    assert line.startswith("msa_conv2d on CPU: backend 'cpu'") and "\n" not in line
    assert "unavailable" not in line


def test_backend_report_names_the_fallback_and_why(no_ninja):
    line = backend_report()
    assert line.startswith("msa_conv2d on CPU: backend 'portable'") and "\n" not in line
    assert _build.NINJA_REASON in line


def test_backend_report_gives_a_compile_errors_line(monkeypatch, saved_state):
    def broken_build():
        raise RuntimeError("Error building extension 'msaconv_cpu_x': [1/2] c++ -MMD -c msa_conv_cpu.cpp\n"
                           "FAILED: msa_conv_cpu.o\nmsa_conv_cpu.cpp:12:5: error: 'foo' was not declared\n"
                           "ninja: build stopped: subcommand failed.")

    monkeypatch.setattr(_build, "toolchain_reason", lambda: None)
    monkeypatch.setattr(_build, "_build", broken_build)
    line = backend_report()
    assert "backend 'portable'" in line
    assert "building the C++ kernels failed (RuntimeError: msa_conv_cpu.cpp:12:5: error: 'foo' was not declared)" in line


# -------------------------------------------------------------------------------------------------- CI

def test_the_fused_kernels_build_in_ci():
    """In CI (``CI`` set, as CI services do; .ci/run also checks it after its install) the kernels must build: otherwise several hundred
    kernel tests would only skip. A user's machine without a compiler skips this test too."""
    reason = prepare()
    if reason is not None and not _ci():
        pytest.skip(f"cpu backend unavailable here (not CI): {reason}")
    assert reason is None, f"the fused CPU kernels did not build on this CI machine: {reason}"
