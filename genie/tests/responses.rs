//! `POST /v1/responses` through `genie serve`: whole and streamed (the typed events in
//! order), `text.format` enforced, function tools, and `previous_response_id` over the
//! bounded store.

mod support;

use serde_json::{json, Value};
use support::{post_json, post_stream, Server, MODEL};

async fn post(s: &Server, body: &Value) -> (u16, Value) {
    post_json(s, "/v1/responses", body).await
}

fn output_text(r: &Value) -> String {
    r["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == "message")
        .flat_map(|o| o["content"].as_array().unwrap().iter())
        .filter_map(|c| c["text"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_whole_streamed_structured_and_continued() {
    let s = Server::start(&["--threads", "1"], &[]);
    // Whole, then continued from the store; greedy, so the same as chat would give.
    let (st, r) = post(
        &s,
        &json!({"model": MODEL, "input": "Name a color.", "max_output_tokens": 8,
                                   "temperature": 0, "instructions": "Answer in one word."}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "response");
    assert!(r["id"].as_str().unwrap().starts_with("resp"));
    assert!(
        r["status"] == "completed" || r["status"] == "incomplete",
        "{r}"
    );
    assert!(!output_text(&r).is_empty());
    let usage = &r["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap())
    );
    let (st, r2) = post(
        &s,
        &json!({"model": MODEL, "input": "Another?", "max_output_tokens": 8, "temperature": 0,
                                    "previous_response_id": r["id"]}),
    )
    .await;
    assert_eq!(st, 200, "{r2}");
    assert!(
        r2["usage"]["input_tokens"].as_u64() > r["usage"]["input_tokens"].as_u64(),
        "the stored conversation is sent again: {r2}"
    );
    let (st, e) = post(
        &s,
        &json!({"model": MODEL, "input": "x", "previous_response_id": "resp_unknown"}),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(e["error"]["param"], "previous_response_id");
    let (st, _) = post(
        &s,
        &json!({"model": MODEL, "input": "x", "store": false, "max_output_tokens": 2}),
    )
    .await;
    assert_eq!(st, 200);

    // Streamed: the typed events in order, and the deltas join into the final text.
    let body = json!({"model": MODEL, "input": "Name a fruit.", "max_output_tokens": 12, "temperature": 0, "stream": true});
    let events: Vec<Value> = post_stream(&s, "/v1/responses", &body)
        .await
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        &kinds[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    let last = *kinds.last().unwrap();
    assert!(
        last == "response.completed" || last == "response.incomplete",
        "{kinds:?}"
    );
    assert_eq!(
        &kinds[kinds.len() - 4..kinds.len() - 1],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done"
        ]
    );
    let seq: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert!(seq.windows(2).all(|w| w[1] == w[0] + 1), "{seq:?}");
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, output_text(&events.last().unwrap()["response"]));

    // text.format json_schema: the answer parses and has the schema's keys.
    let schema = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                        "population": {"type": "integer", "minimum": 0, "maximum": 100000000}}, "required": ["city", "population"]});
    let (st, r) = post(&s, &json!({"model": MODEL, "input": "A big city, as JSON.", "max_output_tokens": 60, "temperature": 0.7,
        "text": {"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": true}}})).await;
    assert_eq!(st, 200, "{r}");
    let v: Value = serde_json::from_str(&output_text(&r)).unwrap();
    assert!(v["city"].is_string() && v["population"].is_u64(), "{v}");

    // A function tool, forced: a function_call item; its output continues the conversation.
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}]);
    let (st, r) = post(
        &s,
        &json!({"model": MODEL, "input": "Weather in Paris?", "tools": tools,
        "tool_choice": "required", "max_output_tokens": 60}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let call = &r["output"][0];
    assert_eq!(call["type"], "function_call", "{r}");
    assert_eq!(call["name"], "get_weather");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string());
    let (st, r2) = post(&s, &json!({"model": MODEL, "previous_response_id": r["id"], "max_output_tokens": 8,
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]})).await;
    assert_eq!(st, 200, "{r2}");

    // Streamed, the call's item is added when its name is read, its arguments come in
    // deltas as written, and the Response's item is the same.
    let events: Vec<Value> = post_stream(
        &s,
        "/v1/responses",
        &json!({"model": MODEL, "input": "Weather in Paris?", "tools": tools, "temperature": 0,
                "tool_choice": "required", "max_output_tokens": 60, "stream": true}),
    )
    .await
    .iter()
    .map(|d| serde_json::from_str(d).unwrap())
    .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let added = kinds
        .iter()
        .position(|k| *k == "response.output_item.added")
        .unwrap();
    let item = &events[added]["item"];
    assert_eq!(
        (&item["type"], &item["name"], &item["arguments"]),
        (&json!("function_call"), &json!("get_weather"), &json!("")),
        "{item}"
    );
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .collect();
    assert!(deltas.len() > 3, "{kinds:?}");
    assert!(deltas.iter().all(|d| d["item_id"] == item["id"]));
    let args: String = deltas
        .iter()
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    let last = &events.last().unwrap()["response"];
    let fin = &last["output"][0];
    assert_eq!(
        (&fin["id"], &fin["call_id"]),
        (&item["id"], &item["call_id"])
    );
    assert_eq!(args, fin["arguments"].as_str().unwrap());
    assert!(kinds.contains(&"response.function_call_arguments.done"));

    // Bad input names the field.
    let (st, e) = post(
        &s,
        &json!({"model": MODEL, "input": [{"type": "image", "url": "x"}]}),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(e["error"]["param"], "input[0].type");
    let (st, e) = post(&s, &json!({"model": MODEL, "input": "x", "bogus": 1})).await;
    assert_eq!(st, 400, "{e}");
}
