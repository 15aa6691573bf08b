"""End-to-end checks of `genie serve` through the official `openai` Python SDK.

Usage: python3 openai_sdk.py BASE_URL API_KEY MODEL
The server must require API_KEY, allow at most 16 waiting sequences and n up to 32
(GENIE_LIMITS__MAX_WAITING=16, GENIE_LIMITS__MAX_N=32). Exits non-zero on the first
failed check.
"""

import json
import re
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
from openai import OpenAI

base, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    checks += 1


def expect_error(cls, status, fn, what):
    try:
        fn()
    except cls as e:
        check(e.status_code == status, f"{what}: status {e.status_code}")
        body = e.body if isinstance(e.body, dict) else {}
        check(bool(body.get("message")), f"{what}: error envelope has a message: {e.body}")
        return body
    raise SystemExit(f"FAILED: {what}: no {cls.__name__} raised")


# models
models = client.models.list()
check([m.id for m in models.data] == [model], f"models: {models}")

# chat
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "You are terse."},
              {"role": "user", "content": "What is 2+2?"}],
    max_tokens=16, temperature=0)
check(r.object == "chat.completion" and r.choices[0].message.role == "assistant", "chat shape")
check(r.choices[0].finish_reason in ("stop", "length"), "chat finish_reason")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "chat usage sums")

# max_tokens exactness (end of turn biased away so the limit is what stops it)
for n in (1, 7, 20):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=n, temperature=0, logit_bias={"2": -100})
    check(r.usage.completion_tokens == n and r.choices[0].finish_reason == "length",
          f"max_tokens={n}: {r.usage}, {r.choices[0].finish_reason}")
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Tell me a long story."}],
    max_completion_tokens=5, temperature=0, logit_bias={"2": -100})
check(r.usage.completion_tokens == 5, f"max_completion_tokens: {r.usage}")

# streaming with include_usage
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Say hello."}],
    max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True})
chunks = list(stream)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
usage = [c.usage for c in chunks if c.usage]
check(len(usage) == 1 and chunks[-1].usage is not None and chunks[-1].choices == [],
      "stream ends with one usage chunk")
finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
check(len(finish) == 1, f"one finish_reason: {finish}")
plain = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=10, temperature=0)
check(plain.choices[0].message.content == text, "stream text equals non-stream text")
check(usage[0].completion_tokens == plain.usage.completion_tokens, "stream usage equals non-stream")

# completions, plain and streamed
c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
check(c.choices[0].text == " Paris.\n\nThe United States has", f"completion text {c.choices[0].text!r}")
check(c.usage.prompt_tokens == 5 and c.usage.completion_tokens == 8, f"completion usage {c.usage}")
parts = list(client.completions.create(model=model, prompt="The capital of France is", max_tokens=8,
                                       temperature=0, stream=True))
check("".join(p.choices[0].text for p in parts if p.choices) == c.choices[0].text, "streamed completion")

# n=2 with a seed: two different samples, each reproducible
def sample(seed, n=2):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Invent a name for a cat."}],
        max_tokens=12, temperature=1.0, seed=seed, n=n)
    return [ch.message.content for ch in sorted(r.choices, key=lambda ch: ch.index)]

a, b = sample(1234), sample(1234)
check(len(a) == 2 and a == b, f"seeded n=2 is reproducible: {a} vs {b}")
check(sample(99) != a, "a different seed gives different samples")

# stop strings: the stop text and what follows never reach the client
full = client.completions.create(model=model, prompt="1, 2, 3,", max_tokens=12, temperature=0).choices[0].text
check(" 5" in full, f"continuation contains ' 5': {full!r}")
stopped = client.completions.create(model=model, prompt="1, 2, 3,", max_tokens=12, temperature=0, stop=[" 5"])
check(stopped.choices[0].text == full[: full.index(" 5")] and stopped.choices[0].finish_reason == "stop",
      f"stop string: {stopped.choices[0].text!r} from {full!r}")
