//! Loading GGUF model files (the families of [`Family`]): metadata and tensor directory are parsed by
//! candle-core's GGUF reader; every dimension comes from the file's own metadata; tensor
//! bytes are kept in their quantised block formats ([`crate::quant::QMatrix`]).

use crate::error::{EngineError, Result};
use crate::quant::kquants::KType;
use crate::quant::{widen, Half, QMatrix, WeightFormat, QK};
use crate::tokenizer::TokenizerSpec;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Model hyper-parameters, all read from GGUF metadata.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    pub name: String,
    pub architecture: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_base: f32,
    pub rope_dim: usize,
    pub rms_eps: f32,
    /// Which model family's layer this is ([`Family`]), from `general.architecture`.
    pub family: Family,
    /// Positions are multiplied by this before RoPE (`rope.scaling.type = linear`:
    /// `1 / rope.scaling.factor`); 1 otherwise.
    pub rope_freq_scale: f32,
    /// Gemma 3: the attention window of the local layers (every layer but each
    /// `swa_period`-th), and the RoPE base they use.
    pub sliding_window: Option<usize>,
    pub swa_period: usize,
    pub rope_base_local: f32,
}

/// The model families the engine runs. All are pre-norm decoder stacks with grouped-query
/// attention and a gated feed-forward; they differ in these details:
/// - `Llama` (Llama 2/3, SmolLM2, Mistral): SwiGLU, RoPE on adjacent pairs, optional
///   per-frequency factors (`rope_freqs.weight`, Llama 3.1's scaling).
/// - `Qwen2` (Qwen 2 / 2.5): biases on Q, K and V; RoPE on split halves (NEOX).
/// - `Qwen3`: per-head RMS norms of Q and K before RoPE; NEOX.
/// - `Gemma3`: embeddings scaled by √hidden, per-head Q/K norms, norms after attention
///   and after the feed-forward, GELU (tanh form), NEOX, sliding-window layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Family {
    /// The family of a `general.architecture`, or `None` for one the engine does not run.
    pub fn of(architecture: &str) -> Option<Self> {
        match architecture {
            "llama" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            "gemma3" => Some(Family::Gemma3),
            _ => None,
        }
    }

    /// RoPE rotates `(i, i + rope_dim / 2)` rather than `(2i, 2i + 1)`.
    pub fn rope_neox(self) -> bool {
        self != Family::Llama
    }

    /// The feed-forward gate is GELU (tanh form) rather than SiLU.
    pub fn gelu(self) -> bool {
        self == Family::Gemma3
    }

    /// Per-layer tensors this family cannot run without, besides the common nine.
    fn required(self) -> &'static [&'static str] {
        match self {
            Family::Llama => &[],
            Family::Qwen2 => &["attn_q.bias", "attn_k.bias", "attn_v.bias"],
            Family::Qwen3 => &["attn_q_norm.weight", "attn_k_norm.weight"],
            Family::Gemma3 => &[
                "attn_q_norm.weight",
                "attn_k_norm.weight",
                "post_attention_norm.weight",
                "post_ffw_norm.weight",
            ],
        }
    }
}

/// Gemma's chat template (`<start_of_turn>user … <end_of_turn>`), as Google ships it
/// with Gemma 3, for files that carry none.
pub const GEMMA3_CHAT_TEMPLATE: &str = include_str!("templates/gemma3.jinja");

/// Per-layer vectors a family may carry, loaded when the file has them.
const OPTIONAL_LAYER_TENSORS: [&str; 7] = [
    "attn_q_norm.weight",
    "attn_k_norm.weight",
    "post_attention_norm.weight",
    "post_ffw_norm.weight",
    "attn_q.bias",
    "attn_k.bias",
    "attn_v.bias",
];

impl ModelConfig {
    /// Width of the attention's queries (and of its output projection's input):
    /// `n_heads · head_dim`, which need not equal `hidden` (Gemma 3, Qwen 3).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// True where layer `l` attends within the sliding window only.
    pub fn is_local(&self, l: usize) -> bool {
        self.sliding_window.is_some() && l % self.swa_period != self.swa_period - 1
    }

    /// The embedding scale: √hidden for Gemma, 1 otherwise.
    pub fn embed_scale(&self) -> f32 {
        if self.family == Family::Gemma3 {
            (self.hidden as f32).sqrt()
        } else {
            1.0
        }
    }

    /// Width of one layer's K (or V) for one token.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Bytes of f32 KV cache one token occupies across all layers (K and V).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.kv_dim() * std::mem::size_of::<f32>()
    }

    /// Checks internal consistency; the error names the offending quantity.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("block_count", self.n_layers),
            ("attention.head_count", self.n_heads),
            ("attention.head_count_kv", self.n_kv_heads),
            ("embedding_length", self.hidden),
            ("feed_forward_length", self.ffn),
            ("vocab", self.vocab_size),
            ("context_length", self.context_length),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(format!("{k} is 0"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "head_count {} is not a multiple of head_count_kv {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || self.head_dim.checked_mul(self.n_heads).is_none() {
            return Err(format!(
                "head_dim {} x head_count {} is not a usable width",
                self.head_dim, self.n_heads
            ));
        }
        if self.swa_period == 0 {
            return Err("the sliding-window period is 0".into());
        }
        if self.sliding_window == Some(0) {
            return Err("attention.sliding_window is 0".into());
        }
        if self.rope_dim > self.head_dim || !self.rope_dim.is_multiple_of(2) {
            return Err(format!(
                "rope.dimension_count {} must be even and <= head_dim {}",
                self.rope_dim, self.head_dim
            ));
        }
        // What `kv_bytes_per_token` multiplies out must be a size, not wrap.
        let kv_per_token = [
            self.n_layers,
            self.n_kv_heads,
            self.head_dim,
            std::mem::size_of::<f32>(),
        ]
        .into_iter()
        .try_fold(2, usize::checked_mul);
        if kv_per_token.is_none() {
            return Err(format!(
                "block_count {} x head_count_kv {} x head_dim {}: the KV cache per token overflows",
                self.n_layers, self.n_kv_heads, self.head_dim
            ));
        }
        Ok(())
    }
}

