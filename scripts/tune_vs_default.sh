#!/usr/bin/env bash
# `genie plan tune` proven (or not) on this host: for each workload trace, tune a config
# for it from the given profiles, then serve the trace for real under `genie-loadtest`
# with the default config and with the tuned one, interleaved, ROUNDS times, and print
# predicted and measured goodput side by side.
#
# Usage: scripts/tune_vs_default.sh OUT_DIR PROFILE... -- TRACE...
#   PROFILE: `genie profile` files (one per thread count, so the tuner may choose threads);
#   TRACE: JSONL traces (`genie-loadtest --trace` form).
# Environment: GENIE (default target/release/genie), LOADTEST (target/release/genie-loadtest),
# SLO_TTFT_MS (1000), SLO_ITL_MS (100), ROUNDS (2), PORT (8412).
#
# Every run starts its own `genie serve`, so no run finds another's prompts in a prefix
# cache; within a round both configs get the same prompt words (`--seed` = the round).
set -euo pipefail
out=$1
shift
profiles=()
while [[ $# -gt 0 && $1 != -- ]]; do profiles+=("$1"); shift; done
shift
traces=("$@")
GENIE=${GENIE:-target/release/genie}
LOADTEST=${LOADTEST:-target/release/genie-loadtest}
SLO_TTFT_MS=${SLO_TTFT_MS:-1000}
SLO_ITL_MS=${SLO_ITL_MS:-100}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-8412}
mkdir -p "$out"
printf '[server]\nport = %s\n' "$PORT" >"$out/default.toml"

prof_args=()
for p in "${profiles[@]}"; do prof_args+=(--profile "$p"); done
slo="ttft=$SLO_TTFT_MS,itl=$SLO_ITL_MS"

serve_once() { # CONFIG TRACE SEED JSON
  "$GENIE" serve --config "$1" >"$4.serve.log" 2>&1 &
  local server=$!
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    sleep 0.5
  done
  "$LOADTEST" --url "http://127.0.0.1:$PORT" --trace "$2" --ignore-eos --no-progress \
    --seed "$3" --slo-ttft-ms "$SLO_TTFT_MS" --slo-itl-ms "$SLO_ITL_MS" --json "$4" \
    >"$4.md" 2>&1 || true
  kill "$server"
  wait "$server" || true
}

for trace in "${traces[@]}"; do
  w=$(basename "$trace" .jsonl)
  "$GENIE" plan tune --config "$out/default.toml" "${prof_args[@]}" --workload "$trace" \
    --slo "$slo" --out "$out/$w.tuned.toml" >"$out/$w.tune.txt"
  for cfg in default tuned; do
    c="$out/default.toml"
    [[ $cfg == tuned ]] && c="$out/$w.tuned.toml"
    "$GENIE" plan simulate --config "$c" "${prof_args[@]}" --workload "$trace" --slo "$slo" \
      --json >"$out/$w.$cfg.sim.json"
  done
  for round in $(seq 1 "$ROUNDS"); do
    serve_once "$out/default.toml" "$trace" "$round" "$out/$w.default.$round.json"
    serve_once "$out/$w.tuned.toml" "$trace" "$round" "$out/$w.tuned.$round.json"
  done
done

python3 - "$out" "$ROUNDS" "${traces[@]}" <<'EOF'
import json, os, sys
out, rounds, traces = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print("| workload | predicted: default -> tuned | " + " | ".join(f"measured, round {r}" for r in range(1, rounds + 1)) + " |")
print("|---|---|" + "---|" * rounds)
for t in traces:
    w = os.path.basename(t)[: -len(".jsonl")]
    p = [json.load(open(f"{out}/{w}.{c}.sim.json"))["goodput_per_s"] for c in ("default", "tuned")]
    cells = [f"{p[0]:.3f} -> {p[1]:.3f} req/s ({p[1] / p[0]:.2f}x)" if p[0] else f"{p[0]:.3f} -> {p[1]:.3f}"]
    for r in range(1, rounds + 1):
        m = []
        for c in ("default", "tuned"):
            s = json.load(open(f"{out}/{w}.{c}.{r}.json"))["summary"]
            m.append(((s.get("goodput") or {}).get("requests_per_s")) or 0.0)
        cells.append(f"{m[0]:.3f} -> {m[1]:.3f} ({m[1] / m[0]:.2f}x)" if m[0] else f"{m[0]:.3f} -> {m[1]:.3f}")
    print(f"| {w} | " + " | ".join(cells) + " |")
EOF
