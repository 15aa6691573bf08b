//! What workers tell the gateway about one sequence, and what a prefill worker hands a
//! decode worker beside the KV cache. Plain data, so the same messages serve threads in one
//! process and, serialised, separate processes.

use serde::{Deserialize, Serialize};

/// One kept token with its log-probabilities when the request asked for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenOut {
    pub token: u32,
    pub logprob: Option<f32>,
    /// The most likely alternatives, most likely first: `(token, logprob)`.
    pub top_logprobs: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// A stop token ended the sequence.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

/// Events of one sequence, in order: tokens, then exactly one `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SeqEvent {
    /// The sequence's decode worker started running it (it left the waiting queue).
    Running,
    Token(TokenOut),
    Finished(Finish),
    /// The sequence could not go on; the message is safe to show a client.
    Failed(String),
}

/// The trailer of a KV transfer: what the decode worker needs to continue the sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    /// Prompt tokens whose K/V were sent.
    pub prompt_tokens: u32,
    /// The token the prefill worker sampled; the decode worker's first input.
    pub first_token: u32,
    /// The sampler's state after that token (RNG and penalty counts), engine-defined JSON.
    pub sampler: serde_json::Value,
}

/// A worker's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerRole {
    Prefill,
    Decode,
}

/// `POST /internal/workers` on the gateway: a worker announces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub role: WorkerRole,
    /// Base URL of the worker's control API (`http://host:port`).
    pub address: String,
    /// `host:port` of the decode worker's KV receiver (decode workers only).
    pub kv_endpoint: Option<String>,
    /// Free-form hardware label (`cpu`, `h100`, …) for placement policies.
    pub hardware: String,
    pub status: WorkerStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub id: crate::WorkerId,
    /// How often the gateway expects a heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// Load and capacity, reported with every heartbeat and by `GET /internal/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Sequences queued, in transfer or running.
    pub load: u64,
    /// Prompt tokens queued (prefill workers).
    pub queued_tokens: u64,
    /// Sequences in the running batch (decode workers).
    pub running: u64,
    pub kv_capacity_bytes: u64,
    pub kv_free_bytes: u64,
    pub max_batch: u64,
}

/// `POST /internal/decode` on a decode worker: run one sequence. With `prompt` the worker
/// prefills it itself (colocated); without, it reserves KV for `transfer` and waits for the
/// prefill worker's layers. The response body streams [`SeqEvent`]s as JSON lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeRequest {
    pub seq: crate::SeqId,
    pub transfer: crate::TransferId,
    pub prompt_tokens: u32,
    pub prompt: Option<Vec<u32>>,
    pub max_tokens: u32,
    pub stop_token_ids: Vec<u32>,
    /// The sampler's initial state (engine-defined JSON).
    pub sampler: serde_json::Value,
}

/// `POST /internal/prefill` on a prefill worker: prefill one prompt and stream its KV to
/// `kv_endpoint` as `transfer`. The response body streams the first token (or the end) as
/// JSON lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefillRequest {
    pub seq: crate::SeqId,
    pub transfer: crate::TransferId,
    pub kv_endpoint: String,
    pub prompt: Vec<u32>,
    pub max_tokens: u32,
    pub stop_token_ids: Vec<u32>,
    pub sampler: serde_json::Value,
}

/// One row of `GET /v1/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: crate::WorkerId,
    pub role: WorkerRole,
    pub address: String,
    pub kv_endpoint: Option<String>,
    pub hardware: String,
    pub healthy: bool,
    /// Registered (heartbeats) or static (listed in config, polled).
    pub source: String,
    pub seconds_since_seen: f64,
    pub status: WorkerStatus,
}
