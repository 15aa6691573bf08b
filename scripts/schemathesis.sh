#!/usr/bin/env bash
# Property-based API test: schemathesis generates requests from `GET /openapi.json` of a
# live `genie serve` (the default model, cached) and checks that no answer is a 5xx and
# that every answer, errors included, matches the documented schema (the OpenAI error
# envelope). Bounded: SCHEMATHESIS_MAX_EXAMPLES (default 50) examples per operation.
#
#   scripts/schemathesis.sh [DIR_WITH_THE_GENIE_BINARY]   (default target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target}/debug}/genie"
examples="${SCHEMATHESIS_MAX_EXAMPLES:-50}"

if ! command -v schemathesis >/dev/null 2>&1; then
  python3 -m pip install -q schemathesis 2>/dev/null \
    || python3 -m pip install -q --break-system-packages schemathesis
fi

log=$(mktemp)
"$bin" serve --host 127.0.0.1 --port 0 --threads 2 >"$log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT

url=""
for _ in $(seq 1 600); do
  url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$log" | head -n 1 || true)
  [ -n "$url" ] && curl -fs "$url/health" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "genie serve exited" >&2; exit 1; }
  sleep 0.5
done
curl -fs "$url/health" >/dev/null || { cat "$log"; echo "genie serve never became healthy" >&2; exit 1; }
echo "genie serve at $url; schemathesis $(schemathesis --version 2>&1 | tail -n 1), $examples examples per operation"

start=$(date +%s)
PYTHONPATH="scripts${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=schemathesis_hooks \
  schemathesis run "$url/openapi.json" \
    --checks not_a_server_error,response_schema_conformance \
    --max-examples "$examples" \
    --request-timeout 120 \
    --generation-deterministic \
    --workers 1
echo "schemathesis: $(( $(date +%s) - start )) s"
