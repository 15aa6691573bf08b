#!/usr/bin/env bash
# Load tests for real against `genie serve` (what .ci/run calls after the test suite):
# genie-loadtest in closed and open loop, then the k6 scripts, each with its thresholds.
# Usage: loadtest/ci.sh BIN_DIR   (the directory holding `genie` and `genie-loadtest`)
set -euo pipefail
bin="${1:?usage: loadtest/ci.sh BIN_DIR}"
cd "$(dirname "$0")/.."
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
log=$(mktemp)
"$bin/genie" serve --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
python3 - "$url" <<'PY'
import sys, time, urllib.request
deadline = time.time() + 120
while True:
    try:
        if urllib.request.urlopen(sys.argv[1] + "/health", timeout=2).status == 200:
            break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit("genie serve did not become healthy in 120 s")
    time.sleep(0.5)
PY
echo "-- genie-loadtest, closed loop"
"$bin/genie-loadtest" --url "$url" --concurrency 4 --requests 16 --input-tokens 64 \
  --output-tokens 32 --ban-tokens 0,1,2 --slo-ttft-ms 5000 --slo-itl-ms 500 --no-progress
echo "-- genie-loadtest, open loop"
"$bin/genie-loadtest" --url "$url" --rate 2 --duration 8 --endpoint completions \
  --input-tokens uniform:16:128 --output-tokens 16 --no-progress
echo "-- k6: chat completions"
GENIE_URL="$url" DURATION=15s k6 run --no-usage-report -q loadtest/k6/chat.js
echo "-- k6: errors under load"
GENIE_URL="$url" DURATION=5s k6 run --no-usage-report -q loadtest/k6/errors.js
