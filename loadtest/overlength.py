#!/usr/bin/env python3
"""Over-length prompts: CONCURRENCY chat requests at once, each a body of about BODY_MB
(just under the 4 MiB body limit) of plain words, far past the model's context, against
`genie serve`. Each must get a 400 in the OpenAI envelope naming `messages`; the script
prints the slowest answer and the server's resident memory before and at its peak
(sampled every 20 ms from /proc), the figures BENCHMARKS.md quotes.

Usage: loadtest/overlength.py BIN_DIR [--concurrency 16] [--body-mb 3.9]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--body-mb", type=float, default=3.9)
    a = ap.parse_args()
    genie = os.path.join(a.bin_dir, "genie")
    p = subprocess.Popen(
        [genie, "serve", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = p.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except Exception:
                time.sleep(0.2)
        time.sleep(1)
        with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
            model = json.loads(r.read())["data"][0]["id"]
        words = "the quick brown fox jumps over a lazy dog "
        text = words * int(a.body_mb * 1e6 / len(words))
        body = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
        ).encode()
        base = rss_mb(p.pid)
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(p.pid))
                time.sleep(0.02)

        results = []
        lock = threading.Lock()

        def one():
            t0 = time.time()
            req = urllib.request.Request(
                url + "/v1/chat/completions",
                data=body,
                headers={"content-type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    status, payload = r.status, r.read()
            except urllib.error.HTTPError as e:
                status, payload = e.code, e.read()
            dt = time.time() - t0
            with lock:
                results.append((status, dt, payload))

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.time()
        threads = [threading.Thread(target=one) for _ in range(a.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t0
        done.set()
        sampler.join()
        statuses = sorted({s for s, _, _ in results})
        params = set()
        for s, _, payload in results:
            try:
                params.add(json.loads(payload)["error"].get("param"))
            except Exception:
                params.add("not an envelope")
        print(
            f"{a.concurrency} concurrent bodies of {len(body) / 1e6:.2f} MB: statuses {statuses}, "
            f"param {sorted(map(str, params))}, slowest answer {max(d for _, d, _ in results):.2f} s, "
            f"all answered in {wall:.2f} s; server RSS {base:.0f} MB before, peak {peak[0]:.0f} MB "
            f"(+{peak[0] - base:.0f} MB)"
        )
        ok = statuses == [400] and params == {"messages"}
        sys.exit(0 if ok else 1)
    finally:
        p.terminate()
        p.wait(timeout=30)


if __name__ == "__main__":
    main()
