//! The hyper-parameters the reference needs, read from the GGUF metadata on its own (not
//! through the engine's reader).

use crate::ReferenceError;
use candle_core::quantized::gguf_file::{Content, Value};

/// The architectures the reference runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3 without rope scaling, SmolLM2, Mistral: SwiGLU, RoPE on adjacent pairs.
    Llama,
    /// Gemma 3: embeddings scaled by √hidden, per-head q/k norms, norms after attention
    /// and the feed-forward too, GELU (tanh form), RoPE on split halves (NEOX), five
    /// sliding-window layers (local RoPE base 10 000) to one global layer.
    Gemma3,
    /// Qwen 2 / 2.5: biases on Q, K and V, NEOX RoPE, SwiGLU.
    Qwen2,
    /// Qwen 3: per-head q/k norms before RoPE, NEOX RoPE, SwiGLU.
    Qwen3,
}

impl Arch {
    /// RoPE on split halves rather than adjacent pairs.
    pub fn neox(self) -> bool {
        self != Arch::Llama
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RefConfig {
    pub arch: Arch,
    pub architecture: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub vocab_size: usize,
    pub rope_base: f64,
    pub rope_dim: usize,
    pub rms_eps: f64,
    /// Gemma 3: the RoPE base of the sliding-window layers, the window, and every how
    /// many layers one is global.
    pub rope_base_local: f64,
    pub sliding_window: Option<usize>,
    pub swa_period: usize,
    /// `rope.scaling.type = linear`: positions divided by `rope.scaling.factor` (1: none).
    pub rope_linear_factor: f64,
}

impl RefConfig {
    /// Whether layer `l` attends within the sliding window only.
    pub fn is_local(&self, l: usize) -> bool {
        self.sliding_window.is_some() && l % self.swa_period != self.swa_period - 1
    }
}

fn int(v: &Value) -> Option<usize> {
    match v {
        Value::U8(x) => Some(*x as usize),
        Value::U16(x) => Some(*x as usize),
        Value::U32(x) => Some(*x as usize),
        Value::U64(x) => usize::try_from(*x).ok(),
        Value::I32(x) => usize::try_from(*x).ok(),
        Value::I64(x) => usize::try_from(*x).ok(),
        _ => None,
    }
}

fn float(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        _ => None,
    }
}

impl RefConfig {
    pub(crate) fn read(content: &Content, path: &str) -> Result<Self, ReferenceError> {
        let err = |reason: String| ReferenceError::Format {
            path: path.to_string(),
            reason,
        };
        let arch = match content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(err("`general.architecture` is missing".into())),
        };
        let kind = match arch.as_str() {
            "llama" => Arch::Llama,
            "gemma3" => Arch::Gemma3,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            _ => return Err(ReferenceError::Unsupported(arch)),
        };
        let get = |k: &str| content.metadata.get(&format!("{arch}.{k}"));
        let need = |k: &str| {
            get(k)
                .and_then(int)
                .ok_or_else(|| err(format!("`{arch}.{k}` is missing or not an integer")))
        };
        let n_heads = need("attention.head_count")?;
        let hidden = need("embedding_length")?;
        let head_dim = get("attention.key_length")
            .and_then(int)
            .unwrap_or(hidden / n_heads.max(1));
        let vocab_size = match content.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => return Err(err("`tokenizer.ggml.tokens` is missing".into())),
        };
        let gemma = kind == Arch::Gemma3;
        Ok(RefConfig {
            arch: kind,
            rope_base_local: 10_000.0,
            sliding_window: if gemma {
                Some(get("attention.sliding_window").and_then(int).unwrap_or(512))
            } else {
                None
            },
            swa_period: 6,
            rope_linear_factor: match get("rope.scaling.type") {
                Some(Value::String(t)) if t == "linear" => {
                    get("rope.scaling.factor").and_then(float).unwrap_or(1.0)
                }
                Some(Value::String(t)) if t != "none" => {
                    return Err(ReferenceError::Unsupported(format!("RoPE scaling {t}")))
                }
                _ => 1.0,
            },
            n_layers: need("block_count")?,
            n_kv_heads: get("attention.head_count_kv")
                .and_then(int)
                .unwrap_or(n_heads),
            n_heads,
            head_dim,
            hidden,
            ffn: need("feed_forward_length")?,
            vocab_size,
            rope_base: get("rope.freq_base").and_then(float).unwrap_or(10_000.0),
            rope_dim: get("rope.dimension_count")
                .and_then(int)
                .unwrap_or(head_dim),
            rms_eps: get("attention.layer_norm_rms_epsilon")
                .and_then(float)
                .unwrap_or(1e-5),
            architecture: arch,
        })
    }
}
