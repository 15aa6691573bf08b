//! # genie-engine
//!
//! Genie's model engine. It owns everything between a GGUF file and a sampled token:
//!
//! - [`gguf`]: loading GGUF models of the llama, qwen2, qwen3 and gemma3 families
//!   (candle-core's GGUF reader), every dimension taken from the file's metadata;
//! - [`quant`]: the weights in their quantised block formats (Q4_1, Q8_0, the K-quants;
//!   others widened losslessly at load) and the integer dot-product kernels (AVX-512
//!   VNNI, AVX2 with run-time detection, portable scalar fallback, all the same bits);
//! - [`spm`]: SentencePiece tokenization for `llama`-model vocabularies (Gemma);
//! - [`model`]: the forward pass over **caller-owned** KV caches, batched across sequences;
//! - [`kv_cache`]: the per-sequence KV cache, exportable layer by layer (a
//!   `genie_protocol::kv::LayerShape` and its bytes) and importable into another engine
//!   instance (the prefill→decode hand-off);
//! - [`model_text`]: tokenizer, chat template and configuration from GGUF metadata alone
//!   (what a gateway needs; no tensor data is read);
//! - [`kv_budget`]: KV memory accounting against a capacity, refusing what cannot fit;
//! - [`tokenizer`] and [`chat_template`]: the GGUF's own BPE tokenizer and Jinja chat
//!   template; [`sampling`] and [`stop`]: token choice and streaming-safe stop strings;
//! - [`generate`]: a single-sequence generation loop tying these together (the CLI's
//!   `genie generate`); [`fetch`]: the default model, fetched and verified on first use.
//!
//! It does no networking: workers and the gateway build on it.

pub mod chat_template;
pub mod error;
pub mod expf;
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod kv_budget;
pub mod kv_cache;
pub mod model;
pub mod model_text;
pub mod ops;
pub mod prefix_cache;
pub mod quant;
pub mod quantize;
pub mod sampling;
pub mod spm;
pub mod stop;
pub mod tokenizer;

pub use error::{EngineError, Result};
