#!/bin/bash
# Networks of the default recipe trained with different seeds, combined (their tendencies
# averaged: cycler train emulator-combine), then noise, adjustment and two three-year
# evaluations, as for a single network (docs/emulator.md).
# bash runs/experiments/emulator_variants/combine_pipeline.sh OUTDIR W1 W2 [W3 ...]
#   e.g. W1 W2 = outputs/emulator_seed0/emulator.safetensors outputs/emulator_seed1/emulator.safetensors
# ADJUST_OPTS="--bias-statistic median" bash runs/experiments/emulator_variants/combine_pipeline.sh ...
set -eu
O=$1; shift
D="outputs/data/nature.zarr outputs/data/nature_2003-2004.zarr"
mkdir -p $O
cycler train emulator-combine "$@" --out $O/emulator.safetensors > $O/combine.log 2>&1
cycler train emulator-noise $O/emulator.safetensors --data outputs/data/nature.zarr --polar-rows 3 --out $O/noise.safetensors > $O/noise.log 2>&1
cycler train emulator-adjust $O/noise.safetensors --data outputs/data/nature.zarr --members 8 --iterations 4 --no-progress ${ADJUST_OPTS:-} --out $O/adjusted.safetensors > $O/fit.log 2>&1
for s in 0 1; do
  cycler evaluate emulator $O/adjusted.safetensors --data $D --years 2002 2003 2004 --free-run-members 8 --seed $s --json > $O/eval_seed$s.json 2> $O/eval_seed$s.err
done
echo done > $O/DONE
