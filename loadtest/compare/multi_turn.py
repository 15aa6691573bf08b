#!/usr/bin/env python3
"""Multi-turn chat with prefix caching: Genie with its prefix caches, Genie without them,
and native llama-server with its per-slot prompt cache (`-np 4 --cache-reuse 256`), one
after another on the same host, the same GGUF and the same genie-loadtest command:
conversations of `--turns` turns, each turn resending the whole history after a shared
system prompt.

    python3 loadtest/compare/multi_turn.py --llama-server /path/to/llama-server [--json FILE]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, free_port, run_loadtest, run_server, stop  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genie", default=os.path.join(ROOT, "target/release/genie"))
    p.add_argument("--loadtest", default=os.path.join(ROOT, "target/release/genie-loadtest"))
    p.add_argument("--llama-server", help="native llama-server binary (left out when not given)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--shared", type=int, default=400, help="tokens of the shared system prompt")
    p.add_argument("--input-tokens", type=int, default=40)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json")
    a = p.parse_args()
    model = subprocess.run([a.genie, "model", "fetch"], capture_output=True, text=True,
                           check=True).stdout.split()[0]
    off = {"GENIE_PREFILL__PREFIX_CACHE_BYTES": "0", "GENIE_DECODE__PREFIX_CACHE_BYTES": "0"}
    systems = [
        ("genie, prefix caches on", [a.genie, "serve", "--threads", str(a.threads)], "/health", {}),
        ("genie, prefix caches off", [a.genie, "serve", "--threads", str(a.threads)], "/health", off),
    ]
    if a.llama_server:
        systems.append(("llama-server, prompt cache", [
            a.llama_server, "-m", model, "-t", str(a.threads), "-tb", str(a.threads),
            "-np", str(a.concurrency), "-c", str(8192 * a.concurrency), "--cache-reuse", "256",
            "--host", "127.0.0.1"], "/health", {}))
    out_dir = tempfile.mkdtemp(prefix="genie-multi-turn-")
    args = ["--concurrency", str(a.concurrency), "--multi-turn", str(a.turns), "--requests",
            str(a.requests), "--shared-prefix-tokens", str(a.shared), "--input-tokens",
            str(a.input_tokens), "--output-tokens", str(a.output_tokens), "--ban-tokens", "0,1,2",
            "--warmup", "0", "--seed", str(a.seed)]
    rows = {}
    for name, cmd, ready, env in systems:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        print(f"# {name}", file=sys.stderr)
        proc = run_server(cmd + ["--port", str(port)], url, ready, env=dict(os.environ, **env))
        try:
            path = os.path.join(out_dir, name.split(",")[0] + str(len(rows)) + ".json")
            rows[name] = run_loadtest(a.loadtest, url, args, path, name)
        finally:
            stop(proc)
    print(f"\ngenie-loadtest {' '.join(args)}\n")
    print("| server | TTFT p50 ms | TTFT p99 ms | output tok/s | mean prompt tokens | prompt tokens cached |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in rows.items():
        frac = s.get("cached_prompt_fraction")
        cached = f"{100 * frac:.1f} %" if frac is not None else "not reported"
        print(f"| {name} | {s['ttft']['p50_ms']:.0f} | {s['ttft']['p99_ms']:.0f} | "
              f"{s['output_token_throughput']:.1f} | {s['mean_prompt_tokens']:.1f} | {cached} |")
    on = rows["genie, prefix caches on"]["ttft"]["p50_ms"]
    print(f"\nGenie with caches / without: {on / rows['genie, prefix caches off']['ttft']['p50_ms']:.2f}x")
    if "llama-server, prompt cache" in rows:
        print(f"Genie with caches / llama-server: {on / rows['llama-server, prompt cache']['ttft']['p50_ms']:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
