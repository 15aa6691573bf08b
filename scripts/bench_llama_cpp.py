#!/usr/bin/env python3
"""llama.cpp side of `genie bench engine`: the same GGUF, thread count, prompt ids and
decode steps, measured through llama-cpp-python's bindings. Prints one JSON object.

Install: CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
pip install 'llama-cpp-python==0.3.36'
"""
import argparse
import json
import statistics
import sys
import time


def synthetic_ids(n):
    # Must match `synthetic_ids` in bench/src/engine.rs.
    return [(i * 7919) % 40000 + 100 for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prefill", default="32,256,1024")
    ap.add_argument("--decode-context", type=int, default=64)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    try:
        import llama_cpp
    except ImportError as e:
        print(json.dumps({"error": f"llama-cpp-python not installed: {e}"}))
        return 0
    lens = [int(x) for x in a.prefill.split(",") if x]
    n_ctx = max(lens + [a.decode_context + a.decode_steps]) + 16
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        verbose=False,
    )
    out = {"version": getattr(llama_cpp, "__version__", "?"), "threads": a.threads, "prefill": {}}
    for n in lens:
        ids = synthetic_ids(n)
        llm.reset()
        llm.eval(ids)  # warm-up
        times = []
        for _ in range(a.repeat):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            times.append(time.perf_counter() - t0)
        out["prefill"][str(n)] = n / statistics.median(times)
    ids = synthetic_ids(a.decode_context)
    rates = []
    for _ in range(a.repeat):
        llm.reset()
        llm.eval(ids)
        tok = 100
        t0 = time.perf_counter()
        for _ in range(a.decode_steps):
            llm.eval([tok])
            tok = int(llm.scores[llm.n_tokens - 1].argmax())
        rates.append(a.decode_steps / (time.perf_counter() - t0))
    out["decode_batch1"] = statistics.median(rates)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
