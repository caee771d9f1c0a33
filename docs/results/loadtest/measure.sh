#!/usr/bin/env bash
# The committed load test: `groupdiff serve` (REST, default checkpoint and runtime) on this machine, then
# `groupdiff loadtest` closed-loop (users 1, 4, 16) and open-loop (Poisson, rates from 25 % to 150 % of the
# closed-loop peak), 4 images per request, uniform classes. Run under the shared lock:
#   flock /tmp/groupdiff-heavy.lock bash docs/results/loadtest/measure.sh
# Extra `groupdiff serve` arguments go in SERVE_ARGS (e.g. SERVE_ARGS="--checkpoint runs/x/checkpoints/step-1").
set -euo pipefail
OUT=${OUT:-docs/results/loadtest}
DURATION=${DURATION:-30}
BIN=${BIN:-.venv/bin}
PORT=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
if [ -z "${SERVE_ARGS:-}" ]; then  # the default checkpoint must exist (made by `groupdiff distill --export-to`)
  "$BIN/python" -c 'from groupdiff.serving.serve_config import BUNDLED_STUDENT as s; assert s.is_dir(), f"{s} missing"'
fi
mkdir -p "$OUT"
lscpu | grep 'Model name' | tee "$OUT/machine.txt"
nproc | sed 's/^/CPUs: /' | tee -a "$OUT/machine.txt"

LOG=${LOG:-/tmp/groupdiff-loadtest-server.log}
"$BIN/groupdiff" serve --port "$PORT" ${SERVE_ARGS:-} >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "$URL/readyz" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { tail -50 "$LOG"; exit 1; }
  sleep 0.5
done
curl -sf "$URL/v1/model" | tee "$OUT/model.json"; echo

"$BIN/groupdiff" loadtest --server "$URL" --mode closed --concurrency 1 4 16 --duration "$DURATION" \
  --num-images 4 --warmup 4 --out "$OUT/closed"
# open-loop rates as fractions of the closed loop's best requests/s
RATES=$("$BIN/python" - "$OUT/closed/loadtest.json" <<'PY'
import json, sys
peak = max(row["requests_per_s"] for row in json.load(open(sys.argv[1]))["rows"])
print(" ".join(f"{peak * f:.3g}" for f in (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)))
PY
)
"$BIN/groupdiff" loadtest --server "$URL" --mode open --rates $RATES --duration "$DURATION" \
  --num-images 4 --warmup 4 --out "$OUT/open"
