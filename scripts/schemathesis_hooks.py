"""schemathesis hooks for scripts/schemathesis.sh: keep generated requests cheap to serve.

The OpenAPI document stays truthful (no artificial maximums); these hooks only shape the
generated bodies so a run finishes in minutes on a CPU: completion lengths are clamped to
a few tokens (and set when absent), `n` to 2, and half the bodies name the served model (random names would
all end at the 404 for an unknown model and never reach validation or generation).
"""

import os
import random

import schemathesis

MODEL = os.environ.get("GENIE_SCHEMATHESIS_MODEL", "SmolLM2-135M-Instruct")
MAX_TOKENS = 8
MAX_N = 2


def _clamp(body, key, top):
    v = body.get(key)
    if isinstance(v, int) and not isinstance(v, bool) and v > top:
        body[key] = top


@schemathesis.hook
def map_case(context, case):
    body = case.body
    if isinstance(body, dict):
        _clamp(body, "max_tokens", MAX_TOKENS)
        _clamp(body, "max_completion_tokens", MAX_TOKENS)
        # Unset means "up to the context" (thousands of tokens with `ignore_eos`): bound it.
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = MAX_TOKENS
        _clamp(body, "n", MAX_N)
        if isinstance(body.get("model"), str) and random.random() < 0.5:
            body["model"] = MODEL
    return case
