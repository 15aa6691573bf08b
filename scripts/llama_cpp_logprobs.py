"""llama.cpp's next-token scores at given positions, for `genie bench accuracy`.

Reads JSON on stdin: {"model": PATH, "threads": N, "cases": [{"tokens": [...], "from": K,
"chosen": [...]}]}. For each case, runs the tokens through llama.cpp (llama-cpp-python,
logits of every position) and writes, for each position from K on, [top token, chosen
token, log-probability of the chosen token]. Prints {"version": ..., "cases": [...]}.

With {"generate": {"prompts": [...], "steps": N}} instead of "cases" (a model the engine
does not run yet), llama.cpp writes the continuations itself: each prompt as one user
message in the GGUF's chat template, then greedy decoding one token at a time. Prints
{"version": ..., "generated": [{"tokens": [...], "from": K, "scored": [[top, chosen,
logprob], ...]}]}.
"""

import json
import sys

import llama_cpp
import numpy as np

req = json.load(sys.stdin)
llm = llama_cpp.Llama(model_path=req["model"], n_ctx=2048, n_threads=req["threads"],
                      n_threads_batch=req["threads"], logits_all=True, verbose=False)
def log_softmax_at(logits, token):
    m = logits.max()
    return float(logits[token] - (m + np.log(np.exp(logits - m).sum())))


if "generate" in req:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    meta = llm.metadata
    names = [llm.detokenize([i], special=True).decode("utf-8", "replace") for i in (llm.token_bos(), llm.token_eos())]
    template = meta.get("tokenizer.chat_template")
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    eog = {t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}

    def render(p):
        if template:
            text = Jinja2ChatFormatter(template=template, bos_token=names[0], eos_token=names[1])(
                messages=[{"role": "user", "content": p}]).prompt
            return llm.tokenize(text.encode(), add_bos=False, special=True)
        if meta.get("general.architecture") == "gemma3":  # its GGUF here carries no template
            text = f"<start_of_turn>user\n{p}<end_of_turn>\n<start_of_turn>model\n"
            return llm.tokenize(text.encode(), add_bos=True, special=True)
        return llm.tokenize(p.encode(), add_bos=True, special=False)

    generated = []
    for p in req["generate"]["prompts"]:
        tokens = render(p)
        start = len(tokens)
        llm.reset()
        llm.eval(tokens)
        scored = []
        for _ in range(req["generate"]["steps"]):
            logits = np.array(llm.scores[len(tokens) - 1], dtype=np.float64)
            top = int(logits.argmax())
            scored.append([top, top, log_softmax_at(logits, top)])
            if top in eog:
                break
            tokens.append(top)
            llm.eval([top])
        generated.append({"tokens": tokens, "from": start - 1, "scored": scored})
    print(json.dumps({"version": llama_cpp.__version__, "generated": generated}))
    sys.exit(0)

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
