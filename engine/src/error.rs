//! The engine's one error type. Messages say what went wrong and what to do; they never
//! contain prompt text.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file not found at {path}: {hint}")]
    ModelNotFound { path: PathBuf, hint: String },
    #[error("model file {path} is not a usable GGUF model: {reason}")]
    ModelFormat { path: PathBuf, reason: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("invalid `{field}`: {reason}")]
    InvalidRequest { field: &'static str, reason: String },
    #[error(
        "this model's maximum context length is {context} tokens; the request has {prompt_tokens} prompt tokens and asks for {max_tokens} more ({total} in all)",
        total = prompt_tokens + max_tokens
    )]
    ContextOverflow {
        prompt_tokens: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("KV cache full: the request needs {needed_bytes} bytes of KV cache, {available_bytes} of {capacity_bytes} are free")]
    KvCapacity {
        needed_bytes: usize,
        available_bytes: usize,
        capacity_bytes: usize,
    },
    #[error("KV cache import refused: {0}")]
    KvImport(String),
    #[error("the forward was cancelled: no sequence in it is wanted any more")]
    Cancelled,
    #[error("model fetch failed: {0}")]
    Fetch(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
