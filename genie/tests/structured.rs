//! Structured outputs through `genie serve`: `response_format` enforced token by token
//! on every path (prefill and decode on separate workers, colocated, n > 1, streaming),
//! and schemas that cannot be enforced refused with a 400 naming the field.

mod support;

use serde_json::{json, Value};
use support::{post_json, post_stream, Server, MODEL};

async fn post(s: &Server, body: &Value) -> (u16, Value) {
    post_json(s, "/v1/chat/completions", body).await
}

/// A person record: every type the schema can hold, with an enum and a bounded array.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima", "other"]},
            "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
            "retired": {"type": "boolean"}
        },
        "required": ["name", "age", "city", "hobbies", "retired"]
    })
}

/// Checks `v` against [`person_schema`] by hand, naming what is wrong.
fn valid_person(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["age", "city", "hobbies", "name", "retired"] {
        return Err(format!("keys {keys:?}"));
    }
    let name = o["name"].as_str().ok_or("name")?;
    if name.chars().count() > 40 {
        return Err("name too long".into());
    }
    let age = o["age"].as_i64().ok_or("age")?;
    if !(0..=150).contains(&age) {
        return Err(format!("age {age}"));
    }
    if !["Paris", "Tokyo", "Lima", "other"].contains(&o["city"].as_str().ok_or("city")?) {
        return Err("city".into());
    }
    let h = o["hobbies"].as_array().ok_or("hobbies")?;
    if h.len() > 3
        || h.iter()
            .any(|x| x.as_str().is_none_or(|s| s.chars().count() > 30))
    {
        return Err("hobbies".into());
    }
    o["retired"].as_bool().ok_or("retired")?;
    Ok(())
}

fn person_request(i: usize, disaggregate: bool) -> Value {
    let who = [
        "a baker",
        "a pilot",
        "a retired teacher",
        "a student",
        "a painter",
    ][i % 5];
    let city = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo"][(i / 5) % 5];
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": format!("Invent {who} who lives in {city}. Reply in JSON.")}],
        "max_tokens": 200,
        "temperature": 0.7,
        "seed": i,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "person", "strict": true, "schema": person_schema()}},
        "genie": {"disaggregate": disaggregate}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_outputs_parse_and_validate_on_every_path() {
    let s = Server::start(&["--threads", "1"], &[]);
    let mut stopped = 0;
    // Ample budgets, then budgets that cut the answer: a cut answer is still a whole,
    // valid value (steered closed near the budget), with finish_reason "length".
    let budgets = [
        200, 200, 200, 200, 200, 200, 200, 200, 40, 40, 48, 48, 56, 56, 64, 64,
    ];
    for (i, max_tokens) in budgets.into_iter().enumerate() {
        let disaggregate = i % 2 == 0;
        let mut body = person_request(i, disaggregate);
        body["max_tokens"] = json!(max_tokens);
        let (st, v) = post(&s, &body).await;
        assert_eq!(st, 200, "{v}");
        let choice = &v["choices"][0];
        let text = choice["message"]["content"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| {
            panic!(
                "request {i} (disaggregated {disaggregate}, max_tokens {max_tokens}): {e}: {text}"
            )
        });
        valid_person(&parsed).unwrap_or_else(|e| panic!("request {i}: {e}: {text}"));
        let used = v["usage"]["completion_tokens"].as_u64().unwrap();
        assert!(used <= max_tokens, "{used} tokens");
        match choice["finish_reason"].as_str() {
            Some("stop") => stopped += 1,
            Some("length") => assert_eq!(used, max_tokens),
            other => panic!("finish_reason {other:?}"),
        }
    }
    assert!(
        stopped >= 6,
        "only {stopped} of 16 answers ended by themselves"
    );

    // n > 1: every choice is its own constrained sequence.
    let mut body = person_request(40, true);
    body["n"] = json!(3);
    let (st, v) = post(&s, &body).await;
    assert_eq!(st, 200, "{v}");
    for c in v["choices"].as_array().unwrap() {
        let parsed: Value =
            serde_json::from_str(c["message"]["content"].as_str().unwrap()).unwrap();
        valid_person(&parsed).unwrap();
    }

    // Streaming, colocated: the deltas join into one valid object.
    let mut body = person_request(41, false);
    body["stream"] = json!(true);
    let events = post_stream(&s, "/v1/chat/completions", &body).await;
    let mut text = String::new();
    let mut finish = Value::Null;
    for d in events {
        if d == "[DONE]" {
            break;
        }
        let c: Value = serde_json::from_str(&d).unwrap();
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if !c["choices"][0]["finish_reason"].is_null() {
            finish = c["choices"][0]["finish_reason"].clone();
        }
    }
    assert!(finish == "stop" || finish == "length", "{finish}");
    valid_person(&serde_json::from_str(&text).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_object_gives_an_object_and_unenforceable_schemas_are_refused() {
    let s = Server::start(&["--threads", "1"], &[]);
    for (i, disaggregate) in [(0, true), (1, false)] {
        let body = json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "Give the capital of France as JSON with a key named capital."}],
            "max_tokens": 64, "temperature": 0, "seed": i,
            "response_format": {"type": "json_object"},
            "genie": {"disaggregate": disaggregate}
        });
        let (st, v) = post(&s, &body).await;
        assert_eq!(st, 200, "{v}");
        let c = &v["choices"][0];
        let text = c["message"]["content"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(parsed.is_object(), "{text}");
        assert!(c["finish_reason"] == "stop" || c["finish_reason"] == "length");
    }
    // Tight budgets on any object: still whole objects.
    for (i, max_tokens) in [(2, 3), (3, 6), (4, 10), (5, 16)] {
        let body = json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "Describe a cat in JSON."}],
            "max_tokens": max_tokens, "temperature": 1.0, "seed": i,
            "response_format": {"type": "json_object"},
            "genie": {"disaggregate": i % 2 == 0}
        });
        let (st, v) = post(&s, &body).await;
        assert_eq!(st, 200, "{v}");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("max_tokens {max_tokens}: {e}: {text}"));
        assert!(parsed.is_object(), "{text}");
    }

    let refuse = |rf: Value| {
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
               "response_format": rf})
    };
    let unsupported = json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true,
        "schema": {"type": "array", "items": {"type": "integer"}, "uniqueItems": true}}});
    let (st, v) = post(&s, &refuse(unsupported)).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(
        v["error"]["param"], "response_format.json_schema.schema",
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uniqueItems"),
        "{v}"
    );

    let bad_name = json!({"type": "json_schema", "json_schema": {"name": "has space", "schema": {"type": "object"}}});
    let (st, v) = post(&s, &refuse(bad_name)).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(
        v["error"]["param"], "response_format.json_schema.name",
        "{v}"
    );

    let (st, v) = post(&s, &refuse(json!({"type": "yaml"}))).await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("response_format"),
        "{v}"
    );

    let mut with_ignore_eos = refuse(json!({"type": "json_object"}));
    with_ignore_eos["ignore_eos"] = json!(true);
    let (st, v) = post(&s, &with_ignore_eos).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["param"], "ignore_eos", "{v}");

    // `text` is the unconstrained default.
    let (st, v) = post(&s, &refuse(json!({"type": "text"}))).await;
    assert_eq!(st, 200, "{v}");
}
