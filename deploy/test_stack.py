#!/usr/bin/env python3
"""Checks a running local stack (deploy/stack.sh up) from outside, as a user would: the
official OpenAI SDK against the published port (chat, a stream, completions, an error),
greedy answers equal to `genie generate` on the host, 2 prefill + 2 decode workers
healthy, and KV bytes counted on the prefill containers (read inside them: their ports
are not published). Exits non-zero on the first failure.

Usage: deploy/test_stack.py GENIE_BINARY [--url http://127.0.0.1:8000] [--project genie]
"""

import argparse
import json
import subprocess
import sys
import urllib.request

import openai

MODEL = "SmolLM2-135M-Instruct"


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def generate(binary, prompt):
    out = subprocess.run(
        [binary, "generate", "--chat", "--prompt", prompt, "--max-tokens", "20", "--json"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)["text"]


def container_metric(container, name):
    script = (
        'exec 3<>/dev/tcp/127.0.0.1/9000; printf "GET /metrics HTTP/1.0\\r\\n\\r\\n" >&3; cat <&3'
    )
    out = subprocess.run(
        ["docker", "exec", container, "bash", "-c", script],
        check=True, capture_output=True, text=True,
    ).stdout
    return sum(
        float(l.rsplit(" ", 1)[1])
        for l in out.splitlines()
        if l.startswith(name + " ") or l.startswith(name + "{")
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--project", default="genie")
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.url + "/v1", api_key="unused")

    with urllib.request.urlopen(a.url + "/v1/workers", timeout=10) as r:
        workers = json.load(r)["data"]
    roles = sorted(w["role"] for w in workers if w["healthy"])
    check(roles == ["decode", "decode", "prefill", "prefill"], f"2 + 2 healthy workers ({roles})")

    for p in ["Name a planet of the solar system.", "What is the opposite of hot?"]:
        got = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=20, temperature=0
        ).choices[0].message.content
        check(got == generate(a.binary, p), f"greedy chat equals genie generate: {got!r}")

    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=16, temperature=0, stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    check(len(pieces) > 1 and "".join(pieces), f"a stream of {len(pieces)} chunks")

    c = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    check(bool(c.choices[0].text), f"completions: {c.choices[0].text!r}")

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        check(False, "an unknown model is refused")
    except openai.NotFoundError as e:
        check(e.status_code == 404, "an unknown model gets a 404 in the envelope")

    names = subprocess.run(
        ["docker", "ps", "--filter", f"label=com.docker.compose.project={a.project}",
         "--filter", "label=com.docker.compose.service=prefill", "--format", "{{.Names}}"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    moved = {n: container_metric(n, "genie_kv_transfer_bytes_total") for n in names}
    check(len(names) == 2 and sum(moved.values()) > 0, f"KV bytes sent by the prefill containers: {moved}")


if __name__ == "__main__":
    main()
