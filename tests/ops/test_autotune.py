"""backend=None by measurement (msaconv.ops.backends.autotune): the fastest fused backend per shape, measured
once, kept in memory and in a file; the fixed order when the measurement is off."""

from __future__ import annotations

import json
import time

import pytest
import torch

from msaconv.ops import check_msa_conv2d, msa_conv2d
from msaconv.ops import backends
from msaconv.ops.backends import autotune, cpu, dense

from .cases import Case


class _Fake:
    """A fused backend whose forward takes ``delay`` seconds; counts its calls."""

    layout = "bhwd"

    def __init__(self, name: str, delay: float, fallback: bool = False):
        self.name, self.delay, self.calls = name, delay, 0
        if fallback:
            self.fallback = True

    def can_run(self, pb):
        return None

    def forward_with_stats(self, q, k, v, extra_k, extra_v, pb):
        self.calls += 1
        time.sleep(self.delay)
        return torch.zeros(1), torch.zeros(1)

    def backward(self, dout, q, k, v, extra_k, extra_v, out, stats, pb):
        return None, None, None, None, None


def _pb(q, k, v):
    return check_msa_conv2d("test", q, k, v, 3, 1, 1, "zeros", None, None, None, "bhwd", 0.0)


def _problem(H=4, W=4, needs_grad=False):
    case = Case(0, 1, 1, H, W, 4, (3, 3), (1, 1), (1, 1), "zeros", 0, 0)
    q, k, v, _, _ = case.tensors(torch.float32, requires_grad=needs_grad)
    return _pb(q, k, v)


@pytest.fixture
def tuned(tmp_path, monkeypatch):
    """Measurement on, with an empty cache file of its own."""
    monkeypatch.setenv("MSACONV_CACHE_DIR", str(tmp_path))
    autotune.clear()
    autotune.set_enabled(True)
    yield tmp_path
    autotune.set_enabled(None)
    autotune.clear()


def test_picks_the_faster_and_measures_a_shape_once(tuned):
    slow, fast = _Fake("slow", 0.02), _Fake("fast", 0.0)
    pb = _problem()
    assert autotune.choose(pb, {"slow": slow, "fast": fast}) == "fast"
    measured = slow.calls, fast.calls
    assert measured[0] == 1 + autotune.REPEATS and measured[1] == 1 + autotune.REPEATS  # warm-up + repeats
    assert autotune.choose(pb, {"slow": slow, "fast": fast}) == "fast"
    assert (slow.calls, fast.calls) == measured  # remembered: not measured again
    other = _problem(H=5, W=6)
    assert autotune.choose(other, {"slow": slow, "fast": fast}) == "fast"
    assert slow.calls == measured[0] + 1 + autotune.REPEATS  # a new shape is measured


def test_choice_is_kept_in_a_file_that_a_later_process_reads(tuned):
    slow, fast = _Fake("slow", 0.02), _Fake("fast", 0.0)
    pb = _problem()
    autotune.choose(pb, {"slow": slow, "fast": fast})
    stored = json.loads((tuned / "backend_choices.json").read_text())
    assert list(stored.values()) == ["fast"]
    key = next(iter(stored))
    assert "4x4" in key and torch.__version__ in key and "slow,fast" not in key  # sorted candidate names
    autotune.clear()  # what a new process starts from
    slow.delay, fast.delay = 0.0, 0.02  # the speeds changed, but the stored choice stands (same results as before)
    calls = slow.calls + fast.calls
    assert autotune.choose(pb, {"slow": slow, "fast": fast}) == "fast"
    assert slow.calls + fast.calls == calls


def test_a_far_slower_candidate_is_not_timed_beyond_its_warm_up(tuned):
    fast, slow = _Fake("fast", 0.0), _Fake("slow", 0.05)
    assert autotune.choose(_problem(), {"fast": fast, "slow": slow}) == "fast"
    assert fast.calls == 1 + autotune.REPEATS and slow.calls == 1


