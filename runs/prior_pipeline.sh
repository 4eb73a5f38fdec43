#!/bin/bash
# Rebuilds the shipped diffusion prior (emulators/weights/prior.safetensors) from the nature
# run: three stages of runs/prior.toml (2500 + 2000 + 2000 steps), each from the previous
# stage's weights (--init-from) with a new seed, warm-up and a lower peak learning rate,
# timed, then its evaluation (with --update-card). The seeds and batches are the recipe's;
# the thread count is the machine's.
#   bash runs/prior_pipeline.sh [OUTDIR] [THREADS]    (60 minutes with both cores of the idle machine)
# PRIOR_SET="--set KEY=VALUE ..." adds overrides to every stage (runs/experiments/prior_c28/);
# PRIOR_STAGES=N runs the first N stages only.
# Needs the nature run in outputs/data/nature.zarr (cycler nature --years 3 --out outputs/data/nature.zarr).
set -eu
O=${1:-outputs/prior_pipeline}
T=${2:-2}
BASE=runs/prior.toml
# Each stage's overrides of runs/prior.toml, one bash array per line (tests/test_edm.py reads them).
STAGE1=()
STAGE2=(--set seed=1 --set train.steps=2000 --set train.lr=5e-4 --set train.warmup_steps=50 --set train.max_minutes=50.0)
STAGE3=(--set seed=2 --set train.steps=2000 --set train.lr=5e-4 --set train.warmup_steps=50 --set train.max_minutes=38.0)
read -r -a EXTRA <<< "${PRIOR_SET:-}"
mkdir -p "$O"
minutes=()
init=()
start=$(date +%s)
for k in $(seq 1 "${PRIOR_STAGES:-3}"); do
    stage="STAGE$k[@]"
    t=$(date +%s)
    cycler train prior "$BASE" "${!stage}" "${EXTRA[@]}" --out "$O/stage$k" --threads "$T" \
        --max-minutes 1000 --resume "${init[@]}"
    minutes+=($(( ($(date +%s) - t) / 60 )))
    init=(--init-from "$O/stage$k/prior.safetensors")
done
list=$(IFS=,; echo "${minutes[*]}")
echo "{\"threads\": $T, \"minutes\": [$list], \"total_minutes\": $(( ($(date +%s) - start) / 60 ))}" | tee "$O/timing.json"
cycler evaluate prior "$O/stage$k/prior.safetensors" --data outputs/data/nature.zarr --threads "$T" \
    --plots "$O/stage$k/plots" --update-card --json > "$O/eval.json"
