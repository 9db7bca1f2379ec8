#!/usr/bin/env bash
# The GPU paths on real hardware, in one run (aimed at under 8 minutes on a machine with an NVIDIA
# GPU and PyPI access; most of it is pip and TensorRT engine builds):
#
#   1. .venv from the lock (tools/setup.sh); onnxruntime-gpu in place of onnxruntime (the two share
#      one module and must not be installed together), tensorrt (11.x today) and onnxconverter-common;
#   2. resnet50 exported (tools/export_models.py, legacy exporter, dynamic batch), pruned to
#      --flops 0.5 (--round-to 8: FP16 tensor cores), then 2:4 on the pruned model (--pattern 2:4);
#   3. onnxprune bench of dense, pruned and pruned+2:4 together on tensorrt --fp16, ort-cuda and
#      ort-trt, at batch 1 and 32 (random inputs at that batch; TensorRT's profile is min 1,
#      opt = max = the batch); and on tensorrt of dense, --quantize int8 of dense and --flops 0.5
#      --quantize int8 (explicit QDQ INT8 engines);
#   4. one report, <out>/gpu_check.txt: the environment (GPU, packages, the libraries onnxruntime's
#      GPU providers miss), every step's command, output and exit status, the printed tables, the
#      bench JSON, and TensorRT's sparse-layer report (layers eligible for 2:4 sparse math and those
#      it ran sparse, per model and batch).
#
# Each step fails on its own (its error goes into the report), so one missing provider does not lose
# the rest; the script exits 0 once the report is written, with a count of failed steps.
#
#   bash tools/gpu_check.sh                 # everything; report in $OUT if set, else ./gpu_check_out
#   bash tools/gpu_check.sh --out DIR       # report elsewhere
#   bash tools/gpu_check.sh --dry-run       # print every command, run nothing
#   bash tools/gpu_check.sh --cpu-only      # no GPU installs: export, prune, 2:4 and the bench steps run
#                                           # here (the GPU ones fail and are recorded; ort-cpu is timed)
#
# Environment: BATCHES ("1 32"), TRT_PACKAGE ("tensorrt"; "tensorrt-cu12==10.*" for TensorRT 10),
# ORT_GPU_PACKAGE ("onnxruntime-gpu[cuda,cudnn]"), STEP_TIMEOUT (300 s per step), BUDGET_S (480: bench
# steps not started by then are recorded as skipped), RUNS / MIN_SECONDS / WARMUP (20 / 1 / 0.5).
#
# Afterwards .venv holds onnxruntime-gpu; to go back: .venv/bin/pip uninstall -y onnxruntime-gpu &&
# .venv/bin/pip install --no-deps "$(grep '^onnxruntime==' requirements/lock.txt)"
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY_RUN=0
CPU_ONLY=0
OUT_DIR=${OUT:-$ROOT/gpu_check_out}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --cpu-only) CPU_ONLY=1 ;;
    --out) OUT_DIR=${2:?--out needs a folder}; shift ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "usage: bash tools/gpu_check.sh [--dry-run] [--cpu-only] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done

BATCHES=${BATCHES:-"1 32"}
TRT_PACKAGE=${TRT_PACKAGE:-tensorrt}
ORT_GPU_PACKAGE=${ORT_GPU_PACKAGE:-"onnxruntime-gpu[cuda,cudnn]"}  # the extras: CUDA and cuDNN from pip
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
BUDGET_S=${BUDGET_S:-480}
RUNS=${RUNS:-20}
MIN_SECONDS=${MIN_SECONDS:-1}
WARMUP=${WARMUP:-0.5}
PY=$ROOT/.venv/bin/python
ONNXPRUNE=$ROOT/.venv/bin/onnxprune
PIP=("$PY" -m pip install -q --disable-pip-version-check)
WORK=$OUT_DIR/models
REPORT=$OUT_DIR/gpu_check.txt
STEP_LOG=$OUT_DIR/.step.log
FAILED=0
START=$SECONDS
DENSE=$WORK/resnet50_legacy.onnx
PRUNED=$WORK/resnet50.pruned.onnx
SPARSE=$WORK/resnet50.pruned.2of4.onnx