/// Weights of one transformer block.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: QMatrix,
    pub wk: QMatrix,
    pub wv: QMatrix,
    pub wo: QMatrix,
    pub ffn_norm: Vec<f32>,
    pub w_gate: QMatrix,
    pub w_up: QMatrix,
    pub w_down: QMatrix,
    /// Per-head RMS norms of Q and K (`head_dim` each; Qwen 3, Gemma 3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// Norms of the attention's and the feed-forward's outputs (Gemma 3).
    pub post_attn_norm: Option<Vec<f32>>,
    pub post_ffn_norm: Option<Vec<f32>>,
    /// Biases of Q, K and V (Qwen 2).
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
}

/// All weights of a llama model.
#[derive(Clone, Debug)]
pub struct ModelWeights {
    pub token_embd: QMatrix,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Vec<f32>,
    /// `None` when the output head is tied to `token_embd`.
    pub output: Option<QMatrix>,
    /// Llama 3.1-style RoPE: each frequency's angle divided by its factor
    /// (`rope_freqs.weight`, `rope_dim / 2` values).
    pub rope_freqs: Option<Vec<f32>>,
}

impl LayerWeights {
    /// The layer's optional vectors, in [`OPTIONAL_LAYER_TENSORS`] order.
    fn optional_vectors(&self) -> [&Option<Vec<f32>>; 7] {
        [
            &self.q_norm,
            &self.k_norm,
            &self.post_attn_norm,
            &self.post_ffn_norm,
            &self.q_bias,
            &self.k_bias,
            &self.v_bias,
        ]
    }

    /// The layer's seven matrices.
    pub fn matrices(&self) -> [&QMatrix; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }
}

impl ModelWeights {
    /// Bytes of every layer's matrices.
    fn layer_matrix_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.matrices())
            .map(|m| m.size_bytes())
            .sum()
    }

    /// Bytes of weights one decode step reads: every layer's matrices and the output head
    /// (the embedding table gives one row a token).
    pub fn decode_step_bytes(&self) -> usize {
        self.layer_matrix_bytes() + self.output_head().size_bytes()
    }

    /// Multiply-accumulates of one token through every layer's matrices and the output
    /// head: the work a batched decode step does per sequence, whatever the batch.
    pub fn decode_step_macs(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.matrices())
            .chain([self.output_head()])
            .map(|m| m.rows() * m.cols())
            .sum()
    }

    pub fn output_head(&self) -> &QMatrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    pub fn size_bytes(&self) -> usize {
        let norms: usize = self
            .layers
            .iter()
            .map(|l| {
                let extra: usize = l
                    .optional_vectors()
                    .iter()
                    .flat_map(|v| v.iter())
                    .map(Vec::len)
                    .sum();
                4 * (l.attn_norm.len() + l.ffn_norm.len() + extra)
            })
            .sum();
        self.layer_matrix_bytes()
            + norms
            + self.token_embd.size_bytes()
            + self.output.as_ref().map_or(0, |m| m.size_bytes())
            + 4 * self.output_norm.len()
            + 4 * self.rope_freqs.as_ref().map_or(0, Vec::len)
    }
}

/// What a GGUF file says about its model without its tensor data: the configuration,
/// tokenizer and chat template, and how many bytes the weights would take loaded. Read by
/// [`read_meta`], which touches only the file's header (a gateway needs megabytes, not the
/// weights).
#[derive(Clone, Debug)]
pub struct GgufMeta {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub tokenizer: TokenizerSpec,
    pub chat_template: Option<String>,
    /// Bytes the weights take once loaded ([`ModelWeights::size_bytes`]), from the tensor
    /// directory.
    pub weights_bytes: usize,
    /// The file has its own `output.weight` (else the head is tied to `token_embd`).
    pub has_output: bool,
    /// How many tensors the file stores in each type (`Q4_1`, `F32`, …).
    pub quant_mix: std::collections::BTreeMap<String, usize>,
}

/// Everything the engine needs from one GGUF file.
pub struct GgufModel {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: TokenizerSpec,
    pub chat_template: Option<String>,
    pub quant_mix: std::collections::BTreeMap<String, usize>,
}

impl GgufModel {
    /// The metadata side of a loaded model (what [`read_meta`] reads from the header).
    pub fn meta(&self) -> GgufMeta {
        GgufMeta {
            path: self.path.clone(),
            config: self.config.clone(),
            tokenizer: self.tokenizer.clone(),
            chat_template: self.chat_template.clone(),
            weights_bytes: self.weights.size_bytes(),
            has_output: self.weights.output.is_some(),
            quant_mix: self.quant_mix.clone(),
        }
    }
}

struct Reader<'a> {
    path: &'a Path,
    content: Content,
    /// The whole file; empty when only the metadata was read.
    bytes: Vec<u8>,
}

