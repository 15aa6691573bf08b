#!/usr/bin/env python3
"""Checks the local stack's `observability` profile (deploy/stack.sh up --observability):
Prometheus scrapes the gateway and every worker replica, and every query of the Grafana
dashboard (deploy/grafana/dashboards/genie.json) returns data from it after some traffic,
with one series per decode worker where a panel is per worker. Then scales decode to 3 and
checks Prometheus finds the new replica by itself. Exits non-zero on the first failure.

Usage: deploy/test_observability.py [--url http://127.0.0.1:8000]
                                    [--prometheus http://127.0.0.1:9090] [--project genie]
"""

import argparse
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request

import openai

from test_stack import MODEL, check  # test_stack.py, beside this one

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def query(prom, expr):
    r = get(prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if r.get("status") != "success":
        raise RuntimeError(f"{expr}: {r}")
    return r["data"]["result"]


def up_targets(prom):
    active = get(prom + "/api/v1/targets?state=active")["data"]["activeTargets"]
    by_job = {}
    for t in active:
        by_job.setdefault(t["labels"]["job"], []).append(t["health"])
    return by_job


def wait_targets(prom, want, deadline_s=60):
    """Waits until each job has `want[job]` targets, all up."""
    end = time.time() + deadline_s
    while True:
        jobs = up_targets(prom)
        counts = {j: sum(1 for h in jobs.get(j, []) if h == "up") for j in want}
        if counts == want and all(len(jobs.get(j, [])) == n for j, n in want.items()):
            return counts, 0
        if time.time() > end:
            return counts, jobs
        time.sleep(1)


def traffic(url, n):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    for i in range(n):
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Tell me about the number {i}."}],
            max_tokens=24, temperature=0, stream=True,
        )
        for _ in stream:
            pass


def compose(project, *args):
    cmd = ["docker", "compose"] if subprocess.run(
        ["docker", "compose", "version"], capture_output=True).returncode == 0 else ["docker-compose"]
    subprocess.run(cmd + ["-p", project, *args], check=True, cwd=ROOT, capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--project", default="genie")
    a = ap.parse_args()
    prom = a.prometheus

    counts, jobs = wait_targets(prom, {"gateway": 1, "prefill": 2, "decode": 2})
    check(not jobs, f"Prometheus scrapes the gateway and 2 + 2 workers, all up ({counts})")

    traffic(a.url, 6)
    time.sleep(12)  # two scrape intervals

    with open(os.path.join(ROOT, "deploy/grafana/dashboards/genie.json")) as f:
        dash = json.load(f)
    with open(os.path.join(ROOT, "deploy/grafana/provisioning/datasources/prometheus.yaml")) as f:
        ds_uid = next(l.split(":", 1)[1].strip() for l in f if l.strip().startswith("uid:"))
    for p in dash["panels"]:
        check(p["datasource"]["uid"] == ds_uid, f"panel {p['title']!r} uses the provisioned data source")
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", "1m")
            res = query(prom, expr)
            check(len(res) > 0, f"panel {p['title']!r} [{t['legendFormat']}]: {len(res)} series")
    per_decode = query(prom, 'max by (instance) (genie_kv_cache_usage_ratio{job="decode"})')
    check(len(per_decode) == 2, f"KV usage has one series per decode worker ({len(per_decode)})")
    sent = query(prom, 'sum by (instance) (genie_kv_transfer_bytes_total{job="prefill"})')
    check(len(sent) == 2 and sum(float(s["value"][1]) for s in sent) > 0,
          f"KV transfer bytes counted on both prefill workers ({[s['value'][1] for s in sent]})")

    # A new replica is found through Docker's DNS without touching Prometheus.
    start = time.time()
    compose(a.project, "--profile", "observability", "up", "-d", "--no-recreate",
            "--scale", "prefill=2", "--scale", "decode=3")
    counts, jobs = wait_targets(prom, {"gateway": 1, "prefill": 2, "decode": 3}, deadline_s=120)
    check(not jobs, f"decode scaled to 3: Prometheus scrapes it after {time.time() - start:.1f} s ({counts})")
    compose(a.project, "--profile", "observability", "up", "-d", "--no-recreate",
            "--scale", "prefill=2", "--scale", "decode=2")
    counts, jobs = wait_targets(prom, {"gateway": 1, "prefill": 2, "decode": 2}, deadline_s=60)
    check(not jobs, f"back to 2 decode workers ({counts})")
    print("observability: every check passed")


if __name__ == "__main__":
    main()
