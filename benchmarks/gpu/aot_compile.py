"""Compile the triton backend's kernels for an NVIDIA GPU ahead of time, on a machine without one.

Triton's interpreter (the CPU tests) never runs the real compiler, so a kernel that the NVIDIA backend
rejects (a ``tl.dot`` shape, a type, a layout) would only show on the GPU. This script runs the backend's
host code with CPU tensors, records every kernel launch it makes (arguments, constexprs, warps) instead of
launching, then hands each to ``triton.compile`` for ``--arch`` (default sm_90, the H200) and reads the
register and spill counts from the ptxas that ships in the triton wheel. Needs triton, no GPU, and
TRITON_INTERPRET unset.

    python benchmarks/gpu/aot_compile.py            # every configuration below
    python benchmarks/gpu/aot_compile.py --quick    # two of them (the CI test)
    python benchmarks/gpu/aot_compile.py --json out.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

#: (dtype, border, kernel, dilation, stride, extra keys M, head_dim, deterministic, layout)
CONFIGS = [
    ("bfloat16", "zeros", 7, 1, 1, 16, 32, True, "bhdhw"),  # tic_tiny's blocks (IPM 4x4 grid, channels-first)
    ("float32", "circular", (3, 5), (2, 1), (2, 3), 4, 8, False, "bhwd"),
    ("bfloat16", "zeros", 7, 1, 1, 0, 32, True, "bhwd"),  # the target shape's kernel
    ("float32", "zeros", 7, 1, 1, 0, 32, True, "bhwd"),
    ("bfloat16", "clamp", 7, 2, 1, 16, 32, False, "bhwd"),
    ("float16", "circular", (3, 5), (2, 1), (2, 1), 4, 48, True, "bhwd"),
    ("bfloat16", "mask", 5, 1, 2, 16, 128, True, "bhwd"),
    ("float32", "mask", (2, 3), 1, (1, 3), 1, 8, False, "bhwd"),
]
QUICK = CONFIGS[:2]

_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float64: "*fp64"}


def _record_launches(kern) -> list:
    launches: list = []

    class _Recorder:
        recorder = True

        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((self.fn, grid, args, kw))

    for name in ("_fwd", "_bwd_dq", "_bwd_dkv", "_bwd_extra"):
        fn = getattr(kern, name)
        setattr(kern, name, _Recorder(fn.fn if getattr(fn, "recorder", False) else fn))  # once per kernel
    return launches


def _source(fn, args, kw):
    """An ``ASTSource`` as the JIT would build it (runtime ints equal to 1 specialised as constants)."""
    from triton.compiler import ASTSource

    kw = dict(kw)
    warps = kw.pop("num_warps", 4)
    names = fn.arg_names
    vals = dict(zip(names, args))
    vals.update(kw)
    sig, const = {}, {}
    for i, n in enumerate(names):
        v = vals[n]
        if fn.params[i].is_constexpr:
            sig[n], const[n] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[n] = _PTR[v.dtype]
        elif isinstance(v, bool):
            sig[n] = "i1"
        elif isinstance(v, int):
            if v == 1:
                sig[n], const[n] = "constexpr", 1
            else:
                sig[n] = "i32"
        elif isinstance(v, float):
            sig[n] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {n}={v!r}")
    return ASTSource(fn, sig, const), warps


def _ptxas_info(ptx: str, arch: int) -> dict:
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", "-v", src, "-o",
                            os.path.join(d, "k.o")], capture_output=True, text=True, timeout=300)
    regs = re.findall(r"Used (\d+) registers", r.stderr)
    spills = re.findall(r"(\d+) bytes spill stores", r.stderr)
    return {"registers": int(regs[-1]) if regs else None, "spill_bytes": int(spills[-1]) if spills else None}


def compile_config(cfg, arch: int = 90) -> list[dict]:
    """Compile every kernel one call of ``cfg`` launches (forward and backward); one record per kernel."""
    import triton
    from triton.backends.compiler import GPUTarget

    from msaconv.ops._checks import check_msa_conv2d
    from msaconv.ops.backends import triton as tb

    kern, reason = tb.kernels()
    if kern is None:
        raise SystemExit(f"aot_compile: {reason}")
    if kern.INTERPRETED:
        raise SystemExit("aot_compile: unset TRITON_INTERPRET (the interpreter has no compiler)")
    launches = _record_launches(kern)
    dtype_name, border, kernel, dilation, stride, M, D, det, layout = cfg
    dtype = getattr(torch, dtype_name)
    B, h, H, W = 2, 2, 16, 15
    q, k, v = (torch.randn(B, h, H, W, D).to(dtype) for _ in range(3))
    if layout == "bhdhw":  # bhwd views of channels-first memory, as the dispatcher hands them over
        q, k, v = (t.permute(0, 1, 4, 2, 3).contiguous().permute(0, 1, 3, 4, 2) for t in (q, k, v))
    ek = ev = None
    if M:
        ek, ev = (torch.randn(B, h, M, D).to(dtype) for _ in range(2))
    pb = check_msa_conv2d("aot", q, k, v, kernel, dilation, stride, border, None, ek, ev, "bhwd")
    old = tb.BACKEND.deterministic
    tb.BACKEND.deterministic = det
    try:
        out, lse = tb.BACKEND.forward_with_stats(q, k, v, ek, ev, pb)  # launches are recorded, not run
        tb.BACKEND.backward(torch.zeros_like(out), q, k, v, ek, ev, out, lse, pb)
    finally:
        tb.BACKEND.deterministic = old
    target = GPUTarget("cuda", arch, 32)
    records = []
    for fn, grid, args, kw in launches:
        src, warps = _source(fn, args, kw)
        t0 = time.perf_counter()
        compiled = triton.compile(src, target=target, options={"num_warps": warps})
        rec = {"kind": "aot_compile", "kernel": fn.__name__, "arch": f"sm_{arch}", "config": list(map(str, cfg)),
               "num_warps": warps, "compile_s": round(time.perf_counter() - t0, 2),
               "shared_bytes": compiled.metadata.shared, "triton": triton.__version__,
               **_ptxas_info(compiled.asm["ptx"], arch)}
        records.append(rec)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200)")
    p.add_argument("--quick", action="store_true", help="two configurations only")
    p.add_argument("--json", help="append the records to this JSON-lines file")
    args = p.parse_args(argv)
    records = []
    for cfg in QUICK if args.quick else CONFIGS:
        for rec in compile_config(cfg, args.arch):
            records.append(rec)
            print(f"{rec['kernel']:11s} {' '.join(rec['config']):55s} warps {rec['num_warps']}  "
                  f"regs {rec['registers']}  spills {rec['spill_bytes']} B  smem {rec['shared_bytes']} B  "
                  f"{rec['compile_s']:.1f} s", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    print(f"compiled {len(records)} kernels for sm_{args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
