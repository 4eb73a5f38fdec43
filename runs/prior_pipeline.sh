#!/bin/bash
# Rebuilds the shipped diffusion prior (emulators/weights/prior.safetensors) from the
# nature run: three stages (runs/prior.toml, runs/prior_more.toml, runs/prior_stage3.toml;
# 2500 + 2000 + 2000 steps, each stage from the previous one's weights), timed, then its
# evaluation. The seeds and batches are the configs'; the thread count is the machine's.
# bash runs/prior_pipeline.sh [OUTDIR] [THREADS]   (60 minutes with both cores of the idle machine)
# PRIOR_CONFIGS="A.toml B.toml ..." runs another chain of stages the same way.
set -eu
O=${1:-runs/prior_pipeline}
T=${2:-2}
CONFIGS=${PRIOR_CONFIGS:-runs/prior.toml runs/prior_more.toml runs/prior_stage3.toml}
mkdir -p "$O"
minutes=()
init=()
k=0
start=$(date +%s)
for config in $CONFIGS; do
    k=$((k + 1))
    t=$(date +%s)
    cycler train prior "$config" --out "$O/stage$k" --threads "$T" --max-minutes 1000 --resume "${init[@]}"
    minutes+=($(( ($(date +%s) - t) / 60 )))
    init=(--init-from "$O/stage$k/prior.safetensors")
done
list=$(IFS=,; echo "${minutes[*]}")
echo "{\"threads\": $T, \"minutes\": [$list], \"total_minutes\": $(( ($(date +%s) - start) / 60 ))}" | tee "$O/timing.json"
cycler evaluate prior "$O/stage$k/prior.safetensors" --data runs/data/nature.zarr --threads "$T" \
    --plots "$O/stage$k/plots" --update-card --json > "$O/eval.json"
