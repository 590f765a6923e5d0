#!/usr/bin/env bash
# Times the README's main command on a fresh clone, in a fresh venv, with an empty kernel cache (so the
# first-use build of the fused kernels is included), and records the wall time next to the run folder.
#
#   bash tools/time_main_job.sh [WORKDIR]      # default WORKDIR: a new folder under /tmp
#   MSACONV_TIMING_OUT=results/main_job/timing_<name> bash tools/time_main_job.sh   # another machine's timing,
#                                                    # kept beside the shipped run's (docs/main_job.md lists it)
#
# Writes results/main_job/fresh_clone/ (the run's config.yaml, metrics.jsonl, summary.json) and
# results/main_job/fresh_clone/timing.json (the command, wall seconds of each phase, the commit, the CPU and
# the load average before and after). Run it on an otherwise idle machine: the wall time is the measurement.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/msaconv-fresh.XXXXXX)}
COMMIT=$(git -C "$REPO" rev-parse --short=12 HEAD)
git clone -q "$REPO" "$WORK/msaconv"
cd "$WORK/msaconv"
export TORCH_EXTENSIONS_DIR="$WORK/torch_extensions"   # empty: the kernels build on first use, as for a new user
export MSACONV_CACHE_DIR="$WORK/msaconv_cache"          # empty: backend=None measures each shape, as for a new user
LOAD0=$(cut -d' ' -f1 /proc/loadavg)
T0=$(date +%s.%N)
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
pip install -q torch==2.13.0
pip install -q ".[train]"
T1=$(date +%s.%N)
msaconv > main.log 2>&1
T2=$(date +%s.%N)
LOAD1=$(cut -d' ' -f1 /proc/loadavg)
RUN=$(ls -d runs/*/ | head -1)
OUT="$REPO/${MSACONV_TIMING_OUT:-results/main_job/fresh_clone}"
mkdir -p "$OUT"
cp "$RUN/config.yaml" "$RUN/metrics.jsonl" "$RUN/summary.json" "$OUT/"
python3 - "$OUT/timing.json" "$COMMIT" "$T0" "$T1" "$T2" "$LOAD0" "$LOAD1" <<'PY'
import json, platform, sys
out, commit, t0, t1, t2, l0, l1 = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:8])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
json.dump({"command": 'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install ".[train]" && msaconv',
           "commit": commit, "install_seconds": round(t1 - t0, 1), "main_job_seconds": round(t2 - t1, 1),
           "total_seconds": round(t2 - t0, 1), "kernel_cache": "empty (first-use build included)", "backend_choices": "empty (measured on first use)",
           "cpu_model": cpu, "cpus": len([l for l in open("/proc/cpuinfo") if l.startswith("processor")]),
           "isa": "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other",
           "loadavg_1m_before": l0, "loadavg_1m_after": l1}, open(out, "w"), indent=1)
print(open(out).read())
PY
