#!/usr/bin/env python3
"""The disaggregation experiment (DistServe-style, scaled to two cores): long prompts arrive
while many sequences decode. The same two cores run

  (a) colocated:      `genie serve --colocated --threads 2` (one worker prefills and decodes)
  (b) disaggregated:  `genie gateway`, a prefill worker on core 0 and a decode worker on core 1
                      (`taskset`, one thread each), the KV cache crossing TCP loopback

under the same mixed load, two genie-loadtest runs at once: "decoders" (closed loop, short
prompts, long outputs) and "long prompts" (open loop, Poisson arrivals of long prompts with
short outputs). What to look at: the decoders' inter-token latency while long prompts
arrive, the long prompts' TTFT, and goodput under the SLOs.

    python3 loadtest/compare/disagg.py [--json FILE]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, free_port, run_loadtest, run_server, stop, wait_ready  # noqa: E402


def loadtest(binary, url, args, path):
    common = ["--warmup", "0", "--endpoint", "completions", "--ban-tokens", "0,1,2"]
    return run_loadtest(binary, url, common + args, path, " ".join(args))


def mixed_load(a, url, out_dir, name):
    dec_path = os.path.join(out_dir, f"{name}-decoders.json")
    long_path = os.path.join(out_dir, f"{name}-long.json")
    res = {}
    # The decoders keep decoding for as long as long prompts arrive.
    decoders = ["--concurrency", str(a.decoders), "--duration", str(a.duration),
                "--input-tokens", "32", "--output-tokens", str(a.decode_tokens),
                "--slo-itl-ms", str(a.slo_itl_ms)]
    longs = ["--rate", str(a.long_rate), "--duration", str(a.duration), "--seed", "1",
             "--input-tokens", str(a.long_tokens), "--output-tokens", "8",
             "--slo-ttft-ms", str(a.slo_ttft_ms)]
    t = threading.Thread(target=lambda: res.update(long=loadtest(a.loadtest, url, longs, long_path)))
    t.start()
    res["decoders"] = loadtest(a.loadtest, url, decoders, dec_path)
    t.join()
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genie", default=os.path.join(ROOT, "target/release/genie"))
    p.add_argument("--loadtest", default=os.path.join(ROOT, "target/release/genie-loadtest"))
    p.add_argument("--decoders", type=int, default=8, help="sequences decoding at all times")
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--long-tokens", type=int, default=1024)
    p.add_argument("--long-rate", type=float, default=0.1, help="long prompts per second")
    p.add_argument("--duration", type=float, default=40, help="seconds of load")
    p.add_argument("--slo-itl-ms", type=float, default=250)
    p.add_argument("--slo-ttft-ms", type=float, default=10000)
    p.add_argument("--json")
    a = p.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs two cores")
    out_dir = tempfile.mkdtemp(prefix="genie-disagg-")
    results = {}

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print("# colocated", file=sys.stderr)
    proc = run_server([a.genie, "serve", "--colocated", "--threads", "2", "--host", "127.0.0.1",
                       "--port", str(port)], url, "/health")
    try:
        results["colocated"] = mixed_load(a, url, out_dir, "colocated")
    finally:
        stop(proc)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print("# disaggregated", file=sys.stderr)
    gw = run_server([a.genie, "gateway", "--host", "127.0.0.1", "--port", str(port)], url, "/v1/models")
    workers = []
    try:
        for core, role in ((0, "prefill-worker"), (1, "decode-worker")):
            workers.append(subprocess.Popen(
                ["taskset", "-c", str(core), a.genie, role, "--gateway", url, "--host", "127.0.0.1",
                 "--port", "0", "--threads", "1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_ready(url, gw, "/health")
        results["disaggregated"] = mixed_load(a, url, out_dir, "disaggregated")
    finally:
        for w in workers:
            stop(w)
        stop(gw)

    print(f"\nMixed load on 2 cores: {a.decoders} decoders (32-token prompts, {a.decode_tokens} output "
          f"tokens, closed loop) while {a.long_tokens}-token prompts arrive at {a.long_rate}/s "
          f"(Poisson, 8 output tokens) for {a.duration:.0f} s. SLOs: every decoder inter-token gap ≤ {a.slo_itl_ms:.0f} ms, "
          f"long-prompt TTFT ≤ {a.slo_ttft_ms:.0f} ms.\n")
    print("| setup | decoder ITL p50 ms | p99 | p99.9 | max | decoder TPOT mean ms | decoder output tok/s "
          "| decoders within SLO | long TTFT p50 ms | long TTFT p99 ms | long prompts within SLO |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("colocated", "disaggregated"):
        d, l = results[name]["decoders"], results[name]["long"]
        gd, gl = d["goodput"], l["goodput"]
        i = d["itl"]
        print(f"| {name} | {i['p50_ms']:.1f} | {i['p99_ms']:.1f} | {i['p999_ms']:.1f} | {i['max_ms']:.0f} | "
              f"{d['tpot']['mean_ms']:.1f} | {d['output_token_throughput']:.1f} | {gd['met']}/{d['requests']} | "
              f"{l['ttft']['p50_ms']:.0f} | {l['ttft']['p99_ms']:.0f} | {gl['met']}/{l['requests']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
