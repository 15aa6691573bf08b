#!/usr/bin/env python3
"""Write a seeded `genie-loadtest --trace` JSONL workload: Poisson arrivals, short prompts
with a share of long ones. The mixed workloads of BENCHMARKS.md's tune-against-default runs
(scripts/tune_vs_default.sh) are made with it.

Usage: scripts/mixed_trace.py --rate R --seconds S [--long-share F] [--long A-B]
                              [--short A-B] [--output A-B] [--seed N] > trace.jsonl
"""
import argparse
import json
import random
import sys


def span(text):
    lo, _, hi = text.partition("-")
    lo, hi = int(lo), int(hi or lo)
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: want A-B with 0 < A <= B")
    return lo, hi


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, required=True, help="arrivals per second")
    p.add_argument("--seconds", type=float, required=True, help="length of the trace")
    p.add_argument("--long-share", type=float, default=0.15, help="share of long prompts")
    p.add_argument("--long", type=span, default=(800, 1600), help="long prompt tokens A-B")
    p.add_argument("--short", type=span, default=(32, 256), help="short prompt tokens A-B")
    p.add_argument("--output", type=span, default=(32, 96), help="output tokens A-B")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    if a.rate <= 0 or a.seconds <= 0 or not 0 <= a.long_share <= 1:
        p.error("--rate and --seconds must be > 0 and --long-share within 0..1")
    rng = random.Random(a.seed)
    t = 0.0
    while True:
        t += rng.expovariate(a.rate)
        if t > a.seconds:
            break
        prompt = a.long if rng.random() < a.long_share else a.short
        line = {
            "arrival_s": round(t, 3),
            "input_tokens": rng.randint(*prompt),
            "output_tokens": rng.randint(*a.output),
        }
        sys.stdout.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
