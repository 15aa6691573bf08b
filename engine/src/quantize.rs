//! `genie model quantize`: a GGUF re-written with its matrices in another block format, the
//! metadata kept. Blocks are made by candle's quantisers (ports of ggml's reference ones);
//! which tensor gets which type is decided here ([`plan`], pure), in the manner of
//! llama.cpp's mixes:
//!
//! - vectors (norms) stay F32;
//! - the output head (`output.weight`, or `token_embd.weight` when the head is tied to it)
//!   gets Q6_K in the K mixes, the chosen type otherwise;
//! - `_M` mixes give `attn_v` and `ffn_down` one size up (Q6_K) in the first and last
//!   eighth of the layers and every third layer between;
//! - a K type needs rows of a multiple of 256 values: a matrix whose rows are not (SmolLM2's
//!   576-wide ones) falls back to the nearest legacy type (Q4_K → Q5_0, Q5_K → Q5_1,
//!   Q6_K → Q8_0), as llama.cpp does.

use crate::error::{EngineError, Result};
use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::Path;

/// A target file type: one base block format, perhaps with the `_M` bumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileType {
    pub base: GgmlDType,
    /// `_M`: `attn_v` and `ffn_down` one size up in some layers.
    pub medium: bool,
    /// llama.cpp's `general.file_type` number for it.
    pub ftype: u32,
}

/// The names `--type` takes, and what each means.
pub const TYPES: [(&str, GgmlDType, bool, u32); 11] = [
    ("f16", GgmlDType::F16, false, 1),
    ("bf16", GgmlDType::BF16, false, 32),
    ("q8_0", GgmlDType::Q8_0, false, 7),
    ("q4_0", GgmlDType::Q4_0, false, 2),
    ("q4_1", GgmlDType::Q4_1, false, 3),
    ("q5_0", GgmlDType::Q5_0, false, 8),
    ("q5_1", GgmlDType::Q5_1, false, 9),
    ("q4_k_s", GgmlDType::Q4K, false, 14),
    ("q4_k_m", GgmlDType::Q4K, true, 15),
    ("q5_k_m", GgmlDType::Q5K, true, 17),
    ("q6_k", GgmlDType::Q6K, false, 18),
];

impl FileType {
    pub fn parse(name: &str) -> Result<Self> {
        let lower = name.to_ascii_lowercase();
        TYPES
            .iter()
            .find(|t| t.0 == lower)
            .map(|&(_, base, medium, ftype)| FileType {
                base,
                medium,
                ftype,
            })
            .ok_or_else(|| {
                EngineError::Unsupported(format!(
                    "quantisation type `{name}`; use one of {}",
                    TYPES.map(|t| t.0).join(", ")
                ))
            })
    }
}

fn is_k(t: GgmlDType) -> bool {
    matches!(
        t,
        GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K
    )
}

/// The legacy type a K type falls back to for rows not a multiple of 256.
fn fallback(t: GgmlDType) -> GgmlDType {
    match t {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        other => other,
    }
}

/// llama.cpp's rule for which of `n` layers get more bits in the `_M` mixes.
fn more_bits(layer: usize, n: usize) -> bool {
    match layer.checked_sub(n / 8) {
        None => true,
        Some(k) => layer >= 7 * n / 8 || k % 3 == 2,
    }
}

/// The layer index of a `blk.N.` tensor.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The type tensor `name` (of `rows` x `cols`, `n_layers` layers, the head tied to the
/// embeddings when `tied`) gets in file type `ft`.
pub fn plan(
    ft: FileType,
    name: &str,
    rows: usize,
    cols: usize,
    n_layers: usize,
    tied: bool,
) -> GgmlDType {
    if rows <= 1 {
        return GgmlDType::F32;
    }
    let head = name == "output.weight" || (tied && name == "token_embd.weight");
    let bumped = ft.medium
        && (name.contains(".attn_v.") || name.contains(".ffn_down."))
        && layer_of(name).is_some_and(|l| more_bits(l, n_layers));
    let mut t = if (head && is_k(ft.base)) || bumped {
        GgmlDType::Q6K
    } else {
        ft.base
    };
    if is_k(t) && !cols.is_multiple_of(256) {
        t = fallback(t);
    }
    if !cols.is_multiple_of(t.block_size()) {
        // Not even a legacy block fits: keep the values exactly.
        t = GgmlDType::F16;
    }
    t
}

