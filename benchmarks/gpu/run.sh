#!/usr/bin/env bash
# Issue 20's device check, one command from the repository root:  bash benchmarks/gpu/run.sh
#
# Needs torch with CUDA and triton (the H200 machine: PyTorch 2.11, Triton 3.6) and `pip install --no-deps -e .`;
# downloads nothing. Under 5 minutes: bench_gpu.py stops starting jobs at its budget and records what it skipped,
# then the triton-marked tests run on CUDA in whatever time is left (when pytest is installed).
# Writes benchmarks/gpu/results/<gpu>.jsonl, <gpu>.md, nvidia-smi.txt and pytest.txt.
# Knobs: MSACONV_GPU_BUDGET_S (bench budget, default 215), MSACONV_GPU_TOTAL_S (whole run, default 285),
# MSACONV_GPU_OUT (results folder); extra arguments go to bench_gpu.py (e.g. --phases check,op).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${MSACONV_GPU_OUT:-benchmarks/gpu/results}
BUDGET=${MSACONV_GPU_BUDGET_S:-215}
TOTAL=${MSACONV_GPU_TOTAL_S:-285}
START=$(date +%s)
mkdir -p "$OUT"
unset TRITON_INTERPRET  # the real GPU kernels, not the interpreter
export PYTHONUNBUFFERED=1

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not available" > "$OUT/nvidia-smi.txt"
python - <<'EOF' || { echo "run.sh: preflight failed (torch with CUDA, triton and msaconv are needed)"; exit 2; }
import torch
import msaconv  # noqa: F401
from msaconv.ops import available_backends
assert torch.cuda.is_available(), "no CUDA device"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
print("backends on cuda:", available_backends("cuda", torch.bfloat16))
EOF

timeout --signal=INT --kill-after=15 $((BUDGET + 45)) python benchmarks/gpu/bench_gpu.py --out "$OUT" --budget-s "$BUDGET" "$@"
rc=$?
echo "bench_gpu.py exit $rc"

LEFT=$(( TOTAL - ($(date +%s) - START) ))
if python -c "import pytest" 2>/dev/null && [ "$LEFT" -gt 30 ]; then
  echo "== pytest -m triton on CUDA (${LEFT} s left)"
  MSACONV_TRITON_CASES=${MSACONV_TRITON_CASES:-60} timeout --kill-after=10 "$LEFT" \
    python -m pytest tests/ops/test_triton.py -m triton -q -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
  prc=$?
  tail -n 5 "$OUT/pytest.txt"
  if [ "$prc" -eq 124 ]; then echo "pytest: stopped at the time limit (see $OUT/pytest.txt)"; prc=0; fi
  [ "$prc" -ne 0 ] && [ "$rc" -eq 0 ] && rc=$prc
else
  echo "pytest: not run (not installed, or ${LEFT} s left)" | tee "$OUT/pytest.txt"
fi
echo "run.sh: $(( $(date +%s) - START )) s; results in $OUT"
exit "$rc"
