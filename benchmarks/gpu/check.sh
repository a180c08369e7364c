#!/usr/bin/env bash
# The GPU check: everything sdrt can prove on a lent H100/H200 in one command of ~8 minutes.
# Prepared here with `bash benchmarks/gpu/prepare.sh` (prints the device calls); on the device:
#   bash benchmarks/gpu/check.sh            (OUT set by the device tool; else ./gpu-check-out)
# Steps, each with its own time limit inside an overall budget (SDRT_CHECK_BUDGET_S, default 480 s):
#   1. the GPU and the environment (nvidia-smi, versions)    -- no GPU: a one-line failure, exit 3
#   2. the carried wheels (.device/kit/install.sh -> /tmp/site), onnxruntime must offer CUDA
#   3. export sd15 in fp16 (background, on the machine's CPUs: the exporter traces on the CPU)
#   4. export tiny in fp16, build its TensorRT-RTX engines, record TensorRT-RTX's exact answer on this GPU
#   5. every gpu- or tensorrt-marked test (pytest -m "gpu or tensorrt")
#   6. gpu-sd15: ort-cuda without and with CUDA graph vs diffusers fp16, 512x512, 50 steps, batch 1
# Everything lands under $OUT: summary.md (one line per step), check-logs.tar.gz (every log, the probe's
# json, pytest's junit xml) and the benchmark's result.json / result.md / result.png.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT/logs"
LOGS=$OUT/logs
SUMMARY=$OUT/summary.md
BUDGET=${SDRT_CHECK_BUDGET_S:-480}
WORK=${SDRT_CHECK_WORK:-/tmp/sdrt-check}
SITE=${SDRT_CHECK_SITE:-/tmp/site}   # where .device/kit/install.sh puts the carried wheels
T0=$SECONDS
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

left() { echo $(( BUDGET - (SECONDS - T0) )); }
say() { echo "$*" | tee -a "$SUMMARY"; }
# the `sdrt` command without installing the project (timeout runs programs, not shell functions)
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec python3 -c "import sys; from sdrt.cli import main; sys.exit(main(sys.argv[1:]))" "$@"\n' > "$WORK/bin/sdrt"
chmod +x "$WORK/bin/sdrt"
export PATH=$WORK/bin:$PATH
# step NAME LIMIT_S CMD...: runs CMD with min(LIMIT, what is left), logs to logs/NAME.log, one summary line
step() {
  local name=$1 limit=$2; shift 2
  local budget; budget=$(left)
  (( budget < limit )) && limit=$budget
  if (( limit < 5 )); then say "- $name: SKIPPED (budget spent)"; return 124; fi
  local t=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  local verdict=ok; (( rc == 124 || rc == 137 )) && verdict="TIMED OUT after ${limit} s"; (( rc != 0 && rc != 124 && rc != 137 )) && verdict="FAILED (rc $rc)"
  say "- $name: $verdict in $((SECONDS - t)) s (logs/$name.log)"
  return $rc
}
pack() {  # what comes back: at most 8 files, so the logs travel as one archive
  tar -czf "$OUT/check-logs.tar.gz" -C "$OUT" logs 2>/dev/null && rm -rf "$LOGS"
}

: > "$SUMMARY"
say "# sdrt GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say ""

# 1. the GPU --------------------------------------------------------------------------------------
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > "$LOGS/gpus.txt" 2>&1 || ! grep -q '^GPU ' "$LOGS/gpus.txt"; then
  say "- gpu: FAILED: no NVIDIA GPU is visible here (nvidia-smi finds none): run this on the lent GPU machine"
  pack
  echo "check.sh: no NVIDIA GPU is visible here (nvidia-smi finds none): run it on the lent GPU machine" >&2
  exit 3
fi
say "- gpu: $(head -1 "$LOGS/gpus.txt")"
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv > "$LOGS/gpu.csv" 2>&1

# 2. the carried wheels ---------------------------------------------------------------------------
if [[ ! -d $SITE/onnxruntime ]]; then
  if [[ -x .device/kit/install.sh || -f .device/kit/install.sh ]]; then
    step kit-install 120 bash .device/kit/install.sh || { say "- the kit did not install: carry every part again"; pack; exit 4; }
  else
    say "- kit: FAILED: .device/kit is not here: run benchmarks/gpu/prepare.sh on the dev machine and carry its parts"
    pack; exit 4
  fi
