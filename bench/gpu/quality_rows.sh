#!/usr/bin/env bash
# Train quality-benchmark rows on one GPU and bring back what the CPU needs to score them: the config
# and EMA weights of each row's checkpoint at STEPS. (FID's Inception file, 87 MB, cannot travel to
# the lent GPU machine, so scoring stays on the CPU: `bench quality` uses a checkpoint already at the
# row's step as it is.) Rows train as parallel processes: a DiT-T/4 step at batch 128 is ~50 ms of
# kernel launches (docs/results/bench_train_gpu.json), so one process leaves the GPU mostly idle.
# GPU rows train under bf16 autocast (precision auto): compare them with each other, not with CPU rows.
#
# Data: the prepared folder travels as a device kit (experiments/device_kit.py, 37 MiB for Fashion-MNIST):
#   python -m groupdiff.experiments.device_kit pack data/fmnist-pixel .gpucarry/fmnist-pixel.npz   # here, once
#   run(carry=[".gpucarry/fmnist-pixel.npz"], command="STEPS=5000 OUT=$OUT bash bench/gpu/quality_rows.sh")
# Back here, for each returned tar:
#   tar -xf <row>.tar -C outputs/quality-gpu
#   groupdiff bench quality --steps 5000 --rows <rows> --out outputs/quality-gpu   # scores, trains nothing
# Usage: STEPS=<steps> OUT=<dir> [ROWS="baseline l-uc4 ..."] [KIT=<kit.npz>] [SEED=0] bash bench/gpu/quality_rows.sh
# (DEVICE=cpu EXTRA="--batch-size 8" runs the same flow as a CPU smoke test.)
set -euo pipefail
STEPS=${STEPS:?set STEPS to the budget chosen by groupdiff bench quality-budget}
ROWS=${ROWS:-"baseline l-uc4 l-uc4-query-class l-uc4-query-random l-uc8"}
KIT=${KIT:-.gpucarry/fmnist-pixel.npz}
OUT=${OUT:-outputs/gpu-quality-rows}
SEED=${SEED:-0}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
WORK=$(mktemp -d)
mkdir -p "$OUT"
# shellcheck source=bench/gpu/common.sh
source "$(dirname "$0")/common.sh"
device_setup
start=$(date +%s)
pids=()
for row in $ROWS; do
  # shellcheck disable=SC2086  # EXTRA is a list of flags
  python3 -m groupdiff bench quality --train-only --rows "$row" --seeds "$SEED" --steps "$STEPS" --device "$DEVICE" \
    $EXTRA --out "$WORK/rows" >"$WORK/$row.log" 2>&1 &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
echo "trained $(echo $ROWS | wc -w) rows x $STEPS steps in $(( $(date +%s) - start )) s (parallel)" | tee -a "$OUT/gpu.txt"
for row in $ROWS; do { echo "== $row"; tr '\r' '\n' <"$WORK/$row.log" | grep -v "^\s*$" | tail -n 4; } >>"$OUT/train.log"; done
step=$(printf 'step-%07d' "$STEPS")
for row in $ROWS; do
  folder="$row/seed-$SEED/checkpoints/$step"
  [ -f "$WORK/rows/$folder/ema.safetensors" ] && tar -cf "$OUT/$row.tar" -C "$WORK/rows" "$folder/config.json" \
    "$folder/ema.safetensors"
done
exit $failed
