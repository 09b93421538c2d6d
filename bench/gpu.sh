#!/usr/bin/env bash
# The GPU benchmark as one prepared command for the device machine, from the repo root:
#   bash bench/gpu.sh [extra bench/gpu.py flags]      e.g. --only gain: the g(b) rows alone
# That machine has torch and diffusers' dependencies but neither diffusers nor pydantic (the
# g(b) rows import worker.pipelines, which needs it), and no network: install the wheels
# fetched beforehand, at the versions in .venv (pydantic-core is built per platform), with
#   .venv/bin/pip download diffusers==<v> --no-deps -d bench/wheels
#   .venv/bin/pip download pydantic==<v> pydantic-core==<v> pydantic-settings==<v> \
#       annotated-types==<v> typing-inspection==<v> python-dotenv==<v> --no-deps \
#       --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 -d bench/wheels
# bench/wheels/ is git-ignored: carry it to the device machine explicitly (carry=["bench/wheels"]).
set -euo pipefail
cd "$(dirname "$0")/.."

shopt -s nullglob
wheels=(bench/wheels/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    python -m pip install --quiet --no-deps --no-index "${wheels[@]}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c 'import torch, transformers, diffusers; print("torch", torch.__version__, "transformers", transformers.__version__, "diffusers", diffusers.__version__)'

out="${OUT:+$OUT/gpu.json}"  # the device machine's $OUT comes back; else bench/
HF_HUB_OFFLINE=1 python -m bench.gpu --out "${out:-bench/gpu_results.json}" "$@"
