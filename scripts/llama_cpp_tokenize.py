#!/usr/bin/env python3
"""llama.cpp's tokenization of texts, for a tokenizer fixture.

Usage: llama_cpp_tokenize.py MODEL.gguf TEXTS.json > OUT.json
TEXTS.json is a JSON list of strings; each is tokenized with bos, once with special
tokens parsed and once without. Needs llama-cpp-python (LLAMA_CPP_LIB_PATH may point at
a native build's libllama).
"""
import json
import sys

import llama_cpp


def main():
    model, texts = sys.argv[1], json.load(open(sys.argv[2]))
    llm = llama_cpp.Llama(model, verbose=False, n_ctx=512, n_threads=2, vocab_only=True)
    out = {
        "about": f"llama.cpp (llama-cpp-python {llama_cpp.__version__}) tokenization, with bos; "
        "`special`: control tokens in the text parsed",
        "cases": [
            {
                "text": t,
                "plain": llm.tokenize(t.encode(), add_bos=True, special=False),
                "special": llm.tokenize(t.encode(), add_bos=True, special=True),
            }
            for t in texts
        ],
    }
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