fi
export PYTHONPATH=$SITE:$PWD
python3 - > "$LOGS/versions.txt" 2>&1 <<'PY'
import importlib, platform
print("python", platform.python_version())
for m in ("torch", "onnxruntime", "diffusers", "transformers", "onnx", "polygraphy", "tensorrt_rtx", "numpy"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(m, "missing:", e)
import onnxruntime, torch
print("onnxruntime providers", onnxruntime.get_available_providers())
print("torch cuda", torch.cuda.is_available(), torch.version.cuda)
PY
say "- versions: $(tr '\n' ';' < "$LOGS/versions.txt" | cut -c1-400)"
grep -q CUDAExecutionProvider "$LOGS/versions.txt" || say "- onnxruntime offers no CUDA execution provider: the ort-cuda results below will say so"

# 3. sd15 fp16 export, in the background (the longest step) ---------------------------------------
SD15=$WORK/sd15-fp16
EXPORT_LIMIT=$(( $(left) - 150 ))  # the benchmark needs ~150 s after it
if [[ -f $SD15/sdrt.json ]]; then  # a rerun on the same warm machine: reuse the export
  echo "reused $SD15" > "$LOGS/export-sd15.log"; echo 0 > "$WORK/export-sd15.rc"; EXPORT_PID=
elif [[ -n ${SDRT_CHECK_SKIP_SD15:-} ]]; then  # a rehearsal on a small machine: no 860M-parameter export
  echo "skipped: SDRT_CHECK_SKIP_SD15 is set" > "$LOGS/export-sd15.log"; echo skipped > "$WORK/export-sd15.rc"; EXPORT_PID=
elif (( EXPORT_LIMIT >= 30 )); then
  ( timeout --kill-after=10 "$EXPORT_LIMIT" sdrt export --model sd15 --precision fp16 --out "$SD15" --force \
      > "$LOGS/export-sd15.log" 2>&1; echo $? > "$WORK/export-sd15.rc" ) &
  EXPORT_PID=$!
else
  echo "budget too small for the sd15 export" > "$LOGS/export-sd15.log"; echo skipped > "$WORK/export-sd15.rc"; EXPORT_PID=
fi
T_EXPORT=$SECONDS

# 4. tiny fp16 + TensorRT-RTX on this GPU ---------------------------------------------------------
TINY=$WORK/tiny-fp16
if [[ -f $TINY/sdrt.json ]]; then say "- export-tiny: reused $TINY"
else step export-tiny 150 sdrt export --model tiny --precision fp16 --out "$TINY" --force; fi
if [[ -f $TINY/sdrt.json ]]; then
  step build-tiny-rtx 90 sdrt build --model "$TINY" --backend tensorrt_rtx
  step trt-rtx-probe 90 python3 -m sdrt.bench.probes.trt_rtx "$TINY" "$LOGS/trt-rtx-answer.json"
  [[ -f $LOGS/trt-rtx-answer.json ]] && say "  TensorRT-RTX answer: $(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
raw = r.get("raw", {})
first = next(iter(raw.get("engines", {}).values()), {})
print(json.dumps({"gpu": raw.get("gpu"), "error": raw.get("error"), "validity": first.get("get_engine_validity"),
                  "deserialize": first.get("deserialize_cuda_engine"), "log": first.get("log", [])[:3],
                  "sdrt": {k: v for k, v in r.get("sdrt", {}).items() if k != "traceback"}})[:1500])' "$LOGS/trt-rtx-answer.json")"
fi

# 5. every gpu / tensorrt test --------------------------------------------------------------------
step pytest-gpu 200 python3 -m pytest -q -rA -m "gpu or tensorrt" --continue-on-collection-errors \
  --junitxml="$LOGS/pytest-gpu.xml" tests
[[ -f $LOGS/pytest-gpu.log ]] && say "  pytest: $(grep -E '(passed|failed|error)' "$LOGS/pytest-gpu.log" | tail -1)"

# 6. gpu-sd15 -------------------------------------------------------------------------------------
[[ -n $EXPORT_PID ]] && wait "$EXPORT_PID"
say "- export-sd15: rc $(cat "$WORK/export-sd15.rc" 2>/dev/null || echo '?') in $((SECONDS - T_EXPORT)) s (logs/export-sd15.log)"
if [[ -f $SD15/sdrt.json ]]; then
  step bench-gpu-sd15 400 sdrt bench --suite gpu-sd15 --onnx "$SD15" --batch 1 --warmup 1 --reps 3 --out "$WORK/bench"
  result=$(ls -d "$WORK"/bench/gpu-sd15-* 2>/dev/null | tail -1)
  if [[ -n $result ]]; then
    for f in result.json result.md result.png; do [[ -f $result/$f ]] && cp "$result/$f" "$OUT/gpu-sd15-$f"; done
    say "  gpu-sd15 results: gpu-sd15-result.md (per stage, peak GPU memory, PSNR vs diffusers)"
  fi
else
  say "- bench-gpu-sd15: SKIPPED (no sd15 export)"
fi
say ""
say "total: $((SECONDS - T0)) s of a ${BUDGET} s budget"
pack
