#!/bin/bash
# A fourth stage of the shipped prior, from stage 3's weights, on the same two training
# years (STAGE4) or on four (STAGE4Y: 2000, 2001, 2003, 2004; 2002 still held out).
#   bash runs/experiments/prior_stage4/run.sh STAGE4|STAGE4Y [STAGE3_WEIGHTS] [OUTDIR] [THREADS]
# STAGE3_WEIGHTS defaults to outputs/prior_pipeline/stage3/prior.safetensors
# (bash runs/prior_pipeline.sh); STAGE4Y needs outputs/data/nature_2003-2004.zarr.
set -eu
# Overrides of runs/prior.toml, one bash array per line (tests/test_edm.py reads them).
STAGE4=(--set seed=3 --set train.steps=2000 --set train.lr=3e-4 --set train.warmup_steps=50 --set train.max_minutes=45.0)
STAGE4Y=(--set seed=4 --set 'data.path=["outputs/data/nature.zarr", "outputs/data/nature_2003-2004.zarr"]' --set 'data.train_years=[2000, 2001, 2003, 2004]' --set train.steps=2000 --set train.lr=5e-4 --set train.warmup_steps=50 --set train.max_minutes=45.0)
V=${1:?usage: run.sh STAGE4|STAGE4Y [STAGE3_WEIGHTS] [OUTDIR] [THREADS]}
stage="$V[@]"
O=${3:-outputs/prior_$(echo $V | tr A-Z a-z)}
mkdir -p "$O"
cycler train prior runs/prior.toml "${!stage}" --init-from "${2:-outputs/prior_pipeline/stage3/prior.safetensors}" \
    --out "$O" --threads "${4:-2}" --resume
cycler evaluate prior "$O/prior.safetensors" --data outputs/data/nature.zarr --threads "${4:-2}" --json > "$O/eval.json"
