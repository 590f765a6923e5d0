"""Interleaved A/B of training steps with glibc's malloc as it is and as ``msaconv train`` sets it
(``msaconv.train.allocator.keep_freed_memory``): time per step and minor page faults per step.

    python benchmarks/model/probes/malloc_ab.py [ROUNDS] [THREADS] > OUT.md

Each (setting, arm, round) runs in a fresh process (the allocator's state is per process): warm-up steps, then
timed steps over the arm's training sizes, one size per step. Prints markdown with the command, commit and machine.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

ARMS = {  # name -> (model, model kwargs, batch, training sizes, bf16 autocast)
    "experiments: tic_conv_nano fp32 b256, 32 px": ("tic_conv_nano", {"size_bn": 0}, 256, (32,), False),
    "experiments: tic_conv_nano fp32 b256, 24/32/40 px": ("tic_conv_nano", {"size_bn": 0}, 256, (24, 32, 40), False),
    "experiments: tic_nano fp32 b256, 32 px": ("tic_nano", {}, 256, (32,), False),
    "main job: tic_conv_nano bf16 b128, 24-48 px": ("tic_conv_nano", {}, 128, (24, 32, 40, 48), True),
}
WARMUP, STEPS = 4, 12


def worker(arm: str, tune: bool, threads: int) -> dict:
    import resource
    import time

    import torch

    import msaconv
    from msaconv.train.allocator import keep_freed_memory

    line = keep_freed_memory({"MSACONV_MALLOC_TUNE": "1" if tune else "0"})
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    name, kwargs, batch, sizes, bf16 = ARMS[arm]
    model = msaconv.create_model(name, **kwargs).train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    xs = [torch.randn(batch, 3, s, s).contiguous(memory_format=torch.channels_last) for s in sizes]
    y = torch.randint(0, 10, (batch,))

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(xs[i % len(xs)]), y)
        loss.backward()
        opt.step()

    for i in range(WARMUP):
        step(i)
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for i in range(STEPS):
        step(i)
    return {"ms": (time.perf_counter() - t0) / STEPS * 1e3,
            "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / STEPS, "malloc": line}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]))))
        return
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    import torch

    print("# glibc malloc as it is against `keep_freed_memory` (msaconv train's setting), training steps\n")
    print(f"Command: `python benchmarks/model/probes/malloc_ab.py {rounds} {threads}`; git {commit}; torch "
          f"{torch.__version__}; {platform.machine()}, {os.cpu_count()} CPUs, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, glibc {platform.libc_ver()[1]}; {threads} thread(s); each "
          f"cell a fresh process, {WARMUP} warm-up then {STEPS} timed steps (sizes in turn), the two settings "
          f"interleaved, {rounds} rounds; ratio = tuned / as is, per round.\n")
    print("| arm | as is: ms/step | tuned: ms/step | ratio per round (median) | minor faults/step as is | tuned |")
    print("|---|---:|---:|---:|---:|---:|")
    for arm in ARMS:
        res: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(rounds):
            for tune in (False, True):
                out = subprocess.run([sys.executable, __file__, "--worker", arm, "1" if tune else "0", str(threads)],
                                     capture_output=True, text=True, env=env, check=True).stdout
                res[tune].append(json.loads(out.strip().splitlines()[-1]))
        ratios = [b["ms"] / a["ms"] for a, b in zip(res[False], res[True])]
        med = {t: statistics.median(r["ms"] for r in res[t]) for t in res}
        flt = {t: statistics.median(r["faults"] for r in res[t]) for t in res}
        print(f"| {arm} | {med[False]:.0f} | {med[True]:.0f} | {', '.join(f'{r:.2f}' for r in ratios)} "
              f"({statistics.median(ratios):.2f}) | {flt[False]:.0f} | {flt[True]:.0f} |")
    print(f"\nTuned: {res[True][0]['malloc']}")


if __name__ == "__main__":
    main()
