#!/usr/bin/env bash
# GPU check of the serving runtimes (issue 6) on one H100/H200: expected about 5 minutes, not yet run
# (the bench stops starting cells after 180 s; section timeouts: install 120 s, probe 60 s, tests 150 s,
# bench 330 s):
#   1. which GPU libraries import here (tensorrt, torch_tensorrt, onnxruntime providers);
#   2. the runtime parity tests (torch vs ONNX Runtime at group sizes 1 and 4, full sampling loops;
#      TensorRT parity when tensorrt imports, else skipped with the reason);
#   3. `bench runtime` on the GPU for the served student size: torch eager / torch.compile / CUDA-graph
#      torch in fp32 and bf16, ONNX Runtime (CUDA provider when the build has it, else CPU), TensorRT
#      fp16 (+ CUDA graphs) and torch-tensorrt (fp16, bf16) when importable; each row has its speedup over torch
#      fp32 eager and its max abs difference from it; the table is printed last.
# Needs only torch, onnx, onnxruntime, onnxscript, numpy, safetensors, tqdm, pyyaml (+ pytest for step 2).
# Usage: OUT=<dir> bash bench/gpu/runtime.sh [CHECKPOINT]   (default: the fmnist student asset or a
# random-weight student of the same size)
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-outputs/gpu}
CHECKPOINT=${1:-}
WORK=$(mktemp -d)
export GROUPDIFF_CACHE="$WORK/cache"
mkdir -p "$OUT"
LOG="$OUT/bench_runtime_gpu.log"

timeout 120 python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/gpu.txt"

echo "== 1. GPU libraries"
timeout 60 python3 - <<'PY' | tee "$OUT/runtime_libraries.txt" || echo "library probe failed or timed out"
import importlib
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, "
      f"capability {torch.cuda.get_device_capability()}")
for name in ("tensorrt", "torch_tensorrt", "onnxruntime"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', '?')}")
    except Exception as error:  # missing wheel, or libnvinfer missing behind it
        print(f"{name}: not importable ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
import onnxruntime
print("onnxruntime providers:", onnxruntime.get_available_providers())
PY

echo "== 2. parity tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/serving/test_runtimes.py tests/serving/test_export_onnx.py \
  2>&1 | tail -15 | tee "$OUT/runtime_parity_tests.txt" || echo "parity tests failed or timed out (see above)"

echo "== 3. bench runtime on the GPU"
status=0
timeout 330 python3 - "$OUT/bench_runtime_gpu.json" "$CHECKPOINT" <<'PY' 2>&1 | grep -v "it/s]" | tee "$LOG" || status=$?
import sys
from groupdiff.bench.runtime import run

out, checkpoint = sys.argv[1], sys.argv[2] or None
run(checkpoint, "cuda", None, [1, 4], [4, 16, 64, 256], repeats=20, threads=16, out=out,
    command="bash bench/gpu/runtime.sh", cache=None, time_budget_s=180)
PY
echo
if [ "$status" -ne 0 ]; then
  echo "bench runtime failed or timed out (status $status); partial log in $LOG"
  exit "$status"
fi
echo "== runtime table ($(head -2 "$OUT/gpu.txt" | tail -1 | cut -d, -f1))"
sed -n '/^runtime benchmark/,$p' "$LOG"
