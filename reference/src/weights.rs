//! Every tensor read and dequantised to f32 by candle's GGUF reader (each dequantised value
//! is exact in f32: a block scale times a small integer, plus an offset, as the format
//! defines it). The forward pass widens them to f64.

use crate::config::RefConfig;
use crate::ReferenceError;
use candle_core::quantized::gguf_file::Content;
use candle_core::Device;
use std::path::Path;

/// A `rows x cols` matrix, row-major (GGUF's `[cols, rows]` tensor: each row one output).
pub(crate) struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..][..self.cols]
    }
}

pub(crate) struct Layer {
    pub attn_norm: Vec<f32>,
    /// Gemma 3: per-head q/k norms, and the norms after attention and the feed-forward.
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub post_ffw_norm: Option<Vec<f32>>,
    /// Qwen 2: biases of Q, K and V.
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    pub gate: Matrix,
    pub up: Matrix,
    pub down: Matrix,
}

pub(crate) struct Weights {
    pub embd: Matrix,
    pub layers: Vec<Layer>,
    pub out_norm: Vec<f32>,
    /// None: tied to `embd`.
    pub output: Option<Matrix>,
    /// Llama 3.1's RoPE: each frequency's angle divided by its factor.
    pub rope_freqs: Option<Vec<f32>>,
}

impl Weights {
    pub fn head(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embd)
    }
}

pub(crate) fn load(path: &Path) -> Result<(RefConfig, Weights), ReferenceError> {
    let shown = path.display().to_string();
    let err = |reason: String| ReferenceError::Format {
        path: shown.clone(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let content = Content::read(&mut file).map_err(|e| err(e.to_string()))?;
    let config = RefConfig::read(&content, &shown)?;
    let mut tensor =
        |name: &str, shape: Option<(usize, usize)>| -> Result<Matrix, ReferenceError> {
            let q = content
                .tensor(&mut file, name, &Device::Cpu)
                .map_err(|e| err(format!("tensor `{name}`: {e}")))?;
            let dims = q.shape().dims();
            let (rows, cols) = genie_engine::gguf::matrix_dims(dims)
                .ok_or_else(|| err(format!("tensor `{name}` has shape {dims:?}")))?;
            if let Some(want) = shape {
                if want != (rows, cols) {
                    return Err(err(format!(
                        "tensor `{name}` is {rows}x{cols}, expected {}x{}",
                        want.0, want.1
                    )));
                }
            }
            let data = q
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| err(format!("dequantising `{name}`: {e}")))?;
            Ok(Matrix { rows, cols, data })
        };
    let c = &config;
    let (d, q, kv, f) = (
        c.hidden,
        c.n_heads * c.head_dim,
        c.n_kv_heads * c.head_dim,
        c.ffn,
    );
    let vector = |m: Matrix| m.data;
    use crate::config::Arch;
    let hd = c.head_dim;
    let embd = tensor("token_embd.weight", Some((c.vocab_size, d)))?;
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let name = |t: &str| format!("blk.{i}.{t}.weight");
        // What each family has besides the common tensors: absent ones stay None, and a
        // family's own ones are required.
        let mut extra =
            |t: &str, n: usize, has: bool| -> Result<Option<Vec<f32>>, ReferenceError> {
                Ok(if has {
                    Some(vector(tensor(t, Some((1, n)))?))
                } else {
                    None
                })
            };
        let normed = matches!(c.arch, Arch::Gemma3 | Arch::Qwen3);
        let gemma = c.arch == Arch::Gemma3;
        let qwen2 = c.arch == Arch::Qwen2;
        let q_norm = extra(&name("attn_q_norm"), hd, normed)?;
        let k_norm = extra(&name("attn_k_norm"), hd, normed)?;
        let post_attn_norm = extra(&name("post_attention_norm"), d, gemma)?;
        let post_ffw_norm = extra(&name("post_ffw_norm"), d, gemma)?;
        let bq = extra(&format!("blk.{i}.attn_q.bias"), q, qwen2)?;
        let bk = extra(&format!("blk.{i}.attn_k.bias"), kv, qwen2)?;
        let bv = extra(&format!("blk.{i}.attn_v.bias"), kv, qwen2)?;
        layers.push(Layer {
            q_norm,
            k_norm,
            post_attn_norm,
            post_ffw_norm,
            bq,
            bk,
            bv,
            attn_norm: vector(tensor(&name("attn_norm"), Some((1, d)))?),
            wq: tensor(&name("attn_q"), Some((q, d)))?,
            wk: tensor(&name("attn_k"), Some((kv, d)))?,
            wv: tensor(&name("attn_v"), Some((kv, d)))?,
            wo: tensor(&name("attn_output"), Some((d, q)))?,
            ffn_norm: vector(tensor(&name("ffn_norm"), Some((1, d)))?),
            gate: tensor(&name("ffn_gate"), Some((f, d)))?,
            up: tensor(&name("ffn_up"), Some((f, d)))?,
            down: tensor(&name("ffn_down"), Some((d, f)))?,
        });
    }
    let out_norm = vector(tensor("output_norm.weight", Some((1, d)))?);
    let output = if content.tensor_infos.contains_key("output.weight") {
        Some(tensor("output.weight", Some((c.vocab_size, d)))?)
    } else {
        None
    };
    let rope_freqs = if content.tensor_infos.contains_key("rope_freqs.weight") {
        Some(vector(tensor(
            "rope_freqs.weight",
            Some((1, c.rope_dim / 2)),
        )?))
    } else {
        None
    };
    Ok((
        config,
        Weights {
            embd,
            layers,
            out_norm,
            output,
            rope_freqs,
        },
    ))
}