impl Reader<'_> {
    fn err(&self, reason: impl Into<String>) -> EngineError {
        EngineError::ModelFormat {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self
            .get(key)
            .ok_or_else(|| self.err(format!("metadata key `{key}` is missing")))?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => {
                return Err(self.err(format!(
                    "metadata key `{key}` should be a non-negative integer, found {other:?}"
                )))
            }
        };
        usize::try_from(n).map_err(|_| self.err(format!("metadata key `{key}` is too large")))
    }

    fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::F32(x)) => Ok(*x),
            Some(Value::F64(x)) => Ok(*x as f32),
            Some(other) => Err(self.err(format!(
                "metadata key `{key}` should be a float, found {other:?}"
            ))),
        }
    }

    fn string(&self, key: &str) -> Option<String> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn u32_opt(&self, key: &str) -> Option<u32> {
        self.get(key).and_then(|v| v.to_u32().ok())
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.err(format!("`{key}` should hold strings, found {other:?}"))),
                })
                .collect(),
            Some(other) => Err(self.err(format!("`{key}` should be an array, found {other:?}"))),
        }
    }

    fn ints(&self, key: &str) -> Result<Vec<i32>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.to_i32().map_err(|_| {
                        self.err(format!("`{key}` should hold i32 values, found {v:?}"))
                    })
                })
                .collect(),
            Some(other) => Err(self.err(format!("`{key}` should be an array, found {other:?}"))),
        }
    }

    fn floats(&self, key: &str) -> Result<Vec<f32>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.to_f32().map_err(|_| {
                        self.err(format!("`{key}` should hold f32 values, found {v:?}"))
                    })
                })
                .collect(),
            Some(other) => Err(self.err(format!("`{key}` should be an array, found {other:?}"))),
        }
    }

    /// A tensor's `[rows, cols]`, its format once loaded and its bytes in the file. Its
    /// elements must fit in memory as f32 (no format loads larger: Q4_0, Q5_0 and Q5_1
    /// widen to Q8_0, see [`widen`]), so every size derived from
    /// them (stored, loaded) is a number, not a wrapped product of lying dimensions.
    fn layout(&self, name: &str) -> Result<(usize, usize, WeightFormat, usize)> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.err(format!("tensor `{name}` is missing")))?;
        let dims = info.shape.dims();
        let (rows, cols) = matrix_dims(dims)
            .ok_or_else(|| self.err(format!("tensor `{name}` has unexpected shape {dims:?}")))?;
        let n = rows
            .checked_mul(cols)
            .filter(|n| n.checked_mul(std::mem::size_of::<f32>()).is_some())
            .ok_or_else(|| self.err(format!("tensor `{name}` of shape {dims:?} is too large")))?;
        let Some((format, _)) = runs_as(info.ggml_dtype) else {
            return Err(EngineError::Unsupported(format!(
                "tensor `{name}` is {:?}; this engine runs F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K tensors",
                info.ggml_dtype
            )));
        };
        let block = info.ggml_dtype.block_size();
        if !cols.is_multiple_of(block) {
            return Err(self.err(format!(
                "tensor `{name}` is {:?} with rows of {cols} values, not a multiple of its block of {block}",
                info.ggml_dtype
            )));
        }
        let stored = n / block * info.ggml_dtype.type_size();
        Ok((rows, cols, format, stored))
    }

    /// Bytes tensor `name` takes once loaded (widened formats count as loaded; [`Self::layout`] checked
    /// that this fits).
    fn loaded_bytes(&self, name: &str) -> Result<usize> {
        let (rows, cols, format, _) = self.layout(name)?;
        // Q5_1 keeps each block's minimum as an f32 beside its Q8_0 block.
        let minima = match self.content.tensor_infos[name].ggml_dtype {
            GgmlDType::Q5_1 => rows * cols / QK * 4,
            _ => 0,
        };
        Ok(format.bytes_for(rows * cols) + minima)
    }

    /// Tensor as `[rows, cols]` in its stored format.
    fn matrix(&self, name: &str) -> Result<QMatrix> {
        let (rows, cols, format, stored) = self.layout(name)?;
        let info = &self.content.tensor_infos[name];
        let start = (self.content.tensor_data_offset.checked_add(info.offset))
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| self.err(format!("tensor `{name}` offset overflows")))?;
        let end = start
            .checked_add(stored)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                self.err(format!(
                    "tensor `{name}` extends past the end of the file (truncated download?)"
                ))
            })?;
        let raw = &self.bytes[start..end];
        if info.ggml_dtype == GgmlDType::Q5_1 {
            return QMatrix::q5_1(rows, cols, raw)
                .map_err(|e| self.err(format!("tensor `{name}`: {e}")));
        }
        let widened = runs_as(info.ggml_dtype)
            .and_then(|(_, widen)| widen)
            .map(|widen| widen(raw));
        let m = QMatrix::from_bytes(format, rows, cols, widened.as_deref().unwrap_or(raw))
            .map_err(|e| self.err(format!("tensor `{name}`: {e}")))?;
        // Q8_0 blocks, stored or widened from Q4_0/Q5_0, take exact block sums: one
        // integer per block and row, then one convert and one FMA. Stored Q8_0 kept
        // llama.cpp's lane order (a convert and an FMA for every four products) until the
        // 256-bit strip kernels were measured faster with exact sums at batch 1 and 16.
        Ok(m.with_exact_block_sums())
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let m = self.matrix(name)?;
        if m.rows() * m.cols() != len {
            return Err(self.err(format!(
                "tensor `{name}` has {} elements, expected {len}",
                m.rows() * m.cols()
            )));
        }
        let mut out = vec![0.0; len];
        m.dequantize_row(0, &mut out);
        Ok(out)
    }

    fn expect_shape(&self, name: &str, m: &QMatrix, rows: usize, cols: usize) -> Result<()> {
        if m.rows() != rows || m.cols() != cols {
            return Err(self.err(format!(
                "tensor `{name}` is {}x{}, metadata implies {rows}x{cols}",
                m.rows(),
                m.cols()
            )));
        }
        Ok(())
    }
}

