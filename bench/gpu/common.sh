# Sourced by the GPU scripts that train from a device kit: install this checkout without deps (the
# device image has the dependencies), record the device in $OUT/gpu.txt, rebuild data/fmnist-pixel
# from the kit $KIT (experiments/device_kit.py) unless it is there. Needs OUT, KIT, DEVICE and WORK set.
device_setup() {
  python3 -m pip install -q --no-deps --no-build-isolation -e . >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; exit 1; }
  if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; else echo "$DEVICE"; fi \
    | tee "$OUT/gpu.txt"
  [ -d data/fmnist-pixel ] || python3 -m groupdiff.experiments.device_kit unpack "$KIT" data/fmnist-pixel
}
