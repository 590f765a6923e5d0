"""The Triton backend against the reference: forward and every gradient, on a subset of the replayable cases.

On a machine without CUDA the kernels run under Triton's interpreter: run with ``TRITON_INTERPRET=1`` in the
environment (it must be set before triton is imported, which torch does when msaconv loads), as stage 4 of
.ci/run does: ``TRITON_INTERPRET=1 python -m pytest -m triton``. On a CUDA machine without that variable the
same tests run on the GPU (``benchmarks/gpu/run.sh``). Without Triton the tests marked ``triton`` skip and
say why; the ones here that need no Triton (import laziness, ``can_run`` reasons) always run.

``MSACONV_TRITON_CASES`` sets how many of the replayable cases the float32 sweep takes (default: a small
subset under the interpreter, more on a GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from msaconv.ops import backends, msa_conv2d
from msaconv.ops._checks import check_msa_conv2d
from msaconv.ops.backends import triton as triton_backend

from ._compare import assert_close
from .cases import Case, random_cases

BE = triton_backend.BACKEND
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
#: tolerances relative to the scale of each compared tensor (issue 20: 1e-5 fp32, 2e-2 bf16)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _probe_reason(dtype: torch.dtype = torch.float32) -> str | None:
    if "triton" not in backends.BACKENDS:
        return backends.UNAVAILABLE.get("triton", "the triton backend is not registered")
    q = torch.zeros(1, 1, 4, 4, 16, device=DEVICE, dtype=dtype)
    return BE.can_run(check_msa_conv2d("probe", q, q, q, 3, 1, 1, "zeros", None, None, None, "bhwd"))


_REASON = _probe_reason()
needs_triton = pytest.mark.skipif(_REASON is not None, reason=f"triton backend cannot run here: {_REASON}")
kernel_test = [pytest.mark.triton, needs_triton]


def _cost(c: Case) -> float:
    """Rough interpreter cost of a case (programs x chunks); circular wraps a big window many times."""
    wrap = 1 + (c.kernel[0] * c.dilation[0]) // c.height + (c.kernel[1] * c.dilation[1]) // c.width
    return c.batch * c.heads * (c.height * c.width) * (c.kernel[0] * c.kernel[1]) ** 0.5 * wrap


def _subset(n: int) -> list[Case]:
    """The first ``n`` affordable cases of the sweep test_backends.py runs (same ids), every border in turn."""
    limit = 2500 if DEVICE == "cpu" else float("inf")
    return [c for c in random_cases(200, seed=0) if _cost(c) <= limit][:n]


_N = int(os.environ.get("MSACONV_TRITON_CASES", "24" if DEVICE == "cpu" else "120"))
CASES = _subset(_N)
# head_dim 16-128 (48: padded to 64), the target kernel 7, extra keys and a border each
WIDE = [
    Case(900, 1, 1, 9, 10, 16, (7, 7), (1, 1), (1, 1), "zeros", 0, 900),
    Case(901, 1, 2, 8, 9, 32, (7, 7), (1, 1), (1, 1), "clamp", 4, 901),
    Case(902, 1, 1, 7, 8, 48, (5, 3), (1, 2), (2, 1), "mask", 0, 902),
    Case(903, 1, 1, 6, 7, 64, (3, 3), (2, 1), (1, 1), "circular", 2, 903),
    Case(904, 1, 1, 5, 6, 128, (3, 3), (1, 1), (1, 2), "zeros", 1, 904),
]


def _inputs(case: Case, dtype: torch.dtype, layout: str = "bhwd"):
    return [None if t is None else t.detach().to(DEVICE, dtype).requires_grad_()
            for t in case.tensors(torch.float64, requires_grad=False, layout=layout)]


def _run(ts, case: Case, backend: str, layout: str, g: torch.Tensor):
    q, k, v, ek, ev = ts
    out = msa_conv2d(q, k, v, extra_k=ek, extra_v=ev, backend=backend, layout=layout, **case.kwargs())
    inputs = [t for t in ts if t is not None]
    return out.detach(), list(torch.autograd.grad(out, inputs, g.to(out.dtype)))


def check_case(case: Case, dtype: torch.dtype, layout: str = "bhwd", deterministic: bool | None = True) -> None:
    """The triton backend on ``case`` against the float64 reference on the same (rounded) inputs."""
    ts = _inputs(case, dtype, layout)
    ref = [None if t is None else t.detach().double().requires_grad_() for t in ts]
    want, want_g = None, None
    Ho, Wo = (case.height - 1) // case.stride[0] + 1, (case.width - 1) // case.stride[1] + 1
    D = case.head_dim
    shape = (case.batch, case.heads, Ho, Wo, D) if layout == "bhwd" else (case.batch, case.heads, D, Ho, Wo)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(case.seed + 1), dtype=torch.float64).to(DEVICE)
    want, want_g = _run(ref, case, "reference", layout, g)
    old = BE.deterministic
    BE.deterministic = deterministic
    try:
        got, got_g = _run(ts, case, "triton", layout, g)
    finally:
        BE.deterministic = old
    assert got.dtype == dtype
    tol = TOL[dtype]
    assert_close(f"{case.id} out", got, want, tol)
    for name, a, b in zip(("dq", "dk", "dv", "d_extra_k", "d_extra_v"), got_g, want_g):
        assert a.dtype == dtype, name
        assert_close(f"{case.id} {name}", a, b, tol)


def test_subset_reaches_every_option():
    """The interpreter's subset still covers each border, stride, dilation, strip kernels and extra keys."""
    cases = _subset(24 if DEVICE == "cpu" else _N) + WIDE
    assert {c.border for c in cases} == {"zeros", "mask", "clamp", "circular"}
    assert {c.stride[0] for c in cases} >= {1, 2, 3} and {c.dilation[1] for c in cases} >= {1, 2, 3}
    assert any(c.kernel[0] != c.kernel[1] for c in cases) and any(c.kernel[0] % 2 == 0 for c in cases)
    assert {c.extra for c in cases} >= {0, 1, 4} and {c.head_dim for c in cases} >= {1, 16, 48, 128}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.triton