say() { echo "[gpu_check $((SECONDS - START))s] $*" >&2; }

record() {  # record LINE...: lines in the report
  if [ "$DRY_RUN" = 0 ]; then printf '%s\n' "$@" >> "$REPORT"; fi
}

step() {  # step TITLE CMD...: CMD under the step timeout (stdin passes through); output and exit status to the report
  local title=$1 rc=0
  shift
  say "$title"
  if [ "$DRY_RUN" = 1 ]; then
    printf ' %q' "$@"; echo
    return 0
  fi
  { echo; echo "== $title"; printf '$'; printf ' %q' "$@"; echo; } >> "$REPORT"
  timeout "$STEP_TIMEOUT" "$@" > "$STEP_LOG" 2>&1 || rc=$?
  cat "$STEP_LOG" >> "$REPORT"
  if [ "$rc" = 0 ]; then
    echo "-- exit status 0" >> "$REPORT"
  else
    FAILED=$((FAILED + 1))
    if [ "$rc" = 124 ]; then echo "-- timed out after ${STEP_TIMEOUT} s" >> "$REPORT"; fi
    echo "-- FAILED: exit status $rc ($title)" >> "$REPORT"
    say "  failed (exit status $rc): see $REPORT"
  fi
}

library_path() {  # library_path [FOLDER...]: the given folders, then those under site-packages' nvidia/ and
  local site      # tensorrt_libs/ that hold shared libraries, as a loader path
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  find "$@" "$site/nvidia" "$site/tensorrt_libs" -maxdepth 4 -name 'lib*.so*' -printf '%h\n' 2>/dev/null \
    | awk '!seen[$0]++' | paste -sd: -
}

if [ "$DRY_RUN" = 0 ]; then
  mkdir -p "$WORK"
  : > "$REPORT"
  record "onnxprune GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  if [ "$CPU_ONLY" = 1 ]; then
    record "(--cpu-only: no GPU installs; the GPU steps are expected to fail here, each on its own)"
  fi
fi

# --- 1. environment ------------------------------------------------------------------------------
step "environment: .venv from the lock (tools/setup.sh)" bash tools/setup.sh
if [ "$CPU_ONLY" = 0 ]; then
  # onnxruntime and onnxruntime-gpu install the same module: swap, never both (DESIGN.md, packaging
  # notes). Both go first: on a rerun setup.sh has put onnxruntime back beside onnxruntime-gpu, and
  # removing only one of the two then breaks the other.
  step "remove onnxruntime (and an earlier onnxruntime-gpu)" "$PY" -m pip uninstall -y -q onnxruntime onnxruntime-gpu
  step "install $ORT_GPU_PACKAGE, $TRT_PACKAGE, onnxconverter-common" \
    "${PIP[@]}" "$ORT_GPU_PACKAGE" "$TRT_PACKAGE" onnxconverter-common
fi

# The GPU providers and TensorRT's wheels find the CUDA, cuDNN and TensorRT libraries pip put in
# site-packages (nvidia/.../lib, tensorrt_libs) through the loader path.
if [ "$DRY_RUN" = 0 ]; then
  LIBS=$(library_path || true)
  export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
step "environment: GPU" nvidia-smi
step "environment: packages, providers, the libraries they miss" "$PY" - <<'EOF'
import importlib, importlib.metadata as md, os, subprocess, sys
print("python", sys.version.split()[0])
for dist in ("onnxprune", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu13", "tensorrt-cu12",
             "tensorrt-cu13-libs", "tensorrt-cu12-libs", "torch", "onnxconverter-common"):
    try:
        print(f"{dist}=={md.version(dist)}")
    except md.PackageNotFoundError:
        pass
