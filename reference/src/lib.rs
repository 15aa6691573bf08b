//! The exact reference the engine is measured against: a forward pass in float64 over a
//! GGUF's own weights dequantised (candle's GGUF reader, an implementation independent of
//! the engine's kernels), with no activation quantisation and no fused or reordered
//! arithmetic. Slow and simple on purpose: every step is the textbook formula, so what it
//! computes is the model as the file defines it, and the engine's quantised kernels (and
//! llama.cpp's) can be scored by how close they come ([`accuracy`]).
//!
//! Supported: `llama` (SmolLM2, Llama 2/3 with linear RoPE scaling or Llama 3.1's
//! `rope_freqs` factors, Mistral), `qwen2`, `qwen3` and `gemma3` (checked against
//! llama.cpp, `tests/gemma3.rs`). Other architectures are refused naming them.

pub mod accuracy;
pub mod cases;
mod config;
mod forward;
mod weights;

pub use config::{Arch, RefConfig};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
    #[error("architecture `{0}` has no reference forward pass yet")]
    Unsupported(String),
    #[error("token {token} is outside the vocabulary of {vocab}")]
    Token { token: u32, vocab: usize },
}

/// A model held as float weights, run in float64.
pub struct Reference {
    config: RefConfig,
    weights: weights::Weights,
}

impl Reference {
    /// Reads and dequantises every tensor of `path` (about 4 bytes a parameter in memory).
    pub fn load(path: &Path) -> Result<Self, ReferenceError> {
        let (config, weights) = weights::load(path)?;
        Ok(Reference { config, weights })
    }

    pub fn config(&self) -> &RefConfig {
        &self.config
    }

    /// Log-probabilities over the vocabulary of the token after each position of `tokens`
    /// from `from` on (`tokens.len() - from` rows), the whole sequence run causally from
    /// position 0.
    pub fn next_logprobs(
        &self,
        tokens: &[u32],
        from: usize,
    ) -> Result<Vec<Vec<f64>>, ReferenceError> {
        let vocab = self.config.vocab_size;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ReferenceError::Token { token, vocab });
        }
        Ok(forward::run(&self.config, &self.weights, tokens, from))
    }
}
