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
    let gemma = c.arch == crate::config::Arch::Gemma3;
    let hd = c.head_dim;
    let embd = tensor("token_embd.weight", Some((c.vocab_size, d)))?;
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let name = |t: &str| format!("blk.{i}.{t}.weight");
        let mut optional = |t: &str, n: usize| -> Result<Option<Vec<f32>>, ReferenceError> {
            Ok(if gemma {
                Some(vector(tensor(&name(t), Some((1, n)))?))
            } else {
                None
            })
        };
        let (q_norm, k_norm) = (optional("attn_q_norm", hd)?, optional("attn_k_norm", hd)?);
        let post_attn_norm = optional("post_attention_norm", d)?;
        let post_ffw_norm = optional("post_ffw_norm", d)?;
        layers.push(Layer {
            q_norm,
            k_norm,
            post_attn_norm,
            post_ffw_norm,
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
    Ok((
        config,
        Weights {
            embd,
            layers,
            out_norm,
            output,
        },
    ))
}
