#!/usr/bin/env python3
"""Genie beside llama.cpp's OpenAI server: the same GGUF, the same thread count, the same
load (genie-loadtest), then the ratios.

    python3 loadtest/compare/compare.py                 # llama-cpp-python's server
    python3 loadtest/compare/compare.py --llama-server /path/to/llama-server

Genie runs twice: colocated (one worker with --threads T: the same threads as the peer) and
disaggregated (`genie serve`'s default: a prefill and a decode worker, T threads each,
sharing the same cores). The peer: `python -m llama_cpp.server` (pip install
'llama-cpp-python[server]', one request at a time) or the native `llama-server` with
parallel slots (the stronger peer). Prints a markdown table; --json FILE keeps every report.

    python3 loadtest/compare/compare.py --llama-server PATH --slots 16 --concurrency 16 \
        --input-tokens 100 --requests 4 --rounds 3 --systems disaggregated,llama-server

--rounds R runs every system R times in turn (servers restarted each round), so a shared
host's drift falls on all of them alike; figures are medians over rounds and ratios the
median of each round's ratio. The environment passes through (GENIE_KERNEL=avx2 caps
Genie's kernels to compare within one ISA).
"""
import statistics
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def log_tail(proc):
    log = getattr(proc, "log_path", None)
    if not log:
        return ""
    with open(log, errors="replace") as f:
        return "".join(f.readlines()[-20:])


def wait_ready(url, proc, path, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode} before it was ready ({url}):\n{log_tail(proc)}")
        try:
            if urllib.request.urlopen(url + path, timeout=2).status == 200:
                return
        except Exception:
            pass
        time.sleep(0.5)
    sys.exit(f"{url}{path} not ready after {timeout} s:\n{log_tail(proc)}")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def metric(url, name):
    """The sum of every series of metric `name` on `url`/metrics."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def run_loadtest(loadtest, url, args, path, what):
    """Runs `genie-loadtest --url URL ARGS --json PATH --no-progress`; its summary, or the
    run stops with genie-loadtest's output, headed by `what`."""
    cmd = [loadtest, "--url", url, "--json", path, "--no-progress"] + args
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{what}: genie-loadtest failed:\n{r.stdout}\n{r.stderr}")
    with open(path) as f:
        return json.load(f)["summary"]


def load(loadtest, url, concurrency, a, out_dir, name):
    path = os.path.join(out_dir, f"{name}-c{concurrency}.json")
    args = ["--concurrency", str(concurrency), "--requests",
            str(a.requests * concurrency), "--input-tokens", str(a.input_tokens),
            "--output-tokens", str(a.output_tokens), "--ban-tokens", "0,1,2",
            "--endpoint", "completions", "--warmup", "2", "--max-error-rate", "0"]
    return run_loadtest(loadtest, url, args, path, name)


