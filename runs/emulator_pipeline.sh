#!/bin/bash
# Rebuilds the shipped emulator (emulators/weights/emulator.safetensors) from the nature
# run: the network (runs/emulator.toml, seed 2), its noise, its climate adjustment (4
# iterations, then 2 more from that file, as it was made), and the card's scores.
#   bash runs/emulator_pipeline.sh [OUTDIR]      (about 45 minutes on one core of the idle machine)
# Needs outputs/data/nature.zarr and its continuation outputs/data/nature_2003-2004.zarr
# (docs/nature.md).
set -eu
O=${1:-outputs/emulator_seed2}
D="outputs/data/nature.zarr outputs/data/nature_2003-2004.zarr"
cycler train emulator runs/emulator.toml --out $O
cycler train emulator-noise $O/emulator.safetensors --data outputs/data/nature.zarr --polar-rows 3 --out $O/noise.safetensors
cycler train emulator-adjust $O/noise.safetensors --data outputs/data/nature.zarr --members 8 --iterations 4 --no-progress --out $O/adjusted.safetensors
cycler train emulator-adjust $O/adjusted.safetensors --data outputs/data/nature.zarr --members 8 --iterations 2 --no-progress --out $O/adjusted6.safetensors
cycler evaluate emulator $O/adjusted6.safetensors --data $D --years 2002 2003 2004 --free-run-members 8 --plots $O/plots3 --update-card --json > $O/eval_card.json
