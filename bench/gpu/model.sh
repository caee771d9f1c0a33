#!/usr/bin/env bash
# GPU check for `groupdiff bench model`: group-attention cost at S/2 and XL/2 on one GPU.
# Runs on a machine with torch already installed (no network): installs this checkout without deps.
# Usage: OUT=/some/dir bash bench/gpu/model.sh   (about a minute on an H100)
set -euo pipefail
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
for dtype in fp32 bf16; do
  python3 -m groupdiff bench model --device cuda --dtype "$dtype" --cases S/2 XL/2 --images 64 \
    --repeats 20 --out "$OUT/bench_model_gpu_$dtype.json"
done
