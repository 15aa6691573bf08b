#!/usr/bin/env bash
# The serving simulator against the real system on this host. For each config, one
# `genie serve` first runs a calibration trace (its workers fit their live cost curves;
# `genie profile --from` saves them), then each workload trace under `genie-loadtest`.
# `genie plan simulate` runs the same traces through the simulator twice: with the
# offline profiles given (`genie profile` files) and with the config's live profile from
# the calibration run. A table of predicted and measured TTFT p50/p90, ITL p50/p99 and
# goodput is printed.
#
# Usage: scripts/sim_vs_real.sh OUT_DIR PROFILE... -- CONFIG_TOML... [-- TRACE...]
#   PROFILE: `genie profile` files (one per thread count the configs use);
#   CONFIG_TOML: serve configs (their [prefill]/[decode] threads pick the profile);
#   TRACE: JSONL traces (default: the two this script writes, short chat and a mix with
#   long prompts; the calibration trace is always this script's own).
# Environment: GENIE (default target/release/genie), LOADTEST (target/release/genie-loadtest),
# SLO_TTFT_MS (2000), SLO_ITL_MS (250), PORT (8411), ROUNDS (1: with more, every config
# serves every trace once a round, rounds in turn, each with its own seeds and calibration,
# and a last table gives each cell's median ratio over the rounds); the generated traces' arrival rates
# CHAT_RATE (1.0 req/s), MIX_RATE (0.5), CALIBRATION_RATE (0.7) and lengths CHAT_S (90),
# MIX_S (90) seconds, to load a slower host as much as a faster one.
#
# Each run sends its own prompt words (`genie-loadtest --seed`, one seed a run): with one
# seed, request i of every run would start with the same words as request i of the run
# before, and the server's prefix cache would serve them, which no simulated trace has.
set -euo pipefail
out=$1
shift
profiles=()
while [[ $# -gt 0 && $1 != -- ]]; do profiles+=("$1"); shift; done
shift
configs=()
while [[ $# -gt 0 && $1 != -- ]]; do configs+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
traces=("$@")
GENIE=${GENIE:-target/release/genie}
LOADTEST=${LOADTEST:-target/release/genie-loadtest}
SLO_TTFT_MS=${SLO_TTFT_MS:-2000}
SLO_ITL_MS=${SLO_ITL_MS:-250}
PORT=${PORT:-8411}
ROUNDS=${ROUNDS:-1}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a whole number of at least 1, not '$ROUNDS'" >&2; exit 2; }
mkdir -p "$out"

if [[ ${#traces[@]} -eq 0 ]]; then
  python3 - "$out" <<'EOF'
import json, os, random, sys
out = sys.argv[1]
def trace(name, rate, seconds, prompt, seed):
    rng = random.Random(seed)
    t, lines = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t > seconds:
            break
        lines.append({"arrival_s": round(t, 3), "input_tokens": prompt(rng),
                      "output_tokens": rng.randint(16, 64)})
    with open(f"{out}/{name}.jsonl", "w") as f:
        f.writelines(json.dumps(l) + "\n" for l in lines)
# Short chat: prompts of 32-256 tokens.
env = lambda k, d: float(os.environ.get(k, d))
trace("chat", env("CHAT_RATE", 1.0), env("CHAT_S", 90), lambda r: r.randint(32, 256), 1)
# A mix: a quarter of the prompts 800-1600 tokens.
trace("mix", env("MIX_RATE", 0.5), env("MIX_S", 90),
      lambda r: r.randint(800, 1600) if r.random() < 0.25 else r.randint(32, 256), 2)
EOF
  traces=("$out/chat.jsonl" "$out/mix.jsonl")
fi
python3 - "$out" <<'EOF'
import json, os, random, sys
rng = random.Random(99)
rate = float(os.environ.get("CALIBRATION_RATE", 0.7))
t, lines = 0.0, []
while t < 60:
    t += rng.expovariate(rate)
    n = rng.randint(800, 1600) if rng.random() < 0.2 else rng.randint(32, 256)
    lines.append({"arrival_s": round(t, 3), "input_tokens": n, "output_tokens": rng.randint(16, 64)})
open(f"{sys.argv[1]}/calibration.jsonl", "w").writelines(json.dumps(l) + "\n" for l in lines)
EOF

prof_args=()
for p in "${profiles[@]}"; do prof_args+=(--profile "$p"); done
slo=(--slo-ttft-ms "$SLO_TTFT_MS" --slo-itl-ms "$SLO_ITL_MS")
for round in $(seq 1 "$ROUNDS"); do
# One round keeps the plain file names; with more, each round's files end in .rN.
r=""
[[ $ROUNDS -gt 1 ]] && r=".r$round"
for cfg in "${configs[@]}"; do
  cname=$(basename "$cfg" .toml)$r
  "$GENIE" serve --config "$cfg" --port "$PORT" >"$out/$cname.serve.log" 2>&1 &
  server=$!
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    sleep 0.5
  done
  seed=$((1 + 100 * (round - 1)))
  "$LOADTEST" --url "http://127.0.0.1:$PORT" --trace "$out/calibration.jsonl" --ignore-eos \
    --no-progress --seed "$seed" >"$out/$cname.calibration.md" 2>&1 || true
  "$GENIE" profile --from "http://127.0.0.1:$PORT" --out "$out/$cname.live.json" \
    >"$out/$cname.live.log" 2>&1
  for trace in "${traces[@]}"; do
    tag="$(basename "$trace" .jsonl).$cname"
    seed=$((seed + 1))
    "$LOADTEST" --url "http://127.0.0.1:$PORT" --trace "$trace" --ignore-eos "${slo[@]}" \
      --no-progress --seed "$seed" --json "$out/$tag.real.json" >"$out/$tag.real.md" 2>&1 || true
  done
  kill "$server"
  wait "$server" || true
  for trace in "${traces[@]}"; do
    tag="$(basename "$trace" .jsonl).$cname"
    for kind in offline live; do
      if [[ $kind == offline ]]; then p=("${prof_args[@]}"); else p=(--profile "$out/$cname.live.json"); fi
      "$GENIE" plan simulate --config "$cfg" "${p[@]}" --workload "$trace" \
        --slo "ttft=$SLO_TTFT_MS,itl=$SLO_ITL_MS" --json >"$out/$tag.sim-$kind.json"
    done
  done
done
done

python3 - "$out" <<'EOF'
import glob, json, os, re, sys
out = sys.argv[1]
print("| trace | config | profile | TTFT p50 | TTFT p90 | ITL p50 | ITL p99 | goodput req/s |")
print("|---|---|---|---|---|---|---|---|")
def cells(s, r):
    """(format, simulated, measured) of each column, from a simulation and a real run."""
    return [
        ("%.0f", s["ttft_ms"]["p50"], r["ttft"]["p50_ms"]),
        ("%.0f", s["ttft_ms"]["p90"], r["ttft"]["p90_ms"]),
        ("%.1f", s["itl_ms"]["p50"], r["itl"]["p50_ms"]),
        ("%.1f", s["itl_ms"]["p99"], r["itl"]["p99_ms"]),
        ("%.3f", s["goodput_per_s"], (r.get("goodput") or {}).get("requests_per_s")),
    ]
ratios = {}
for real in sorted(glob.glob(f"{out}/*.real.json")):
    tag = os.path.basename(real)[: -len(".real.json")]
    r = json.load(open(real))["summary"]
    for kind in ("offline", "live"):
        s = json.load(open(f"{out}/{tag}.sim-{kind}.json"))
        row = []
        for f, p, m in cells(s, r):
            ratio = f" ({p / m:.2f})" if m else ""
            row.append(f"{f % p} / {f % m if m is not None else '-'}{ratio}")
        trace, cfg = tag.split(".", 1)
        print(f"| {trace} | {cfg} | {kind} | " + " | ".join(row) + " |")
        # With rounds (files tagged .rN), each cell's ratios gathered over them.
        tagged = re.fullmatch(r"(.*)\.r\d+", cfg)
        if tagged:
            ratios.setdefault((trace, tagged.group(1), kind), []).append(
                [p / m if m else None for _, p, m in cells(s, r)])
print("\n(simulated / measured (ratio); measured by genie-loadtest, simulated by genie plan simulate")
print("with the offline profiles (genie profile) or the config's live profile from its calibration run)")

# With rounds: each cell's median ratio over them, and their range.
if ratios:
    import statistics
    print("\n| trace | config | profile | rounds | TTFT p50 | TTFT p90 | ITL p50 | ITL p99 | goodput |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (trace, cfg, kind), rows in sorted(ratios.items()):
        cols = []
        for i in range(5):
            v = [row[i] for row in rows if row[i] is not None]
            cols.append(f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" if v else "-")
        print(f"| {trace} | {cfg} | {kind} | {len(rows)} | " + " | ".join(cols) + " |")
    print("\n(simulated / measured: the median over the rounds, and the range)")
EOF
