#!/usr/bin/env bash
# The GPU benchmark as one prepared command for the device machine, from the repo root:
#   bash bench/gpu.sh [extra bench/gpu.py flags]
# That machine has torch and diffusers' dependencies but not diffusers, and no network:
# install the wheel fetched beforehand with
#   .venv/bin/pip download diffusers==<version in .venv> --no-deps -d bench/wheels
# bench/wheels/ is git-ignored: carry it to the device machine explicitly (carry=["bench/wheels"]).
set -euo pipefail
cd "$(dirname "$0")/.."

wheel=$(ls bench/wheels/diffusers-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$wheel" ]; then
    python -m pip install --quiet --no-deps --no-index "$wheel"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c 'import torch, transformers, diffusers; print("torch", torch.__version__, "transformers", transformers.__version__, "diffusers", diffusers.__version__)'

out="${OUT:+$OUT/gpu.json}"  # the device machine's $OUT comes back; else bench/
HF_HUB_OFFLINE=1 python bench/gpu.py --out "${out:-bench/gpu_results.json}" "$@"
