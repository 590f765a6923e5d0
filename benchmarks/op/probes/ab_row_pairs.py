"""Interleaved A/B of two builds of the fused CPU kernels' forward (fp32): the single-row kernel against the
row-pair kernel (or any two builds of the same entry points).

    python benchmarks/op/probes/ab_row_pairs.py OLD_BUILD_DIR NEW_BUILD_DIR [THREADS]

A build dir is a folder under torch's extension cache holding msaconv_cpu_<hash>.so. Prints, per shape, the
median time of each and the median / min / max of the paired ratios new/old over 15 interleaved rounds, and
the largest difference between the two outputs (the pair kernel sums the window's slots in another order).
"""
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

SHAPES = [(8, 4, 32, 56, 56, 7, "bhwd"), (8, 4, 32, 56, 56, 7, "bhdhw"), (64, 4, 32, 16, 16, 7, "bhwd"),
          (128, 2, 32, 8, 8, 3, "bhwd"), (128, 4, 32, 4, 4, 3, "bhwd"), (128, 8, 32, 2, 2, 3, "bhwd")]


def load(folder: str):
    so = next(Path(folder).glob("msaconv_cpu_*.so"))
    spec = importlib.util.spec_from_file_location(so.stem, so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def one(old, new, B, h, D, H, W, k, layout):
    g = torch.Generator().manual_seed(0)
    shape = (B, h, H, W, D) if layout == "bhwd" else (B, h, D, H, W)
    mk = (lambda: torch.randn(shape, generator=g).permute(0, 1, 4, 2, 3)) if layout == "bhwd" else (
        lambda: torch.randn(shape, generator=g))
    q, kk, v = mk(), mk(), mk()
    args = (None, None, k, k, 1, 1, 1, 1, 0, D ** -0.5, layout == "bhwd")
    diff = (old.forward(q, kk, v, *args)[0] - new.forward(q, kk, v, *args)[0]).abs().max().item()
    reps = max(1, int(2e7 / (B * h * D * H * W * k * k)))
    times = {id(old): [], id(new): []}
    for i in range(15):
        for m in ((old, new) if i % 2 == 0 else (new, old)):
            t0 = time.perf_counter()
            for _ in range(reps):
                m.forward(q, kk, v, *args)
            times[id(m)].append((time.perf_counter() - t0) / reps * 1e3)
    to, tn = times[id(old)], times[id(new)]
    r = [b / a for a, b in zip(to, tn)]
    print(f"B{B} h{h} D{D} {H}x{W} k{k} {layout}: old {statistics.median(to):.3f} ms, new {statistics.median(tn):.3f} ms, "
          f"new/old median {statistics.median(r):.3f} (min {min(r):.3f}, max {max(r):.3f}), max |diff| {diff:.1e}",
          flush=True)


if __name__ == "__main__":
    old, new = load(sys.argv[1]), load(sys.argv[2])
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    for s in SHAPES:
        one(old, new, *s)
