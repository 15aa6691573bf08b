//! Why a worker refuses a sequence. Each refusal carries a [`FailureCode`], decided here,
//! so the gateway picks retry, wait or fail from the code alone.

use genie_protocol::worker::{Failure, FailureCode};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AdmitError {
    /// Not enough KV room for the sequence's reservation right now.
    #[error("no KV room: the sequence needs {needed_bytes} bytes, {free_bytes} are free")]
    NoKvRoom {
        needed_bytes: usize,
        free_bytes: usize,
    },
    /// The worker's input queue is full.
    #[error("the worker's queue is full")]
    Busy,
    /// The worker's compute thread has stopped.
    #[error("the worker has stopped")]
    Stopped,
    /// The request cannot be run as given.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The decode worker's KV endpoint cannot be reached.
    #[error("cannot reach the KV endpoint: {0}")]
    KvUnreachable(String),
}

impl AdmitError {
    pub fn code(&self) -> FailureCode {
        match self {
            AdmitError::NoKvRoom { .. } => FailureCode::NoKvRoom,
            AdmitError::Busy => FailureCode::Busy,
            AdmitError::Stopped => FailureCode::Stopped,
            AdmitError::Invalid(_) => FailureCode::InvalidRequest,
            AdmitError::KvUnreachable(_) => FailureCode::KvUnreachable,
        }
    }

    pub fn failure(&self) -> Failure {
        Failure::new(self.code(), self.to_string())
    }
}

/// The checks every worker makes before admitting a sequence: a prompt to run and at
/// least one token to generate.
pub fn check_lengths(prompt_tokens: usize, max_tokens: usize) -> Result<(), AdmitError> {
    if prompt_tokens == 0 {
        return Err(AdmitError::Invalid("the prompt is empty".into()));
    }
    if max_tokens == 0 {
        return Err(AdmitError::Invalid("max_tokens must be at least 1".into()));
    }
    Ok(())
}
