#!/usr/bin/env bash
# GPU check of the trainer: prepare a pixel Fashion-MNIST folder (class/random queries need no encoder
# network), train fmnist-tiny on the GPU (bf16 autocast via precision: auto), time the step variants,
# and keep the log, the grid and the JSON. About 4 minutes on an H100/H200.
# Usage: FMNIST=<folder with the four idx .gz files> OUT=<dir> bash bench/gpu/train.sh
set -euo pipefail
OUT=${OUT:-outputs/gpu}
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
WORK=$(mktemp -d)
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m groupdiff prepare --data "$FMNIST" --encoders class random --space pixel --out "$WORK/fm"
python3 -m groupdiff bench train --device cuda --data "$WORK/fm" --steps 50 --set plan.query=class \
  --out "$OUT/bench_train_gpu.json" \
  2>&1 | grep -v "it/s"
python3 -m groupdiff bench train --device cuda --data "$WORK/fm" --steps 50 --warmup 10 --set plan.query=class \
  --set compile=true --out "$OUT/bench_train_gpu_compiled.json" \
  2>&1 | grep -v "it/s"
time python3 -m groupdiff train --config fmnist-tiny --data "$WORK/fm" --out "$WORK/run" --set plan.query=class \
  --set device=cuda 2>&1 | grep -v "it/s" | tail -5
cp "$WORK/run/log.jsonl" "$OUT/fmnist_tiny_gpu_log.jsonl"
cp "$WORK/run/samples/step-0001500.png" "$OUT/fmnist_tiny_gpu_samples.png"
