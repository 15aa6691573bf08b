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
