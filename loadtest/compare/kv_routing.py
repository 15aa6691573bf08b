#!/usr/bin/env python3
"""KV-aware routing against least-loaded and prefix-affinity, across processes: a gateway,
two prefill workers and two decode workers (one thread each), every request opening with
the same long system prompt (genie-loadtest --shared-prefix-tokens). Each setup runs the
same closed-loop load on a fresh cluster:

  no-cache         least_loaded, prefix caches off on every worker (the baseline)
  least_loaded     prefix caches on
  prefix_affinity  prefix caches on
  kv_aware         prefix caches on, placed by the workers' KV events

Per setup: TTFT p50/p99, the prompt tokens served from prefix caches (and that fraction
against the ideal: every request reusing the whole shared part, read as the largest
`cached_tokens` any response reported), and the KV bytes that crossed TCP per request
(the prefill workers' `genie_kv_transfer_bytes_total`).

    python3 loadtest/compare/kv_routing.py [--requests 40] [--json FILE]
"""
import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, free_port, metric, run_loadtest, run_server, stop, wait_ready  # noqa: E402

SETUPS = [
    ("no-cache", "least_loaded", False),
    ("least_loaded", "least_loaded", True),
    ("prefix_affinity", "prefix_affinity", True),
    ("kv_aware", "kv_aware", True),
]


def workers(url):
    with urllib.request.urlopen(f"{url}/v1/workers", timeout=10) as r:
        return json.load(r)["data"]


def run_setup(a, name, routing, cache, out_dir):
    env = dict(os.environ, GENIE_SCHEDULER__ROUTING=routing)
    # The gateway and its workers share a cluster secret (one per run, unless given).
    env.setdefault("GENIE_CLUSTER_SECRET", secrets.token_hex(32))
    if not cache:
        env["GENIE_PREFILL__PREFIX_CACHE_BYTES"] = "0"
        env["GENIE_DECODE__PREFIX_CACHE_BYTES"] = "0"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gw = run_server([a.genie, "gateway", "--host", "127.0.0.1", "--port", str(port)], url,
                    "/v1/models", env=env)
    procs = []
    try:
        for role in ("prefill-worker", "prefill-worker", "decode-worker", "decode-worker"):
            procs.append(subprocess.Popen(
                [a.genie, role, "--gateway", url, "--host", "127.0.0.1", "--port", "0",
                 "--threads", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_ready(url, gw, "/health")
        path = os.path.join(out_dir, f"{name}.json")
        args = ["--concurrency", str(a.concurrency), "--requests", str(a.requests), "--warmup", "1",
                "--input-tokens", str(a.input_tokens), "--output-tokens", str(a.output_tokens),
                "--ban-tokens", "0,1,2"]
        if a.multi_turn:
            args += ["--multi-turn", str(a.multi_turn)]
        else:
            args += ["--shared-prefix-tokens", str(a.shared)]
        summary = run_loadtest(a.loadtest, url, args, path, f"{name}: " + " ".join(args))
        prefills = [w for w in workers(url) if w["role"] == "prefill"]
        moved = sum(metric(w["address"], "genie_kv_transfer_bytes_total") for w in prefills)
        sent = summary["requests"] + 1  # the warm-up request moved KV too
        return summary, moved / sent
    finally:
        for p in procs:
            stop(p)
        stop(gw)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genie", default=os.path.join(ROOT, "target/release/genie"))
    p.add_argument("--loadtest", default=os.path.join(ROOT, "target/release/genie-loadtest"))
    p.add_argument("--shared", type=int, default=1500, help="tokens of the shared system prompt")
    p.add_argument("--input-tokens", type=int, default=32, help="each request's own message")
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--multi-turn", type=int, default=0,
                   help="instead of the shared system prompt: conversations of this many turns, "
                        "each turn resending the history (--input-tokens words per user message)")
    p.add_argument("--json")
    a = p.parse_args()
    out_dir = tempfile.mkdtemp(prefix="genie-kv-routing-")
    rows = {}
    for name, routing, cache in SETUPS:
        print(f"# {name}", file=sys.stderr)
        rows[name] = run_setup(a, name, routing, cache, out_dir)
    base_ttft = rows["least_loaded"][0]["ttft"]["p50_ms"]
    base_bytes = rows["no-cache"][1]
    shape = (f"{a.multi_turn}-turn conversations" if a.multi_turn
             else f"a {a.shared}-token shared system prompt")
    print(f"\n2 prefill + 2 decode worker processes (1 thread each, 2 cores), {a.requests} requests, "
          f"concurrency {a.concurrency}, {shape}, {a.input_tokens}-token "
          f"user messages, {a.output_tokens} output tokens.\n")
    print("| setup | TTFT p50 ms | TTFT p99 ms | p50 / least_loaded's | prompt tokens cached | of the ideal "
          "| KV bytes over TCP per request | / no-cache |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, _, _ in SETUPS:
        s, per_req = rows[name]
        frac = s.get("cached_prompt_fraction") or 0.0
        best = s.get("max_cached_tokens") or 0
        # The ideal of a shared prompt: every request reusing all of it (the most any did).
        ideal = (best / s["mean_prompt_tokens"]
                 if s["mean_prompt_tokens"] and best and not a.multi_turn else None)
        of_ideal = f"{100 * frac / ideal:.1f} %" if ideal else "n/a"
        print(f"| {name} | {s['ttft']['p50_ms']:.0f} | {s['ttft']['p99_ms']:.0f} | "
              f"{s['ttft']['p50_ms'] / base_ttft:.2f}x | {100 * frac:.1f} % | {of_ideal} | "
              f"{per_req / 1e6:.2f} MB | {per_req / base_bytes:.2f}x |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({k: {"summary": v[0], "kv_bytes_per_request": v[1]} for k, v in rows.items()},
                      f, indent=2)


if __name__ == "__main__":
    main()