import onnxruntime as ort
print("onnxruntime providers:", ", ".join(ort.get_available_providers()))
capi = os.path.join(os.path.dirname(ort.__file__), "capi")
for lib in ("libonnxruntime_providers_cuda.so", "libonnxruntime_providers_tensorrt.so"):
    path = os.path.join(capi, lib)
    if os.path.exists(path):
        out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        missing = [line.split()[0] for line in out.splitlines() if "not found" in line]
        wanted = [line.split()[0] for line in out.splitlines() if "nvinfer" in line or "cudart" in line]
        print(f"{lib}: needs {', '.join(wanted) or '-'}; missing: {', '.join(missing) or 'none'}")
for name in ("tensorrt", "torch"):
    try:
        mod = importlib.import_module(name)
        extra = ""
        if name == "torch":
            extra = f", CUDA build {mod.version.cuda}, device {mod.cuda.is_available() and mod.cuda.get_device_name(0)}"
        print(f"import {name}: {mod.__version__}{extra}")
    except Exception as exc:  # report, never stop
        print(f"import {name}: {type(exc).__name__}: {exc}".splitlines()[0])
EOF

# --- 2. models -----------------------------------------------------------------------------------
step "export resnet50 (legacy exporter, dynamic batch)" \
  "$PY" tools/export_models.py resnet50 --exporter legacy --out "$WORK"
step "prune to --flops 0.5" "$ONNXPRUNE" "$DENSE" --flops 0.5 --round-to 8 -o "$PRUNED" --force
step "2:4 on the pruned model" "$ONNXPRUNE" "$PRUNED" --pattern 2:4 -o "$SPARSE" --force
# INT8 (explicit QDQ, what TensorRT 11 builds as INT8): of the dense model, and of the dense model
# pruned to --flops 0.5 (random weights and data: speed only)
DENSE_INT8=$WORK/resnet50.int8.onnx
PRUNED_INT8=$WORK/resnet50.pruned.int8.onnx
step "--quantize int8 of the dense model" "$ONNXPRUNE" "$DENSE" --quantize int8 --calib random --calib-count 32 \
  -o "$DENSE_INT8" --force
step "--flops 0.5 --quantize int8" "$ONNXPRUNE" "$DENSE" --flops 0.5 --round-to 32 --quantize int8 --calib random \
  --calib-count 32 -o "$PRUNED_INT8" --force

# --- 3. timing -----------------------------------------------------------------------------------
bench() {  # bench BACKEND BATCH [--fp16]: dense, pruned and pruned+2:4 (or BENCH_MODELS, tagged TAG) timed together
  local backend=$1 batch=$2
  shift 2
  local json=$OUT_DIR/bench_${backend}${TAG:+_$TAG}_b${batch}.json
  local models=("$DENSE" "$PRUNED" "$SPARSE")
  if [ -n "${BENCH_MODELS+x}" ]; then models=("${BENCH_MODELS[@]}"); fi
  local title="bench $backend${TAG:+ $TAG}${1:+ $*} batch $batch"
  if [ "$DRY_RUN" = 0 ] && [ $((SECONDS - START)) -ge "$BUDGET_S" ]; then
    record "" "== $title" "-- SKIPPED: past the time budget (BUDGET_S=$BUDGET_S s)"
    FAILED=$((FAILED + 1))
    return 0
  fi
  rm -f "$json"
  step "$title" env COLUMNS=160 "$ONNXPRUNE" bench "${models[@]}" --backend "$backend" "$@" \
    --batch "$batch" --runs "$RUNS" --min-seconds "$MIN_SECONDS" --warmup "$WARMUP" --json "$json" --force
  if [ "$DRY_RUN" = 0 ] && [ -f "$json" ]; then
    record "-- $json:" "$(cat "$json")"
  fi
}

for batch in $BATCHES; do bench tensorrt "$batch" --fp16; done
# dense against INT8 of dense and pruned INT8, alternating (dense FP16 is the first row of the bench
# above). No --fp16 here: its float16 conversion would also turn the Q/DQ scales to float16, and a
# bias's scale (input scale x weight scale, ~1e-6) is below float16's normal range: logits off by 15%
# on onnxruntime CPU with MobileNetV2. The INT8 layers run INT8 either way.
BENCH_MODELS=("$DENSE" "$DENSE_INT8" "$PRUNED_INT8") TAG=int8
for batch in $BATCHES; do bench tensorrt "$batch"; done
unset BENCH_MODELS TAG
for batch in $BATCHES; do bench ort-cuda "$batch"; done

