#!/usr/bin/env bash
# Distil the Fashion-MNIST teacher on one GPU into the group student and the size-1 baseline student
# (the distill-fmnist recipe, STEPS steps each, as two parallel processes: both are launch-bound), and
# bring back the two serving folders (config + EMA weights, 7.5 MB each) for `groupdiff bench distill`
# here, where the Inception network for FID is.
#
# Carry the teacher (config.json + ema.safetensors of runs/fmnist-tiny/checkpoints/step-0001500, copied
# to .gpucarry/teacher) and the data kit (experiments/device_kit.py):
#   run(carry=[".gpucarry/fmnist-pixel.npz", ".gpucarry/teacher"], command="STEPS=5000 OUT=$OUT bash bench/gpu/distill.sh")
# Back here:
#   tar -xf group.tar -C outputs/distill-gpu && tar -xf n1.tar -C outputs/distill-gpu
#   groupdiff bench distill --teacher runs/fmnist-tiny/checkpoints/step-0001500 \
#       --student outputs/distill-gpu/group --baseline outputs/distill-gpu/n1 --out experiments/results/distill-gpu
# DMD_STEPS=K then fine-tunes the group student for one step by distribution matching (the
# distill-fmnist-dmd recipe) and brings it back as dmd.tar; score it with --student outputs/distill-gpu/dmd.
# GUIDANCE_SCALE=s distils (and fine-tunes) at scale s instead of the teacher's recorded one; STUDENT_INIT=<ckpt>
# starts both FACM students from that checkpoint (e.g. a GroupDiff-l teacher's GroupDiff-f fine-tune, carried
# as .gpucarry/init; docs/distill.md item 8). GROUP_BATCH=n trains the group student on n images per step
# instead of the recipe's 64 (256: as many groups per step as the size-1 student has images; item 9).
# QUERY=class trains on same-class groups instead of the teacher's retrieved neighbours (item 10).
# Usage: STEPS=<steps> OUT=<dir> [DMD_STEPS=<steps>] [TEACHER=.gpucarry/teacher] [KIT=<kit.npz>]
#        [GUIDANCE_SCALE=<s>] [STUDENT_INIT=<ckpt>] [GROUP_BATCH=<n>] [QUERY=class] bash bench/gpu/distill.sh
# (DEVICE=cpu runs the same flow as a CPU smoke test.)
set -euo pipefail
STEPS=${STEPS:?set STEPS}
OUT=${OUT:-outputs/gpu-distill}
TEACHER=${TEACHER:-.gpucarry/teacher}
KIT=${KIT:-.gpucarry/fmnist-pixel.npz}
DEVICE=${DEVICE:-cuda}
DMD_STEPS=${DMD_STEPS:-0}
scale=(); [ -n "${GUIDANCE_SCALE:-}" ] && scale=(--set guidance_scale="$GUIDANCE_SCALE")
init=(); [ -n "${STUDENT_INIT:-}" ] && init=(--set student_init="$STUDENT_INIT")
query=(); [ -n "${QUERY:-}" ] && query=(--set query="$QUERY")
WORK=$(mktemp -d)
mkdir -p "$OUT"
# shellcheck source=bench/gpu/common.sh
source "$(dirname "$0")/common.sh"
device_setup
start=$(date +%s)
declare -A sizes=([group]=null [n1]=1)
declare -A batches=([group]="${GROUP_BATCH:-64}" [n1]=64)
pids=()
for name in group n1; do
  python3 -m groupdiff distill --teacher "$TEACHER" --config fmnist --steps "$STEPS" --out "$WORK/$name" \
    --set device="$DEVICE" --set group_size="${sizes[$name]}" --set batch_size="${batches[$name]}" \
    "${scale[@]}" "${init[@]}" "${query[@]}" \
    --export-to "$WORK/served/$name" \
    >"$WORK/$name.log" 2>&1 &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
echo "distilled 2 students x $STEPS steps in $(( $(date +%s) - start )) s (parallel)" | tee -a "$OUT/gpu.txt"
names=(group n1)
if [ "$failed" = 0 ] && [ "$DMD_STEPS" -gt 0 ]; then
  start=$(date +%s)
  python3 -m groupdiff distill --teacher "$TEACHER" --config fmnist-dmd --steps "$DMD_STEPS" --out "$WORK/dmd" \
    --set device="$DEVICE" --set dmd.init="$WORK/served/group" "${scale[@]}" --export-to "$WORK/served/dmd" \
    >"$WORK/dmd.log" 2>&1 || failed=1
  echo "dmd fine-tune x $DMD_STEPS steps in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
  names+=(dmd)
fi
for name in "${names[@]}"; do
  { echo "== $name"; tr '\r' '\n' <"$WORK/$name.log" | grep -v "^\s*$" | tail -n 4; } >>"$OUT/train.log"
  [ -f "$WORK/served/$name/model.safetensors" ] && tar -cf "$OUT/$name.tar" -C "$WORK/served" "$name"
  cp "$WORK/$name/log.jsonl" "$OUT/$name-log.jsonl" 2>/dev/null || true
done
exit $failed