@needs_triton
def test_float32_matches_reference(case):
    check_case(case, torch.float32)


@pytest.mark.parametrize("case", CASES[:8], ids=lambda c: c.id)
@pytest.mark.triton
@needs_triton
def test_atomic_backward_matches_reference(case):
    check_case(case, torch.float32, deterministic=False)


@pytest.mark.parametrize("case", WIDE, ids=lambda c: c.id)
@pytest.mark.triton
@needs_triton
def test_head_dims_16_to_128(case):
    check_case(case, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES[1:9:2] + WIDE[1:2], ids=lambda c: c.id)
@pytest.mark.triton
@needs_triton
def test_half_dtypes_accumulate_in_float32(case, dtype):
    check_case(case, dtype)


@pytest.mark.parametrize("case", CASES[:12:3], ids=lambda c: c.id)
@pytest.mark.triton
@needs_triton
def test_channels_first_layout_reads_strides(case):
    check_case(case, torch.float32, layout="bhdhw")


@pytest.mark.triton
@needs_triton
def test_deterministic_backward_is_bitwise_repeatable():
    case = WIDE[1]
    runs = []
    for _ in range(2):
        ts = _inputs(case, torch.float32)
        BE.deterministic = True
        try:
            out = msa_conv2d(*ts[:3], extra_k=ts[3], extra_v=ts[4], backend="triton", **case.kwargs())
            runs.append([out.detach(), *torch.autograd.grad(out, [t for t in ts if t is not None], torch.ones_like(out))])
        finally:
            BE.deterministic = None
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.triton
@needs_triton
def test_deterministic_follows_torch_switch(monkeypatch):
    BE.deterministic = None
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert BE._deterministic()
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    assert not BE._deterministic()


