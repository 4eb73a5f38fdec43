#!/bin/bash
# The GPU checks of runtime.device, on a machine where torch sees CUDA (from the repository
# root, with the project installed): the device tests, then the default 7-day experiment on
# the GPU in float32 and in bfloat16, and on the CPU for reference. Each bench prints one
# JSON object (seconds in total, per mode and per cycle, network calls); the seconds per
# analysis compare with the paper's Table 3 (per member, on an A100).
#   bash runs/gpu_check.sh > gpu_check.jsonl
set -euo pipefail
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" >&2
python -m pytest -q tests/test_execution.py >&2
cycler bench run --set runtime.device=cuda --set runtime.precision=float32 --json
cycler bench run --set runtime.device=cuda --set runtime.precision=bfloat16 --json
cycler bench run --set runtime.device=cpu --json
