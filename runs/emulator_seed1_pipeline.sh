#!/bin/bash
# The default recipe with seed 1 (2000, 2001): network, noise, adjustment, evaluation on 2002-2004.
set -eu
D="runs/data/nature.zarr runs/data/nature_2003-2004.zarr"
O=runs/emulator_seed1
cycler train emulator runs/emulator_seed1.toml --out $O > $O.log 2>&1
cycler train emulator-noise $O/emulator.safetensors --data runs/data/nature.zarr --polar-rows 3 --out $O/noise.safetensors > $O/noise.log 2>&1
cycler train emulator-adjust $O/noise.safetensors --data runs/data/nature.zarr --members 8 --iterations 4 --no-progress --out $O/adjusted.safetensors > $O/fit.log 2>&1
for s in 0 1; do
  cycler evaluate emulator $O/adjusted.safetensors --data $D --years 2002 2003 2004 --free-run-members 8 --seed $s --json > $O/eval_seed$s.json 2> $O/eval_seed$s.err
done
echo done > $O/DONE