@pytest.mark.triton
@needs_triton
@pytest.mark.skipif(DEVICE != "cpu", reason="float64 runs only under the interpreter")
def test_direct_forward_passes_gradcheck_in_float64():
    """``BACKEND.forward`` (StatsBackwardFn over forward_with_stats/backward), both backward variants."""
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 2, 4, 5, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ek, ev = (torch.randn(1, 2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    for border, det in (("zeros", True), ("circular", False)):
        pb = check_msa_conv2d("t", q, k, v, (3, 2), (1, 2), (1, 2), border, None, ek, ev, "bhwd")
        BE.deterministic = det
        try:  # fast mode: a few random directions instead of one per input element (the interpreter is slow)
            assert torch.autograd.gradcheck(lambda *a: BE.forward(*a, pb), (q, k, v, ek, ev), eps=1e-6, atol=1e-8,
                                            fast_mode=True)
        finally:
            BE.deterministic = None


@pytest.mark.triton
@needs_triton
def test_backend_none_takes_it_on_cuda_and_passes_over_it_on_cpu():
    from msaconv.ops import choose_backend

    q = torch.zeros(1, 1, 8, 8, 16, device=DEVICE)
    pb = check_msa_conv2d("t", q, q, q, 3, 1, 1, "zeros", None, None, None, "bhwd")
    order = list(backends.BACKENDS)
    assert order.index("triton") < order.index("portable")
    if DEVICE == "cpu":  # (choose_backend here would build the fused CPU kernels first: minutes, not the point)
        assert "interpreter" in backends.auto_reason(BE, pb)
    else:
        assert BE.declines(pb) is None and choose_backend(pb, None).name == "triton"


@pytest.mark.triton
@needs_triton
def test_one_node_for_the_flop_counter_and_torch_compile():
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch.utils.flop_counter import FlopCounterMode

    case = CASES[0]
    q, k, v, ek, ev = _inputs(case, torch.float32)
    with FlopCounterMode(display=False) as fc:
        out = msa_conv2d(q, k, v, extra_k=ek, extra_v=ev, backend="triton", **case.kwargs())
        out.sum().backward()
    counts = fc.get_flop_counts()["Global"]
    assert torch.ops.msaconv.msa_conv2d in counts and torch.ops.msaconv.msa_conv2d_backward in counts

    def f(q, k, v, ek, ev):
        return msa_conv2d(q, k, v, extra_k=ek, extra_v=ev, backend="triton", **case.kwargs())

    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend=counter)(q, k, v, ek, ev)
    torch.testing.assert_close(got, out.detach(), rtol=0, atol=0)
    assert counter.frame_count == 1


# --- no Triton needed ---------------------------------------------------------------------------------------

def _pb(dtype=torch.float32, device="cpu", head_dim=16, dropout=0.0):
    q = torch.zeros(1, 1, 4, 4, head_dim, dtype=dtype, device=device)
    return check_msa_conv2d("t", q, q, q, 3, 1, 1, "zeros", None, None, None, "bhwd", dropout)


def test_can_run_gives_reasons_without_importing_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    be = triton_backend.TritonBackend()
    assert "dropout" in be.can_run(_pb(dropout=0.1))
    assert "head_dim 256" in be.can_run(_pb(head_dim=256))
    assert "TRITON_INTERPRET=1" in be.can_run(_pb())
    assert "interpreter" in be.declines(_pb())


def test_tiles_are_powers_of_two_and_wide_enough_for_tl_dot():
    for rows in (1, 2, 3, 7, 56):
        for cols in (1, 2, 5, 9, 56):
            th, tw = triton_backend._tile(rows, cols, triton_backend.QUERY_TILE)
            kr, kc = triton_backend._chunk(rows, cols, triton_backend.KEY_CHUNK)
            for n in (th, tw, kr, kc):
                assert n & (n - 1) == 0
            assert th * tw >= 16 and kr * kc >= 16


def test_import_msaconv_never_loads_the_kernels_and_works_without_triton():
    """``import msaconv`` does not import the kernel module; with triton made unimportable the backend is
    absent, says why, and backend=None still runs."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # an import of triton now raises ImportError
        "import importlib.util as u; u.find_spec = (lambda f: (lambda n, *a: None if n == 'triton' else f(n, *a)))(u.find_spec)\n"
        "import torch, msaconv\n"
        "from msaconv.ops import backends, msa_conv2d, available_backends\n"
        "assert 'msaconv.ops.backends._triton_kernels' not in sys.modules\n"
        "assert 'triton' not in backends.BACKENDS, list(backends.BACKENDS)\n"
        "from msaconv.ops.backends import _build\n"
        "_build.extension = lambda: (None, 'not built in this test')\n"  # the cpu backend: no C++ build here
        "assert 'not installed' in available_backends()['triton']\n"
        "q = torch.randn(1, 1, 5, 5, 4)\n"
        "assert msa_conv2d(q, q, q, 3).shape == q.shape\n"
        "try:\n"
        "    msa_conv2d(q, q, q, 3, backend='triton')\n"
        "except ValueError as e:\n"
        "    assert 'not installed' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
    plain = subprocess.run([sys.executable, "-c", "import sys, msaconv, msaconv.ops; "
                            "print('msaconv.ops.backends._triton_kernels' in sys.modules)"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert plain.returncode == 0 and plain.stdout.strip() == "False", plain.stderr[-3000:]


@pytest.mark.triton
@pytest.mark.skipif(not triton_backend.installed(), reason="Triton is not installed")
def test_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    """The real NVIDIA compiler (Triton's own ptxas), not the interpreter: what the GPU would build."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "aot_compile.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compile for real, not from an earlier run's cache
    out = subprocess.run([sys.executable, str(script), "--quick", "--json", str(tmp_path / "aot.jsonl")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    import json

    recs = [json.loads(line) for line in (tmp_path / "aot.jsonl").read_text().splitlines()]
    assert {r["kernel"] for r in recs} == {"_fwd", "_bwd_dq", "_bwd_dkv", "_bwd_extra"}
    assert all(r["registers"] for r in recs)
