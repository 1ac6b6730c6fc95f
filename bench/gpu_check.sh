#!/usr/bin/env bash
# GPU figures for docs/PERFORMANCE.md (issue 5): one short script for one H100/H200 with 16 cores.
#
#   device tool:  run(command="bash bench/gpu_check.sh", timeout_s=590)
#   anywhere:     OUT=/tmp/gpu bash bench/gpu_check.sh
#
# Needs only what the GPU image already has (torch, torchvision, pillow, pyyaml, scipy,
# scikit-learn, tqdm); the package runs from the checkout. Every result is one JSON file in
# $OUT plus log.txt; each step has its own time limit so one slow step cannot eat the rest.
# Steps, most important first:
#   1. bench train --images  : end to end from JPEGs, fast pipeline (targets: >= 1500 img/s,
#                              data_wait_fraction < 0.1)
#   2. ... + activation checkpointing (target: peak <= 17 GiB at batch 256)
#   3. bench train --synthetic: the GPU step alone (no decoding), for the data-wait picture
#   4. bench data classic,fast with 15 workers: the input pipelines alone, same run
#   5. bench train --images with torch.compile (kept only if it helps)
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
IMAGES=${IMAGES:-/tmp/bench_images}
WORKERS=${WORKERS:-15}
# Smoke-test knobs (on a CPU: BATCH=4 N=16 WORKERS=2 STEPS=1 MAIN_STEPS=1 WARMUP=1 COMPILE=0).
CONFIG=${CONFIG:-imagenet}
BATCH=${BATCH:-256}
N=${N:-2048}
STEPS=${STEPS:-30}
MAIN_STEPS=${MAIN_STEPS:-40}
WARMUP=${WARMUP:-8}
COMPILE=${COMPILE:-1}
LOG="$OUT/log.txt"

step() {  # step NAME SECONDS ARGS... : run `selfclassifier ARGS`, JSON to $OUT/NAME.json
  local name=$1 limit=$2
  shift 2
  echo "== $(date -u +%FT%TZ) $name: selfclassifier $*" | tee -a "$LOG"
  timeout "$limit" "$PY" -m selfclassifier "$@" >"$OUT/$name.json" 2>>"$LOG"
  echo "   exit $? after ${SECONDS}s in total" | tee -a "$LOG"
  cat "$OUT/$name.json"
}

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "cpus: $(nproc)"
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee -a "$LOG"

step make_images 60 bench make-images "$IMAGES" --n "$N" --workers "$(nproc)"

TRAIN=(bench train --config "$CONFIG" --batch-size "$BATCH" --workers "$WORKERS" --warmup "$WARMUP")
step train_images 120 "${TRAIN[@]}" --steps "$MAIN_STEPS" --images "$IMAGES"
step train_images_ckpt 110 "${TRAIN[@]}" --steps "$STEPS" --images "$IMAGES" \
  --set train.grad_checkpointing=true
step train_synthetic 80 "${TRAIN[@]}" --steps "$STEPS" --synthetic
step data 70 bench data --images "$IMAGES" --recipe "$CONFIG" --pipeline classic,fast \
  --workers "$WORKERS" --batch-size "$BATCH" --batches 8
if [ "$COMPILE" = 1 ]; then
  step train_images_compile 140 "${TRAIN[@]}" --steps "$STEPS" --images "$IMAGES" \
    --set train.compile=true
fi
echo "== done after ${SECONDS}s" | tee -a "$LOG"
