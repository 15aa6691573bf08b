#!/usr/bin/env python3
"""Faults across containers of a running local stack (deploy/stack.sh up), each printed
with what the client saw and what was left behind:

1. `docker kill` the decode container running a stream: the stream either continues on
   the survivor (migration) or ends with a clean error, within the heartbeat timeout,
   never a hang; the next request succeeds; the survivor's KV goes back to 0.
2. `docker pause` a prefill container for 30 s: the gateway marks it unhealthy, requests
   are served meanwhile, and it is healthy again after `unpause`.
3. `docker restart` the gateway while the workers live: all 4 register again.
4. `docker network disconnect` a decode container: it is marked unhealthy, requests are
   served meanwhile, and after `network connect` it is healthy again.
5. Scale decode to 3: the new worker takes load.

It restores the stack as it goes (a killed container is started again). Exits non-zero
on the first failure.

Usage: deploy/test_faults.py [--url http://127.0.0.1:8000] [--project genie]
"""

import argparse
import json
import subprocess
import threading
import time
import urllib.request

import openai

# test_stack.py, beside this one: its check, model name and container metric reader.
from test_stack import MODEL, check, container_metric as metric


def sh(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def containers(project, service):
    return sorted(sh("docker", "ps", "--filter", f"label=com.docker.compose.project={project}",
                     "--filter", f"label=com.docker.compose.service={service}",
                     "--format", "{{.Names}}").split())


def workers(url):
    with urllib.request.urlopen(url + "/v1/workers", timeout=5) as r:
        return json.load(r)["data"]


def wait(what, ok, limit=60):
    t0 = time.time()
    while time.time() - t0 < limit:
        try:
            if ok():
                return time.time() - t0
        except Exception:
            pass
        time.sleep(0.2)
    check(False, f"{what} within {limit} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--project", default="genie")
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.url + "/v1", api_key="unused", timeout=120, max_retries=0)
    ask = lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a color."}], max_tokens=8, temperature=0)
    healthy = lambda n: lambda: sum(w["healthy"] for w in workers(a.url)) == n

    # 1. Kill the decode container running a stream.
    result = {}

    def stream():
        t0 = time.time()
        try:
            s = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Write a long story about the sea."}],
                max_tokens=200, temperature=0, stream=True, extra_body={"ignore_eos": True})
            n = sum(1 for c in s if c.choices and c.choices[0].delta.content)
            result["outcome"] = f"completed with {n} chunks"
        except openai.APIError as e:
            result["outcome"] = f"clean error: {e}"
        result["seconds"] = time.time() - t0

    th = threading.Thread(target=stream)
    th.start()
    decodes = containers(a.project, "decode")
    victim = None
    t0 = time.time()
    while victim is None and time.time() - t0 < 60:
        for d in decodes:
            if metric(d, "genie_kv_cache_used_bytes") > 0:
                victim = d
        time.sleep(0.1)
    check(victim is not None, "a decode container holds the stream")
    time.sleep(0.5)
    sh("docker", "kill", victim)
    th.join(timeout=90)
    check(not th.is_alive(), f"the stream ended after the kill of {victim}: {result}")
    r = ask()
    check(bool(r.choices[0].message.content), "the next request succeeds")
    survivor = [d for d in decodes if d != victim][0]
    wait(f"{survivor}'s KV back to 0", lambda: metric(survivor, "genie_kv_cache_used_bytes") == 0, 30)
    sh("docker", "start", victim)
    wait("4 healthy workers after the killed one restarts", healthy(4))
    print("   kill:", result)

    # 2. Pause a prefill container for 30 s.
    p = containers(a.project, "prefill")[0]
    sh("docker", "pause", p)
    t = wait(f"{p} marked unhealthy", healthy(3), 30)
    print(f"   {p} unhealthy {t:.1f} s after pause")
    served = [bool(ask().choices[0].message.content) for _ in range(3)]
    check(all(served), "requests are served while a prefill container is paused")
    time.sleep(max(0.0, 30 - t))
    sh("docker", "unpause", p)
    t = wait(f"{p} healthy again after unpause", healthy(4), 30)
    print(f"   {p} healthy {t:.1f} s after unpause")

    # 3. Restart the gateway while the workers live.
    gw = containers(a.project, "gateway")[0]
    sh("docker", "restart", gw)
    t = wait("all 4 workers registered with the restarted gateway", healthy(4), 60)
    print(f"   4 workers registered {t:.1f} s after the gateway restart")
    check(bool(ask().choices[0].message.content), "a request after the gateway restart succeeds")

    # 4. Cut a decode container off the network, then reconnect it.
    d = containers(a.project, "decode")[-1]
    net = f"{a.project}_cluster"
    ip = lambda: sh("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", d).strip()
    before = ip()
    sh("docker", "network", "disconnect", net, d)
    t = wait(f"{d} marked unhealthy once cut off", healthy(3), 30)
    print(f"   {d} unhealthy {t:.1f} s after the disconnect")
    check(all(bool(ask().choices[0].message.content) for _ in range(3)),
          "requests are served while a decode container is cut off")
    sh("docker", "network", "connect", net, d)
    t = wait(f"{d} healthy again after reconnecting", healthy(4), 60)
    print(f"   {d} healthy {t:.1f} s after reconnecting (address {before} -> {ip()})")

    # 5. Scale decode to 3.
    compose = ["docker", "compose"] if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0 else ["docker-compose"]
    subprocess.run(compose + ["-p", a.project, "up", "-d", "--no-recreate", "--scale", "prefill=2", "--scale", "decode=3"],
                   check=True, capture_output=True)
    wait("5 healthy workers after scaling decode to 3", healthy(5), 60)
    new = [d for d in containers(a.project, "decode") if d not in decodes]
    check(len(new) == 1, f"one new decode container: {new}")
    for _ in range(6):
        ask()
    steps = metric(new[0], "genie_decode_batch_size_count")
    check(steps > 0, f"the new decode worker took load ({steps:.0f} decode steps)")
    subprocess.run(compose + ["-p", a.project, "up", "-d", "--no-recreate", "--scale", "prefill=2", "--scale", "decode=2"],
                   check=True, capture_output=True)


if __name__ == "__main__":
    main()
