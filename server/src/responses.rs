//! `POST /v1/responses`, the API OpenAI now recommends, over the same machinery as chat:
//! a request becomes a chat request (instructions as the system message, input items as
//! messages, `text.format` as `response_format`, function tools as tools), and the answer
//! becomes a Response (a message with `output_text`, or `function_call` items), whole or
//! as the typed event stream (`response.created` … `response.output_text.delta` …
//! `response.completed`).
//!
//! `store` (default true) keeps a response's conversation (its input and its answer) in a
//! bounded in-memory store for [`STORE_TTL`]; a later request names it in
//! `previous_response_id` to continue. Past [`STORE_CAPACITY`] the oldest is dropped, and
//! naming a dropped, expired or unknown id is a 400 naming `previous_response_id`.

use crate::api_error::ApiError;
use crate::app::AppState;
use crate::handlers::{
    collect, new_id, prepare, prompt_tokens, start, tenant, unix_now, with_request_id,
};
use crate::request::prepare_chat;
use crate::sequence::Piece;
use crate::tool_stream::{CallReader, Found};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use genie_protocol::openai::{
    ChatCompletionRequest, FunctionCall, JsonSchemaFormat, MessageContent, NamedFunction,
    NamedToolChoice, RequestMessage, ResponseFormat, Tool, ToolCall, ToolChoice,
};
use genie_protocol::worker::FinishReason;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most stored responses; past it the oldest is dropped.
pub const STORE_CAPACITY: usize = 1024;
/// How long a stored response can be continued.
pub const STORE_TTL: Duration = Duration::from_secs(3600);

/// Stored conversations by response id, oldest first.
#[derive(Default)]
pub struct Store {
    items: Mutex<VecDeque<(String, Instant, Vec<RequestMessage>)>>,
}

impl Store {
    fn get(&self, id: &str) -> Option<Vec<RequestMessage>> {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        items.retain(|(_, at, _)| at.elapsed() < STORE_TTL);
        items
            .iter()
            .find(|(k, _, _)| k == id)
            .map(|(_, _, m)| m.clone())
    }

    fn put(&self, id: String, conversation: Vec<RequestMessage>) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        while items.len() >= STORE_CAPACITY {
            items.pop_front();
        }
        items.push_back((id, Instant::now(), conversation));
    }
}

/// `input`: a string (one user message), or items (messages with text parts,
/// `function_call` and `function_call_output`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

/// [`Input`]'s schema: a string, or an array of item objects.
fn input_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::Object)))
            .build(),
    )
}

