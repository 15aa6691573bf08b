#!/usr/bin/env python3
"""Soak under worker deaths: a gateway, two prefill and two decode worker processes,
genie-loadtest at concurrency 8, and every KILL_EVERY seconds one worker is killed with
SIGKILL (prefill and decode in turn, from a random first role; a random worker of the
role) and a fresh one of its role started in its place.

Passes when the load test loses no request (a sequence on a killed worker is moved to live
workers: every request completes, within the migration limit), every live worker's KV
gauge is back to 0 afterwards, and the gateway's RSS does not grow by more than 10 %: RSS
is sampled every second, and the median of the last third of the run is compared with the
median of an early window that starts 10 s after the first kill (so the migration paths
have run and the allocator has settled; one sample taken after a fixed warm-up caught a
step of the settling as growth). Prints the figures BENCHMARKS.md quotes.

Usage: loadtest/soak.py BIN_DIR [--duration 180] [--kill-every 30] [--seed 1]
"""

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def fetch(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def median(xs):
    ks = sorted(k for _, k in xs)
    return ks[len(ks) // 2] if ks else 0


def rss_windows(samples, kill_every, duration):
    """The early window (from 10 s after the first kill, a third of what is left) and the
    late one (the last third of that span) of the RSS samples."""
    start = kill_every + 10
    third = max(duration - start, 0) / 3
    early = [s for s in samples if start <= s[0] < start + third]
    late = [s for s in samples if s[0] >= duration - third]
    return early, late


class Proc:
    """A genie process; its address is the first http:// URL it prints."""

    def __init__(self, args, env, role):
        self.role = role
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  env=env, text=True)
        line = self.p.stdout.readline()
        m = re.search(r"http://[0-9.:]+", line)
        if not m:
            self.p.kill()
            sys.exit(f"{role}: no address in {line!r}")
        self.url = m.group(0)
        # Keep draining stdout so the process never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.p.stdout], daemon=True).start()

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--duration", type=int, default=180)
    ap.add_argument("--kill-every", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    genie = os.path.join(a.bin, "genie")
    loadtest = os.path.join(a.bin, "genie-loadtest")
    rng = random.Random(a.seed)

    env = dict(os.environ)
    tmp = tempfile.mkdtemp(prefix="genie-soak-")
    # The cluster secret travels in the environment, never on a command line.
    env["GENIE_CLUSTER_SECRET"] = os.urandom(32).hex()
    env.setdefault("RUST_LOG", "warn")

    procs = []
    try:
        gw = Proc([genie, "gateway", "--host", "127.0.0.1", "--port", "0"], env, "gateway")
        procs.append(gw)

        def start(role):
            p = Proc([genie, role, "--gateway", gw.url, "--host", "127.0.0.1", "--port", "0",
                      "--threads", "1"], env, role)
            procs.append(p)
            return p

        workers = [start("prefill-worker"), start("prefill-worker"),
                   start("decode-worker"), start("decode-worker")]

        def healthy():
            import json
            data = json.loads(fetch(gw.url + "/v1/workers"))["data"]
            return sum(1 for w in data if w.get("healthy"))

        deadline = time.time() + 120
        while healthy() < 4:
            if time.time() > deadline:
                sys.exit("the workers did not register in 120 s")
            time.sleep(0.5)

        report = os.path.join(tmp, "report.json")
        lt = subprocess.Popen([loadtest, "--url", gw.url, "--concurrency", "8",
                               "--duration", str(a.duration), "--input-tokens", "uniform:16:128",
                               "--output-tokens", "uniform:16:64", "--ban-tokens", "0,1,2",
                               "--temperature", "0.7", "--no-progress", "--timeout", "120",
                               "--json", report])
        t0 = time.time()
        # The gateway's RSS once a second, as (seconds since the start, KiB).
        samples = []
        sampling = threading.Event()

        def sample():
            while not sampling.wait(1.0):
                try:
                    samples.append((time.time() - t0, rss_kib(gw.p.pid)))
                except OSError:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        kills = []
        roles = rng.sample(["prefill-worker", "decode-worker"], 2)
        next_kill = t0 + a.kill_every
        while lt.poll() is None:
            if time.time() >= next_kill and time.time() < t0 + a.duration - 5:
                # Roles alternate (from a random first one) so both kinds die; which
                # worker of the role is random.
                role = roles[len(kills) % 2]
                victim = rng.choice([w for w in workers if w.role == role])
                victim.kill()
                workers.remove(victim)
                workers.append(start(victim.role))
                kills.append((round(time.time() - t0, 1), victim.role))
                print(f"soak: t={kills[-1][0]} s killed a {victim.role} (SIGKILL), started another",
                      flush=True)
                next_kill += a.kill_every
            time.sleep(0.2)
        lt_rc = lt.returncode

        import json
        r = json.load(open(report))["summary"]
        # Every live worker's KV back to 0 (the killed ones took theirs with them).
        deadline = time.time() + 30
        while True:
            kv = {w.url: metric(fetch(w.url + "/metrics"), "genie_kv_cache_used_bytes")
                  for w in workers}
            if all(v == 0 for v in kv.values()) or time.time() > deadline:
                break
            time.sleep(0.5)
        gwm = fetch(gw.url + "/metrics")
        migrated = {o: metric(gwm, f'genie_request_migrations_total{{outcome="{o}"}}')
                    for o in ("migrated", "exhausted", "failed")}
        sampling.set()
        sampler.join()
        early, late = rss_windows(samples, a.kill_every, a.duration)
        rss_early, rss_late = median(early), median(late)
        growth = (rss_late - rss_early) / rss_early if rss_early else float("inf")

        print("\n== soak figures")
        print(f"duration {a.duration} s, kills {len(kills)}: {kills}")
        print(f"requests {r['requests']}, completed {r['completed']}, failed {r['failed']}, "
              f"errors {r.get('errors', {})}")
        print(f"migrations {migrated}")
        print(f"KV used bytes per live worker after the load: {list(kv.values())}")
        print("gateway RSS samples (s, KiB): "
              + " ".join(f"{t:.0f}:{k}" for t, k in samples))
        print(f"gateway RSS median {rss_early} KiB early ({len(early)} samples from "
              f"{early[0][0] if early else 0:.0f} s) -> {rss_late} KiB late ({len(late)} samples "
              f"from {late[0][0] if late else 0:.0f} s) ({growth:+.1%})")
        ok = True
        if lt_rc != 0 or r["failed"] != 0:
            print("FAIL: requests were lost", file=sys.stderr)
            ok = False
        if any(v != 0 for v in kv.values()):
            print("FAIL: KV still held after the load", file=sys.stderr)
            ok = False
        if not early or not late:
            print("FAIL: too few RSS samples (duration too short)", file=sys.stderr)
            ok = False
        elif growth > 0.10:
            print("FAIL: gateway RSS grew more than 10 %", file=sys.stderr)
            ok = False
        if not kills:
            print("FAIL: nothing was killed (duration too short)", file=sys.stderr)
            ok = False
        sys.exit(0 if ok else 1)
    finally:
        for p in procs:
            p.stop()


if __name__ == "__main__":
    main()
