#!/bin/bash
# The emulator recipe on three training years (2000, 2001, 2003; seed 0): network, noise
# (3 polar rows), adjustment (4 iterations), evaluation on the held-out 2002 and 2004.
#   bash runs/experiments/emulator_variants/y3_pipeline.sh [OUTDIR]     (network about 30 minutes)
# Needs the continuation outputs/data/nature_2003-2004.zarr (cycler nature --continue-from).
set -eu
# Overrides of runs/emulator.toml (tests/test_emulator_training.py reads them).
Y3=(--set seed=0 --set 'data.path=["outputs/data/nature.zarr", "outputs/data/nature_2003-2004.zarr"]' --set 'data.train_years=[2000, 2001, 2003]' --set 'data.valid_years=[2002, 2004]')
O=${1:-outputs/emulator_y3}
D="outputs/data/nature.zarr outputs/data/nature_2003-2004.zarr"
mkdir -p $O
cycler train emulator runs/emulator.toml "${Y3[@]}" --out $O > $O/train.log 2>&1
cycler train emulator-noise $O/emulator.safetensors --data $D --polar-rows 3 --out $O/noise.safetensors > $O/noise.log 2>&1
cycler train emulator-adjust $O/noise.safetensors --data $D --members 8 --iterations 4 --no-progress --out $O/adjusted.safetensors > $O/fit.log 2>&1
for s in 0 1; do
  cycler evaluate emulator $O/adjusted.safetensors --data $D --years 2002 2004 --free-run-members 8 --seed $s --json > $O/eval_seed$s.json 2> $O/eval_seed$s.err
done
echo done > $O/DONE
