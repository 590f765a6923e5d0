#!/usr/bin/env bash
# Ships the main job's run, made on a fresh clone by `bash tools/time_main_job.sh WORKDIR`, inside the package:
# its final weights become src/msaconv/models/pretrained/tic_conv_nano/model.safetensors (SHA-256 written into
# pretrained_cfg in src/msaconv/models/tic_conv.py), its run folder (config, metrics, summary, plots; no
# optimizer state) goes beside them, `msaconv eval` of the shipped file at 16-64 px under both protocols goes to
# results/main_job/shipped_eval.json, and docs/main_job.md is regenerated.
#
#   bash tools/time_main_job.sh /tmp/fresh && bash tools/ship_main_job.sh /tmp/fresh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:?usage: ship_main_job.sh WORKDIR (the folder given to tools/time_main_job.sh)}
RUN=$(ls -d "$WORK"/msaconv/runs/*/ | head -1)
[ -f "$RUN/summary.json" ] || { echo "ship_main_job: no finished run in $RUN" >&2; exit 2; }
LAST=$(ls "$RUN"/last-*.safetensors | grep -v '\.state\.' | tail -1)
DST="$REPO/src/msaconv/models/pretrained/tic_conv_nano"
cp "$LAST" "$DST/model.safetensors"
for f in config.yaml metrics.jsonl summary.json curves.png resolution.png; do cp "$RUN/$f" "$DST/$f"; done
SHA=$(sha256sum "$DST/model.safetensors" | cut -d' ' -f1)
sed -i -E "s/(\"tic_conv_nano\": dict\(file=.*sha256=\")[0-9a-f]{64}/\1$SHA/" "$REPO/src/msaconv/models/tic_conv.py"
grep -q "$SHA" "$REPO/src/msaconv/models/tic_conv.py" || { echo "ship_main_job: sha256 not written" >&2; exit 2; }
cd "$REPO"
msaconv eval --checkpoint src/msaconv/models/pretrained/tic_conv_nano/model.safetensors --img-size 16 24 32 40 48 64 \
    --protocol resize canvas --json results/main_job/shipped_eval.json
python tools/main_job_report.py
echo "shipped $LAST (sha256 $SHA)"
