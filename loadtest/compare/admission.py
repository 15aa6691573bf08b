#!/usr/bin/env python3
"""How many sequences a decode worker runs at once when requests give no `max_tokens`.

`genie serve --colocated` with the default KV budget (`decode.kv_cache_bytes`, 4 GiB) and
`limits.default_max_tokens` (2,048), its batch and waiting limits raised so that KV is the
only limit, takes a burst of chat requests that send no `max_tokens` and end where the
model ends its turn. The peak of `genie_num_requests_running` (polled every 0.2 s) is what
the KV budget let run at once. Before paging, every sequence reserved prompt + 2,048
tokens up front; the script prints what that rule admits for the same prompts beside it.

    python3 loadtest/compare/admission.py [--requests 400]
"""
import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, free_port, metric, run_loadtest, run_server, stop  # noqa: E402

KV_BYTES_PER_TOKEN = 2 * 30 * 3 * 64 * 2  # SmolLM2-135M, f16 K and V


def running(url):
    return metric(url, "genie_num_requests_running")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genie", default=os.path.join(ROOT, "target/release/genie"))
    p.add_argument("--loadtest", default=os.path.join(ROOT, "target/release/genie-loadtest"))
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--input-tokens", type=int, default=24)
    p.add_argument("--kv-bytes", type=int, default=4 << 30,
                   help="decode.kv_cache_bytes (smaller: sequences outgrow it and are preempted)")
    a = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, GENIE_DECODE__MAX_BATCH="1024", GENIE_LIMITS__MAX_WAITING="4096",
               GENIE_LIMITS__QUEUE_TIMEOUT_SECS="600", GENIE_DECODE__KV_CACHE_BYTES=str(a.kv_bytes))
    proc = run_server([a.genie, "serve", "--colocated", "--host", "127.0.0.1", "--port", str(port)],
                      url, "/health", env=env)
    peak, done, preempted = [0.0], threading.Event(), [0.0]

    def poll():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], running(url))
                preempted[0] = metric(url, "genie_preemptions_total")
            except OSError:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=poll)
    t.start()
    try:
        path = os.path.join(tempfile.mkdtemp(prefix="genie-admission-"), "run.json")
        s = run_loadtest(a.loadtest, url,
                         ["--concurrency", str(a.requests), "--requests", str(a.requests),
                          "--warmup", "0", "--no-max-tokens", "--input-tokens", str(a.input_tokens),
                          "--timeout", "1200"], path, "admission")
    finally:
        done.set()
        t.join()
        stop(proc)
    budget = a.kv_bytes
    prompt = s["mean_prompt_tokens"]
    old = int(budget // ((prompt + 2048) * KV_BYTES_PER_TOKEN))
    print(f"{a.requests} chat requests at once, no max_tokens, mean prompt {prompt:.0f} tokens, "
          f"mean answer {s['mean_output_tokens']:.0f} tokens, {s['completed']} completed, "
          f"{s['failed']} failed, {s['duration_s']:.0f} s")
    print(f"running at once (peak of genie_num_requests_running): {peak[0]:.0f}")
    print(f"the old rule (prompt + 2048 reserved each, {budget / 2**30:.2f} GiB): {old} at once "
          f"-> {peak[0] / max(old, 1):.1f}x")
    i, t = s["itl"], s["ttft"]
    print(f"preemptions {preempted[0]:.0f}; ITL p50 {i['p50_ms']:.0f} ms, p99 {i['p99_ms']:.0f} ms, "
          f"max {i['max_ms']:.0f} ms; TTFT p50 {t['p50_ms']:.0f} ms; "
          f"output {s['output_token_throughput']:.0f} tok/s")


if __name__ == "__main__":
    main()
