"""Issue 9.6: hypothesis property tests over the op, the two layers, every token mixer and create_model.

Every generated call either returns a tensor of the documented shape (finite for finite inputs) or raises a
ValueError with a message; any other exception, a non-finite output or a call running past HANG_SECONDS
fails the test. Arguments are drawn around the valid region, so invalid ones (zero or negative sizes,
unknown border names, heads that do not divide the channels, kernels larger than the map with
border='clamp') are exercised too; for arguments the docstrings call valid a ValueError also fails.

The default run draws a few hundred cases; the slow test draws over 10,000 (derandomized: replayable).
"""

from __future__ import annotations

import functools
import signal
from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import msaconv
from msaconv.layers import MSAConv2d, MSAttention2d, get_token_mixer, list_token_mixers
from msaconv.ops import msa_conv2d

HANG_SECONDS = 60
BORDERS = ["zeros", "mask", "clamp", "circular"]
COUNTS: dict[str, int] = {}


@contextmanager
def _no_hang():
    def on_alarm(signum, frame):
        raise TimeoutError(f"call still running after {HANG_SECONDS}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _call(what: str, fn, expect_valid: bool):
    """``fn()`` or None for a ValueError (allowed only if ``expect_valid`` is False); counts the case."""
    COUNTS[what] = COUNTS.get(what, 0) + 1
    try:
        with _no_hang(), torch.no_grad():
            return fn()
    except ValueError as e:
        assert len(str(e)) > 20, f"{what}: a ValueError without a useful message: {e!r}"
        assert not expect_valid, f"{what}: documented-valid arguments raised ValueError: {e}"
        return None


def _check(out, shape, what):
    assert isinstance(out, torch.Tensor), f"{what}: returned {type(out).__name__}"
    assert tuple(out.shape) == tuple(shape), f"{what}: shape {tuple(out.shape)}, expected {tuple(shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite output"


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


size = st.integers(1, 7)
small_int = st.one_of(st.integers(1, 4), st.integers(-1, 0))  # mostly valid, sometimes not
int_or_pair = st.one_of(small_int, st.tuples(small_int, small_int))


# -- msa_conv2d ------------------------------------------------------------------------------------------

@st.composite
def op_case(draw):
    return dict(B=draw(st.integers(1, 2)), heads=draw(st.integers(1, 3)), H=draw(size), W=draw(size),
                d=draw(st.integers(1, 6)), kernel_size=draw(int_or_pair), dilation=draw(int_or_pair),
                stride=draw(int_or_pair), border=draw(st.sampled_from(BORDERS + ["reflect"])),
                layout=draw(st.sampled_from(["bhwd", "bhdhw"])), extra=draw(st.integers(0, 2)),
                kv_d=draw(st.sampled_from([0, 0, 0, 1])), seed=draw(st.integers(0, 2**16)))


def prop_op(c):
    g = torch.Generator().manual_seed(c["seed"])
    B, h, H, W, d = c["B"], c["heads"], c["H"], c["W"], c["d"]
    shape = (B, h, H, W, d) if c["layout"] == "bhwd" else (B, h, d, H, W)
    kshape = (B, h, H, W, d + c["kv_d"]) if c["layout"] == "bhwd" else (B, h, d + c["kv_d"], H, W)
    q, k, v = torch.randn(shape, generator=g), torch.randn(kshape, generator=g), torch.randn(shape, generator=g)
    ek = torch.randn(B, h, c["extra"], d, generator=g) if c["extra"] else None
    ev = torch.randn(B, h, c["extra"], d, generator=g) if c["extra"] else None
    ks, dil, st_ = _pair(c["kernel_size"]), _pair(c["dilation"]), _pair(c["stride"])
    positive = min(ks + dil + st_) >= 1
    valid = (positive and c["border"] in ("zeros", "mask", "circular") and c["kv_d"] == 0)
    out = _call("msa_conv2d", lambda: msa_conv2d(q, k, v, c["kernel_size"], dilation=c["dilation"],
                                                 stride=c["stride"], border=c["border"], extra_k=ek, extra_v=ev,
                                                 layout=c["layout"]), valid)
    if out is None:
        return
    assert positive and c["border"] != "reflect" and c["kv_d"] == 0, f"accepted invalid arguments {c}"
    Ho, Wo = (H - 1) // st_[0] + 1, (W - 1) // st_[1] + 1
    _check(out, (B, h, Ho, Wo, d) if c["layout"] == "bhwd" else (B, h, d, Ho, Wo), f"msa_conv2d {c}")


# -- MSAConv2d ---------------------------------------------------------------------------------------------

@st.composite
def conv_case(draw):
    return dict(cin=draw(st.integers(1, 8)), cout=draw(st.integers(1, 8)), kernel_size=draw(int_or_pair),
                stride=draw(st.integers(0, 3)), padding=draw(st.sampled_from([None, None, 0, 1, 2])),
                dilation=draw(st.integers(1, 2)), groups=draw(st.sampled_from([1, 1, 2, 4])),
                num_heads=draw(st.sampled_from([1, 1, 2, 3, 4])), border=draw(st.sampled_from(BORDERS)),
                attn_stride=draw(st.sampled_from([1, 1, 1, 2])), H=draw(size), W=draw(size),
                B=draw(st.integers(1, 2)), seed=draw(st.integers(0, 2**16)))


def prop_conv(c):
    torch.manual_seed(c["seed"])
    x = torch.randn(c["B"], c["cin"], c["H"], c["W"])

    def run():
        m = MSAConv2d(c["cin"], c["cout"], c["kernel_size"], stride=c["stride"], padding=c["padding"],
                      dilation=c["dilation"], groups=c["groups"], num_heads=c["num_heads"], border=c["border"],
                      attn_stride=c["attn_stride"])
        return m.eval()(x)

    ks = _pair(c["kernel_size"])
    pad = tuple(c["dilation"] * (k - 1) // 2 for k in ks) if c["padding"] is None else _pair(c["padding"])
    Hi, Wi = ((c["H"] - 1) // c["attn_stride"] + 1, (c["W"] - 1) // c["attn_stride"] + 1)
    Ho = (Hi + 2 * pad[0] - c["dilation"] * (ks[0] - 1) - 1) // max(c["stride"], 1) + 1
    Wo = (Wi + 2 * pad[1] - c["dilation"] * (ks[1] - 1) - 1) // max(c["stride"], 1) + 1
    valid = (min(ks) >= 1 and c["stride"] >= 1 and c["cin"] % c["groups"] == 0 and c["cout"] % c["groups"] == 0
             and c["cin"] % c["num_heads"] == 0 and c["border"] != "clamp")
    # a map smaller than the trailing convolution's kernel is a documented ValueError
    valid = valid and Ho >= 1 and Wo >= 1
    out = _call("MSAConv2d", run, valid)
    if out is None:
        return
    assert min(ks) >= 1 and c["stride"] >= 1, f"accepted invalid arguments {c}"
    _check(out, (c["B"], c["cout"], Ho, Wo), f"MSAConv2d {c}")


# -- MSAttention2d -----------------------------------------------------------------------------------------

@st.composite
def attn_case(draw):
    return dict(dim=draw(st.sampled_from([2, 4, 6, 8, 12])), num_heads=draw(st.sampled_from([1, 2, 3, 4])),
                kernel_size=draw(int_or_pair), dilation=draw(st.integers(1, 2)), stride=draw(st.integers(1, 2)),
                border=draw(st.sampled_from(BORDERS)),
                shift=draw(st.sampled_from([None, None, True, "kv", "input"])),
                inter_pool=draw(st.sampled_from([None, None, True, "grid", "local"])),
                H=draw(size), W=draw(size), B=draw(st.integers(1, 2)), seed=draw(st.integers(0, 2**16)))


def prop_attn(c):
    torch.manual_seed(c["seed"])
    x = torch.randn(c["B"], c["dim"], c["H"], c["W"])

    def run():
        m = MSAttention2d(c["dim"], c["num_heads"], kernel_size=c["kernel_size"], dilation=c["dilation"],
                          stride=c["stride"], border=c["border"], shift=c["shift"], inter_pool=c["inter_pool"])
        return m.eval()(x)

    ks = _pair(c["kernel_size"])
    valid = min(ks) >= 1 and c["dim"] % c["num_heads"] == 0 and c["border"] != "clamp" and c["shift"] is None
    out = _call("MSAttention2d", run, valid)
    if out is None:
        return
    assert min(ks) >= 1 and c["dim"] % c["num_heads"] == 0, f"accepted invalid arguments {c}"
    s = c["stride"]
    _check(out, (c["B"], c["dim"], (c["H"] - 1) // s + 1, (c["W"] - 1) // s + 1), f"MSAttention2d {c}")


# -- every token mixer --------------------------------------------------------------------------------------

@st.composite
def mixer_case(draw, names):
    return dict(name=draw(st.sampled_from(names)), dim=draw(st.sampled_from([4, 8, 12, 16])),
                num_heads=draw(st.sampled_from([1, 2, 3, 4])), H=draw(st.integers(1, 9)), W=draw(st.integers(1, 9)),
                B=draw(st.integers(1, 2)), seed=draw(st.integers(0, 2**16)))


@functools.lru_cache(maxsize=None)
def _mixer(name, dim, num_heads):
    torch.manual_seed(0)
    try:
        return get_token_mixer(name, dim, num_heads).eval()
    except ValueError as e:
        return e


def prop_mixer(c):
    torch.manual_seed(c["seed"])
    x = torch.randn(c["B"], c["dim"], c["H"], c["W"])

    def run():
        m = _mixer(c["name"], c["dim"], c["num_heads"])
        if isinstance(m, ValueError):
            raise m
        return m(x)

    out = _call(f"mixer:{c['name']}", run, False)
    if out is not None:
        _check(out, tuple(x.shape), f"token mixer {c}")


# -- create_model -------------------------------------------------------------------------------------------

SMALL_MODELS = [n for n in msaconv.list_models() if "nano" in n]


@st.composite
def model_case(draw, names):
    return dict(name=draw(st.sampled_from(names)), num_classes=draw(st.sampled_from([0, 1, 2, 10, -1])),
                in_chans=draw(st.sampled_from([1, 3, 4, 0])), size=draw(st.integers(8, 40)),
                B=draw(st.integers(1, 2)), global_pool=draw(st.sampled_from(["avg", "avg", "max", ""])),
                seed=draw(st.integers(0, 2**16)))


@functools.lru_cache(maxsize=64)
def _model(name, num_classes, in_chans, global_pool):
    torch.manual_seed(0)
    try:
        return msaconv.create_model(name, num_classes=num_classes, in_chans=in_chans, global_pool=global_pool).eval()
    except ValueError as e:
        return e


def prop_model(c):
    torch.manual_seed(c["seed"])

    def run():
        m = _model(c["name"], c["num_classes"], c["in_chans"], c["global_pool"])
        if isinstance(m, ValueError):
            raise m
        return m(torch.randn(c["B"], max(c["in_chans"], 1), c["size"], c["size"]))

    out = _call(f"create_model:{c['name']}", run, False)
    if out is None:
        return
    assert c["num_classes"] >= 0 and c["in_chans"] >= 1, f"accepted invalid arguments {c}"
    assert out.ndim == 2 and out.shape[0] == c["B"], f"create_model {c}: output {tuple(out.shape)}"
    if c["num_classes"] > 0:
        _check(out, (c["B"], c["num_classes"]), f"create_model {c}")


# every mixer and every small model gets its own share of the cases
PROPS = [("msa_conv2d", prop_op, [op_case()]), ("MSAConv2d", prop_conv, [conv_case()]),
         ("MSAttention2d", prop_attn, [attn_case()]),
         ("mixers", prop_mixer, [mixer_case([m]) for m in list_token_mixers()]),
         ("create_model", prop_model, [model_case([m]) for m in SMALL_MODELS])]
DEFAULT_N = {"msa_conv2d": 100, "MSAConv2d": 60, "MSAttention2d": 60, "mixers": 90, "create_model": 48}
SLOW_N = {"msa_conv2d": 4000, "MSAConv2d": 2000, "MSAttention2d": 2000, "mixers": 1620, "create_model": 480}


def _run(counts: dict[str, int]) -> int:
    before = sum(COUNTS.values())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, prop, strategies in PROPS:
            for strategy in strategies:
                s = settings(max_examples=max(2, counts[name] // len(strategies)), deadline=None, derandomize=True,
                             database=None, suppress_health_check=list(HealthCheck), print_blob=True)
                s(given(strategy)(prop))()
    finally:
        torch.set_num_threads(threads)
    n = sum(COUNTS.values()) - before
    print(f"fuzz cases: {n} ({', '.join(f'{k} {v}' for k, v in sorted(COUNTS.items()))})")
    return n


def test_fuzz_default():
    COUNTS.clear()
    assert _run(DEFAULT_N) >= 300
    assert all(COUNTS.get(f"mixer:{m}", 0) > 0 for m in list_token_mixers())


@pytest.mark.slow
def test_fuzz_10k():
    COUNTS.clear()
    assert _run(SLOW_N) >= 10_000
    assert all(COUNTS.get(f"mixer:{m}", 0) > 0 for m in list_token_mixers())


def test_msaconv2d_map_smaller_than_its_kernel_is_a_value_error():
    """Found by this fuzz: torch's RuntimeError from F.conv2d used to escape; now a ValueError naming the minimum."""
    with pytest.raises(ValueError, match=r"MSAConv2d: input H=1 padded by 0 on each side is smaller than the trailing "
                                         r"convolution's kernel extent dilation\*\(kernel_size-1\)\+1 = 2"):
        MSAConv2d(1, 1, 2, padding=0)(torch.randn(1, 1, 1, 1))
