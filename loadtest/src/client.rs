//! One streamed OpenAI request, timed: when the first content arrived, the gap before each
//! later content chunk, the end, and the server's usage.

use crate::workload::Prompt;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Which OpenAI endpoint the load goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /v1/chat/completions`, the prompt as one user message.
    Chat,
    /// `POST /v1/completions`, the prompt as text.
    Completions,
}

/// Where and how requests are sent.
#[derive(Clone, Debug)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub api_key: Option<String>,
    /// Token ids sent with `logit_bias` -100 (ban end-of-turn tokens so every request
    /// produces exactly its output length).
    pub ban_tokens: Vec<u32>,
    /// Send `ignore_eos: true` (an extension Genie, vLLM, SGLang and llama.cpp honour).
    pub ignore_eos: bool,
    /// Send no `max_tokens`: the server's default applies and answers end where the model
    /// ends its turn (the sequences a server must admit without knowing their length).
    pub no_max_tokens: bool,
    pub temperature: f64,
    /// Whole-request limit.
    pub timeout: Duration,
}

/// What one request measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// Answered 200, streamed content and `[DONE]`, no error event.
    pub ok: bool,
    pub error: Option<String>,
    /// Send time, from the start of the run.
    pub sent_at: Duration,
    pub ttft: Option<Duration>,
    /// Gaps between consecutive content chunks after the first.
    pub itl: Vec<Duration>,
    pub e2e: Duration,
    pub input_tokens_asked: u32,
    pub output_tokens_asked: u32,
    /// From the server's `usage` when it sent one.
    pub prompt_tokens: Option<u32>,
    /// From `usage`, else the number of content chunks.
    pub output_tokens: u32,
    /// From `usage.prompt_tokens_details.cached_tokens` when the server reports it.
    pub cached_tokens: Option<u32>,
    /// The answer's text (the next turn of a multi-turn conversation sends it back).
    #[serde(skip)]
    pub text: String,
}

impl Outcome {
    /// Mean time per output token after the first.
    pub fn tpot(&self) -> Option<Duration> {
        let ttft = self.ttft?;
        (self.output_tokens > 1).then(|| (self.e2e - ttft) / (self.output_tokens - 1))
    }
}

/// The request body for `prompt` and `max_tokens` on `t`: chat sends the system prompt and
/// the conversation as messages, completions their concatenation.
pub fn body(t: &Target, prompt: &Prompt, max_tokens: u32) -> Value {
    let mut b = json!({
        "model": t.model,
        "max_tokens": max_tokens,
        "temperature": t.temperature,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    match t.endpoint {
        Endpoint::Chat => {
            let mut m: Vec<Value> = Vec::with_capacity(prompt.messages.len() + 1);
            if let Some(sys) = &prompt.system {
                m.push(json!({"role": "system", "content": sys}));
            }
            m.extend(
                prompt
                    .messages
                    .iter()
                    .map(|(role, content)| json!({"role": role, "content": content})),
            );
            b["messages"] = Value::Array(m);
        }
        Endpoint::Completions => b["prompt"] = json!(prompt.as_text()),
    }
    if t.ignore_eos {
        b["ignore_eos"] = json!(true);
    }
    if t.no_max_tokens {
        if let Some(o) = b.as_object_mut() {
            o.remove("max_tokens");
        }
    }
    if !t.ban_tokens.is_empty() {
        let bias: serde_json::Map<String, Value> = t
            .ban_tokens
            .iter()
            .map(|id| (id.to_string(), json!(-100)))
            .collect();
        b["logit_bias"] = Value::Object(bias);
    }
    b
}

/// Incremental SSE parsing of an OpenAI stream.
#[derive(Debug, Default)]
pub struct SseState {
    buf: String,
    pub done: bool,
    pub error: Option<String>,
    pub usage: Option<(u32, u32)>,
    /// `usage.prompt_tokens_details.cached_tokens`, when present.
    pub cached_tokens: Option<u32>,
    /// Content chunks seen so far.
    pub content_chunks: u32,
    /// The content received so far.
    pub text: String,
}

impl SseState {
    /// Feeds received bytes; returns how many content chunks they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> u32 {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut n = 0;
        while let Some(i) = self.buf.find("\n\n") {
            let event: String = self.buf.drain(..i + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue; // comments (keep-alives) and other fields
                };
                let data = data.trim();
                if data == "[DONE]" {
                    self.done = true;
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    self.error
                        .get_or_insert_with(|| format!("unparsable event: {data}"));
                    continue;
                };
                if let Some(e) = v.get("error") {
                    let msg = e["message"].as_str().unwrap_or("error event");
                    self.error.get_or_insert_with(|| msg.to_string());
                    continue;
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    let g = |k: &str| u[k].as_u64().unwrap_or(0) as u32;
                    self.usage = Some((g("prompt_tokens"), g("completion_tokens")));
                    self.cached_tokens = u["prompt_tokens_details"]["cached_tokens"]
                        .as_u64()
                        .map(|c| c as u32);
                }
                let mut has_content = false;
                for c in v["choices"].as_array().into_iter().flatten() {
                    let text = c["delta"]["content"].as_str().or(c["text"].as_str());
                    if let Some(t) = text.filter(|t| !t.is_empty()) {
                        self.text.push_str(t);
                        has_content = true;
                    }
                }
                if has_content {
                    self.content_chunks += 1;
                    n += 1;
                }
            }
        }
        n
    }
}

/// Sends one streamed request and times it. Never panics; failures are outcomes.
pub async fn send(
    client: &reqwest::Client,
    t: &Target,
    prompt: &Prompt,
    input_tokens: u32,
    max_tokens: u32,
    run_start: Instant,
) -> Outcome {
    let start = Instant::now();
    let mut o = Outcome {
        sent_at: start - run_start,
        input_tokens_asked: input_tokens,
        output_tokens_asked: max_tokens,
        ..Outcome::default()
    };
    let path = match t.endpoint {
        Endpoint::Chat => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
    };
    let mut req = client
        .post(format!("{}{path}", t.url.trim_end_matches('/')))
        .json(&body(t, prompt, max_tokens));
    if let Some(k) = &t.api_key {
        req = req.bearer_auth(k);
    }
    let result = tokio::time::timeout(t.timeout, async {
        let r = req.send().await.map_err(|e| format!("connect: {e}"))?;
        let status = r.status();
        if !status.is_success() {
            let text = r.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(String::from))
                .unwrap_or(text);
            return Err(format!("HTTP {}: {msg}", status.as_u16()));
        }
        let mut sse = SseState::default();
        let mut last: Option<Instant> = None;
        let mut stream = r.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("stream: {e}"))?;
            let now = Instant::now();
            if sse.feed(&chunk) > 0 {
                match last {
                    None => o.ttft = Some(now - start),
                    Some(prev) => o.itl.push(now - prev),
                }
                last = Some(now);
            }
        }
        Ok(sse)
    })
    .await;
    o.e2e = start.elapsed();
    match result {
        Err(_) => o.error = Some(format!("timed out after {:?}", t.timeout)),
        Ok(Err(e)) => o.error = Some(e),
        Ok(Ok(mut sse)) => {
            if let Some((p, c)) = sse.usage {
                o.prompt_tokens = Some(p);
                o.output_tokens = c;
            } else {
                o.output_tokens = sse.content_chunks;
            }
            o.cached_tokens = sse.cached_tokens;
            o.text = std::mem::take(&mut sse.text);
            o.error = match (sse.error, sse.done, sse.content_chunks) {
                (Some(e), _, _) => Some(format!("error event: {e}")),
                (None, false, _) => Some("stream ended without [DONE]".into()),
                (None, true, 0) => Some("no content streamed".into()),
                (None, true, _) => None,
            };
        }
    }
    o.ok = o.error.is_none();
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_state_counts_content_reads_usage_and_errors_across_split_chunks() {
        let mut s = SseState::default();
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            ": keep-alive\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"text\":\" there\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        );
        let mut n = 0;
        for piece in stream.as_bytes().chunks(7) {
            n += s.feed(piece);
        }
        assert_eq!(n, 2);
        assert_eq!(s.content_chunks, 2);
        assert_eq!(s.usage, Some((7, 2)));
        assert_eq!(s.text, "Hi there");
        assert!(s.done && s.error.is_none());

        let mut e = SseState::default();
        e.feed(b"data: {\"error\":{\"message\":\"worker died\"}}\n\n");
        assert_eq!(e.error.as_deref(), Some("worker died"));
    }

    #[test]
    fn bodies_carry_the_prompt_where_the_endpoint_wants_it() {
        let mut t = Target {
            url: "http://x".into(),
            model: "m".into(),
            endpoint: Endpoint::Chat,
            api_key: None,
            ban_tokens: vec![0, 2],
            ignore_eos: true,
            no_max_tokens: false,
            temperature: 0.0,
            timeout: Duration::from_secs(1),
        };
        let b = body(&t, &Prompt::user(None, "hello".into()), 9);
        assert_eq!(b["messages"][0]["content"], "hello");
        assert_eq!(b["max_tokens"], 9);
        assert_eq!(b["logit_bias"]["2"], -100);
        assert_eq!(b["ignore_eos"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        t.no_max_tokens = true;
        let hello = Prompt::user(None, "hello".into());
        assert!(body(&t, &hello, 9).get("max_tokens").is_none());
        t.no_max_tokens = false;
        let mut p = Prompt::user(Some("sys."), "hi".into());
        p.next_turn("yo".into(), "again".into());
        let b = body(&t, &p, 9);
        let roles: Vec<&str> = b["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(b["messages"][2]["content"], "yo");
        t.endpoint = Endpoint::Completions;
        assert_eq!(
            body(&t, &Prompt::user(None, "hello".into()), 9)["prompt"],
            "hello"
        );
        assert_eq!(body(&t, &p, 9)["prompt"], "sys.hiyoagain");
    }
}
