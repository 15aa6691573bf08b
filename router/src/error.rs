//! Why a sequence could not be dispatched: typed here, mapped to an HTTP status and the
//! OpenAI envelope only at the HTTP edge.

use genie_protocol::WorkerId;
use genie_scheduler::Role;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// The waiting queue is full.
    #[error("The server is overloaded: {waiting} sequences are already waiting (limit {limit}). Retry later.")]
    Overloaded { waiting: usize, limit: usize },
    /// No KV room freed up within the queue timeout.
    #[error("The server is overloaded: no KV cache room freed up in time. Retry later.")]
    QueueTimeout,
    /// The client's `genie` hint cannot be followed.
    #[error("{reason}")]
    InvalidHint { field: &'static str, reason: String },
    /// The sequence needs more KV than any decode worker holds.
    #[error("the request needs {needed_bytes} bytes of KV cache ({prompt_tokens} prompt + {max_tokens} completion tokens) but a decode worker holds at most {largest_bytes}; lower `max_tokens`")]
    NeverFits {
        needed_bytes: u64,
        largest_bytes: u64,
        prompt_tokens: usize,
        max_tokens: usize,
    },
    /// The request's sequences together need more KV than every decode worker holds.
    #[error("the request's {sequences} sequences need {needed_bytes} bytes of KV cache at once but the decode workers hold {total_bytes} together; lower `n` or `max_tokens`")]
    RequestNeverFits {
        sequences: usize,
        needed_bytes: u64,
        total_bytes: u64,
    },
    /// The client named a worker that does not exist with that role.
    #[error("there is no {} worker {} (see GET /v1/plans for the workers)", role_name(*.role), .id.0)]
    UnknownWorker {
        field: &'static str,
        role: Role,
        id: WorkerId,
    },
    /// The plan pins a worker that is not there.
    #[error("the plan pins a worker ({pin}): there is no {} worker {} (see GET /v1/plans for the workers)", role_name(*.role), .id.0)]
    PinnedWorkerMissing {
        pin: String,
        role: Role,
        id: WorkerId,
    },
    /// No healthy worker of a role.
    #[error("no healthy {} worker is available", role_name(*.0))]
    NoWorker(Role),
    /// Workers kept refusing or could not be reached.
    #[error("workers could not be reached; retry later")]
    Unreachable,
    /// A worker failed the sequence for a reason the client cannot act on.
    #[error("a worker failed the sequence: {0}")]
    Failed(String),
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Prefill => "prefill",
        Role::Decode => "decode",
    }
}