def test_a_corrupt_or_unwritable_cache_is_not_an_error(tuned):
    (tuned / "backend_choices.json").write_text("{not json")
    assert autotune.choose(_problem(), {"a": _Fake("a", 0.01), "b": _Fake("b", 0.0)}) == "b"


def test_choose_backend_measures_fused_backends_not_fallbacks(tuned, monkeypatch):
    times = {"dense": 2.0, "cpu": 1.0}
    seen = []

    def fake_measure(be, pb, repeats=autotune.REPEATS, beat=float("inf")):
        seen.append(be.name)
        return times[be.name]

    monkeypatch.setattr(autotune, "measure", fake_measure)
    monkeypatch.setattr(cpu.BACKEND, "can_run", lambda pb: None)
    pb = _problem()  # 16 keys: dense can run (and would not decline)
    assert backends.choose_backend(pb, None).name == "cpu"
    assert seen == ["dense", "cpu"]  # the fixed order's first first; portable and reference are fallbacks: never measured
    times["dense"] = 0.5
    autotune.clear()
    (tuned / "backend_choices.json").unlink()
    assert backends.choose_backend(pb, None).name == "dense"


def test_off_means_the_fixed_order(monkeypatch):
    monkeypatch.setenv("MSACONV_AUTOTUNE", "0")
    autotune.set_enabled(None)
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured with MSACONV_AUTOTUNE=0"))
    pb = _problem()
    assert backends.choose_backend(pb, None).name == "dense"  # first in BACKENDS that runs 16 keys


