"""llama.cpp's next-token scores at given positions, for `genie bench accuracy`.

Reads JSON on stdin: {"model": PATH, "threads": N, "cases": [{"tokens": [...], "from": K,
"chosen": [...]}]}. For each case, runs the tokens through llama.cpp (llama-cpp-python,
logits of every position) and writes, for each position from K on, [top token, chosen
token, log-probability of the chosen token]. Prints {"version": ..., "cases": [...]}.
"""

import json
import sys

import llama_cpp
import numpy as np

req = json.load(sys.stdin)
llm = llama_cpp.Llama(model_path=req["model"], n_ctx=2048, n_threads=req["threads"],
                      n_threads_batch=req["threads"], logits_all=True, verbose=False)
out = []
for case in req["cases"]:
    llm.reset()
    llm.eval(case["tokens"])
    scores = np.array(llm.scores[: len(case["tokens"])], dtype=np.float64)
    rows = []
    for i, chosen in enumerate(case["chosen"]):
        logits = scores[case["from"] + i]
        m = logits.max()
        lse = m + np.log(np.exp(logits - m).sum())
        rows.append([int(logits.argmax()), int(chosen), float(logits[chosen] - lse)])
    out.append(rows)
print(json.dumps({"version": llama_cpp.__version__, "cases": out}))
