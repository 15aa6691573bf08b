"""Output tokens/s of `genie serve` under 16 concurrent streams, all unconstrained against
a mix where half the requests carry a strict json_schema `response_format`, in
interleaved rounds on one server (the cost of constrained decoding under load).

Usage: python3 loadtest/compare/structured_mix.py [--genie target/release/genie]
       [--streams 16] [--requests 64] [--rounds 3] [--max-tokens 64] [--threads 2]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "city": {"type": "string", "maxLength": 40},
    "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3}},
    "required": ["name", "age", "city", "hobbies"]}
WHO = ["a baker", "a pilot", "a nurse", "a poet", "a farmer", "a student", "a judge", "a diver"]


def post(url, body):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def run(url, model, a, mixed, round_no):
    def one(i):
        body = {"model": model, "max_tokens": a.max_tokens, "temperature": 0.7, "seed": round_no * 1000 + i,
                "messages": [{"role": "user", "content": f"Describe {WHO[i % len(WHO)]} number {i} as a person record."}]}
        if mixed and i % 2 == 0:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "person", "strict": True, "schema": SCHEMA}}
        v = post(url, body)
        if "response_format" in body:
            json.loads(v["choices"][0]["message"]["content"])  # must parse, even when cut
        return v["usage"]["completion_tokens"]

    t0 = time.time()
    with ThreadPoolExecutor(a.streams) as pool:
        tokens = sum(pool.map(one, range(a.requests)))
    return tokens / (time.time() - t0), tokens


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--genie", default=os.path.join(ROOT, "target/release/genie"))
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    srv = subprocess.Popen([a.genie, "serve", "--host", "127.0.0.1", "--port", "0", "--threads", str(a.threads)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in srv.stdout:
            m = re.search(r"http://127\.0\.0\.1:\d+", line)
            if m:
                url = m.group(0)
                break
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except Exception:
                time.sleep(0.5)
        model = json.load(urllib.request.urlopen(url + "/v1/models"))["data"][0]["id"]
        run(url, model, a, True, 99)  # warm-up (and the grammar environment)
        plain, mixed, ratios = [], [], []
        for r in range(a.rounds):
            x, xt = run(url, model, a, False, r)
            y, yt = run(url, model, a, True, r)
            plain.append(x)
            mixed.append(y)
            ratios.append(y / x)
            print(f"round {r + 1}: unconstrained {x:.1f} tok/s ({xt} tokens), half json_schema {y:.1f} tok/s ({yt} tokens)")
        print(f"\n{a.streams} streams, {a.requests} requests a load, max_tokens {a.max_tokens}, medians of {a.rounds} rounds")
        print("| load | output tok/s |")
        print("|---|---:|")
        print(f"| unconstrained | {statistics.median(plain):.1f} |")
        print(f"| half json_schema (strict) | {statistics.median(mixed):.1f} |")
        print(f"mixed / unconstrained, per round: median {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f})")
    finally:
        srv.terminate()
        srv.wait()


if __name__ == "__main__":
    main()
