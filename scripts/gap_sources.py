#!/usr/bin/env python3
"""Where a run's long inter-token gaps came from: engine steps or delivery.

Lines up `genie-loadtest --requests-out` (each request's send time, TTFT and gaps) with a
server's step log (`GENIE_LOG=info,genie_decode_worker::batch=trace`, one line a decode
worker step with its duration). A client gap longer than THRESHOLD ms is counted as the
engine's when a step that ended within it took at least 60 % of it, else as delivery's
(HTTP, the client, the host's scheduler). Same host, same clock.

Usage: scripts/gap_sources.py SERVE_LOG REQUESTS_JSONL [THRESHOLD_MS (30)]
"""
import bisect
import datetime
import json
import re
import sys

log, requests = sys.argv[1], sys.argv[2]
threshold = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
steps = []  # (end unix ms, kind, ms)
for line in open(log, errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    m = re.match(r"(\S+Z) +TRACE genie_decode_worker::batch: (\w+) step (.*)", line)
    if not m:
        continue
    ts = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp() * 1e3
    kv = dict(re.findall(r"(\w+)=(\S+)", m.group(3)))
    steps.append((ts, m.group(2), float(kv["ms"])))
steps.sort()
ends = [s[0] for s in steps]
arrivals, gaps = 0, []
for line in open(requests):
    r = json.loads(line)
    if r["ttft_ms"] is None:
        continue
    t = r["sent_unix_ms"] + r["ttft_ms"]
    arrivals += 1
    for i, g in enumerate(r["itl_ms"]):
        gaps.append((g, t, t + g, i))
        t += g
        arrivals += 1
long = [x for x in gaps if x[0] > threshold]
by = {"engine": [], "delivery": []}
for g, a, b, i in long:
    inside = steps[bisect.bisect_right(ends, a + 1) : bisect.bisect_right(ends, b + 1)]
    longest = max((s[2] for s in inside), default=0.0)
    by["engine" if longest >= 0.6 * g else "delivery"].append((g, i, [k for _, k, ms in inside if ms >= 0.6 * g]))
print(f"{len(gaps)} gaps, {len(long)} over {threshold:g} ms ({100 * len(long) / max(1, len(gaps)):.2f} %)")
for k, v in by.items():
    kinds = {}
    for _, _, ks in v:
        for x in ks:
            kinds[x] = kinds.get(x, 0) + 1
    first = sum(1 for _, i, _ in v if i == 0)
    print(f"  {k}: {len(v)} (the request's first gap: {first}; steps: {kinds})")
