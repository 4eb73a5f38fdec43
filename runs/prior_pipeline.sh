#!/bin/bash
# Rebuilds the shipped diffusion prior (emulators/weights/prior.safetensors) from the
# nature run: three stages (runs/prior.toml, runs/prior_more.toml, runs/prior_stage3.toml;
# 2500 + 2000 + 2000 steps, each stage from the previous one's weights), timed, then its
# evaluation. The seeds and batches are the configs'; the thread count is the machine's.
# bash runs/prior_pipeline.sh [OUTDIR] [THREADS]     (about 85 minutes with both cores of the idle machine)
set -eu
O=${1:-runs/prior_pipeline}
T=${2:-2}
mkdir -p "$O"
t0=$(date +%s)
cycler train prior runs/prior.toml --out "$O/stage1" --threads "$T" --max-minutes 1000 --resume
t1=$(date +%s)
cycler train prior runs/prior_more.toml --out "$O/stage2" --threads "$T" --max-minutes 1000 --resume \
    --init-from "$O/stage1/prior.safetensors"
t2=$(date +%s)
cycler train prior runs/prior_stage3.toml --out "$O/stage3" --threads "$T" --max-minutes 1000 --resume \
    --init-from "$O/stage2/prior.safetensors"
t3=$(date +%s)
echo "{\"threads\": $T, \"minutes\": [$(( (t1 - t0) / 60 )), $(( (t2 - t1) / 60 )), $(( (t3 - t2) / 60 ))], \"total_minutes\": $(( (t3 - t0) / 60 ))}" | tee "$O/timing.json"
cycler evaluate prior "$O/stage3/prior.safetensors" --data runs/data/nature.zarr --threads "$T" \
    --plots "$O/stage3/plots" --update-card --json > "$O/eval.json"
