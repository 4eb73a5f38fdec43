#!/bin/bash
# Two networks combined (the default recipe, seeds 0 and 1): noise, adjustment, evaluation.
# bash runs/emulator_ens2_pipeline.sh OUTDIR W1 W2 [adjust options]
set -eu
O=$1; W1=$2; W2=$3; shift 3
D="runs/data/nature.zarr runs/data/nature_2003-2004.zarr"
mkdir -p $O
cycler train emulator-combine $W1 $W2 --out $O/emulator.safetensors > $O/combine.log 2>&1
cycler train emulator-noise $O/emulator.safetensors --data runs/data/nature.zarr --polar-rows 3 --out $O/noise.safetensors > $O/noise.log 2>&1
cycler train emulator-adjust $O/noise.safetensors --data runs/data/nature.zarr --members 8 --iterations 4 --no-progress "$@" --out $O/adjusted.safetensors > $O/fit.log 2>&1
for s in 0 1; do
  cycler evaluate emulator $O/adjusted.safetensors --data $D --years 2002 2003 2004 --free-run-members 8 --seed $s --json > $O/eval_seed$s.json 2> $O/eval_seed$s.err
done
echo done > $O/DONE
