#!/usr/bin/env bash
# GPU run of the quality benchmark: every Table 1 row, the Table 2/3 ablations and the Fig. 5 plot at
# the `gpu` preset (500 steps x batch 128 per row, 400 samples per metric set) on one H100, aimed at
# under 10 minutes (estimated from docs/results/bench_train_gpu.json, not yet measured).
# Runs on a machine with the project's dependencies installed (no network): installs this checkout
# without deps. Prepares pixel Fashion-MNIST with the recipe's EfficientNet/class/random neighbours
# unless DATA names a prepared folder. CACHE may hold a cached classifier and FID reference statistics
# (a copy of ~/.cache/groupdiff) to skip training the classifier there.
# Usage: FMNIST=<idx folder> OUT=<dir> [DATA=<prepared folder>] [CACHE=<dir>] bash bench/gpu/quality.sh
set -euo pipefail
OUT=${OUT:-outputs/gpu-quality}
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
WORK=$(mktemp -d)
export GROUPDIFF_CACHE=${CACHE:-$WORK/cache}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
if [ -z "${DATA:-}" ]; then
  DATA="$WORK/fm"
  time python3 -m groupdiff prepare --config prepare-fmnist-pixel --data "$FMNIST" --out "$DATA"
fi
time python3 -m groupdiff bench quality --preset gpu --device cuda --data "$DATA" --reference "$FMNIST" \
  --out "$OUT" 2>&1 | grep -v "it/s\|chunk/s"