s = list(client.completions.create(model=model, prompt="1, 2, 3,", max_tokens=12, temperature=0,
                                   stop=[" 5"], stream=True))
check("".join(p.choices[0].text for p in s if p.choices) == stopped.choices[0].text, "streamed stop string")

# logprobs
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                   temperature=0, logprobs=True, top_logprobs=3)
lp = r.choices[0].logprobs.content
check(len(lp) == 3 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp), "chat logprobs")

# the `genie` placement hint through extra_body, confirmed by the request's plan
def plan_of(request_id):
    req = urllib.request.Request(f"{base}/v1/plans/requests/{request_id}",
                                 headers={"Authorization": f"Bearer {key}"})
    return json.load(urllib.request.urlopen(req))


hello = [{"role": "user", "content": "Say hello."}]
raw = client.chat.completions.with_raw_response.create(
    model=model, messages=hello, max_tokens=4, temperature=0, extra_body={"genie": {"disaggregate": False}})
r = raw.parse()
rid = raw.headers.get("x-genie-request-id")
check(rid == r.id, f"x-genie-request-id {rid!r} is the response id {r.id!r}")
plan = plan_of(rid)
check(plan["hint"] == {"disaggregate": False} and plan["sequences"][0]["placement"]["kind"] == "colocated",
      f"extra_body genie hint keeps the prefill on the decode worker: {plan}")
unhinted = plan_of(client.chat.completions.create(model=model, messages=hello, max_tokens=4, temperature=0).id)
check(unhinted["sequences"][0]["placement"]["kind"] == "disaggregated" and "hint" not in unhinted,
      f"without the hint the default plan disaggregates: {unhinted}")

# errors
expect_error(openai.NotFoundError, 404,
             lambda: client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}]),
             "unknown model")
body = expect_error(openai.BadRequestError, 400,
                    lambda: client.completions.create(model=model, prompt="hello", max_tokens=9000),
                    "context overflow")
check("8192" in body["message"] and "9000" in body["message"], f"overflow message names both: {body}")
body = expect_error(openai.BadRequestError, 400,
                    lambda: client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                                           temperature=5),
                    "temperature out of range")
check(body.get("param") == "temperature", f"param named: {body}")
expect_error(openai.RateLimitError, 429,
             lambda: client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                                    max_tokens=2, n=17),
             "queue full")
bad = OpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0)
expect_error(openai.AuthenticationError, 401, lambda: bad.models.list(), "wrong API key")


# 16 concurrent streams: all complete with exact usage, sharing decode steps
def batch_metric():
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    total = {}
    for name in ("genie_decode_batch_size_sum", "genie_decode_batch_size_count"):
        total[name] = sum(float(m) for m in re.findall(r"^" + name + r"(?:\{[^}]*\})? (\S+)$", text, re.M))
    return total["genie_decode_batch_size_sum"], total["genie_decode_batch_size_count"]


def one_stream(i):
    s = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Write about the number {i}."}],
        max_tokens=24, temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True},
        logit_bias={"2": -100})
    chunks = list(s)
    return chunks[-1].usage, sum(1 for c in chunks if c.choices and c.choices[0].finish_reason)


before = batch_metric()
with ThreadPoolExecutor(16) as pool:
    results = list(pool.map(one_stream, range(16)))
after = batch_metric()
check(all(u is not None and u.completion_tokens == 24 and f == 1 for u, f in results),
      f"16 concurrent streams complete with usage: {results}")
seq_steps, steps = after[0] - before[0], after[1] - before[1]
check(steps > 0 and seq_steps / steps > 2, f"16 streams shared decode steps: mean batch {seq_steps / max(steps, 1):.2f}")
print(f"16 concurrent streams: {int(steps)} decode steps, mean batch {seq_steps / steps:.2f}")

# structured outputs: the SDK's parse() turns a pydantic model into a strict json_schema
# response_format and parses the answer back into the model.
from typing import Annotated  # noqa: E402

