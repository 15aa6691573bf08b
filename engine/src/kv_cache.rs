//! The explicit, movable KV cache of one sequence.
//!
//! The caller owns it: prefill and decode are separate forward calls that append to it, and
//! it can be exported layer by layer to self-describing bytes and imported into another
//! engine instance (another worker), which then continues decoding bit-identically.
//!
//! Wire layout of one exported layer (little-endian), [`LAYER_HEADER_LEN`] bytes of header:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | magic | `[u8; 4]` | `GKV1` |
//! | version | u16 | [`FORMAT_VERSION`] |
//! | dtype | u8 | 1 = f16 |
//! | reserved | u8 | 0 |
//! | layer | u32 | layer index |
//! | n_layers | u32 | layers in the model |
//! | kv_heads | u32 | KV heads |
//! | head_dim | u32 | head dimension |
//! | token_start | u32 | first token position in this chunk |
//! | token_count | u32 | tokens in this chunk |
//!
//! followed by K as `[token_count][kv_heads][head_dim]` and V in the same shape.

use crate::error::{EngineError, Result};
use crate::gguf::ModelConfig;
use half::f16;
use std::ops::Range;

pub const LAYER_MAGIC: [u8; 4] = *b"GKV1";
pub const FORMAT_VERSION: u16 = 1;
pub const LAYER_HEADER_LEN: usize = 32;
const DTYPE_F16: u8 = 1;
/// Bytes of one stored K or V element (f16, as llama.cpp's default cache type).
pub const ELEM_BYTES: usize = 2;

/// Shape facts of a KV cache, taken from the model config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub n_layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    pub fn of(config: &ModelConfig) -> Self {
        KvShape {
            n_layers: config.n_layers,
            kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
        }
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Bytes of K and V for one token across all layers.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.kv_dim() * ELEM_BYTES
    }
}

/// Parsed header of one exported layer chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerHeader {
    pub layer: usize,
    pub n_layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub token_start: usize,
    pub token_count: usize,
}

impl LayerHeader {
    /// Body bytes (K then V) that follow the header.
    pub fn body_len(&self) -> usize {
        2 * self.token_count * self.kv_heads * self.head_dim * ELEM_BYTES
    }

    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| EngineError::KvImport(m);
        if bytes.len() < LAYER_HEADER_LEN {
            return Err(bad(format!(
                "chunk of {} bytes is shorter than the {LAYER_HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        if bytes[0..4] != LAYER_MAGIC {
            return Err(bad("bad magic (not a Genie KV layer chunk)".into()));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version}, this engine reads version {FORMAT_VERSION}"
            )));
        }
        if bytes[6] != DTYPE_F16 {
            return Err(bad(format!(
                "dtype code {} is not f16 ({DTYPE_F16})",
                bytes[6]
            )));
        }
        let u = |i: usize| {
            u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize
        };
        Ok(LayerHeader {
            layer: u(8),
            n_layers: u(12),
            kv_heads: u(16),
            head_dim: u(20),
            token_start: u(24),
            token_count: u(28),
        })
    }

    /// Appends the header's wire form.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&LAYER_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.push(DTYPE_F16);
        out.push(0);
        for v in [
            self.layer,
            self.n_layers,
            self.kv_heads,
            self.head_dim,
            self.token_start,
            self.token_count,
        ] {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
    }
}

/// K and V of every layer for one sequence, f16, `[token][kv_head][head_dim]` per layer.
#[derive(Clone, Debug)]
pub struct KvCache {
    shape: KvShape,
    capacity: usize,
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
}

