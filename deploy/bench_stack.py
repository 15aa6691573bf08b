#!/usr/bin/env python3
"""The local stack beside `genie serve`, and what the container network costs, in one run.

Three systems are up at once, idle but for the one being measured, all from the same
binary with one compute thread per worker:

  serve       `genie serve` on the host (gateway, a prefill and a decode worker in one
              process, KV handed over in memory)
  processes   `genie gateway` + 2 prefill + 2 decode workers as host processes on loopback
              (the stack's topology without containers: KV over TCP loopback)
  stack       the compose stack (deploy/stack.sh up): the same topology in containers on a
              Docker bridge network, the gateway through Docker's published port

The same genie-loadtest workload runs against each in turn, interleaved round by round
(these hosts are shared and noisy), at each concurrency. processes vs stack is the cost of
the container network (bridge, NAT and the published port's proxy); serve vs processes is
the cost of disaggregating over TCP (and of 4 worker threads against serve's 2 on the
same cores). Also measured: the round trip of a small request (`GET /health`, one
keep-alive connection) to each gateway, which isolates the network path from compute.

    deploy/stack.sh up target/release/genie
    python3 deploy/bench_stack.py [--concurrency 4,16] [--rounds 2] [--json FILE]
"""
import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "loadtest", "compare"))
from compare import free_port, run_loadtest, run_server, stop  # noqa: E402


def host_line():
    model, flags = "?", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{os.cpu_count()} vCPU, {model}, {' '.join(isa)}, Linux {platform.release()}"


def round_trip_us(url, n=300):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    times = []
    for i in range(n + 20):
        t = time.perf_counter()
        conn.request("GET", "/health")
        r = conn.getresponse()
        r.read()
        if i >= 20:
            times.append((time.perf_counter() - t) * 1e6)
    conn.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def loadtest(binary, url, concurrency, a, path):
    args = ["--warmup", "2", "--concurrency", str(concurrency),
            "--requests", str(a.requests_per_slot * concurrency),
            "--input-tokens", str(a.input_tokens), "--output-tokens", str(a.output_tokens),
            "--ban-tokens", "0,1,2", "--endpoint", "chat"]
    return run_loadtest(binary, url, args, path, url)


def start_processes(genie, secret, procs):
    """Starts the gateway and 4 workers, appending each to `procs` as it starts."""
    env = dict(os.environ, GENIE_THREADS="1")
    port, internal = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    procs.append(run_server([genie, "gateway", "--port", str(port), "--internal-port", str(internal),
                         "--cluster-secret-file", secret], url, "/v1/models", env=env))
    for role in ["prefill", "prefill", "decode", "decode"]:
        log = tempfile.NamedTemporaryFile(prefix=f"genie-bench-{role}-", suffix=".log", delete=False)
        p = subprocess.Popen([genie, f"{role}-worker", "--gateway", f"http://127.0.0.1:{internal}",
                              "--cluster-secret-file", secret], stdout=subprocess.PIPE,
                             stderr=log, text=True, env=env)
        p.stdout.readline()  # the start-up line: it is listening
        procs.append(p)
    deadline = time.time() + 120
    while time.time() < deadline:
        with urllib.request.urlopen(url + "/v1/workers", timeout=5) as r:
            if sum(1 for w in json.load(r)["data"] if w["healthy"]) == 4:
                return url
        time.sleep(0.5)
    sys.exit("host processes: 4 workers not healthy after 120 s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genie", default=os.path.join(ROOT, "target/release/genie"))
    ap.add_argument("--loadtest", default=os.path.join(ROOT, "target/release/genie-loadtest"))
    ap.add_argument("--stack-url", default="http://127.0.0.1:8000")
    ap.add_argument("--concurrency", default="4,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests-per-slot", type=int, default=4)
    ap.add_argument("--input-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--json")
    a = ap.parse_args()
    print(f"host: {host_line()}")
    with urllib.request.urlopen(a.stack_url + "/v1/workers", timeout=10) as r:
        healthy = sum(1 for w in json.load(r)["data"] if w["healthy"])
    if healthy != 4:
        sys.exit(f"the stack at {a.stack_url} has {healthy} healthy workers, not 4: deploy/stack.sh up")

    env = dict(os.environ, GENIE_THREADS="1")
    serve_port = free_port()
    serve_url = f"http://127.0.0.1:{serve_port}"
    serve = run_server([a.genie, "serve", "--port", str(serve_port)], serve_url, "/health", env=env)
    secret = os.path.join(ROOT, "deploy", "cluster.secret")
    procs = []
    try:
        proc_url = start_processes(a.genie, secret, procs)
        systems = {"serve": serve_url, "processes": proc_url, "stack": a.stack_url}
        results = {name: {"rtt": round_trip_us(url)} for name, url in systems.items()}
        out_dir = tempfile.mkdtemp(prefix="genie-bench-stack-")
        for conc in [int(c) for c in a.concurrency.split(",")]:
            names = list(systems)
            for rnd in range(a.rounds):
                order = names if rnd % 2 == 0 else names[::-1]
                for name in order:
                    s = loadtest(a.loadtest, systems[name], conc, a,
                                 os.path.join(out_dir, f"{name}-{conc}-{rnd}.json"))
                    results[name].setdefault(conc, []).append(s)
                    print(f"c={conc} round {rnd + 1} {name}: TTFT p50 {s['ttft']['p50_ms']:.0f} ms, "
                          f"ITL p50 {s['itl']['p50_ms']:.1f} ms, {s['output_token_throughput']:.1f} tok/s, "
                          f"{s['failed']} failed", flush=True)
    finally:
        for p in procs:
            stop(p)
        stop(serve)

    print(f"\nhost: {host_line()}")
    print(f"workload: genie-loadtest chat, {a.input_tokens} prompt tokens, {a.output_tokens} output tokens, "
          f"{a.requests_per_slot} requests per unit of concurrency, {a.rounds} interleaved rounds; "
          "the median of the rounds\n")
    print("| system | concurrency | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | e2e p50 (ms) | output tok/s | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    table = {}
    for conc in [int(c) for c in a.concurrency.split(",")]:
        for name in systems:
            runs = results[name][conc]
            row = {
                "ttft_p50": med([s["ttft"]["p50_ms"] for s in runs]),
                "ttft_p99": med([s["ttft"]["p99_ms"] for s in runs]),
                "itl_p50": med([s["itl"]["p50_ms"] for s in runs]),
                "e2e_p50": med([s["e2e"]["p50_ms"] for s in runs]),
                "tok_s": med([s["output_token_throughput"] for s in runs]),
                "failed": sum(s["failed"] for s in runs),
            }
            table[f"{name}-{conc}"] = row
            print(f"| {name} | {conc} | {row['ttft_p50']:.0f} | {row['ttft_p99']:.0f} | {row['itl_p50']:.1f} | "
                  f"{row['e2e_p50']:.0f} | {row['tok_s']:.1f} | {row['failed']} |")
    print("\n| system | GET /health round trip p50 (µs) | p99 (µs) |")
    print("|---|---:|---:|")
    for name in systems:
        p50, p99 = results[name]["rtt"]
        print(f"| {name} | {p50:.0f} | {p99:.0f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"host": host_line(), "table": table,
                       "rtt_us": {n: results[n]["rtt"] for n in systems}}, f, indent=2)


if __name__ == "__main__":
    main()