/// How a stored tensor type runs: the format it is kept in, and the lossless widening
/// that brings its bytes there where it is not kept as stored ([`widen`]); `None` for a
/// type the engine does not run.
fn runs_as(t: GgmlDType) -> Option<(WeightFormat, Option<widen::Widen>)> {
    Some(match t {
        GgmlDType::F32 => (WeightFormat::F32, None),
        GgmlDType::F16 => (WeightFormat::Half(Half::F16), None),
        GgmlDType::BF16 => (WeightFormat::Half(Half::Bf16), None),
        // Q8_0 blocks and minima beside them: built by `QMatrix::q5_1`, not a widening.
        GgmlDType::Q5_1 => (WeightFormat::Q8_0, None),
        GgmlDType::Q4_1 => (WeightFormat::Q4_1, None),
        GgmlDType::Q8_0 => (WeightFormat::Q8_0, None),
        GgmlDType::Q4_0 => (WeightFormat::Q8_0, Some(widen::q4_0_to_q8_0)),
        GgmlDType::Q5_0 => (WeightFormat::Q8_0, Some(widen::q5_0_to_q8_0)),
        t => (WeightFormat::K(KType::of(t)?), None),
    })
}

fn missing(path: &Path) -> EngineError {
    EngineError::ModelNotFound {
        path: path.to_path_buf(),
        hint: "run `genie model fetch` for the default model, or pass --model PATH / GENIE_MODEL to a supported GGUF file".into(),
    }
}

/// Parses the header (metadata and tensor directory) from `reader`.
fn content<R: Read + Seek>(path: &Path, reader: &mut R) -> Result<Content> {
    let io = |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let start = reader.stream_position().map_err(io)?;
    let zero_alignment = alignment_is_zero(reader).unwrap_or(false);
    reader.seek(SeekFrom::Start(start)).map_err(io)?;
    if zero_alignment {
        return Err(EngineError::ModelFormat {
            path: path.to_path_buf(),
            reason: "metadata key `general.alignment` is 0".into(),
        });
    }
    Content::read(reader).map_err(|e| EngineError::ModelFormat {
        path: path.to_path_buf(),
        // candle appends a backtrace when RUST_BACKTRACE is set: keep the message only.
        reason: format!(
            "{} (is the file a complete GGUF? delete it and fetch again)",
            e.to_string().lines().next().unwrap_or_default()
        ),
    })
}

/// Is the header's `general.alignment` 0? candle-core's `Content::read` rounds the tensor
/// data offset up to it without checking, so a 0 divides by zero (a panic) once the whole
/// header is read. This walks the metadata first, keeping none of it, for the value candle
/// would take: the last entry under that key (trailing NULs dropped) when it is an integer
/// of at most 32 bits (any other means the default). An error means the header is malformed
/// before its end, which candle then reports.
fn alignment_is_zero<R: Read + Seek>(r: &mut R) -> std::io::Result<bool> {
    const KEY: &[u8] = b"general.alignment";
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    // Version 1 writes lengths and counts as u32, later versions as u64.
    let len_bytes = if read_uint(r, 4)? == 1 { 4 } else { 8 };
    let _tensor_count = read_uint(r, len_bytes)?;
    let kv_count = read_uint(r, len_bytes)?;
    let mut zero = false;
    // Each entry reads at least its key's length: a lying count ends at the input's end.
    for _ in 0..kv_count {
        let key_len = read_uint(r, len_bytes)?;
        let is_key = read_key_is(r, key_len, KEY)?;
        let value_type = read_uint(r, 4)?;
        // u8, i8, u16, i16, u32, i32: the types candle takes an alignment from.
        let int_bytes = match value_type {
            0 | 1 => 1,
            2 | 3 => 2,
            4 | 5 => 4,
            _ => 0,
        };
        if is_key && int_bytes > 0 {
            zero = read_uint(r, int_bytes)? == 0;
        } else {
            zero &= !is_key;
            skip_value(r, value_type, len_bytes, 0)?;
        }
    }
    Ok(zero)
}

/// A little-endian unsigned integer of `n` (at most 8) bytes.
fn read_uint<R: Read>(r: &mut R, n: usize) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b[..n])?;
    Ok(u64::from_le_bytes(b))
}

fn skip<R: Seek>(r: &mut R, n: u64) -> std::io::Result<()> {
    let n = i64::try_from(n).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    r.seek_relative(n)
}

/// Reads a `len`-byte key: is it `want`, followed by nothing but NULs?
fn read_key_is<R: Read + Seek>(r: &mut R, len: u64, want: &[u8]) -> std::io::Result<bool> {
    let mut buf = [0u8; 32];
    let head = &mut buf[..want.len()];
    if len < want.len() as u64 {
        skip(r, len)?;
        return Ok(false);
    }
    r.read_exact(head)?;
    let mut rest = len - want.len() as u64;
    if head != want {
        skip(r, rest)?;
        return Ok(false);
    }
    let mut nuls = true;
    while rest > 0 {
        let n = rest.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..n])?;
        nuls &= buf[..n].iter().all(|&b| b == 0);
        rest -= n as u64;
    }
    Ok(nuls)
}