impl KvCache {
    /// A cache that can hold up to `capacity` tokens; the memory is reserved up front so a
    /// sequence admitted against a budget never grows past it.
    pub fn new(shape: KvShape, capacity: usize) -> Self {
        let per_layer = capacity * shape.kv_dim();
        KvCache {
            shape,
            capacity,
            k: (0..shape.n_layers)
                .map(|_| Vec::with_capacity(per_layer))
                .collect(),
            v: (0..shape.n_layers)
                .map(|_| Vec::with_capacity(per_layer))
                .collect(),
        }
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens held in `layer`.
    pub fn layer_len(&self, layer: usize) -> usize {
        self.k[layer].len() / self.shape.kv_dim()
    }

    /// Tokens held by every layer (the usable length).
    pub fn len(&self) -> usize {
        (0..self.shape.n_layers)
            .map(|l| self.layer_len(l))
            .min()
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when every layer holds the same number of tokens.
    pub fn is_consistent(&self) -> bool {
        let n = self.layer_len(0);
        (1..self.shape.n_layers).all(|l| self.layer_len(l) == n)
    }

    /// Bytes of K/V currently stored.
    pub fn used_bytes(&self) -> usize {
        self.len() * self.shape.bytes_per_token()
    }

    /// Bytes reserved for the full capacity.
    pub fn reserved_bytes(&self) -> usize {
        self.capacity * self.shape.bytes_per_token()
    }

    pub fn layer_k(&self, layer: usize) -> &[f16] {
        &self.k[layer]
    }

    pub fn layer_v(&self, layer: usize) -> &[f16] {
        &self.v[layer]
    }

    /// Appends K/V rows (`n * kv_dim` each, rounded to f16) to one layer.
    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        debug_assert_eq!(k.len(), v.len());
        crate::ops::extend_f16(&mut self.k[layer], k);
        crate::ops::extend_f16(&mut self.v[layer], v);
    }

    /// Drops every token at position `len` and beyond (all layers).
    pub fn truncate(&mut self, len: usize) {
        let n = len * self.shape.kv_dim();
        for l in 0..self.shape.n_layers {
            self.k[l].truncate(n);
            self.v[l].truncate(n);
        }
    }

    /// Serialises tokens `range` of `layer` as one self-describing chunk.
    pub fn export_layer(&self, layer: usize, range: Range<usize>) -> Vec<u8> {
        assert!(
            layer < self.shape.n_layers,
            "export_layer: layer out of range"
        );
        assert!(
            range.end <= self.layer_len(layer),
            "export_layer: range past end"
        );
        let kv = self.shape.kv_dim();
        let header = LayerHeader {
            layer,
            n_layers: self.shape.n_layers,
            kv_heads: self.shape.kv_heads,
            head_dim: self.shape.head_dim,
            token_start: range.start,
            token_count: range.len(),
        };
        let mut out = Vec::with_capacity(LAYER_HEADER_LEN + header.body_len());
        header.write(&mut out);
        for src in [&self.k[layer], &self.v[layer]] {
            for x in &src[range.start * kv..range.end * kv] {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    /// Every layer, all tokens: one chunk per layer.
    pub fn export_all(&self) -> Vec<Vec<u8>> {
        let n = self.len();
        (0..self.shape.n_layers)
            .map(|l| self.export_layer(l, 0..n))
            .collect()
    }

    /// Appends one exported chunk. It must describe this model's shape, continue the layer
    /// exactly where it ends, fit the capacity and carry exactly its declared bytes;
    /// otherwise nothing is changed and the error says why.
    pub fn import_layer(&mut self, chunk: &[u8]) -> Result<LayerHeader> {
        let h = LayerHeader::parse(chunk)?;
        let bad = |m: String| Err(EngineError::KvImport(m));
        if h.n_layers != self.shape.n_layers
            || h.kv_heads != self.shape.kv_heads
            || h.head_dim != self.shape.head_dim
        {
            return bad(format!(
                "chunk shape {} layers x {} kv heads x {} head dim does not match this model ({} x {} x {})",
                h.n_layers, h.kv_heads, h.head_dim, self.shape.n_layers, self.shape.kv_heads, self.shape.head_dim
            ));
        }
        if h.layer >= self.shape.n_layers {
            return bad(format!("layer {} out of range", h.layer));
        }
        let have = self.layer_len(h.layer);
        if h.token_start != have {
            return bad(format!(
                "layer {} holds {have} tokens, chunk starts at {}",
                h.layer, h.token_start
            ));
        }
        if have + h.token_count > self.capacity {
            return bad(format!(
                "chunk would grow layer {} to {} tokens, capacity is {}",
                h.layer,
                have + h.token_count,
                self.capacity
            ));
        }
        let body = &chunk[LAYER_HEADER_LEN..];
        if body.len() != h.body_len() {
            return bad(format!(
                "chunk body is {} bytes, header declares {}",
                body.len(),
                h.body_len()
            ));
        }
        let (k, v) = body.split_at(body.len() / 2);
        let to_f16 = |c: &[u8]| f16::from_le_bytes([c[0], c[1]]);
        self.k[h.layer].extend(k.chunks_exact(2).map(to_f16));
        self.v[h.layer].extend(v.chunks_exact(2).map(to_f16));
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> KvShape {
        KvShape {
            n_layers: 2,
            kv_heads: 2,
            head_dim: 4,
        }
    }

    fn filled(n: usize) -> KvCache {
        let mut c = KvCache::new(shape(), 16);
        for l in 0..2 {
            let k: Vec<f32> = (0..n * 8).map(|i| (l * 100 + i) as f32).collect();
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            c.append(l, &k, &v);
        }
        c
    }

    #[test]
    fn export_import_roundtrip_is_exact_and_resumable() {
        let src = filled(5);
        let mut dst = KvCache::new(shape(), 16);
        for l in 0..2 {
            dst.import_layer(&src.export_layer(l, 0..3)).unwrap();
            dst.import_layer(&src.export_layer(l, 3..5)).unwrap();
        }
        assert_eq!(dst.len(), 5);
        for l in 0..2 {
            assert_eq!(dst.layer_k(l), src.layer_k(l));
            assert_eq!(dst.layer_v(l), src.layer_v(l));
        }
    }

    #[test]
    fn import_refuses_bad_chunks_without_changing_the_cache() {
        let src = filled(3);
        let good = src.export_layer(0, 0..3);
        let mut dst = KvCache::new(shape(), 16);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..10].to_vec(), "shorter"),
            (
                {
                    let mut b = good.clone();
                    b[0] = b'X';
                    b
                },
                "magic",
            ),
            (
                {
                    let mut b = good.clone();
                    b[4] = 9;
                    b
                },
                "version",
            ),
            (
                {
                    let mut b = good.clone();
                    b.pop();
                    b
                },
                "body",
            ),
            (
                {
                    let mut b = good.clone();
                    b[24] = 1;
                    b
                },
                "starts at",
            ),
            (
                {
                    let mut b = good.clone();
                    b[16] = 7;
                    b
                },
                "does not match",
            ),
        ];
        for (chunk, want) in cases {
            let err = dst.import_layer(&chunk).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
            assert_eq!(dst.layer_len(0), 0);
        }
        let mut small = KvCache::new(shape(), 2);
        assert!(small
            .import_layer(&good)
            .unwrap_err()
            .to_string()
            .contains("capacity"));
    }

    #[test]
    fn len_counts_only_tokens_every_layer_has() {
        let src = filled(4);
        let mut dst = KvCache::new(shape(), 16);
        dst.import_layer(&src.export_layer(0, 0..4)).unwrap();
        assert_eq!(dst.len(), 0);
        assert!(!dst.is_consistent());
        dst.import_layer(&src.export_layer(1, 0..4)).unwrap();
        assert_eq!(dst.len(), 4);
        assert_eq!(dst.used_bytes(), 4 * shape().bytes_per_token());
        dst.truncate(1);
        assert_eq!(dst.len(), 1);
    }
}