# onnxruntime-gpu's TensorRT provider links the TensorRT major it was built with (libnvinfer.so.10 in
# the TensorRT 10 era), which need not be the one `tensorrt` brought: that major's libraries go
# beside the environment (not into it) and on the loader path of the ort-trt steps only.
NEED=""
if [ "$DRY_RUN" = 1 ]; then
  say "(when onnxruntime's TensorRT provider misses libnvinfer.so.N:" \
    "pip install --no-deps --target <out>/tensorrtN tensorrt-cuXX-libs==N.*, on the loader path of ort-trt)"
elif [ "$CPU_ONLY" = 0 ]; then
  CAPI=$("$PY" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' \
         2>/dev/null || true)
  if [ -f "$CAPI/libonnxruntime_providers_tensorrt.so" ]; then
    NEED=$(ldd "$CAPI/libonnxruntime_providers_tensorrt.so" \
           | sed -n 's/.*libnvinfer\.so\.\([0-9][0-9]*\) => not found.*/\1/p' | head -n 1)
    CUDA_MAJOR=$(ldd "$CAPI/libonnxruntime_providers_cuda.so" 2>/dev/null \
                 | sed -n 's/.*libcudart\.so\.\([0-9][0-9]*\).*/\1/p' | head -n 1)
    if [ -n "$NEED" ]; then
      step "TensorRT $NEED libraries for ort-trt (CUDA ${CUDA_MAJOR:-12})" "${PIP[@]}" --no-deps \
        --target "$OUT_DIR/tensorrt$NEED" "tensorrt-cu${CUDA_MAJOR:-12}-libs==$NEED.*"
    fi
  fi
fi
ORT_TRT_LIBS=""
if [ -n "$NEED" ]; then ORT_TRT_LIBS=$(library_path "$OUT_DIR/tensorrt$NEED" || true); fi
for batch in $BATCHES; do
  LD_LIBRARY_PATH="${ORT_TRT_LIBS:+$ORT_TRT_LIBS:}${LD_LIBRARY_PATH:-}" bench ort-trt "$batch"
done
if [ "$CPU_ONLY" = 1 ]; then
  for batch in $BATCHES; do bench ort-cpu "$batch"; done
fi

# --- 4. TensorRT's sparse-layer report -----------------------------------------------------------
if [ "$DRY_RUN" = 0 ]; then
  record "" "== TensorRT sparse-layer report (from the tensorrt bench JSON)"
  "$PY" - "$OUT_DIR" >> "$REPORT" 2>&1 <<'EOF' || record "(the bench JSON could not be read)"
import json, pathlib, sys
found = False
for path in sorted(pathlib.Path(sys.argv[1]).glob("bench_tensorrt*_b*.json")):
    data = json.loads(path.read_text())
    for model in data["models"]:
        build = model.get("engine_build") or {}
        found = True
        print(f"{pathlib.Path(model['name']).name}, batch {data['batch']}: TensorRT {build.get('tensorrt')}, "
              f"{build.get('precision')}, flags {build.get('flags')}; median {model.get('median_ms')} ms, "
              f"{model.get('ratio_to_first')} of dense")
        print(f"  eligible for sparse math ({len(build.get('eligible_sparse', []))}): {build.get('eligible_sparse')}")
        print(f"  ran sparse ({len(build.get('ran_sparse', []))}): {build.get('ran_sparse')}")
if not found:
    print("no TensorRT bench result (see the tensorrt steps above)")
EOF
  record "" "== done in $((SECONDS - START)) s; $FAILED step(s) failed or skipped"
  rm -f "$STEP_LOG"
  say "report: $REPORT ($FAILED step(s) failed or skipped)"
fi
