#!/usr/bin/env bash
# Distil the Fashion-MNIST teacher on one GPU into the group student and the size-1 baseline student
# (the distill-fmnist recipe, STEPS steps each, as two parallel processes: both are launch-bound), and
# bring back the two serving folders (config + EMA weights, 7.5 MB each) for `groupdiff bench distill`
# here, where the Inception network for FID is.
#
# Carry the teacher (config.json + ema.safetensors of runs/fmnist-tiny/checkpoints/step-0001500, copied
# to .gpucarry/teacher) and the data kit (bench/device_kit.py):
#   run(carry=[".gpucarry/fmnist-pixel.npz", ".gpucarry/teacher"], command="STEPS=5000 OUT=$OUT bash bench/gpu/distill.sh")
# Back here:
#   tar -xf group.tar -C outputs/distill-gpu && tar -xf n1.tar -C outputs/distill-gpu
#   groupdiff bench distill --teacher runs/fmnist-tiny/checkpoints/step-0001500 \
#       --student outputs/distill-gpu/group --baseline outputs/distill-gpu/n1 --out docs/results/distill-gpu
# Usage: STEPS=<steps> OUT=<dir> [TEACHER=.gpucarry/teacher] [KIT=<kit.npz>] bash bench/gpu/distill.sh
# (DEVICE=cpu runs the same flow as a CPU smoke test.)
set -euo pipefail
STEPS=${STEPS:?set STEPS}
OUT=${OUT:-outputs/gpu-distill}
TEACHER=${TEACHER:-.gpucarry/teacher}
KIT=${KIT:-.gpucarry/fmnist-pixel.npz}
DEVICE=${DEVICE:-cuda}
WORK=$(mktemp -d)
mkdir -p "$OUT"
# shellcheck source=bench/gpu/common.sh
source "$(dirname "$0")/common.sh"
device_setup
start=$(date +%s)
declare -A sizes=([group]=null [n1]=1)
pids=()
for name in group n1; do
  python3 -m groupdiff distill --teacher "$TEACHER" --config fmnist --steps "$STEPS" --out "$WORK/$name" \
    --set device="$DEVICE" --set group_size="${sizes[$name]}" --export-to "$WORK/served/$name" \
    >"$WORK/$name.log" 2>&1 &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
echo "distilled 2 students x $STEPS steps in $(( $(date +%s) - start )) s (parallel)" | tee -a "$OUT/gpu.txt"
for name in group n1; do
  { echo "== $name"; tr '\r' '\n' <"$WORK/$name.log" | grep -v "^\s*$" | tail -n 4; } >>"$OUT/train.log"
  [ -f "$WORK/served/$name/model.safetensors" ] && tar -cf "$OUT/$name.tar" -C "$WORK/served" "$name"
  cp "$WORK/$name/log.jsonl" "$OUT/$name-log.jsonl" 2>/dev/null || true
done
exit $failed
