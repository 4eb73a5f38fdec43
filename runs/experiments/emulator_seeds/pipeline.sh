#!/bin/bash
# The shipped emulator's recipe (runs/emulator.toml, seed 2) with another training seed:
# network, noise (3 polar rows), climate adjustment (4 iterations), and the evaluation on
# the held-out years 2002-2004 with two seeds of the free runs.
#   bash runs/experiments/emulator_seeds/pipeline.sh SEED [OUTDIR]     (SEED 0 or 1; about 45 minutes)
# OUTDIR defaults to outputs/emulator_seed$SEED; outputs/emulator_seed0 is the first stage
# of runs/experiments/emulator_variants/.
set -eu
# The draws, as overrides of runs/emulator.toml (tests/test_emulator_training.py reads them).
SEED0=(--set seed=0)
SEED1=(--set seed=1)
S=${1:?usage: pipeline.sh SEED [OUTDIR]}
O=${2:-outputs/emulator_seed$S}
draw="SEED$S[@]"
D="outputs/data/nature.zarr outputs/data/nature_2003-2004.zarr"
mkdir -p $O
cycler train emulator runs/emulator.toml "${!draw}" --out $O > $O/train.log 2>&1
cycler train emulator-noise $O/emulator.safetensors --data outputs/data/nature.zarr --polar-rows 3 --out $O/noise.safetensors > $O/noise.log 2>&1
cycler train emulator-adjust $O/noise.safetensors --data outputs/data/nature.zarr --members 8 --iterations 4 --no-progress --out $O/adjusted.safetensors > $O/fit.log 2>&1
for s in 0 1; do
  cycler evaluate emulator $O/adjusted.safetensors --data $D --years 2002 2003 2004 --free-run-members 8 --seed $s --json > $O/eval_seed$s.json 2> $O/eval_seed$s.err
done
echo done > $O/DONE