/// Bytes of a GGUF value of a fixed-size type (`None`: a string, an array or no type).
fn value_size(value_type: u64) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Reads past one value; arrays nest at most as deep as candle reads them.
fn skip_value<R: Read + Seek>(
    r: &mut R,
    value_type: u64,
    len_bytes: usize,
    depth: usize,
) -> std::io::Result<()> {
    let malformed = || std::io::Error::from(std::io::ErrorKind::InvalidData);
    match value_type {
        8 => {
            let n = read_uint(r, len_bytes)?;
            skip(r, n)
        }
        9 if depth <= 64 => {
            let item = read_uint(r, 4)?;
            let n = read_uint(r, len_bytes)?;
            match value_size(item) {
                Some(size) => skip(r, n.checked_mul(size).ok_or_else(malformed)?),
                // Each string or array reads its length first: `n` ends at the input's end.
                None => (0..n).try_for_each(|_| skip_value(r, item, len_bytes, depth + 1)),
            }
        }
        t => skip(r, value_size(t).ok_or_else(malformed)?),
    }
}

/// The tensor names a llama model is loaded from (`output.weight` only when present),
/// named one at a time: `block_count` comes from the file, so a lying one must cost no more
/// than the tensors it names until the first missing one.
fn weight_names<'a>(
    n_layers: usize,
    has_output: bool,
    present: &'a dyn Fn(&str) -> bool,
) -> impl Iterator<Item = String> + 'a {
    let top = ["token_embd.weight", "output_norm.weight"]
        .into_iter()
        .chain(has_output.then_some("output.weight"))
        .map(String::from);
    let optional_top = present("rope_freqs.weight").then(|| "rope_freqs.weight".to_string());
    let blocks = (0..n_layers).flat_map(move |i| {
        [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ]
        .map(move |t| format!("blk.{i}.{t}.weight"))
        .into_iter()
        .chain(
            OPTIONAL_LAYER_TENSORS
                .iter()
                .map(move |t| format!("blk.{i}.{t}"))
                .filter(move |n| present(n)),
        )
    });
    top.chain(optional_top).chain(blocks)
}

/// Reads the configuration, tokenizer and chat template of a GGUF model from its header
/// only: no tensor data is read.
pub fn read_meta(path: &Path) -> Result<GgufMeta> {
    header(path)?.meta()
}

/// A reader of `path`'s header (no tensor data).
fn header(path: &Path) -> Result<Reader<'_>> {
    if !path.exists() {
        return Err(missing(path));
    }
    let file = std::fs::File::open(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Reader {
        path,
        content: content(path, &mut std::io::BufReader::new(file))?,
        bytes: Vec::new(),
    })
}

/// [`read_meta`] on a GGUF header read from `reader` (`path` names it in errors). Any
/// bytes are safe to give: a malformed header is an error, never a panic or an allocation
/// its length fields ask for but the input does not hold (the `gguf_meta` fuzz target
/// feeds it arbitrary bytes).
pub fn read_meta_from<R: Read + Seek>(path: &Path, reader: &mut R) -> Result<GgufMeta> {
    let content = content(path, reader)?;
    let r = Reader {
        path,
        content,
        bytes: Vec::new(),
    };
    r.meta()
}

