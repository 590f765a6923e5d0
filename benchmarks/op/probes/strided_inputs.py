"""The fused CPU kernels on strided q, k, v read in place vs made contiguous first (the copy counted).

    python benchmarks/op/probes/strided_inputs.py [channels_last|bhwd]

channels_last: q, k, v are slices of a channels-last qkv map ([B, H, W, 3, heads, D] memory: planes with gaps);
bhwd: msa_conv2d's default layout seen through a permutation (dense planes, D inner). Shapes: the main job's
maps (batch 256, 3x3 windows). Each figure is the fastest of 3 medians of 15 calls, the variants interleaved.
"""

import sys
import time

import torch

from msaconv.ops._checks import check_msa_conv2d
from msaconv.ops.backends import _build, cpu

torch.set_num_threads(2)
ext, reason = _build.extension()
if ext is None:
    sys.exit(f"the fused kernels cannot run here: {reason}")
memory = sys.argv[1] if len(sys.argv) > 1 else "channels_last"


def bench(fn, n=15):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2] * 1e3


def views(B, h, H, D=32):
    if memory == "bhwd":
        return torch.randn(B, 3, h, H, H, D).permute(0, 1, 2, 5, 3, 4).unbind(1)
    x = torch.randn(B, 3 * h * D, H, H).contiguous(memory_format=torch.channels_last)
    return x.view(B, 3, h, D, H, H).unbind(1)


print(f"{memory}: {ext.build_info()}, git {__import__('msaconv.bench.common', fromlist=['x']).environment(None)['git_commit'][:7]}")
print("| shape | fwd in place ms | fwd copy + contiguous ms | ratio | bwd in place ms | bwd copy + contiguous ms | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|")
for B, h, H in [(256, 1, 32), (256, 2, 16), (256, 4, 8), (256, 4, 4)]:
    q, k, v = views(B, h, H)
    pb = check_msa_conv2d("probe", q, k, v, 3, 1, 1, "zeros", None, None, None, "bhdhw")
    args = cpu._args(pb)
    out, lse = ext.forward(q, k, v, None, None, *args, False)
    g = torch.randn_like(out)
    calls = {
        "fa": lambda: ext.forward(q, k, v, None, None, *args, False),
        "fb": lambda: ext.forward(q.contiguous(), k.contiguous(), v.contiguous(), None, None, *args, False),
        "ba": lambda: ext.backward(g, q, k, v, None, None, out, lse, *args, False),
        "bb": lambda: ext.backward(g, q.contiguous(), k.contiguous(), v.contiguous(), None, None, out, lse, *args, False),
    }
    times = {n: [] for n in calls}
    for _ in range(3):
        for n, f in calls.items():
            times[n].append(bench(f))
    best = {n: min(t) for n, t in times.items()}
    print(f"| B{B} h{h} {H}x{H} | {best['fa']:.2f} | {best['fb']:.2f} | {best['fa'] / best['fb']:.2f} | "
          f"{best['ba']:.2f} | {best['bb']:.2f} | {best['ba'] / best['bb']:.2f} |", flush=True)