from pydantic import BaseModel, Field  # noqa: E402 (the SDK depends on pydantic)


# Bounded strings: a 135M model left free inside a string can repeat itself until
# max_tokens; the schema's maxLength makes the grammar close it.
class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=150)
    city: str = Field(max_length=40)
    hobbies: list[Annotated[str, Field(max_length=30)]] = Field(max_length=3)


parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
parsed = 0
for i in range(8):
    who = ["a baker", "a pilot", "a nurse", "a poet"][i % 4]
    try:
        r = parse(model=model, max_tokens=160, temperature=0.7, seed=i, response_format=Person,
                  messages=[{"role": "user", "content": f"Describe {who} as a person record."}])
    except openai.LengthFinishReasonError:
        continue
    p = r.choices[0].message.parsed
    check(isinstance(p, Person) and isinstance(p.age, int), f"parse() gave a Person: {r}")
    parsed += 1
check(parsed >= 6, f"{parsed} of 8 structured answers ended within 160 tokens")
print(f"structured outputs: {parsed} of 8 parsed into the pydantic model")

# No field silently ignored: every field of the SDK's chat and completions request types
# is honoured, accepted and ignored (the README lists them), or refused with a 400 naming
# it. A field a newer SDK adds fails this walk until it is classified here and served.
from openai.types import completion_create_params as completion_params  # noqa: E402
from openai.types.chat import completion_create_params as chat_params  # noqa: E402


def sdk_fields(t):
    return {k for c in t.__mro__ for k in getattr(c, "__annotations__", {})}


def raw(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json",
                                          "authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


WALK = {
    "/v1/chat/completions": (
        sdk_fields(chat_params.CompletionCreateParamsBase),
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        {"frequency_penalty", "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "messages",
         "model", "n", "parallel_tool_calls", "presence_penalty", "response_format", "seed", "stop",
         "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p"},
        {"user": "u1", "metadata": {"k": "v"}, "store": True, "service_tier": "auto",
         "safety_identifier": "s1", "prompt_cache_key": "k1", "prompt_cache_retention": "24h",
         "prompt_cache_options": {}, "reasoning_effort": "low", "verbosity": "low",
         "modalities": ["text"]},
        {"audio": {"voice": "alloy", "format": "wav"}, "function_call": "auto",
         "functions": [{"name": "f", "parameters": {"type": "object"}}],
         "prediction": {"type": "content", "content": "x"}, "web_search_options": {},
         "moderation": {"type": "auto"}},
    ),
    "/v1/completions": (
        sdk_fields(completion_params.CompletionCreateParamsBase),
        {"model": model, "prompt": "hi", "max_tokens": 2},
        {"echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "model", "n",
         "presence_penalty", "prompt", "seed", "stop", "stream_options", "temperature", "top_p"},
        {"user": "u1", "best_of": 1, "suffix": ""},
        {"best_of": 3, "suffix": "the end"},
    ),
}
for path, (fields, base_body, honoured, ignored, refused) in WALK.items():
    unclassified = fields - honoured - set(ignored) - set(refused)
    check(not unclassified, f"{path}: SDK fields not classified: {sorted(unclassified)}")
    for f, v in ignored.items():
        st, body = raw(path, {**base_body, f: v})
        check(st == 200, f"{path} {f} accepted and ignored: {st} {body}")
    for f, v in refused.items():
        st, body = raw(path, {**base_body, f: v})
        check(st == 400 and body["error"]["param"] == f, f"{path} {f} refused naming it: {st} {body}")
    st, body = raw(path, {**base_body, "no_such_field": 1})
    check(st == 400 and body["error"]["param"] == "no_such_field"
          and "Unrecognized request argument" in body["error"]["message"], f"{path}: unknown field: {body}")
print("request fields: every SDK field honoured, listed as ignored, or refused by name")

print(f"openai SDK {openai.__version__}: {checks} checks passed")
