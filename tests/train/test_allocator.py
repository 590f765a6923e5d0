"""msaconv train's malloc setting (``msaconv.train.allocator``): when it applies, and that it stops the page faults."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from msaconv.train.allocator import ENV, keep_freed_memory, why_not

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize("env, said", [
    ({ENV: "0"}, f"{ENV}=0"),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "the environment sets it (MALLOC_TRIM_THRESHOLD_)"),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"}, "the environment sets it (GLIBC_TUNABLES)"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "the environment sets it (LD_PRELOAD)"),
])
def test_the_users_own_choice_is_left_alone(env, said):
    if not GLIBC:
        pytest.skip("not glibc: nothing is ever tuned")
    assert why_not(env) == said
    assert keep_freed_memory(env) == f"malloc: left as it is ({said})"


def test_a_clean_environment_on_glibc_is_tuned():
    if not GLIBC:
        assert why_not({}) == "the C library is not glibc"
        return
    assert why_not({}) is None and why_not({ENV: "1", "GLIBC_TUNABLES": "glibc.cpu.x86_shstk=on"}) is None
    # in a fresh process: every mallopt call is accepted
    out = subprocess.run([sys.executable, "-c", "from msaconv.train.allocator import keep_freed_memory as k; "
                          "print(k({}))"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("malloc: keeps freed memory (mmap threshold 32 MiB, trim threshold 1 GiB, top pad 256 MiB")
    assert "refused" not in out


STEPS = """
import json, resource, sys, torch, msaconv
from msaconv.train.allocator import keep_freed_memory
keep_freed_memory({"MSACONV_MALLOC_TUNE": sys.argv[1]})
torch.set_num_threads(1)
torch.manual_seed(0)
m = msaconv.create_model("tic_conv_nano", size_bn=0).train()
opt = torch.optim.SGD(m.parameters(), lr=0.05)
xs = [torch.randn(64, 3, s, s) for s in (24, 32, 40)]
y = torch.randint(0, 10, (64,))
def step(x):
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
for x in xs * 2:
    step(x)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for x in xs * 2:
    step(x)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0))
"""


@pytest.mark.slow
def test_tuned_steps_stop_faulting_their_memory_in_again():
    """Multi-size steps of tic_conv_nano after a warm-up: glibc as it is maps and faults in tens of thousands of
    pages per step; tuned, the freed blocks stay and are reused (here 20,000-38,000 faults against 6-5,600 over
    the six steps after a warm-up of six: the heap still settles in some runs)."""
    if not GLIBC:
        pytest.skip("not glibc")
    faults = {}
    for tune in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", STEPS, tune], capture_output=True, text=True, check=True)
        faults[tune] = json.loads(out.stdout.strip().splitlines()[-1])
    assert faults["1"] * 3 < faults["0"], faults
