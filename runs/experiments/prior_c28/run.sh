#!/bin/bash
# The shipped prior's recipe with 28 channels at the finest level instead of 24 (2.7 M
# parameters instead of 2.0 M): the three stages of runs/prior_pipeline.sh with one more
# override on every stage. Stages 1 and 2 were measured (33 and 28 minutes with two
# threads); PRIOR_STAGES=2 stops there, as the measured runs did.
#   bash runs/experiments/prior_c28/run.sh [OUTDIR] [THREADS]
set -eu
# The override of runs/prior.toml on every stage (tests/test_edm.py reads it).
C28=(--set model.model_channels=28)
PRIOR_SET="${C28[*]}" bash runs/prior_pipeline.sh "${1:-outputs/prior_c28}" "${2:-2}"
