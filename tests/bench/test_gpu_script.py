"""benchmarks/gpu (issue 20's device check), what can be checked without a GPU: argument parsing, the
JSON-lines writer and the markdown tables through ``--dry-run``, the FLOP count behind "% of peak", and
(marked ``triton``) ``--smoke``, every real job path once on CPU tensors under Triton's interpreter."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu" / "bench_gpu.py"
RUN_SH = ROOT / "benchmarks" / "gpu" / "run.sh"


def _module():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_arguments_are_checked():
    bench = _module()
    args = bench.parse_args(["--phases", "op,model", "--budget-s", "100"])
    assert args.phases == ["op", "model"] and args.budget_s == 100 and not args.dry_run
    assert bench.parse_args([]).phases == list(bench.PHASES)
    for bad in (["--phases", "op,bogus"], ["--budget-s", "0"], ["--dry-run", "--smoke"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_dry_run_writes_json_lines_and_a_table(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = [json.loads(line) for line in (tmp_path / "dry-run.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in recs}
    assert {"env", "check", "op", "compile", "model", "tiles", "peer_check"} <= kinds
    ops = [r for r in recs if r["kind"] == "op"]
    assert {r["impl"] for r in ops} == {"triton", "triton-atomic", "portable", "sdpa", "flex"}
    assert {r["dtype"] for r in ops} == {"bfloat16", "float32"} and {r["mode"] for r in ops} == {"fwd", "fwdbwd"}
    assert any(r["shape"].startswith("target 56x56 h4") for r in ops)
    assert {r["shape"] for r in ops} >= {f"tic_tiny {s}x{s} h{h} M16" for s, h in ((56, 2), (28, 4), (14, 8), (7, 16))}
    md = (tmp_path / "dry-run.md").read_text()
    assert "dry-run (no GPU)" in md and "dry run: synthetic numbers" in md
    for heading in ("## Check against the reference", "## Op times", "## Compile times", "## tic_tiny training step",
                    "## Forward tile sweep"):
        assert heading in md
    row = next(line for line in md.splitlines() if line.startswith("| target 56x56 h4 | bfloat16 | fwd | triton |"))
    assert "| 30.0 | 1.60 | 10.0% | 20.0% |" in row  # x portable, x flex, % of peak from the records


def test_table_reports_failures_and_skips():
    bench = _module()
    recs = [
        {"kind": "env", "gpu": "NVIDIA H200", "capability": "9.0", "memory_gib": 141, "torch": "2.11", "triton": "3.6",
         "commit": "abc", "date": "today", "peaks": bench.gpu_peaks("NVIDIA H200"), "measured_bandwidth": 4.0e12},
        {"kind": "check", "case": "case1", "dtype": "float32", "backward": "atomic", "errors": {"dq": 3e-4},
         "worst": 3e-4, "tol": 1e-5, "ok": False},
        {"kind": "op", "shape": "s", "dtype": "bfloat16", "mode": "fwd", "impl": "flex", "median_ms": None,
         "skipped": "budget"},
        {"kind": "skipped", "what": "tiles 64/64/4", "why": "budget (250 s of 250 s spent)"},
    ]
    md = bench.render_markdown(recs)
    assert "NVIDIA H200" in md and "989 TFLOP/s" in md and "4.80 TB/s" in md
    assert "FAILED case1 float32 atomic" in md and "| float32 | atomic | 1 | 0 | 3.0e-04 |" in md
    assert "tiles 64/64/4: budget" in md
    assert bench.gpu_peaks("NVIDIA H100 PCIe")["bandwidth"] == 2.0e12 and bench.gpu_peaks("Some GPU") is None


def test_percent_of_peak_counts_the_ops_own_flops():
    """Shape.flops is what torch's FLOP counter reports for msaconv's custom op (forward, and with backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from msaconv.ops import msa_conv2d

    bench = _module()
    shape = bench.Shape("t", 2, 3, 6, head_dim=4, kernel=3, extra=2)
    q, k, v = (torch.randn(2, 3, 6, 6, 4, requires_grad=True) for _ in range(3))
    ek, ev = (torch.randn(2, 3, 2, 4, requires_grad=True) for _ in range(2))
    with FlopCounterMode(display=False) as fc:
        out = msa_conv2d(q, k, v, 3, extra_k=ek, extra_v=ev, backend="portable")
    assert fc.get_total_flops() == shape.flops("fwd")
    with FlopCounterMode(display=False) as fc:
        msa_conv2d(q, k, v, 3, extra_k=ek, extra_v=ev, backend="portable").sum().backward()
    assert fc.get_total_flops() == shape.flops("fwdbwd")
    assert out.shape == q.shape


def test_run_sh_is_valid_bash_and_runs_the_script_from_the_root():
    assert subprocess.run(["bash", "-n", str(RUN_SH)], capture_output=True).returncode == 0
    text = RUN_SH.read_text()
    assert "benchmarks/gpu/bench_gpu.py" in text and "unset TRITON_INTERPRET" in text and "pytest" in text


@pytest.mark.triton
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_smoke_runs_every_job_path_on_the_cpu(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--phases", "check,op", "--out", str(tmp_path),
                          "--budget-s", "3000"], capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    recs = [json.loads(line) for line in (tmp_path / "smoke.jsonl").read_text().splitlines()]
    checks = [r for r in recs if r["kind"] == "check"]
    assert checks and all(r["ok"] for r in checks)
    ops = [r for r in recs if r["kind"] == "op"]
    assert {r["impl"] for r in ops} == {"triton", "triton-atomic", "portable", "sdpa", "flex"}
    skipped = [r for r in recs if r["kind"] == "skipped"]
    # FlexAttention has no backward on the CPU; everything else ran
    assert all("flex" in r["what"] and "fwdbwd" in r["what"] for r in skipped), skipped
    assert any(r["kind"] == "peer_check" and r["ok"] for r in recs)