def test_measure_runs_the_backward_when_the_call_needs_gradients(tuned):
    reason = cpu.BACKEND.can_run(_problem())
    if reason is not None:
        pytest.skip(f"cpu backend unavailable here: {reason}")
    calls = []
    orig = cpu.BACKEND.backward

    def counting(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    pb = _problem(needs_grad=True)
    assert pb.needs_grad
    be = cpu.CpuBackend()
    be.backward = counting  # type: ignore[method-assign]
    assert autotune.measure(be, pb, repeats=2) > 0
    assert len(calls) == 3
    assert autotune.measure(dense.BACKEND, _problem(), repeats=1) > 0


def test_msa_conv2d_with_measurement_matches_the_fixed_choice(tuned):
    case = Case(0, 2, 2, 5, 4, 8, (3, 3), (1, 1), (1, 1), "zeros", 0, 3)
    q, k, v, _, _ = case.tensors(torch.float64, requires_grad=True)
    out = msa_conv2d(q, k, v, 3)
    out.sum().backward()
    ref = msa_conv2d(q.detach(), k.detach(), v.detach(), 3, backend="reference")
    torch.testing.assert_close(out, ref)
    if cpu.BACKEND.can_run(_pb(q, k, v)) is None:  # dense and cpu both run 20 keys: a measured choice was stored
        assert (tuned / "backend_choices.json").exists()


def test_backend_report_says_it_measures_and_why_the_kernels_are_missing(tuned, monkeypatch):
    from msaconv.ops import backend_report

    monkeypatch.setattr(cpu.BACKEND, "can_run", lambda pb: None)
    line = backend_report()
    assert "measures" in line and "'cpu'" in line and "unavailable" not in line
    monkeypatch.setattr(cpu.BACKEND, "can_run", lambda pb: "no C++ compiler found")
    line = backend_report()
    assert "'cpu'" not in line.split(";")[0] and line.endswith("unavailable: no C++ compiler found")


def test_no_measurement_while_tracing(tuned, monkeypatch):
    """A jit trace or an export records the call; timing runs inside it would be noise at best."""
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured while tracing"))
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    assert backends.choose_backend(_problem(), None).name == "dense"  # the fixed order


def test_flop_counting_sees_no_measurement(tuned, monkeypatch):
    """Under FlopCounterMode the candidates' timing runs would be counted as the model's FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    pb = _problem()
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured under FlopCounterMode"))
    with FlopCounterMode(display=False):
        assert backends.choose_backend(pb, None).name == "dense"  # nothing chosen yet: the fixed order
    monkeypatch.undo()
    monkeypatch.setenv("MSACONV_CACHE_DIR", str(tuned))
    fast, slow = _Fake("fast", 0.0), _Fake("slow", 0.02)
    monkeypatch.setattr(backends, "fused_candidates", lambda pb: {"slow": slow, "fast": fast})
    monkeypatch.setitem(backends.BACKENDS, "fast", fast)
    monkeypatch.setitem(backends.BACKENDS, "slow", slow)
    assert backends.choose_backend(pb, None) is fast  # measured
    calls = fast.calls + slow.calls
    with FlopCounterMode(display=False):
        assert backends.choose_backend(pb, None) is fast  # the choice made before holds, nothing runs
    assert fast.calls + slow.calls == calls


def test_count_flops_is_the_same_on_the_first_call(tuned):
    """The first call of a shape measures the candidates; count_flops must not count those runs."""
    from msaconv.models import count_flops, create_model

    m = create_model("tic_conv_nano", num_classes=10)
    first = count_flops(m, (3, 32, 32), batch_size=1)["gmacs"]
    assert count_flops(m, (3, 32, 32), batch_size=1)["gmacs"] == first


def test_a_backend_whose_temporaries_pass_the_limit_is_neither_measured_nor_taken(tuned):
    """dense's logits grow as batch x heads x pixels^2: a depthwise model's 32x32 map of 32 heads at batch 250
    would want 33.5 GB, and measuring it there ran an evaluation out of memory. Sizes only: nothing allocated."""
    from dataclasses import replace

    small = _problem()
    big = replace(small, batch=250, heads=32, height=32, width=32)
    assert dense.BACKEND.workspace_bytes(big) == 2 * 250 * 32 * 1024 * 1024 * 4
    assert autotune.workspace_reason(dense.BACKEND, small) is None
    reason = autotune.workspace_reason(dense.BACKEND, big)
    assert reason is not None and "62.5 GiB" in reason and "MAX_WORKSPACE_BYTES" in reason
    assert "dense" in backends.fused_candidates(small)
    assert "dense" not in backends.fused_candidates(big) and "cpu" in backends.fused_candidates(big)
    wide = replace(small, batch=4096, heads=256, height=5, width=5)  # inside dense's 9..25 keys, 5 GiB
    assert backends.auto_reason(dense.BACKEND, wide) == autotune.workspace_reason(dense.BACKEND, wide)
    assert dense.BACKEND.can_run(big) is None  # named, it still runs (the caller asked for it)


class _OutOfMemory(_Fake):
    def __init__(self, name: str, error: BaseException):
        super().__init__(name, 0.0)
        self.error = error

    def forward_with_stats(self, q, k, v, extra_k, extra_v, pb):
        self.calls += 1
        raise self.error


def test_a_candidate_that_runs_out_of_memory_is_passed_over(tuned):
    cpu_oom = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
    for error in (cpu_oom, torch.OutOfMemoryError("CUDA out of memory")):
        autotune.clear()
        big, ok = _OutOfMemory("big", error), _Fake("ok", 0.0)
        assert autotune.choose(_problem(), {"big": big, "ok": ok}) == "ok"
    autotune.clear()
    with pytest.raises(RuntimeError, match="can't allocate"):  # every candidate failed: the call would too
        autotune.choose(_problem(), {"a": _OutOfMemory("a", cpu_oom), "b": _OutOfMemory("b", cpu_oom)})
    with pytest.raises(RuntimeError, match="shape mismatch"):  # any other error is a bug: it propagates
        autotune.choose(_problem(), {"a": _OutOfMemory("a", RuntimeError("shape mismatch")), "ok": _Fake("ok", 0)})
