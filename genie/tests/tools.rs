//! Tool calling through `genie serve`: forced calls (`required`, a named function) are
//! whole calls whose arguments match the function's schema, on both paths and streamed;
//! tool results and earlier calls are accepted in the history; bad tool fields are 400s;
//! a chat template that takes tools (`--chat-template`, Hermes style) gets them and its
//! model's `<tool_call>` blocks come back as calls.

mod support;

use serde_json::{json, Value};
use support::{post_json, post_stream, Server, MODEL};

async fn post(s: &Server, body: &Value) -> (u16, Value) {
    post_json(s, "/v1/chat/completions", body).await
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
         "parameters": {"type": "object", "properties": {
             "city": {"type": "string", "maxLength": 30},
             "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}}},
        {"type": "function", "function": {"name": "get_time", "description": "Local time in a time zone",
         "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 30}},
           "required": ["zone"]}}}
    ])
}

/// Checks a call's shape and its arguments against the tools above.
fn check_call(c: &Value) {
    assert!(c["id"].as_str().unwrap().starts_with("call"), "{c}");
    assert_eq!(c["type"], "function");
    let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
    match c["function"]["name"].as_str().unwrap() {
        "get_weather" => {
            assert!(
                args["city"]
                    .as_str()
                    .is_some_and(|s| s.chars().count() <= 30),
                "{args}"
            );
            assert!(
                ["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()),
                "{args}"
            );
        }
        "get_time" => assert!(args["zone"].is_string(), "{args}"),
        other => panic!("unknown function {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_tool_calls_match_their_schemas_on_every_path() {
    let s = Server::start(&["--threads", "1"], &[]);
    let questions = [
        "What is the weather in Paris?",
        "What time is it in Tokyo?",
        "Is it raining in Lima?",
        "Weather in Oslo please",
    ];
    for (i, q) in questions.iter().enumerate() {
        let choice = if i % 2 == 0 {
            json!("required")
        } else {
            json!({"type": "function", "function": {"name": "get_weather"}})
        };
        let body = json!({
            "model": MODEL, "messages": [{"role": "user", "content": q}],
            "tools": tools(), "tool_choice": choice, "parallel_tool_calls": false,
            "max_tokens": 80, "temperature": 0.7, "seed": i,
            "genie": {"disaggregate": i % 2 == 0}
        });
        let (st, v) = post(&s, &body).await;
        assert_eq!(st, 200, "{v}");
        let c = &v["choices"][0];
        let calls = c["message"]["tool_calls"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"));
        assert_eq!(calls.len(), 1, "parallel_tool_calls false: {v}");
        assert!(c["message"]["content"].is_null(), "{v}");
        assert!(
            c["finish_reason"] == "tool_calls" || c["finish_reason"] == "length",
            "{v}"
        );
        check_call(&calls[0]);
        if i % 2 == 1 {
            assert_eq!(calls[0]["function"]["name"], "get_weather");
        }
    }

    // Streamed as OpenAI streams calls: a delta with the call's index, id, type and name
    // (arguments ""), then deltas of its arguments as they are written, then
    // finish_reason tool_calls; joined, the same call as the whole answer's.
    let body = json!({
        "model": MODEL, "messages": [{"role": "user", "content": "Weather in Rome?"}],
        "tools": tools(), "tool_choice": "required", "max_tokens": 80, "temperature": 0
    });
    let (st, whole) = post(&s, &body).await;
    assert_eq!(st, 200, "{whole}");
    let mut body = body;
    body["stream"] = json!(true);
    let (chunks, finish) = tool_call_deltas(post_stream(&s, "/v1/chat/completions", &body).await);
    let mut deltas = Vec::new();
    for tc in chunks {
        assert_eq!(tc.len(), 1, "{tc:?}");
        deltas.extend(tc);
    }
    let head = &deltas[0];
    assert_eq!(
        (
            &head["index"],
            &head["type"],
            &head["function"]["arguments"]
        ),
        (&json!(0), &json!("function"), &json!("")),
        "{head}"
    );
    assert!(head["id"].as_str().unwrap().starts_with("call"));
    assert!(
        deltas.len() > 3,
        "the arguments come in pieces: {} deltas",
        deltas.len()
    );
    let mut args = String::new();
    for d in &deltas[1..] {
        assert_eq!(d["index"], 0);
        assert!(
            d.get("id").is_none() && d["function"].get("name").is_none(),
            "{d}"
        );
        args.push_str(d["function"]["arguments"].as_str().unwrap());
    }
    let want = &whole["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(head["function"]["name"], want["name"]);
    assert_eq!(args, want["arguments"].as_str().unwrap());
    let mut joined = head.clone();
    joined["function"]["arguments"] = json!(args);
    check_call(&joined);
    assert_eq!(finish, whole["choices"][0]["finish_reason"], "{finish}");

    // A conversation that made a call and got its result goes on.
    history_with_a_result_goes_on(&s).await;

    // tool_choice none: a plain answer.
    let body = json!({
        "model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8,
        "tools": tools(), "tool_choice": "none", "temperature": 0
    });
    let (st, v) = post(&s, &body).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert!(
        v["choices"][0]["message"].get("tool_calls").is_none(),
        "{v}"
    );
}

/// A conversation that made a call and got its result goes on: 200, text or calls.
async fn history_with_a_result_goes_on(s: &Server) {
    let body = json!({
        "model": MODEL, "max_tokens": 24, "temperature": 0, "tools": tools(),
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"}
        ]
    });
    let (st, v) = post(s, &body).await;
    assert_eq!(st, 200, "{v}");
    let m = &v["choices"][0]["message"];
    assert!(
        m["content"].is_string() || m["tool_calls"].is_array(),
        "{v}"
    );
}

/// A streamed answer's `tool_calls` deltas, chunk by chunk (chunks without any left
/// out), and its finish reason.
fn tool_call_deltas(events: Vec<String>) -> (Vec<Vec<Value>>, Value) {
    let mut chunks = Vec::new();
    let mut finish = Value::Null;
    for d in events {
        if d == "[DONE]" {
            break;
        }
        let c: Value = serde_json::from_str(&d).unwrap();
        let ch = &c["choices"][0];
        if let Some(tc) = ch["delta"]["tool_calls"].as_array() {
            chunks.push(tc.clone());
        }
        if !ch["finish_reason"].is_null() {
            finish = ch["finish_reason"].clone();
        }
    }
    (chunks, finish)
}

/// Joins a streamed answer's tool-call deltas into whole calls, checking each starts
/// with its id, type and name.
fn joined_calls(events: Vec<String>) -> (Vec<Value>, Value) {
    let (chunks, finish) = tool_call_deltas(events);
    let mut calls: Vec<Value> = Vec::new();
    for tc in chunks.iter().flatten() {
        let k = tc["index"].as_u64().unwrap() as usize;
        if k == calls.len() {
            assert_eq!(tc["type"], "function", "{tc}");
            calls.push(tc.clone());
        } else {
            let args = calls[k]["function"]["arguments"]
                .as_str()
                .unwrap()
                .to_string()
                + tc["function"]["arguments"].as_str().unwrap();
            calls[k]["function"]["arguments"] = json!(args);
        }
    }
    (calls, finish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_takes_tools_gets_them_and_its_tool_call_blocks_are_calls() {
    let template = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/chat-templates/chatml-tools.jinja"
    );
    let s = Server::start(&["--threads", "1", "--chat-template", template], &[]);
    for (i, q) in ["Weather in Paris?", "What time is it in Tokyo?"]
        .iter()
        .enumerate()
    {
        let body = json!({
            "model": MODEL, "messages": [{"role": "user", "content": q}],
            "tools": tools(), "tool_choice": "required", "max_tokens": 120,
            "temperature": 0.7, "seed": i, "genie": {"disaggregate": i == 0}
        });
        let (st, v) = post(&s, &body).await;
        assert_eq!(st, 200, "{v}");
        let c = &v["choices"][0];
        let calls = c["message"]["tool_calls"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"));
        assert!(!calls.is_empty(), "{v}");
        calls.iter().for_each(check_call);
        assert_eq!(c["finish_reason"], "tool_calls", "{v}");
        // Streamed, the same calls.
        let mut body = body;
        body["stream"] = json!(true);
        let (streamed, finish) = joined_calls(post_stream(&s, "/v1/chat/completions", &body).await);
        assert_eq!(finish, "tool_calls");
        assert_eq!(streamed.len(), calls.len());
        for (a, b) in streamed.iter().zip(calls) {
            assert_eq!(a["function"]["name"], b["function"]["name"]);
            assert_eq!(a["function"]["arguments"], b["function"]["arguments"]);
        }
    }
    // The history in the template's own form; a plain answer is text.
    history_with_a_result_goes_on(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tool_fields_are_refused_naming_them() {
    let s = Server::start(&["--threads", "1"], &[]);
    let base = || json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let cases = [
        (
            json!({"tools": tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice.function.name",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"tools": tools(), "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "has space"}}]}),
            "tools[0].function.name",
        ),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (
            json!({"tools": tools(), "tool_choice": "required", "response_format": {"type": "json_object"}}),
            "tool_choice",
        ),
    ];
    for (extra, param) in cases {
        let mut body = base();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (st, v) = post(&s, &body).await;
        assert_eq!(st, 400, "{extra}: {v}");
        assert_eq!(v["error"]["param"], param, "{extra}: {v}");
    }
    let mut body = base();
    body["messages"] = json!([{"role": "tool", "content": "x"}]);
    let (st, v) = post(&s, &body).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["param"], "messages[0].tool_call_id", "{v}");
}
