"""The fused CPU backend: against the reference, gradcheck, determinism, and its build-and-fallback path.

The extension builds once per machine (cached under torch's extension directory); these tests load it once
per session. When no toolchain is present the comparisons skip with the backend's own reason.
"""

from __future__ import annotations

import pytest
import torch

from msaconv.ops import available_backends, backends, msa_conv2d
from msaconv.ops._checks import check_msa_conv2d
from msaconv.ops.backends import _build, cpu

from ._compare import compare
from .cases import Case, random_cases

# Own replayable sweep (seed 4, distinct from test_backends.py's seed 0) so the fused kernel meets more shapes.
CASES = random_cases(60, seed=4)


def _ready():
    _, reason = _build.extension()
    if reason is not None:
        pytest.skip(f"cpu backend unavailable here: {reason}")


def _case(H, W, kernel, dilation=(1, 1), stride=(1, 1), border="zeros", heads=2, head_dim=4, extra=0, batch=2, seed=7):
    return Case(0, batch, heads, H, W, head_dim, kernel, dilation, stride, border, extra, seed)


# Hand-picked shapes each stressing one part of the kernel: vector tails (W not a multiple of the vector),
# wide windows on tiny maps (windows beyond the image on both sides), strip kernels, dilation with even kernels,
# strides along W (the non-unit-stride path), clamp's border columns, head_dim 1 and > 8 (register blocks).
EDGE = [
    _case(9, 17, (3, 3)),
    _case(5, 3, (7, 7), border="mask"),
    _case(5, 3, (7, 7), border="zeros"),
    _case(4, 6, (5, 5), border="circular"),
    _case(11, 12, (4, 4), (2, 2), border="clamp"),
    _case(12, 23, (3, 5), (2, 3), border="clamp"),
    _case(13, 9, (5, 1), border="mask", extra=3),
    _case(7, 19, (1, 5), (1, 2), (2, 3), border="circular", extra=2),
    _case(10, 10, (2, 3), (3, 2), (3, 2), border="zeros"),
    _case(6, 8, (3, 3), heads=3, head_dim=1),
    _case(6, 9, (3, 3), head_dim=13, extra=1),
    _case(1, 1, (3, 3), border="mask"),
    _case(2, 2, (4, 4), (3, 3), border="mask"),  # some queries see no key at all: zero output and gradients
    # maps taller than a window's rows (and than one task chunk): the forward keeps a ring of padded rows
    _case(20, 9, (3, 3), batch=1),
    _case(21, 10, (3, 5), (2, 1), (2, 1), border="mask", batch=1),
    _case(19, 11, (5, 3), (3, 1), border="zeros", extra=2, batch=1),
    _case(18, 8, (3, 3), (2, 2), border="clamp", batch=1),
    # planes enough that a task chunk is a whole plane, too large to pad at once: the ring over a whole plane
    _case(48, 44, (3, 3), border="mask", batch=4, heads=2, head_dim=32),
    # the forward's pairs of rows (rows wider than a vector): strided and dilated windows share fewer key rows,
    # an odd row count leaves a single row at a chunk's end, and a circular window taller than the map holds
    # the same key row twice
    _case(15, 20, (5, 5), (2, 2), (2, 1), border="mask", batch=1, head_dim=9),
    _case(17, 18, (3, 3), border="circular", batch=1),
    _case(3, 16, (5, 3), border="circular"),
    _case(9, 33, (7, 7), border="clamp", batch=1, extra=2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_float64_matches_reference(case):
    _ready()
    compare(case, "cpu", torch.float64)


@pytest.mark.parametrize("case", EDGE, ids=lambda c: c.id)
@pytest.mark.parametrize("layout", ["bhwd", "bhdhw"])
def test_edge_shapes_float64(case, layout):
    _ready()
    compare(case, "cpu", torch.float64, layout=layout)


@pytest.mark.parametrize("case", CASES[:24] + EDGE, ids=lambda c: c.id)
def test_float32_matches_reference(case):
    _ready()
    compare(case, "cpu", torch.float32, ref_dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_dtypes_run_in_float32(dtype):
    _ready()
    compare(EDGE[0], "cpu", dtype)


@pytest.mark.parametrize("case", EDGE, ids=lambda c: c.id)
@pytest.mark.parametrize("layout", ["bhwd", "bhdhw"])
def test_bfloat16_in_the_kernel_is_float32_rounded_once(case, layout):
    """bfloat16 rows are converted inside the kernels (no converted copies): out, lse and every gradient are, bit for
    bit, the float32 kernels' on the same values, rounded to bfloat16 once; the backward reads the rounded out, as
    autograd saves it."""
    _ready()
    ts = case.tensors(torch.bfloat16, requires_grad=False, layout=layout)
    q, k, v, ek, ev = ts
    (kh, kw), scale = case.kernel, case.head_dim ** -0.5
    args = ([kh, kw], list(case.dilation), list(case.stride), case.border, scale, layout, "cpu")
    out, lse = torch.ops.msaconv.msa_conv2d(q, k, v, ek, ev, *args)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(case.seed)).to(torch.bfloat16)
    grads = torch.ops.msaconv.msa_conv2d_backward(dout, q, k, v, ek, ev, out, lse, *args)

    f = [None if t is None else t.float() for t in ts]
    out32, lse32 = torch.ops.msaconv.msa_conv2d(*f, *args)
    grads32 = torch.ops.msaconv.msa_conv2d_backward(dout.float(), *f[:3], f[3], f[4], out.float(), lse32, *args)

    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert torch.equal(out, out32.to(torch.bfloat16)) and torch.equal(lse, lse32)
    for name, g, g32 in zip(("dq", "dk", "dv", "dek", "dev"), grads, grads32):
        assert g.dtype == torch.bfloat16, name
        assert torch.equal(g, g32.to(torch.bfloat16)), name


@pytest.mark.parametrize("case", [EDGE[0], EDGE[4], EDGE[6], EDGE[7]], ids=lambda c: c.id)
def test_gradcheck_float64(case):
    """torch.autograd.gradcheck of q, k, v (and the extra keys) through the custom op and the fused kernels."""
    _ready()
    small = Case(0, 1, 1, min(case.height, 6), min(case.width, 7), 2, case.kernel, case.dilation, case.stride,
                 case.border if case.border != "clamp" else "zeros", min(case.extra, 2), case.seed)
    q, k, v, ek, ev = small.tensors(torch.float64, requires_grad=True)
    inputs = [t for t in (q, k, v, ek, ev) if t is not None]

    def f(*ts):
        q, k, v = ts[:3]
        ek, ev = (ts[3], ts[4]) if len(ts) == 5 else (None, None)
        return msa_conv2d(q, k, v, extra_k=ek, extra_v=ev, backend="cpu", **small.kwargs())

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8)


def test_deterministic_run_to_run():
    """Same inputs, same bits: the key/value gradients of a plane are summed by one thread in a fixed order."""
    _ready()
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 8, 20, 22, requires_grad=True) for _ in range(3))
    results = []
    for _ in range(3):
        out = msa_conv2d(q, k, v, 5, dilation=2, layout="bhdhw", backend="cpu")
        grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        results.append([out.detach(), *grads])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_backend_none_prefers_cpu():
    _ready()
    q = torch.zeros(1, 1, 8, 8, 4)
    pb = check_msa_conv2d("t", q, q, q, 3, 1, 1, "zeros", None, None, None, "bhwd")
    from msaconv.ops import choose_backend

    assert choose_backend(pb, None).name == "cpu"  # 64 keys: 'dense' declines, the fused kernel takes it
    assert list(backends.BACKENDS)[:2] == ["dense", "cpu"]