impl Reader<'_> {
    /// Everything but the tensor data.
    fn meta(&self) -> Result<GgufMeta> {
        let r = self;
        let arch = r
            .string("general.architecture")
            .ok_or_else(|| r.err("metadata key `general.architecture` is missing"))?;
        let Some(family) = Family::of(&arch) else {
            return Err(EngineError::Unsupported(format!(
                "architecture `{arch}`; this engine runs llama (Llama 2/3, Mistral, SmolLM2), qwen2, qwen3 and gemma3 GGUF models"
            )));
        };
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = r.usize(&key("embedding_length"))?;
        let n_heads = r.usize(&key("attention.head_count"))?;
        let n_kv_heads = match r.get(&key("attention.head_count_kv")) {
            Some(_) => r.usize(&key("attention.head_count_kv"))?,
            None => n_heads,
        };
        let head_dim = if r.get(&key("attention.key_length")).is_some() {
            r.usize(&key("attention.key_length"))?
        } else {
            hidden.checked_div(n_heads).unwrap_or(0)
        };
        let (vocab_size, embd_cols, _, _) = r.layout("token_embd.weight")?;
        let config = ModelConfig {
            name: r.string("general.name").unwrap_or_else(|| "unnamed".into()),
            architecture: arch.clone(),
            n_layers: r.usize(&key("block_count"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            hidden,
            ffn: r.usize(&key("feed_forward_length"))?,
            vocab_size,
            context_length: r.usize(&key("context_length"))?,
            rope_base: r.f32_or(&key("rope.freq_base"), 10_000.0)?,
            rope_dim: match r.get(&key("rope.dimension_count")) {
                Some(_) => r.usize(&key("rope.dimension_count"))?,
                None => head_dim,
            },
            rms_eps: r.f32_or(&key("attention.layer_norm_rms_epsilon"), 1e-5)?,
            family,
            rope_freq_scale: match r.string(&key("rope.scaling.type")).as_deref() {
                None | Some("none") => 1.0,
                Some("linear") => {
                    let f = r.f32_or(&key("rope.scaling.factor"), 1.0)?;
                    if !(f.is_finite() && f > 0.0) {
                        return Err(r.err(format!("`{}` is {f}", key("rope.scaling.factor"))));
                    }
                    1.0 / f
                }
                Some(other) => {
                    return Err(EngineError::Unsupported(format!(
                        "RoPE scaling `{other}`; this engine runs none, linear, and Llama 3's frequency factors"
                    )))
                }
            },
            sliding_window: match family {
                Family::Gemma3 => Some(match r.get(&key("attention.sliding_window")) {
                    Some(_) => r.usize(&key("attention.sliding_window"))?,
                    None => 512,
                }),
                _ => None,
            },
            swa_period: 6,
            rope_base_local: 10_000.0,
        };
        config.validate().map_err(|e| r.err(e))?;
        if embd_cols != hidden {
            return Err(r.err(format!(
                "tensor `token_embd.weight` is {vocab_size}x{embd_cols}, metadata implies {vocab_size}x{hidden}"
            )));
        }
        let tokenizer = TokenizerSpec {
            model: r
                .string("tokenizer.ggml.model")
                .ok_or_else(|| r.err("metadata key `tokenizer.ggml.model` is missing"))?,
            pre: r.string("tokenizer.ggml.pre"),
            tokens: r.strings("tokenizer.ggml.tokens")?,
            merges: r.strings("tokenizer.ggml.merges")?,
            token_types: r.ints("tokenizer.ggml.token_type")?,
            scores: r.floats("tokenizer.ggml.scores")?,
            unknown_token_id: r.u32_opt("tokenizer.ggml.unknown_token_id"),
            add_space_prefix: !matches!(
                r.get("tokenizer.ggml.add_space_prefix"),
                Some(Value::Bool(false))
            ),
            bos_token_id: r.u32_opt("tokenizer.ggml.bos_token_id"),
            eos_token_id: r.u32_opt("tokenizer.ggml.eos_token_id"),
            add_bos_token: matches!(
                r.get("tokenizer.ggml.add_bos_token"),
                Some(Value::Bool(true))
            ),
        };
        if tokenizer.tokens.len() != config.vocab_size {
            return Err(r.err(format!(
                "tokenizer has {} tokens but token_embd has {} rows",
                tokenizer.tokens.len(),
                config.vocab_size
            )));
        }
        let has_output = r.content.tensor_infos.contains_key("output.weight");
        // Every layer has its family's own tensors (the loader takes them as optional).
        // A lying block count costs no more than the layers before the first missing one.
        if !family.required().is_empty() {
            for i in 0..config.n_layers {
                for t in family.required() {
                    let name = format!("blk.{i}.{t}");
                    if !r.content.tensor_infos.contains_key(&name) {
                        return Err(r.err(format!(
                            "tensor `{name}` is missing; a {arch} model needs it"
                        )));
                    }
                }
            }
        }
        let present = |n: &str| r.content.tensor_infos.contains_key(n);
        let weights_bytes =
            weight_names(config.n_layers, has_output, &present).try_fold(0usize, |sum, n| {
                sum.checked_add(r.loaded_bytes(&n)?)
                    .ok_or_else(|| r.err("the tensors' loaded size overflows"))
            })?;
        Ok(GgufMeta {
            path: r.path.to_path_buf(),
            config,
            tokenizer,
            // A file without a template gets its family's standard one where the
            // family has a single one (Gemma 3's GGUFs often ship none); else ChatML
            // later ([`crate::model_text`]).
            chat_template: r
                .string("tokenizer.chat_template")
                .or_else(|| (family == Family::Gemma3).then(|| GEMMA3_CHAT_TEMPLATE.to_string())),
            weights_bytes,
            has_output,
            quant_mix: quant_mix(&r.content),
        })
    }
}

/// What a GGUF's header says of its model, whether or not the engine runs it: for
/// `genie model info` on any file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileFacts {
    pub architecture: String,
    pub name: Option<String>,
    pub context_length: Option<usize>,
    pub block_count: Option<usize>,
    /// How many tensors the file stores in each type.
    pub quant_mix: std::collections::BTreeMap<String, usize>,
    /// f16 K and V of one token over every layer, from the head counts and key length.
    pub kv_bytes_per_token: Option<usize>,
}

/// How many tensors the file stores in each type (`Q4_1`, `F32`, …).
fn quant_mix(content: &Content) -> std::collections::BTreeMap<String, usize> {
    let mut mix = std::collections::BTreeMap::new();
    for t in content.tensor_infos.values() {
        *mix.entry(format!("{:?}", t.ggml_dtype)).or_insert(0) += 1;
    }
    mix
}

/// `[rows, cols]` of a vector (one row) or a matrix; None for any other shape.
pub fn matrix_dims(dims: &[usize]) -> Option<(usize, usize)> {
    match *dims {
        [n] => Some((1, n)),
        [r, c] => Some((r, c)),
        _ => None,
    }
}

/// [`FileFacts`] of `path` (its header only).
pub fn read_facts(path: &Path) -> Result<FileFacts> {
    let r = header(path)?;
    let arch = r
        .string("general.architecture")
        .ok_or_else(|| r.err("metadata key `general.architecture` is missing"))?;
    let num = |k: &str| r.usize(&format!("{arch}.{k}")).ok();
    let heads = num("attention.head_count");
    let head_dim = num("attention.key_length")
        .or_else(|| Some(num("embedding_length")? / heads.filter(|&h| h > 0)?));
    let kv_bytes_per_token = (|| {
        let kv_heads = num("attention.head_count_kv").or(heads)?;
        2usize
            .checked_mul(num("block_count")?)?
            .checked_mul(kv_heads)?
            .checked_mul(head_dim?)?
            .checked_mul(crate::kv_cache::ELEM_BYTES)
    })();
    Ok(FileFacts {
        name: r.string("general.name"),
        context_length: num("context_length"),
        block_count: num("block_count"),
        quant_mix: quant_mix(&r.content),
        kv_bytes_per_token,
        architecture: arch,
    })
}

