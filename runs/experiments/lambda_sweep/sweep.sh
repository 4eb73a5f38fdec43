#!/bin/bash
# The station-weight sweep of paper Table 2 (IGRA + LUCIE): the precomputed mode of the
# default 7-day experiment with 8 members, over lambda (the stations' weight next to the
# emulator forecast's weight 1), without and with the guidance capped at the prior drift.
#   bash runs/experiments/lambda_sweep/sweep.sh [OUTDIR]     (about 17 minutes a sweep of five on 2 cores)
# lambda_sweep.toml is runs/sevenday.toml with 8 members, the precomputed mode only and no
# cap: the cap cannot be removed by an override (a missing max_guidance_ratio means none),
# and cycler sweep takes no --set, so the uncapped base is a file of its own.
set -eu
H=runs/experiments/lambda_sweep
O=${1:-outputs/lambda_sweep}
mkdir -p $O
# Uncapped: cycler sweep over lambda (dask LocalCluster, two runs at a time).
cycler sweep $H/lambda_sweep.toml --param analysis.lambda=0,0.5,1,2,4 --workers 2 --out $O/uncapped
# Capped (analysis.sampler.max_guidance_ratio = 1): the same file with one override, two runs
# at a time as the sweep runs them, then the comparison table.
CAPPED=(--set analysis.sampler.max_guidance_ratio=1.0 --set name=lambda_sweep_capped)
for pair in "1 2" "4"; do
  for l in $pair; do
    cycler run $H/lambda_sweep.toml "${CAPPED[@]}" --set analysis.lambda=$l --threads 1 \
        --set runtime.progress=false --no-plots --out $O/capped/lambda=$l > $O/capped_lambda=$l.log 2>&1 &
  done
  wait
done
cycler compare $O/capped/lambda=1 $O/capped/lambda=2 $O/capped/lambda=4