/// What [`quantize`] wrote: how many tensors of each type.
pub type Mix = BTreeMap<String, usize>;

/// Re-writes `input` as `output` in file type `ft`. Every tensor is dequantised to f32 and
/// quantised again (from a quantised input that is a second rounding, as llama.cpp's
/// `--allow-requantize` warns).
pub fn quantize(input: &Path, output: &Path, ft: FileType) -> Result<Mix> {
    let err = |reason: String| EngineError::ModelFormat {
        path: input.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(input).map_err(|source| EngineError::Io {
        path: input.to_path_buf(),
        source,
    })?;
    let content = Content::read(&mut file).map_err(|e| err(e.to_string()))?;
    let arch = match content.metadata.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(err("`general.architecture` is missing".into())),
    };
    let n_layers = content
        .metadata
        .get(&format!("{arch}.block_count"))
        .and_then(|v| v.to_u64().ok())
        .unwrap_or(0) as usize;
    let tied = !content.tensor_infos.contains_key("output.weight");
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let mut tensors = Vec::with_capacity(names.len());
    let mut mix = Mix::new();
    for name in names {
        let q = content
            .tensor(&mut file, name, &Device::Cpu)
            .map_err(|e| err(format!("tensor `{name}`: {e}")))?;
        // Rows: every dimension but the innermost, which blocks run along.
        let Some((&cols, outer)) = q.shape().dims().split_last() else {
            return Err(err(format!("tensor `{name}` has no dimensions")));
        };
        let rows = outer.iter().product();
        let t = plan(ft, name, rows, cols, n_layers, tied);
        let out = if q.dtype() == t {
            q
        } else {
            let f = q
                .dequantize(&Device::Cpu)
                .map_err(|e| err(format!("dequantising `{name}`: {e}")))?;
            QTensor::quantize(&f, t)
                .map_err(|e| err(format!("quantising `{name}` to {t:?}: {e}")))?
        };
        *mix.entry(format!("{t:?}")).or_insert(0) += 1;
        tensors.push((name.clone(), out));
    }
    let mut metadata: Vec<(String, Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "general.file_type" | "general.quantization_version" | "general.alignment"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    metadata.push(("general.file_type".into(), Value::U32(ft.ftype)));
    metadata.push(("general.quantization_version".into(), Value::U32(2)));
    let tmp = output.with_extension("gguf.part");
    let write = || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(&mut w, &md, &ts).map_err(std::io::Error::other)?;
        std::io::Write::flush(&mut w)?;
        std::fs::rename(&tmp, output)
    };
    write().map_err(|source| EngineError::Io {
        path: output.to_path_buf(),
        source,
    })?;
    Ok(mix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_follows_the_rules() {
        let (m, q8) = (
            FileType::parse("Q4_K_M").unwrap(),
            FileType::parse("q8_0").unwrap(),
        );
        use GgmlDType::*;
        for (ft, name, rows, cols, tied, want) in [
            // 576-wide rows cannot hold K blocks: Q4_K falls back to Q5_0, Q6_K to Q8_0.
            (m, "blk.3.attn_q.weight", 576, 576, true, Q5_0),
            (m, "token_embd.weight", 49152, 576, true, Q8_0),
            (m, "token_embd.weight", 49152, 512, false, Q4K),
            (m, "output.weight", 49152, 512, false, Q6K),
            // ffn_down (1536 wide): Q6_K in the first and last eighth and every third
            // layer between, Q4_K elsewhere.
            (m, "blk.0.ffn_down.weight", 576, 1536, true, Q6K),
            (m, "blk.4.ffn_down.weight", 576, 1536, true, Q4K),
            (m, "blk.5.ffn_down.weight", 576, 1536, true, Q6K),
            (m, "blk.29.ffn_down.weight", 576, 1536, true, Q6K),
            (m, "blk.0.attn_norm.weight", 1, 576, true, F32),
            (q8, "token_embd.weight", 49152, 576, true, Q8_0),
        ] {
            assert_eq!(plan(ft, name, rows, cols, 30, tied), want, "{name} {cols}");
        }
        assert!(FileType::parse("q3_k_xl").is_err());
    }
}
