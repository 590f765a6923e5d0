"""Interleaved A/B of two builds of the fused CPU kernels (two folders under torch's extension cache).

    python tools/ab_kernel.py OLD_BUILD_DIR NEW_BUILD_DIR [B,heads,H,k ...] [--threads 2] [--repeats 11] [--cpu-time]

Each shape runs forward and forward+backward with both builds alternately (ABAB..., then BABA.. on odd
rounds), so load drifts hit both; it prints the fastest time of each and the ratio new/old. Outputs are
checked to agree first. Wall time by default (what a user waits); ``--cpu-time`` reports this process's CPU
time instead, steadier on a shared 1-thread run but blind to threads waiting on each other.
A build folder is what ``msaconv.ops.backends._build`` prints when it compiles, e.g.
``~/.cache/torch_extensions/py311_cpu/msaconv_cpu_<hash>``; check out the old source, build it once, note the folder.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import time

import torch

DEFAULT_SHAPES = ["8,4,56,7", "256,1,32,3", "256,2,16,3", "256,4,8,3"]


def load(folder: str):
    so = glob.glob(os.path.join(os.path.expanduser(folder), "*.so"))
    if not so:
        raise SystemExit(f"ab_kernel: no .so in {folder!r}; pass a build folder of the kernel cache")
    spec = importlib.util.spec_from_file_location(os.path.basename(so[0])[:-3], so[0])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _layout_flag(m) -> tuple:
    """Builds since the kernels read any strides take a last ``bhwd_out`` argument (here False: channels-first)."""
    return (False,) if "bhwd_out" in (m.forward.__doc__ or "") else ()


def compare(old, new, B: int, h: int, H: int, k: int, repeats: int, clock) -> str:
    D = 32
    q, kk, v = (torch.randn(B, h, D, H, H) for _ in range(3))
    args = {m: (k, k, 1, 1, 1, 1, 0, D ** -0.5) + _layout_flag(m) for m in (old, new)}
    out, lse = old.forward(q, kk, v, None, None, *args[old])
    out_new, _ = new.forward(q, kk, v, None, None, *args[new])
    torch.testing.assert_close(out_new, out, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(out)
    calls = {"fwd": lambda m: m.forward(q, kk, v, None, None, *args[m]),
             "fwd+bwd": lambda m: (m.forward(q, kk, v, None, None, *args[m]),
                                   m.backward(g, q, kk, v, None, None, out, lse, *args[m]))}
    parts = []
    for tag, fn in calls.items():
        best = {"old": float("inf"), "new": float("inf")}
        for i in range(repeats):
            order = (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old))
            for name, mod in order:
                t0 = clock()
                fn(mod)
                best[name] = min(best[name], clock() - t0)
        parts.append(f"{tag} old {best['old'] * 1e3:.1f} new {best['new'] * 1e3:.1f} ms "
                     f"(new/old {best['new'] / best['old']:.2f})")
    return f"B{B} h{h} {H}x{H} k{k}: " + ", ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("shapes", nargs="*", default=DEFAULT_SHAPES, help="B,heads,H,k (head_dim 32, square maps)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--cpu-time", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    clock = time.process_time if a.cpu_time else time.perf_counter
    old, new = load(a.old), load(a.new)
    print(f"threads {a.threads}, {'CPU' if a.cpu_time else 'wall'} time, fastest of {a.repeats}")
    for s in a.shapes:
        B, h, H, k = (int(x) for x in s.split(","))
        print(compare(old, new, B, h, H, k, a.repeats, clock), flush=True)


if __name__ == "__main__":
    main()
