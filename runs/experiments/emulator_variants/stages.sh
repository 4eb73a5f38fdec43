#!/bin/bash
# Second training stages of the seed-0 network, tried before the stochastic term and not
# shipped (README.md here): each is runs/emulator.toml with the overrides below, started
# from the seed-0 network (bash runs/experiments/emulator_seeds/pipeline.sh 0).
#   bash runs/experiments/emulator_variants/stages.sh ROLLOUT|NOISE01|LONG [OUTDIR]
#   ROLLOUT: 4-step (24 h) rollout loss, 1500 steps (about 30 minutes on one core)
#   NOISE01: 1-step loss with input noise 0.1, 1500 steps (about 6 minutes)
#   LONG:    the same recipe for another 6000 steps (about 37 minutes)
set -eu
# Overrides of runs/emulator.toml, one bash array per line (tests/test_emulator_training.py reads them).
ROLLOUT=(--set seed=1 --set train.init_from=outputs/emulator_seed0/emulator.safetensors --set train.steps=1500 --set train.lr=5e-4 --set train.warmup_steps=50 --set train.lr_floor=0.05 --set train.rollout=4 --set train.rollout_from=0 --set train.checkpoint_every=100)
NOISE01=(--set train.init_from=outputs/emulator_seed0/emulator.safetensors --set train.steps=1500 --set train.lr=3e-4 --set train.warmup_steps=50 --set train.lr_floor=0.05 --set train.rollout=1 --set train.rollout_from=0 --set train.input_noise=0.1 --set train.checkpoint_every=100)
LONG=(--set seed=3 --set train.init_from=outputs/emulator_seed0/emulator.safetensors)
V=${1:?usage: stages.sh ROLLOUT|NOISE01|LONG [OUTDIR]}
stage="$V[@]"
cycler train emulator runs/emulator.toml "${!stage}" --out "${2:-outputs/emulator_$(echo $V | tr A-Z a-z)}" --resume