def test_declines_dropout_and_the_portable_backend_runs_it():
    _ready()
    q, k, v = (torch.randn(1, 2, 6, 6, 4) for _ in range(3))
    pb = check_msa_conv2d("t", q, k, v, 3, 1, 1, "zeros", None, None, None, "bhwd", 0.1)
    assert "dropout" in cpu.BACKEND.can_run(pb)
    with pytest.raises(ValueError, match="backend 'cpu' cannot run this call: attention dropout"):
        msa_conv2d(q, k, v, 3, dropout_p=0.1, backend="cpu")
    torch.manual_seed(3)
    a = msa_conv2d(q, k, v, 3, dropout_p=0.1)
    torch.manual_seed(3)
    b = msa_conv2d(q, k, v, 3, dropout_p=0.1, backend="portable")
    assert torch.equal(a, b)


def test_no_copy_of_channels_first_views():
    """A [B, 3, h, D, H, W] projection split into q, k, v views runs without making planes contiguous."""
    _ready()
    qkv = torch.randn(2, 3, 2, 4, 9, 10)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    assert not q.is_contiguous()
    assert cpu._planes(q, torch.float32).data_ptr() == q.data_ptr()
    out = msa_conv2d(q, k, v, 3, layout="bhdhw", backend="cpu")
    ref = msa_conv2d(q, k, v, 3, layout="bhdhw", backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- fallback

@pytest.fixture
def no_toolchain(monkeypatch):
    """Simulate a machine without a compiler: the build is never attempted and the reason is kept."""
    saved = dict(_build._state)
    _build.reset()
    monkeypatch.setattr(_build.shutil, "which", lambda name: None)
    monkeypatch.setenv("CXX", "c++")
    yield
    _build.reset()
    _build._state.update(saved)


def test_missing_compiler_gives_a_reason(no_toolchain):
    q = torch.randn(1, 1, 6, 6, 4)
    pb = check_msa_conv2d("t", q, q, q, 3, 1, 1, "zeros", None, None, None, "bhwd")
    reason = cpu.BACKEND.can_run(pb)
    assert reason is not None and "no C++ compiler" in reason
    assert "no C++ compiler" in available_backends()["cpu"]


def test_missing_compiler_backend_none_falls_back(no_toolchain):
    q, k, v = (torch.randn(1, 2, 6, 7, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = msa_conv2d(q, k, v, 3)
    ref = msa_conv2d(q, k, v, 3, backend="reference")
    torch.testing.assert_close(out, ref)
    out.sum().backward()  # the portable backend's gradients through the custom op
    assert q.grad is not None


def test_missing_compiler_named_backend_raises_with_reason(no_toolchain):
    q = torch.randn(1, 1, 6, 6, 4)
    with pytest.raises(ValueError, match=r"backend 'cpu' cannot run this call: no C\+\+ compiler found"):
        msa_conv2d(q, q, q, 3, backend="cpu")


def test_build_failure_is_a_reason_not_a_crash(monkeypatch):
    saved = dict(_build._state)
    _build.reset()

    def broken_build():
        raise RuntimeError("Error building extension 'msaconv_cpu'\nfatal error: no space left on device")

    monkeypatch.setattr(_build, "toolchain_reason", lambda: None)  # a toolchain is found, the build then fails
    monkeypatch.setattr(_build, "_build", broken_build)
    try:
        module, reason = _build.extension()
        assert module is None
        assert reason.startswith("building the C++ kernels failed (RuntimeError:") and "no space left" in reason
        q = torch.randn(1, 1, 6, 6, 4)
        assert msa_conv2d(q, q, q, 3).shape == q.shape  # backend=None moves on
    finally:
        _build.reset()
        _build._state.update(saved)


def test_missing_ninja_gives_a_reason(monkeypatch):
    import sys

    import torch.utils.cpp_extension as ce

    monkeypatch.setattr(_build.shutil, "which", lambda name, *a, **k: f"/usr/bin/{name}")  # a compiler is found
    monkeypatch.setattr(ce, "is_ninja_available", lambda: False)
    monkeypatch.setitem(sys.modules, "ninja", None)  # nor the ninja wheel
    assert _build.toolchain_reason() == _build.NINJA_REASON and "pip install ninja" in _build.NINJA_REASON


# A changed source, flag or CPU building anew under its own name: tests/ops/test_build.py (a tiny extension
# through the same builder, so the check costs seconds, not the kernels' compile).


def test_concurrent_builds_are_serialised(tmp_path):
    """Two processes loading at once (pytest -n 2) both succeed: the second waits on the lock."""
    _ready()
    import subprocess
    import sys

    code = ("from msaconv.ops.backends import _build; m, r = _build.extension(); "
            "print('ok' if m is not None else r)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert outs == ["ok", "ok"]


@pytest.mark.slow
@pytest.mark.compile
def test_two_fresh_builds_at_once(tmp_path):
    """Two processes building into an empty cache at the same moment: one builds, the other waits, both load."""
    _ready()
    import os
    import subprocess
    import sys

    code = ("from msaconv.ops.backends import _build; m, r = _build.extension(); "
            "print('ok' if m is not None else r)")
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = [p.communicate(timeout=1200)[0].strip() for p in procs]
    assert outs == ["ok", "ok"]
    assert len(list(tmp_path.rglob("*.so"))) == 1


def test_prepare_builds_now_or_says_why(no_toolchain):
    from msaconv.ops import prepare

    assert "no C++ compiler" in prepare()
    assert prepare(background=True) is None  # the outcome is already known: nothing to start


def test_prepare_in_background_then_ready(monkeypatch):
    """prepare(background=True) returns at once and builds in its own thread; prepare() then waits for it and
    reports what a build in the foreground reports."""
    import threading

    from msaconv.ops import prepare

    saved = dict(_build._state)
    try:
        _build.reset()
        foreground = prepare()
        _build.reset()
        threads = []
        real_extension = _build.extension

        def spy():
            threads.append(threading.current_thread().name)
            return real_extension()

        monkeypatch.setattr(_build, "extension", spy)
        assert prepare(background=True) is None
        for t in threading.enumerate():
            if t.name == "msaconv-build":
                t.join(timeout=600)
        assert threads == ["msaconv-build"]  # the build ran in the background thread, before any other call
        reason = prepare()
        assert reason == foreground
        if _build.toolchain_reason() is not None:
            assert reason == _build.toolchain_reason()  # no toolchain: its reason, nothing built
        else:
            assert (reason is None) == (_build.extension()[0] is not None)
        assert reason == cpu.BACKEND.can_run(check_msa_conv2d("t", *(torch.zeros(1, 1, 4, 4, 2),) * 3, 3, 1, 1,
                                                              "zeros", None, None, None, "bhwd"))
    finally:
        _build.reset()
        _build._state.update(saved)


def _strided_views():
    """q, k, v views of one buffer in the memory orders the kernels meet: msa_conv2d's default bhwd, the slices of a
    channels-last qkv projection ([B, H, W, 3, heads, D] memory), and a generic one (D neither inner nor outer)."""
    g = torch.Generator().manual_seed(11)
    B, h, D, H, W = 2, 2, 5, 7, 9
    bhwd = torch.randn(3, B, h, H, W, D, generator=g, dtype=torch.float64).permute(0, 1, 2, 5, 3, 4)
    channels_last = torch.randn(B, H, W, 3, h, D, generator=g, dtype=torch.float64).permute(3, 0, 4, 5, 1, 2)
    generic = torch.randn(3, B, H, D, h, W, 2, generator=g, dtype=torch.float64)[..., 0].permute(0, 1, 4, 3, 2, 5)
    return {"bhwd": bhwd, "channels_last": channels_last, "generic": generic}


@pytest.mark.parametrize("memory", ["bhwd", "channels_last", "generic"])
@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=(3, 5), dilation=2, border="mask"),
                                dict(kernel_size=3, stride=2, border="clamp"), dict(kernel_size=(4, 3), border="circular")],
                         ids=["k3", "k3x5-d2-mask", "k3-s2-clamp", "k4x3-circular"])
def test_the_kernels_read_any_strides(memory, kw):
    """The kernels themselves, given strided q, k, v (and a strided dout and out in the backward): the reference's
    numbers on contiguous copies, forward and every gradient, in channels-first and in bhwd output order."""
    _ready()
    qkv = _strided_views()[memory]
    q, k, v = (qkv[i] for i in range(3))
    assert not q.is_contiguous()
    ref_in = [t.contiguous().requires_grad_() for t in (q, k, v)]
    ref = msa_conv2d(*ref_in, layout="bhdhw", backend="reference", **kw)
    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dout = dout.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # a strided upstream gradient too
    want = torch.autograd.grad(ref, ref_in, dout)
    pb = check_msa_conv2d("t", q, k, v, kw["kernel_size"], kw.get("dilation", 1), kw.get("stride", 1),
                          kw.get("border", "zeros"), None, None, None, "bhdhw")
    ext, _ = _build.extension()
    for bhwd_out in (False, True):
        out, lse = ext.forward(q, k, v, None, None, *cpu._args(pb), bhwd_out)
        assert out.permute(0, 1, 3, 4, 2).is_contiguous() == bhwd_out
        torch.testing.assert_close(out, ref.detach(), rtol=1e-10, atol=1e-10)
        got = ext.backward(dout, q, k, v, None, None, out, lse, *cpu._args(pb), bhwd_out)[:3]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_strided_planes_are_read_in_place():
    views = _strided_views()
    for memory in ("bhwd", "channels_last", "generic"):
        assert cpu._planes(views[memory][0], torch.float64).data_ptr() == views[memory][0].data_ptr()
    q = views["channels_last"][0].detach().requires_grad_()
    out = msa_conv2d(q, q, q, 3, layout="bhdhw", backend="cpu")
    ref = msa_conv2d(q, q, q, 3, layout="bhdhw", backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_the_default_layout_is_computed_in_place():
    """msa_conv2d's default bhwd: the output and the gradients come back contiguous in bhwd, written there by the
    kernels (no conversion of the output afterwards)."""
    _ready()
    q, k, v = (torch.randn(2, 3, 8, 9, 4, requires_grad=True) for _ in range(3))
    out = msa_conv2d(q, k, v, 3, backend="cpu")
    assert out.is_contiguous() and out.shape == (2, 3, 8, 9, 4)
    native = cpu.BACKEND.forward_with_stats(*(t.detach().permute(0, 1, 4, 2, 3) for t in (q, k, v)), None, None,
                                            check_msa_conv2d("t", q, k, v, 3, 1, 1, "zeros", None, None, None, "bhwd"))[0]
    assert native.permute(0, 1, 3, 4, 2).is_contiguous()  # the kernel wrote bhwd order itself
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert all(g.is_contiguous() for g in grads)