/// Reads and validates a GGUF model, weights included.
pub fn load(path: &Path) -> Result<GgufModel> {
    if !path.exists() {
        return Err(missing(path));
    }
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content = content(path, &mut std::io::Cursor::new(&bytes))?;
    let r = Reader {
        path,
        content,
        bytes,
    };
    let meta = r.meta()?;
    let config = meta.config.clone();
    let hidden = config.hidden;
    let token_embd = r.matrix("token_embd.weight")?;
    r.expect_shape("token_embd.weight", &token_embd, config.vocab_size, hidden)?;

    let (h, kv, f) = (hidden, config.kv_dim(), config.ffn);
    let mut layers = Vec::with_capacity(config.n_layers);
    for i in 0..config.n_layers {
        let t = |s: &str| format!("blk.{i}.{s}.weight");
        let m = |s: &str, rows: usize, cols: usize| -> Result<QMatrix> {
            let m = r.matrix(&t(s))?;
            r.expect_shape(&t(s), &m, rows, cols)?;
            Ok(m)
        };
        let opt = |name: &str, len: usize| -> Result<Option<Vec<f32>>> {
            let name = format!("blk.{i}.{name}");
            match r.content.tensor_infos.contains_key(&name) {
                true => r.vector(&name, len).map(Some),
                false => Ok(None),
            }
        };
        let (qd, hd) = (config.q_dim(), config.head_dim);
        layers.push(LayerWeights {
            attn_norm: r.vector(&t("attn_norm"), h)?,
            wq: m("attn_q", qd, h)?,
            wk: m("attn_k", kv, h)?,
            wv: m("attn_v", kv, h)?,
            wo: m("attn_output", h, qd)?,
            ffn_norm: r.vector(&t("ffn_norm"), h)?,
            w_gate: m("ffn_gate", f, h)?,
            w_up: m("ffn_up", f, h)?,
            w_down: m("ffn_down", h, f)?,
            q_norm: opt("attn_q_norm.weight", hd)?,
            k_norm: opt("attn_k_norm.weight", hd)?,
            post_attn_norm: opt("post_attention_norm.weight", h)?,
            post_ffn_norm: opt("post_ffw_norm.weight", h)?,
            q_bias: opt("attn_q.bias", qd)?,
            k_bias: opt("attn_k.bias", kv)?,
            v_bias: opt("attn_v.bias", kv)?,
        });
    }
    let output = if meta.has_output {
        let o = r.matrix("output.weight")?;
        r.expect_shape("output.weight", &o, config.vocab_size, hidden)?;
        Some(o)
    } else {
        None
    };
    let rope_freqs = match r.content.tensor_infos.contains_key("rope_freqs.weight") {
        true => Some(r.vector("rope_freqs.weight", config.rope_dim / 2)?),
        false => None,
    };
    if let Some(f) = rope_freqs
        .as_ref()
        .and_then(|v| v.iter().find(|f| !(f.is_finite() && **f > 0.0)))
    {
        return Err(r.err(format!(
            "tensor `rope_freqs.weight` holds {f}; RoPE factors must be positive"
        )));
    }
    let weights = ModelWeights {
        token_embd,
        layers,
        output_norm: r.vector("output_norm.weight", hidden)?,
        output,
        rope_freqs,
    };
    debug_assert_eq!(weights.size_bytes(), meta.weights_bytes);
    Ok(GgufModel {
        path: path.to_path_buf(),
        config,
        weights,
        tokenizer: meta.tokenizer,
        chat_template: meta.chat_template,
        quant_mix: meta.quant_mix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GGUF v3 header pieces (the layout of `fuzz/make_seeds.py`'s tiny llama).
    fn s(x: &str) -> Vec<u8> {
        let mut v = (x.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(x.as_bytes());
        v
    }

    fn kv(key: &str, value_type: u32, value: &[u8]) -> Vec<u8> {
        [s(key), value_type.to_le_bytes().to_vec(), value.to_vec()].concat()
    }

    fn u32_kv(key: &str, v: u32) -> Vec<u8> {
        kv(key, 4, &v.to_le_bytes())
    }

    /// A tiny llama header (hidden 8, 2 heads, 1 KV head, `block_count` blocks, vocab 4)
    /// with `extra` metadata after the rest and the token embedding `embd` (GGUF order:
    /// columns first); no tensor data.
    fn header(block_count: u32, extra: &[Vec<u8>], embd: [u64; 2]) -> Vec<u8> {
        let tokens = ["<|endoftext|>", "a", "b", "ab"];
        let mut token_array = 8u32.to_le_bytes().to_vec();
        token_array.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
        for t in tokens {
            token_array.extend(s(t));
        }
        let mut kvs = vec![
            kv("general.architecture", 8, &s("llama")),
            u32_kv("llama.embedding_length", 8),
            u32_kv("llama.attention.head_count", 2),
            u32_kv("llama.attention.head_count_kv", 1),
            u32_kv("llama.block_count", block_count),
            u32_kv("llama.feed_forward_length", 16),
            u32_kv("llama.context_length", 64),
            kv("tokenizer.ggml.model", 8, &s("gpt2")),
            kv("tokenizer.ggml.tokens", 9, &token_array),
        ];
        kvs.extend(extra.iter().cloned());
        let tensors: [(&str, &[u64]); 2] =
            [("token_embd.weight", &embd), ("output_norm.weight", &[8])];
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        out.extend(kvs.concat());
        for (name, dims) in tensors {
            out.extend(s(name));
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&0u32.to_le_bytes()); // F32
            out.extend_from_slice(&0u64.to_le_bytes());
        }
        out
    }

    fn read(bytes: &[u8]) -> Result<GgufMeta> {
        read_meta_from(Path::new("t.gguf"), &mut std::io::Cursor::new(bytes))
    }

    #[test]
    fn unknown_architectures_and_missing_family_tensors_are_refused_by_name() {
        // The tiny header under another architecture name.
        let phi = header(1, &[], [8, 4]);
        let at = phi.windows(5).position(|w| w == b"llama").unwrap() + 5;
        let mut other = phi[..at - 5 - 8].to_vec();
        other.extend(s("phi3xx"));
        other.extend_from_slice(&phi[at..]);
        let err = read(&other).unwrap_err().to_string();
        assert!(err.contains("phi3xx"), "{err}");
        // A qwen3 header (its keys renamed) lacks the per-head norms the family needs.
        let text = String::from_utf8_lossy(&phi).replace("llama.", "qwen3.");
        let mut qwen = text.into_bytes();
        let at = qwen.windows(5).position(|w| w == b"llama").unwrap();
        qwen.splice(at..at + 5, *b"qwen3");
        let err = read(&qwen).unwrap_err().to_string();
        assert!(err.contains("attn_q_norm"), "{err}");
    }

    fn format_error(bytes: &[u8]) -> String {
        match read(bytes) {
            Err(EngineError::ModelFormat { reason, .. }) => reason,
            other => panic!("expected a format error, got {:?}", other.map(|m| m.config)),
        }
    }

    #[test]
    fn the_tiny_header_reads_up_to_its_missing_blocks() {
        let e = format_error(&header(1, &[], [8, 4]));
        assert!(e.contains("blk.0.attn_norm.weight"), "{e}");
    }

    /// Found by fuzz `gguf_meta` (corpus `crash-tensor-dims-overflow`): a tensor whose
    /// dimensions multiply past `usize` (the product overflowed in `layout`: a panic with
    /// overflow checks, a wrapped size without).
    #[test]
    fn tensor_dimensions_whose_product_overflows_are_a_format_error() {
        let e = format_error(&header(1, &[], [8, u64::MAX / 4]));
        assert!(
            e.contains("token_embd.weight") && e.contains("too large"),
            "{e}"
        );
        // Fits as elements, not as f32 bytes.
        let e = format_error(&header(1, &[], [8, (usize::MAX / 8 / 4 + 1) as u64]));
        assert!(e.contains("too large"), "{e}");
    }

    /// Corpus `crash-block-count-huge`: a lying `block_count` costs no more than the
    /// tensors the file has, the names are not all made up front (2^32 - 1 blocks were 38
    /// billion strings).
    #[test]
    fn a_huge_block_count_is_refused_at_the_first_missing_block() {
        let e = format_error(&header(u32::MAX, &[], [8, 4]));
        assert!(e.contains("blk.0.attn_norm.weight"), "{e}");
    }

    /// Corpus `crash-alignment-zero`: `general.alignment` 0 made candle's reader divide by
    /// zero.
    #[test]
    fn a_zero_alignment_is_a_format_error_not_a_division_by_zero() {
        for value in [
            u32_kv("general.alignment", 0),
            kv("general.alignment", 0, &[0]),
        ] {
            let e = format_error(&header(1, &[value], [8, 4]));
            assert!(e.contains("general.alignment"), "{e}");
        }
        // Trailing NULs name the same key in candle's reader.
        let mut key = s("general.alignment\0\0");
        key.extend_from_slice(&4u32.to_le_bytes());
        key.extend_from_slice(&0u32.to_le_bytes());
        assert!(format_error(&header(1, &[key], [8, 4])).contains("general.alignment"));
        // The last entry counts; a 64-bit or non-zero one means the default alignment.
        for ok in [
            vec![
                u32_kv("general.alignment", 0),
                u32_kv("general.alignment", 64),
            ],
            vec![kv("general.alignment", 10, &0u64.to_le_bytes())],
            vec![
                u32_kv("general.alignment", 0),
                kv("general.alignment", 8, &s("x")),
            ],
        ] {
            let e = format_error(&header(1, &ok, [8, 4]));
            assert!(e.contains("blk.0.attn_norm.weight"), "{e}");
        }
    }

    #[test]
    fn overflowing_model_dimensions_are_refused_by_validate() {
        let mut c = ModelConfig {
            name: "t".into(),
            architecture: "llama".into(),
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            hidden: 8,
            ffn: 16,
            vocab_size: 4,
            context_length: 64,
            rope_base: 1e4,
            rope_dim: 4,
            rms_eps: 1e-5,
            family: Family::Llama,
            rope_freq_scale: 1.0,
            sliding_window: None,
            swa_period: 6,
            rope_base_local: 1e4,
        };
        assert_eq!(c.validate(), Ok(()));
        c.head_dim = usize::MAX / 2 + 1;
        assert!(c.validate().unwrap_err().contains("head_dim"));
        c.head_dim = 4;
        c.sliding_window = Some(0);
        assert!(c.validate().unwrap_err().contains("sliding_window"));
        c.sliding_window = None;
        for n_layers in [usize::MAX / 4, usize::MAX] {
            c.n_layers = n_layers;
            assert!(c.validate().unwrap_err().contains("overflows"));
        }
    }
}
