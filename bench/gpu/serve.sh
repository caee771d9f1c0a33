#!/usr/bin/env bash
# GPU run of `groupdiff bench serve` (issue 7) on one H100/H200, about 4 minutes: the group scheduler vs
# the naive baseline vs the runtime's peak, torch eager on CUDA, in-process (no HTTP; PNG encoding included).
# Needs torch, numpy, safetensors, pillow, prometheus-client, matplotlib, tqdm, pyyaml, and pydantic
# (carried as wheels in .whl/ when the machine lacks it: see the device README).
# Usage: OUT=<dir> bash bench/gpu/serve.sh CHECKPOINT
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-outputs/gpu}
CHECKPOINT=$1

mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
timeout 120 python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# the bench module directly: the full CLI would import the REST/Triton stacks this image does not have
python3 - "$CHECKPOINT" "$OUT" <<'PY' 2>&1 | tee "$OUT/bench_serve_gpu.log"
import sys

from groupdiff.bench.serve import run

checkpoint, out = sys.argv[1], sys.argv[2]
invocation = "bash bench/gpu/serve.sh " + " ".join(sys.argv[1:])
run(checkpoint, "torch", out, invocation, duration_s=4.0, concurrencies=[16, 128],
    rate_fractions=[0.25, 0.5, 0.75, 1.0], mixes=["uniform", "zipf"], num_images=[4, 8], steps=4,
    group_size=None, max_batch_groups=64, batch_wait_ms=2.0, policy="isolated", device="cuda", cache_dir=None,
    seed=0, timeout_s=5.0)
PY
