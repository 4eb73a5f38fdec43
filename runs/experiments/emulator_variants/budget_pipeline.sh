#!/bin/bash
# A global-mean height budget on a stochastic emulator, then the climate adjustment and the
# evaluation on the three held-out years (2002-2004), two seeds.
#   bash runs/experiments/emulator_variants/budget_pipeline.sh NOISE.safetensors OUTDIR [emulator-adjust options]
# e.g. the seed-0 network's noise stage: outputs/emulator_seed0/noise.safetensors, and
# --bias-statistic median for an adjustment that one run in a regime does not steer.
set -eu
N=$1
O=$2
shift 2
D="outputs/data/nature.zarr outputs/data/nature_2003-2004.zarr"
mkdir -p $O
cycler train emulator-budget $N --data outputs/data/nature.zarr --variables height --out $O/budget.safetensors > $O/budget.log 2>&1
cycler train emulator-adjust $O/budget.safetensors --data outputs/data/nature.zarr --members 8 --iterations 4 --no-progress "$@" --out $O/adjusted.safetensors > $O/fit.log 2>&1
for s in 0 1; do
  cycler evaluate emulator $O/adjusted.safetensors --data $D --years 2002 2003 2004 --free-run-members 8 --seed $s --json > $O/eval_seed$s.json 2> $O/eval_seed$s.err
done
echo done > $O/DONE
