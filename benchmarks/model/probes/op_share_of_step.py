"""Where a training step and an evaluation forward of a model spend their CPU time, by operator (torch.profiler).

    python benchmarks/model/probes/op_share_of_step.py [MODEL] [BATCH] [IMG_SIZE] [THREADS] > OUT.md

Prints markdown: the command, commit, machine, then for a training step (SGD, channels-last, float32, the
experiments' plain BatchNorm, glibc's malloc set as ``msaconv train`` sets it) and an evaluation forward (inference mode) the operators with the most self CPU
time over two profiled calls after one warm-up call, and the share of msa_conv2d's forward and backward.
"""
from __future__ import annotations

import platform
import subprocess
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import msaconv

OPS = ("msaconv::msa_conv2d", "msaconv::msa_conv2d_backward", "GeneratedBackwardFor_msaconv_msa_conv2d_default")


def table(prof, top: int = 10) -> list[str]:
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    out = ["| operator | calls | self CPU ms | share |", "|---|---:|---:|---:|"]
    for e in rows[:top]:
        out.append(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e3:.1f} | {e.self_cpu_time_total / total:.1%} |")
    ours = sum(e.self_cpu_time_total for e in rows if e.key in OPS)
    out.append(f"\nmsa_conv2d (forward, backward and its autograd node): **{ours / total:.1%}** of "
               f"{total / 1e3:.0f} ms self CPU time.")
    return out


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "tic_conv_nano"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    from msaconv.train.allocator import keep_freed_memory

    malloc = keep_freed_memory()  # as msaconv train sets it
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    kwargs = {"size_bn": 0} if name.startswith(("tic_conv", "convnet")) else {}
    model = msaconv.create_model(name, **kwargs).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# Operator shares of a `{name}` step, batch {batch}, {size} px, {threads} thread(s)\n")
    print(f"Command: `python benchmarks/model/probes/op_share_of_step.py {name} {batch} {size} {threads}`; "
          f"git {commit}; torch {torch.__version__}; {platform.processor() or platform.machine()}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; float32, channels-last; two profiled calls after a warm-up; "
          f"{malloc}.\n")
    model.train()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        step()
    print("## Training step (SGD, plain BatchNorm)\n")
    print("\n".join(table(prof)))
    model.eval()
    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
            model(x)
    print("\n## Evaluation forward (inference mode)\n")
    print("\n".join(table(prof)))


if __name__ == "__main__":
    main()