def run_server(cmd, url, ready_path, env=None):
    # Output goes to a file: a pipe nobody reads fills up and stalls a chatty server.
    log = tempfile.NamedTemporaryFile(prefix="genie-compare-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.log_path = log.name
    wait_ready(url, proc, ready_path)
    return proc


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genie", default=os.path.join(ROOT, "target/release/genie"))
    p.add_argument("--loadtest", default=os.path.join(ROOT, "target/release/genie-loadtest"))
    p.add_argument("--llama-server", help="native llama-server binary (else llama-cpp-python's server)")
    p.add_argument("--slots", type=int, default=4, help="llama-server parallel slots")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--concurrency", default="1,4")
    p.add_argument("--requests", type=int, default=8, help="requests per unit of concurrency")
    p.add_argument("--input-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--json", help="write every summary here")
    p.add_argument("--rounds", type=int, default=1, help="every system this many times, in turn")
    p.add_argument("--systems", default="colocated,disaggregated,peer",
                   help="which to run: colocated, disaggregated, peer (llama-server names the peer too)")
    a = p.parse_args()
    for b in (a.genie, a.loadtest):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b} is missing: cargo build --release first")
    model = subprocess.run([a.genie, "model", "fetch"], capture_output=True, text=True,
                           check=True).stdout.split()[0]
    levels = [int(c) for c in a.concurrency.split(",")]
    out_dir = tempfile.mkdtemp(prefix="genie-compare-")
    results = {}
    wanted = set(a.systems.replace("llama-server", "peer").replace("llama-cpp-python", "peer").split(","))
    systems = [
        ("genie colocated", [a.genie, "serve", "--colocated", "--threads", str(a.threads)], "/health"),
        ("genie disaggregated", [a.genie, "serve", "--threads", str(a.threads)], "/health"),
    ]
    systems = [s for s in systems if s[0].split()[1] in wanted]
    if "peer" not in wanted:
        peer = None
    elif a.llama_server:
        peer = "llama-server"
        # 1,024 tokens of context per slot at least.
        ctx = max(8192, 1024 * a.slots)
        systems.append((peer, [a.llama_server, "-m", model, "-t", str(a.threads), "-tb", str(a.threads),
                               "-np", str(a.slots), "-c", str(ctx), "--host", "127.0.0.1"], "/health"))
    else:
        peer = "llama-cpp-python"
        systems.append((peer, [sys.executable, "-m", "llama_cpp.server", "--model", model,
                               "--n_threads", str(a.threads), "--n_ctx", "4096",
                               "--interrupt_requests", "False", "--host", "127.0.0.1"], "/v1/models"))
    genie_systems = [s for s in systems if s[0].startswith("genie")]
    rounds = {}
    for rnd in range(a.rounds):
        for name, cmd, ready in systems:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = cmd + ["--port", str(port)]
            print(f"# round {rnd + 1}, {name}: {' '.join(cmd)}", file=sys.stderr)
            proc = run_server(cmd, url, ready)
            try:
                for c in levels:
                    s = load(a.loadtest, url, c, a, out_dir, name.replace(" ", "-"))
                    rounds.setdefault((name, c), []).append(s)
                    print(f"  concurrency {c}: {s['output_token_throughput']:.1f} output tok/s, "
                          f"TTFT p50 {s['ttft']['p50_ms']:.0f} ms, ITL p50 {s['itl']['p50_ms']:.1f} ms",
                          file=sys.stderr)
            finally:
                stop(proc)
    med = lambda xs: statistics.median(xs) if xs else float("nan")

    def median_summary(runs):
        """Each figure the compare prints, as its median over the rounds."""
        return {
            "output_token_throughput": med([r["output_token_throughput"] for r in runs]),
            "request_throughput": med([r["request_throughput"] for r in runs]),
            "ttft": {k: med([r["ttft"][k] for r in runs]) for k in ("p50_ms", "p99_ms")},
            "itl": {"p50_ms": med([r["itl"]["p50_ms"] for r in runs])},
            "tpot": {"mean_ms": med([r["tpot"]["mean_ms"] for r in runs])},
        }

    results = {k: median_summary(v) for k, v in rounds.items()}
    print(f"\nSame GGUF ({os.path.basename(model)}), {a.threads} threads, /v1/completions streamed, "
          f"{a.input_tokens} prompt tokens, {a.output_tokens} output tokens (eos banned), "
          f"{a.requests} requests per unit of concurrency, {a.rounds} round(s), medians. Ratios are "
          f"Genie / {peer}, the median of each round's ratio: above 1 is better for throughput, below 1 "
          "is better for latency.\n")
    print(f"| concurrency | system | output tok/s | req/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | TPOT mean ms |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for c in levels:
        for name, _, _ in systems:
            s = results[(name, c)]
            print(f"| {c} | {name} | {s['output_token_throughput']:.1f} | {s['request_throughput']:.2f} | "
                  f"{s['ttft']['p50_ms']:.0f} | {s['ttft']['p99_ms']:.0f} | {s['itl']['p50_ms']:.1f} | "
                  f"{s['tpot']['mean_ms']:.1f} |")
    print(f"\n| concurrency | Genie mode | throughput ratio | TTFT p50 ratio | ITL p50 ratio | TPOT ratio |")
    print("|---:|---|---:|---:|---:|---:|")
    for c in levels:
        if (peer, c) not in rounds:
            continue
        q = rounds[(peer, c)]
        for name, _, _ in genie_systems:
            s = rounds[(name, c)]
            r = lambda get: med([get(x) / get(y) if get(y) else float("nan") for x, y in zip(s, q)])
            print(f"| {c} | {name.split()[1]} | {r(lambda v: v['output_token_throughput']):.2f} | "
                  f"{r(lambda v: v['ttft']['p50_ms']):.2f} | {r(lambda v: v['itl']['p50_ms']):.2f} | "
                  f"{r(lambda v: v['tpot']['mean_ms']):.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({f"{n} c{c}": s for (n, c), s in rounds.items()}, f, indent=2)
    shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
