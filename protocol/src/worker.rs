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

/// Why a sequence ended normally. The one finish-reason type: the engine's generation
/// loop, the workers and the HTTP API all speak it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token or stop string ended the sequence.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Why a worker could not start or continue a sequence: decided once, where the failure
/// happens, so the gateway chooses retry, wait or fail from the code, never from text or
/// an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The worker's input queue is full: another worker (or later) may take it.
    Busy,
    /// The decode worker has no KV room for the sequence now: wait for room.
    NoKvRoom,
    /// The client went away; nobody is listening.
    Cancelled,
    /// The KV transfer broke, timed out or was refused by the decode worker.
    TransferFailed,
    /// The prefill worker cannot reach the decode worker's KV endpoint.
    KvUnreachable,
    /// The control request was malformed (a gateway/worker version mismatch).
    InvalidRequest,
    /// The worker is shutting down or its compute thread has stopped.
    Stopped,
    /// The worker's event stream broke off (the worker process died or was cut off).
    WorkerLost,
    /// Anything else; details go to the worker's log, not to the client.
    Internal,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::Busy => "busy",
            FailureCode::NoKvRoom => "no_kv_room",
            FailureCode::Cancelled => "cancelled",
            FailureCode::TransferFailed => "transfer_failed",
            FailureCode::KvUnreachable => "kv_unreachable",
            FailureCode::InvalidRequest => "invalid_request",
            FailureCode::Stopped => "stopped",
            FailureCode::WorkerLost => "worker_lost",
            FailureCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed failure with a message that is safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: FailureCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// The body of a worker control API refusal: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlError {
    pub error: Failure,
}

/// Events of one sequence, in order: tokens, then exactly one `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SeqEvent {
    /// The sequence's decode worker started running it (it left the waiting queue).
    Running,
    /// How many prompt tokens' KV a worker took from its prefix cache instead of computing
    /// them (sent at most once, before the first token, and only when some were).
    Cached(u32),
    /// The prompt's tokens after the first, each with its logprob given those before it
    /// (asked for by the sampler's `prompt_logprobs`; sent at most once, before the first
    /// token, by the worker that prefilled the prompt).
    PromptLogprobs(Vec<TokenOut>),
    Token(TokenOut),
    Finished(FinishReason),
    /// The sequence could not go on.
    Failed(Failure),
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
    /// The worker's prefix-cache blocks stored and removed since its last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_events: Option<KvEvents>,
    /// Cost curves the worker fitted to its own forward passes (once it has enough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub costs: Option<crate::costs::LiveCosts>,
    /// Sequences admitted since the worker started. Admissions are numbered 1, 2, …
    /// ([`ADMISSION_HEADER`]), and `load` and `queued_tokens` count every admission up to
    /// this number that has not ended: a gateway counts its own placements on this worker
    /// until a status includes them (0 from a worker that does not number them).
    #[serde(default)]
    pub admitted: u64,
}

/// KV events: which prefix-cache blocks a worker stored and removed since its previous
/// report, by key (the hash chain of `engine::prefix_cache::block_keys`), so a router can
/// send a prompt where its prefix is held. Reports are numbered; a router that sees a gap
/// forgets the worker's blocks until the next `snapshot` (every block held, sent
/// periodically), so a lost report costs affinity for a while, never a wrong answer (a
/// worker always checks its own cache).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEvents {
    /// The first link of the worker's key chains: its model's identity, hashed.
    pub salt: u64,
    /// Tokens per block.
    pub block_tokens: u32,
    /// This report's number; the next is `seq + 1`.
    pub seq: u64,
    /// `stored` is every block held, not a change.
    #[serde(default)]
    pub snapshot: bool,
    #[serde(default)]
    pub stored: Vec<u64>,
    #[serde(default)]
    pub removed: Vec<u64>,
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
    /// Without `prompt`: the ids of the prompt whose KV arrives as `transfer`, so the
    /// decode worker can recompute the sequence if it is preempted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt_ids: Vec<u32>,
    pub max_tokens: u32,
    pub stop_token_ids: Vec<u32>,
    /// The sampler's initial state (engine-defined JSON).
    pub sampler: serde_json::Value,
}

/// The header of a decode worker's answer to `POST /internal/decode`: how many leading
/// prompt tokens' KV it already holds, which the prefill worker then does not send.
pub const CACHED_TOKENS_HEADER: &str = "x-genie-cached-tokens";

/// The header of a worker's answer to an admission (`POST /internal/decode`,
/// `POST /internal/prefill`): the admission's number, which the worker's status includes
/// once its `admitted` reaches it ([`WorkerStatus::admitted`]).
pub const ADMISSION_HEADER: &str = "x-genie-admission";

/// `POST /internal/prefill` on a prefill worker: prefill one prompt and stream its KV to
/// `kv_endpoint` as `transfer`. The response body streams the first token (or the end) as
/// JSON lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefillRequest {
    pub seq: crate::SeqId,
    pub transfer: crate::TransferId,
    pub kv_endpoint: String,
    pub prompt: Vec<u32>,
    /// The decode worker already holds the KV of this many leading prompt tokens (its
    /// prefix cache, [`CACHED_TOKENS_HEADER`]): only the rest crosses the network.
    #[serde(default)]
    pub skip_tokens: u32,
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

impl SeqEvent {
    /// A failure event.
    pub fn failed(code: FailureCode, message: impl Into<String>) -> Self {
        SeqEvent::Failed(Failure::new(code, message))
    }

    /// `Finished` and `Failed` end a sequence's stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self, SeqEvent::Finished(_) | SeqEvent::Failed(_))
    }
}

/// Most events one sequence can send: `Running`, `Cached`, `PromptLogprobs`, one `Token`
/// per generated token, and one final event. A channel of this capacity never finds itself full, so a worker's compute
/// thread never waits on a slow client, yet the channel is bounded.
pub fn events_capacity(max_tokens: usize) -> usize {
    max_tokens.saturating_add(4)
}
