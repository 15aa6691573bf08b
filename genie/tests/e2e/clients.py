"""Structured outputs and tool calls through the clients applications use, against
`genie serve`: the OpenAI SDK's parse() and tool calls, its Responses API (create,
streamed, parse, previous_response_id), instructor (TOOLS and JSON_SCHEMA
modes, and JSON mode, whose schema is only in the prompt: every answer a JSON object) and
LangChain's ChatOpenAI.with_structured_output (json_schema and
function_calling methods). Every answer must parse and validate against its model.

Usage: python3 clients.py BASE_URL MODEL   (CLIENT_ROUNDS=50 answers per client and method)
Exits non-zero on the first failed check.
"""

import json
import os
import sys
from typing import Annotated, Literal

import instructor
import openai
from langchain_openai import ChatOpenAI
from openai import OpenAI
from pydantic import BaseModel, Field

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
checks = 0
ROUNDS = int(os.environ.get("CLIENT_ROUNDS", "50"))


def check(cond, what):
    global checks
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    checks += 1


# Bounded strings: a 135M model left free inside a string can repeat itself until the
# budget; the schema's maxLength makes the grammar close it.
class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=150)
    city: str = Field(max_length=40)
    hobbies: list[Annotated[str, Field(max_length=30)]] = Field(max_length=3)


class Weather(BaseModel):
    """Current weather in a city."""
    city: str = Field(max_length=30)
    unit: Literal["celsius", "fahrenheit"]


WHO = ["a baker in Paris", "a pilot in Lima", "a nurse in Oslo", "a poet in Tokyo",
       "a farmer in Cairo", "a student in Rome"]


LIKES = ["chess", "the sea", "old films", "running", "jazz", "gardening", "trains"]


def prompt(i):
    """50 different prompts: a person, a liking and a number."""
    return f"Describe {WHO[i % len(WHO)]} who likes {LIKES[i % len(LIKES)]} (record {i}) as a person record."


# OpenAI SDK: parse() with a pydantic model, and a forced tool call.
for i in range(ROUNDS):
    r = client.chat.completions.parse(model=model, max_tokens=320, temperature=0.7, seed=i,
                                      response_format=Person,
                                      messages=[{"role": "user", "content": prompt(i)}])
    check(isinstance(r.choices[0].message.parsed, Person), f"SDK parse: {r}")
    tools = [openai.pydantic_function_tool(Weather)]
    r = client.chat.completions.create(model=model, max_tokens=80, temperature=0.7, seed=i, tools=tools,
                                       tool_choice="required",
                                       messages=[{"role": "user", "content": "What is the weather in Berlin?"}])
    calls = r.choices[0].message.tool_calls
    check(calls and calls[0].function.name == "Weather", f"SDK tool call: {r}")
    Weather.model_validate(json.loads(calls[0].function.arguments))
    check(r.choices[0].finish_reason == "tool_calls", f"finish_reason: {r.choices[0].finish_reason}")
    # Streamed: the SDK's stream helper joins the tool_calls deltas (a call's start, then
    # its arguments in pieces) and parses the arguments with the pydantic model.
    with client.chat.completions.stream(model=model, max_tokens=80, temperature=0.7, seed=i, tools=tools,
                                        tool_choice="required",
                                        messages=[{"role": "user", "content": f"Weather in {WHO[i % len(WHO)].split()[-1]}?"}]) as s:
        pieces = sum(1 for e in s if e.type == "tool_calls.function.arguments.delta")
        final = s.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    check(isinstance(call.function.parsed_arguments, Weather), f"SDK streamed tool call: {final}")
    check(pieces > 1, f"the arguments came in {pieces} delta(s)")
print(f"openai SDK {openai.__version__}: parse() and tool calls (whole and streamed), {ROUNDS} each")

# The Responses API through the SDK: create (whole and streamed), parse() with a
# text_format model, and a conversation continued by previous_response_id.
for i in range(ROUNDS):
    r = client.responses.create(model=model, input=prompt(i), max_output_tokens=24, temperature=0.7)
    check(r.status in ("completed", "incomplete") and r.output_text, f"responses.create: {r}")
    r2 = client.responses.create(model=model, input="Shorter, please.", previous_response_id=r.id,
                                 max_output_tokens=16, temperature=0.7)
    check(r2.output_text and r2.usage.input_tokens > r.usage.input_tokens, f"previous_response_id: {r2}")
    events = list(client.responses.create(model=model, input=prompt(i), max_output_tokens=16,
                                          temperature=0.7, stream=True))
    kinds = [e.type for e in events]
    check(kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete"),
          f"stream events: {kinds}")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    check(text == events[-1].response.output_text, f"deltas join into the text: {text!r}")
    p = client.responses.parse(model=model, input=prompt(i), text_format=Person, max_output_tokens=320,
                               temperature=0.7)
    check(isinstance(p.output_parsed, Person), f"responses.parse: {p}")
print(f"openai SDK responses: create, stream, previous_response_id, parse(), {ROUNDS} each")

# instructor
for mode in (instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA):
    ic = instructor.from_openai(OpenAI(base_url=base + "/v1", api_key="unused", timeout=120), mode=mode)
    for i in range(ROUNDS):
        p = ic.chat.completions.create(model=model, response_model=Person, max_tokens=320, temperature=0.7,
                                       max_retries=0, seed=i,
                                       messages=[{"role": "user", "content": prompt(i)}])
        check(isinstance(p, Person), f"instructor {mode}: {p}")
    print(f"instructor {instructor.__version__} {mode.name}: {ROUNDS} valid")

# instructor's JSON mode sends `response_format: json_object` and describes the schema only
# in the prompt: the server guarantees a JSON object, the fields are up to the model.
ic = instructor.from_openai(OpenAI(base_url=base + "/v1", api_key="unused", timeout=120),
                            mode=instructor.Mode.JSON)
raw = []
ic.on("completion:response", lambda r: raw.append(r.choices[0].message.content))
valid = 0
for i in range(ROUNDS):
    try:
        p = ic.chat.completions.create(model=model, response_model=Person, max_tokens=320, temperature=0.7,
                                       max_retries=0, seed=i,
                                       messages=[{"role": "user", "content": prompt(i)}])
        valid += isinstance(p, Person)
    except Exception:  # a validation failure: the model's fields, not the server's JSON
        pass
    check(len(raw) == i + 1 and isinstance(json.loads(raw[-1]), dict), f"instructor JSON: {raw[-1:]}")
print(f"instructor {instructor.__version__} JSON: {ROUNDS} JSON objects, {valid} with the model's fields")

# LangChain
llm = ChatOpenAI(base_url=base + "/v1", api_key="unused", model=model, temperature=0.7, max_tokens=320,
                 max_retries=0, timeout=120)
for method in ("json_schema", "function_calling"):
    structured = llm.with_structured_output(Person, method=method)
    for i in range(ROUNDS):
        p = structured.invoke(prompt(i))
        check(isinstance(p, Person), f"langchain {method}: {p}")
    print(f"langchain-openai with_structured_output {method}: {ROUNDS} valid")

print(f"clients: {checks} checks passed")