/// `POST /v1/responses`'s body: the fields Genie honours (and `metadata`, `user`,
/// accepted and ignored); any other is a 400.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponsesRequest {
    model: String,
    #[schema(schema_with = input_schema)]
    input: Input,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    text: Option<TextConfig>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required`, or `{"type": "function", "name"}`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    previous_response_id: Option<String>,
    /// Accepted and ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    #[allow(dead_code)]
    metadata: Option<Value>,
    /// Accepted and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

/// `text`: the answer's format (`{"type": "text" | "json_object" | "json_schema", ...}`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    format: Option<Value>,
}

fn bad(param: &str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid(param, msg)
}

fn text_of(v: &Value, param: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut s = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("input_text" | "output_text" | "text"), Some(t)) => s.push_str(t),
                    _ => {
                        return Err(bad(
                            &format!("{param}[{j}]"),
                            "only input_text and output_text parts are supported by this text-only model",
                        ))
                    }
                }
            }
            Ok(s)
        }
        _ => Err(bad(
            param,
            "content must be a string or a list of text parts",
        )),
    }
}

fn message(role: &str, content: String) -> RequestMessage {
    RequestMessage {
        role: role.into(),
        content: Some(MessageContent::Text(content)),
        name: None,
        tool_calls: None,
        tool_call_id: None,
    }
}

/// Input items as chat messages: messages, earlier `function_call`s (as an assistant
/// message's calls) and `function_call_output`s (as tool messages).
fn input_messages(input: Input) -> Result<Vec<RequestMessage>, ApiError> {
    let items = match input {
        Input::Text(t) => return Ok(vec![message("user", t)]),
        Input::Items(items) => items,
    };
    let mut out: Vec<RequestMessage> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        match it["type"].as_str().unwrap_or("message") {
            "message" => {
                let role = it["role"].as_str().unwrap_or_default();
                if !matches!(role, "user" | "system" | "developer" | "assistant") {
                    return Err(bad(
                        &format!("{param}.role"),
                        "role must be user, system, developer or assistant",
                    ));
                }
                out.push(message(
                    role,
                    text_of(&it["content"], &format!("{param}.content"))?,
                ));
            }
            "function_call" => {
                let (Some(call_id), Some(name)) = (it["call_id"].as_str(), it["name"].as_str())
                else {
                    return Err(bad(&param, "a function_call item needs call_id and name"));
                };
                let call = ToolCall {
                    id: call_id.into(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: name.into(),
                        arguments: it["arguments"].as_str().unwrap_or("{}").into(),
                    },
                };
                match out.last_mut() {
                    Some(m) if m.role == "assistant" && m.tool_calls.is_some() => {
                        m.tool_calls.get_or_insert_with(Vec::new).push(call)
                    }
                    _ => out.push(RequestMessage {
                        role: "assistant".into(),
                        content: None,
                        name: None,
                        tool_calls: Some(vec![call]),
                        tool_call_id: None,
                    }),
                }
            }
            "function_call_output" => {
                let Some(call_id) = it["call_id"].as_str() else {
                    return Err(bad(
                        &format!("{param}.call_id"),
                        "a function_call_output item needs call_id",
                    ));
                };
                let mut m = message("tool", text_of(&it["output"], &format!("{param}.output"))?);
                m.tool_call_id = Some(call_id.into());
                out.push(m);
            }
            other => {
                return Err(bad(
                    &format!("{param}.type"),
                    format!("input item type `{other}` is not supported"),
                ))
            }
        }
    }
    Ok(out)
}

fn response_format(format: Option<Value>) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(f) = format else { return Ok(None) };
    match f["type"].as_str() {
        Some("text") => Ok(Some(ResponseFormat::Text)),
        Some("json_object") => Ok(Some(ResponseFormat::JsonObject)),
        Some("json_schema") => Ok(Some(ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name: f["name"].as_str().unwrap_or("response").into(),
                description: f["description"].as_str().map(String::from),
                schema: f.get("schema").cloned(),
                strict: f["strict"].as_bool(),
            },
        })),
        _ => Err(bad(
            "text.format.type",
            "use text, json_object or json_schema",
        )),
    }
}

fn tools(v: Option<Vec<Value>>) -> Result<Option<Vec<Tool>>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    v.into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t["type"] != "function" {
                return Err(bad(
                    &format!("tools[{i}].type"),
                    "only function tools are supported",
                ));
            }
            // The Responses form is flat; the chat form nests it under `function`.
            let mut f = t.clone();
            if let Some(o) = f.as_object_mut() {
                o.remove("type");
            }
            serde_json::from_value(json!({"type": "function", "function": f}))
                .map_err(|e| bad(&format!("tools[{i}]"), format!("not a function tool: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn tool_choice(v: Option<Value>) -> Result<Option<ToolChoice>, ApiError> {
    match v {
        None => Ok(None),
        Some(Value::String(m)) => Ok(Some(ToolChoice::Mode(m))),
        Some(o) => match (o["type"].as_str(), o["name"].as_str()) {
            (Some("function"), Some(name)) => Ok(Some(ToolChoice::Named(NamedToolChoice {
                kind: "function".into(),
                function: NamedFunction { name: name.into() },
            }))),
            _ => Err(bad(
                "tool_choice",
                "use none, auto, required or {\"type\": \"function\", \"name\": ...}",
            )),
        },
    }
}

/// The chat request a Responses request stands for, and its whole input conversation.
fn to_chat(
    st: &AppState,
    r: ResponsesRequest,
) -> Result<(ChatCompletionRequest, Vec<RequestMessage>, Value), ApiError> {
    let mut conversation = match &r.previous_response_id {
        None => Vec::new(),
        Some(id) => st.responses.get(id).ok_or_else(|| {
            bad(
                "previous_response_id",
                format!("no stored response `{id}` (not stored, expired after {} s, or dropped past {STORE_CAPACITY} stored)", STORE_TTL.as_secs()),
            )
        })?,
    };
    conversation.extend(input_messages(r.input)?);
    let mut messages = conversation.clone();
    if let Some(i) = &r.instructions {
        messages.insert(0, message("system", i.clone()));
    }
    let echo = json!({
        "instructions": r.instructions,
        "max_output_tokens": r.max_output_tokens,
        "temperature": r.temperature.unwrap_or(1.0),
        "top_p": r.top_p.unwrap_or(1.0),
        "previous_response_id": r.previous_response_id,
        "store": r.store.unwrap_or(true),
        "parallel_tool_calls": r.parallel_tool_calls.unwrap_or(true),
        "tool_choice": r.tool_choice.clone().unwrap_or(json!("auto")),
        "tools": r.tools.clone().unwrap_or_default(),
        "text": {"format": r.text.as_ref().and_then(|t| t.format.clone()).unwrap_or(json!({"type": "text"}))},
    });
    let chat = ChatCompletionRequest {
        model: r.model,
        messages,
        max_completion_tokens: r.max_output_tokens,
        logprobs: None,
        top_logprobs: None,
        tools: tools(r.tools)?,
        tool_choice: tool_choice(r.tool_choice)?,
        parallel_tool_calls: r.parallel_tool_calls,
        max_tokens: None,
        temperature: r.temperature,
        top_p: r.top_p,
        top_k: None,
        n: None,
        stop: None,
        seed: None,
        presence_penalty: None,
        frequency_penalty: None,
        logit_bias: None,
        stream: None,
        stream_options: None,
        user: None,
        ignore_eos: None,
        genie: None,
        priority: None,
        response_format: response_format(r.text.and_then(|t| t.format))?,
    };
    Ok((chat, conversation, echo))
}

/// The Response object for an answer (`text`, or `calls` where it was tool calls).
#[allow(clippy::too_many_arguments)]
fn response_object(
    id: &str,
    created: u64,
    model: &str,
    echo: &Value,
    status: &str,
    output: Vec<Value>,
    finish: Option<FinishReason>,
    usage: Option<(u64, u64, u64)>,
) -> Value {
    let mut r = json!({
        "id": id, "object": "response", "created_at": created, "status": status,
        "model": model, "output": output, "error": null,
        "incomplete_details": if finish == Some(FinishReason::Length) { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "usage": usage.map(|(i, o, c)| json!({
            "input_tokens": i, "input_tokens_details": {"cached_tokens": c},
            "output_tokens": o, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": i + o
        })),
        "metadata": {},
    });
    if let (Some(o), Some(e)) = (r.as_object_mut(), echo.as_object()) {
        o.extend(e.clone());
    }
    r
}

fn output_items(text: &str, calls: Option<&[ToolCall]>, msg_id: &str) -> Vec<Value> {
    match calls {
        Some(calls) => calls
            .iter()
            .map(|c| {
                json!({"type": "function_call", "id": item_id(&c.id), "call_id": c.id,
                       "name": c.function.name, "arguments": c.function.arguments, "status": "completed"})
            })
            .collect(),
        None => vec![json!({"type": "message", "id": msg_id, "status": "completed", "role": "assistant",
                            "content": [{"type": "output_text", "text": text, "annotations": []}]})],
    }
}

/// A function_call item's id, made from its call's (`call-X` → `fc-X`), so a streamed
/// item and the Response's are the same.
fn item_id(call_id: &str) -> String {
    format!("fc-{}", call_id.strip_prefix("call-").unwrap_or(call_id))
}

/// The events that open the answer's message item and its text part.
fn opening(msg_id: &str) -> [Value; 2] {
    [
        json!({"type": "response.output_item.added", "output_index": 0,
               "item": {"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []}}),
        json!({"type": "response.content_part.added", "item_id": msg_id, "output_index": 0,
               "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
    ]
}

/// What every answer to one request shares, from its start to the Response it ends in.
struct Reply {
    id: String,
    created: u64,
    model: String,
    /// The request's settings, echoed in the Response.
    echo: Value,
    /// The message item's id.
    msg_id: String,
    /// The tools offered (the answer is read back as calls where it is some).
    tools: Option<crate::tools::ToolUse>,
    store: bool,
    /// The input conversation, kept with the answer when `store`.
    conversation: Vec<RequestMessage>,
    input_tokens: u64,
}

/// A finished answer: its calls (None: text), output items and the Response.
struct Done {
    calls: Option<Vec<ToolCall>>,
    output: Vec<Value>,
    response: Value,
    incomplete: bool,
}

impl Reply {
    /// The Response while the answer is under way.
    fn in_progress(&self) -> Value {
        response_object(
            &self.id,
            self.created,
            &self.model,
            &self.echo,
            "in_progress",
            Vec::new(),
            None,
            None,
        )
    }

    /// The answer `text` read as calls where it is some.
    fn calls(&self, text: &str) -> Option<Vec<ToolCall>> {
        self.tools
            .as_ref()
            .and_then(|t| crate::tools::read_calls(text, t, || new_id("call")))
    }

    /// The answer, `calls` (None: the message `text`), kept in `responses` with its
    /// conversation when `store`, and the Response with its usage.
    fn finish(
        self,
        responses: &Store,
        text: &str,
        calls: Option<Vec<ToolCall>>,
        finish: Option<FinishReason>,
        merged: &crate::sequence::Merged,
    ) -> Done {
        let output = output_items(text, calls.as_deref(), &self.msg_id);
        let incomplete = finish == Some(FinishReason::Length);
        let usage = (
            self.input_tokens,
            merged.completion_tokens(),
            merged.cached_tokens(),
        );
        let response = response_object(
            &self.id,
            self.created,
            &self.model,
            &self.echo,
            if incomplete {
                "incomplete"
            } else {
                "completed"
            },
            output.clone(),
            finish,
            Some(usage),
        );
        if self.store {
            let mut conversation = self.conversation;
            conversation.push(answer_message(text, calls.as_deref()));
            responses.put(self.id, conversation);
        }
        Done {
            calls,
            output,
            response,
            incomplete,
        }
    }
}

/// The answer added to the stored conversation.
fn answer_message(text: &str, calls: Option<&[ToolCall]>) -> RequestMessage {
    match calls {
        Some(c) => RequestMessage {
            role: "assistant".into(),
            content: None,
            name: None,
            tool_calls: Some(c.to_vec()),
            tool_call_id: None,
        },
        None => message("assistant", text.to_string()),
    }
}

pub async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let tenant = tenant(&st, &headers)?;
    let req: ResponsesRequest = crate::body::parse(&bytes)?;
    let (stream, store) = (req.stream.unwrap_or(false), req.store.unwrap_or(true));
    let (chat, conversation, echo) = to_chat(&st, req)?;
    let spec = prepare(&st, chat, prepare_chat).await?;
    let (id, created) = (new_id("resp"), unix_now());
    let mut merged = start(&st, &spec, tenant.as_deref(), arrived, &id).await?;
    let reply = Reply {
        id: id.clone(),
        created,
        model: st.frontend.served_name.clone(),
        echo,
        msg_id: new_id("msg"),
        tools: spec.tools.clone(),
        store,
        conversation,
        input_tokens: prompt_tokens(&spec),
    };
    if !stream {
        let c = collect(&mut merged, vec![String::new()]).await?;
        let text = c.texts.into_iter().next().unwrap_or_default();
        let calls = reply.calls(&text);
        let done = reply.finish(
            &st.responses,
            &text,
            calls,
            c.finish.first().copied(),
            &merged,
        );
        return Ok(with_request_id(Json(done.response).into_response(), &id));
    }
    // Streamed: the typed events, in order, from a task that drives the sequence; a client
    // that leaves drops the receiver, which ends the task and cancels the sequence.
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let st2 = st.clone();
    let rid = id.clone();
    tokio::spawn(async move {
        let mut seq = 0u64;
        let mut ev = |v: Value| {
            seq += 1;
            let mut v = v;
            v["sequence_number"] = json!(seq);
            let kind = v["type"].as_str().unwrap_or_default().to_string();
            Event::default().event(kind).data(v.to_string())
        };
        let base = reply.in_progress();
        let msg_id = reply.msg_id.clone();
        for e in [
            ev(json!({"type": "response.created", "response": base})),
            ev(json!({"type": "response.in_progress", "response": base})),
        ] {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        // Text streams as it comes; offered tools, the answer is read as it comes too
        // ([`crate::tool_stream`]): held until it is known to be text, or each call's item
        // added when its name is read and its arguments sent as they are written.
        let mut reader = reply.tools.as_ref().map(|t| t.reader());
        let mut opened = false;
        let mut text = String::new();
        let mut finish = None;
        let mut calls: Vec<ToolCall> = Vec::new();
        let mut ended = false;
        while !ended {
            let (t, f) = match merged.next().await {
                Some((_, Piece::Delta { text, finish, .. })) => (text, finish),
                Some((_, Piece::Prompt(_))) => continue,
                Some((_, Piece::Failed(msg))) => {
                    let e = ev(
                        json!({"type": "error", "code": "server_error", "message": msg, "param": null}),
                    );
                    let _ = tx.send(e).await;
                    return;
                }
                None => {
                    ended = true;
                    (String::new(), None)
                }
            };
            text.push_str(&t);
            if f.is_some() {
                finish = f;
            }
            let mut found = match reader.as_mut() {
                Some(r) => r.push(&t),
                None if !t.is_empty() => vec![Found::Text(t)],
                None => Vec::new(),
            };
            if ended {
                found.extend(reader.as_mut().map(CallReader::finish).unwrap_or_default());
            }
            let mut out = Vec::new();
            for f in found {
                match f {
                    Found::Text(t) => {
                        if !opened {
                            opened = true;
                            out.extend(opening(&msg_id).map(&mut ev));
                        }
                        out.push(ev(
                            json!({"type": "response.output_text.delta", "item_id": msg_id,
                            "output_index": 0, "content_index": 0, "delta": t}),
                        ));
                    }
                    Found::Call { index, name } => {
                        let call_id = new_id("call");
                        out.push(ev(json!({"type": "response.output_item.added", "output_index": index,
                            "item": {"type": "function_call", "id": item_id(&call_id), "call_id": call_id,
                                     "name": name, "arguments": "", "status": "in_progress"}})));
                        calls.push(ToolCall {
                            id: call_id,
                            kind: "function".into(),
                            function: FunctionCall {
                                name,
                                arguments: String::new(),
                            },
                        });
                    }
                    Found::Args { index, fragment } => {
                        out.push(ev(json!({"type": "response.function_call_arguments.delta",
                            "item_id": item_id(&calls[index].id), "output_index": index, "delta": fragment})));
                        calls[index].function.arguments.push_str(&fragment);
                    }
                }
            }
            for e in out {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        }
        let calls = (!calls.is_empty()).then_some(calls);
        let done = reply.finish(&st2.responses, &text, calls, finish, &merged);
        let output = &done.output;
        let mut tail = Vec::new();
        match &done.calls {
            None => {
                if !opened {
                    tail.extend(opening(&msg_id).map(&mut ev));
                }
                tail.push(ev(json!({"type": "response.output_text.done", "item_id": msg_id, "output_index": 0,
                    "content_index": 0, "text": text})));
                tail.push(ev(json!({"type": "response.content_part.done", "item_id": msg_id, "output_index": 0,
                    "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}})));
                tail.push(ev(json!({"type": "response.output_item.done", "output_index": 0, "item": output[0]})));
            }
            Some(_) => {
                for (k, item) in output.iter().enumerate() {
                    tail.push(ev(json!({"type": "response.function_call_arguments.done", "item_id": item["id"],
                        "output_index": k, "arguments": item["arguments"]})));
                    tail.push(ev(json!({"type": "response.output_item.done", "output_index": k, "item": item})));
                }
            }
        }
        let kind = if done.incomplete {
            "response.incomplete"
        } else {
            "response.completed"
        };
        tail.push(ev(json!({"type": kind, "response": done.response})));
        for e in tail {
            if tx.send(e).await.is_err() {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Ok(with_request_id(Sse::new(body).into_response(), &rid))
}
