//! The explicit, movable KV cache of one sequence.
//!
//! The caller owns it: prefill and decode are separate forward calls that append to it, and
//! it can be exported layer by layer to self-describing bytes and imported into another
//! engine instance (another worker), which then continues decoding bit-identically.
//!
//! A layer is exported as its [`LayerShape`] (the description shared with the KV
//! transports, `genie_protocol::kv`) and the K then V bytes, written into a buffer the
//! caller owns; an import takes the shape and the bytes as they arrived. Nothing is parsed
//! back and nothing is copied twice.

use crate::error::{EngineError, Result};
use crate::gguf::ModelConfig;
use genie_protocol::kv::{LayerShape, DTYPE_F16};
use half::f16;
use std::ops::Range;

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

    /// Copies the first `len` tokens of every layer of `src` into this empty cache (a
    /// cached prefix a new sequence starts from). Refused, with this cache unchanged, when
    /// it is not empty, the shapes differ, `src` holds fewer tokens or `len` exceeds this
    /// cache's capacity.
    pub fn copy_prefix_from(&mut self, src: &KvCache, len: usize) -> Result<()> {
        if !self.is_empty() || src.shape != self.shape || len > src.len() || len > self.capacity {
            return Err(EngineError::KvImport(format!(
                "cannot copy {len} cached tokens into this cache (it holds {}, capacity {}; the source holds {})",
                self.len(),
                self.capacity,
                src.len()
            )));
        }
        let n = len * self.shape.kv_dim();
        for l in 0..self.shape.n_layers {
            self.k[l].extend_from_slice(&src.k[l][..n]);
            self.v[l].extend_from_slice(&src.v[l][..n]);
        }
        Ok(())
    }

    /// Drops every token at position `len` and beyond (all layers).
    pub fn truncate(&mut self, len: usize) {
        let n = len * self.shape.kv_dim();
        for l in 0..self.shape.n_layers {
            self.k[l].truncate(n);
            self.v[l].truncate(n);
        }
    }

    /// Writes K then V of tokens `range` of `layer` (little-endian f16) to the end of
    /// `out` and returns their shape. `out` is the caller's: a transport can send it as it
    /// is.
    pub fn export_layer_into(
        &self,
        layer: usize,
        range: Range<usize>,
        out: &mut Vec<u8>,
    ) -> LayerShape {
        assert!(
            layer < self.shape.n_layers,
            "export_layer_into: layer out of range"
        );
        assert!(
            range.end <= self.layer_len(layer),
            "export_layer_into: range past end"
        );
        let kv = self.shape.kv_dim();
        let shape = LayerShape {
            layer: layer as u32,
            n_layers: self.shape.n_layers as u32,
            dtype: DTYPE_F16,
            kv_heads: self.shape.kv_heads as u32,
            head_dim: self.shape.head_dim as u32,
            token_start: range.start as u32,
            token_count: range.len() as u32,
        };
        out.reserve(2 * range.len() * kv * ELEM_BYTES);
        for src in [&self.k[layer], &self.v[layer]] {
            for x in &src[range.start * kv..range.end * kv] {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        shape
    }

    /// Every layer, all tokens: one `(shape, bytes)` per layer.
    pub fn export_all(&self) -> Vec<(LayerShape, Vec<u8>)> {
        let n = self.len();
        (0..self.shape.n_layers)
            .map(|l| {
                let mut bytes = Vec::new();
                let shape = self.export_layer_into(l, 0..n, &mut bytes);
                (shape, bytes)
            })
            .collect()
    }

    /// Appends one layer's K/V as exported by [`KvCache::export_layer_into`]. The shape
    /// must be this model's (f16), continue the layer exactly where it ends and fit the
    /// capacity, and `bytes` must be exactly what it declares; otherwise nothing changes
    /// and the error says why.
    pub fn import_layer(&mut self, shape: &LayerShape, bytes: &[u8]) -> Result<()> {
        let bad = |m: String| Err(EngineError::KvImport(m));
        if shape.dtype != DTYPE_F16 {
            return bad(format!(
                "dtype code {} is not f16 ({DTYPE_F16})",
                shape.dtype
            ));
        }
        let (layer, start, count) = (
            shape.layer as usize,
            shape.token_start as usize,
            shape.token_count as usize,
        );
        if shape.n_layers as usize != self.shape.n_layers
            || shape.kv_heads as usize != self.shape.kv_heads
            || shape.head_dim as usize != self.shape.head_dim
        {
            return bad(format!(
                "layer shape {} layers x {} kv heads x {} head dim does not match this model ({} x {} x {})",
                shape.n_layers, shape.kv_heads, shape.head_dim, self.shape.n_layers, self.shape.kv_heads, self.shape.head_dim
            ));
        }
        if layer >= self.shape.n_layers {
            return bad(format!("layer {layer} out of range"));
        }
        let have = self.layer_len(layer);
        if start != have {
            return bad(format!(
                "layer {layer} holds {have} tokens, the chunk starts at {start}"
            ));
        }
        if have + count > self.capacity {
            return bad(format!(
                "the chunk would grow layer {layer} to {} tokens, capacity is {}",
                have + count,
                self.capacity
            ));
        }
        let expected = 2 * count * self.shape.kv_dim() * ELEM_BYTES;
        if bytes.len() != expected {
            return bad(format!(
                "the chunk is {} bytes, its shape declares {expected}",
                bytes.len()
            ));
        }
        let (k, v) = bytes.split_at(bytes.len() / 2);
        let to_f16 = |c: &[u8]| f16::from_le_bytes([c[0], c[1]]);
        self.k[layer].extend(k.chunks_exact(2).map(to_f16));
        self.v[layer].extend(v.chunks_exact(2).map(to_f16));
        Ok(())
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

    fn export(c: &KvCache, layer: usize, range: Range<usize>) -> (LayerShape, Vec<u8>) {
        let mut out = Vec::new();
        let shape = c.export_layer_into(layer, range, &mut out);
        (shape, out)
    }

    #[test]
    fn export_import_roundtrip_is_exact_and_resumable() {
        let src = filled(5);
        let mut dst = KvCache::new(shape(), 16);
        for l in 0..2 {
            let (s, b) = export(&src, l, 0..3);
            dst.import_layer(&s, &b).unwrap();
            let (s, b) = export(&src, l, 3..5);
            dst.import_layer(&s, &b).unwrap();
        }
        assert_eq!(dst.len(), 5);
        for l in 0..2 {
            assert_eq!(dst.layer_k(l), src.layer_k(l));
            assert_eq!(dst.layer_v(l), src.layer_v(l));
        }
    }

    #[test]
    fn export_appends_to_the_callers_buffer() {
        let src = filled(2);
        let mut out = vec![7u8; 3];
        let s = src.export_layer_into(1, 0..2, &mut out);
        assert_eq!(out.len(), 3 + s.payload_len().unwrap());
        assert_eq!(&out[..3], &[7, 7, 7]);
    }

    #[test]
    fn import_refuses_bad_chunks_without_changing_the_cache() {
        let src = filled(3);
        let (good, bytes) = export(&src, 0, 0..3);
        let mut dst = KvCache::new(shape(), 16);
        let cases: Vec<(LayerShape, Vec<u8>, &str)> = vec![
            (good, bytes[..10].to_vec(), "declares"),
            (LayerShape { dtype: 2, ..good }, bytes.clone(), "not f16"),
            (good, bytes[..bytes.len() - 1].to_vec(), "declares"),
            (
                LayerShape {
                    token_start: 1,
                    ..good
                },
                bytes.clone(),
                "starts at",
            ),
            (
                LayerShape {
                    kv_heads: 7,
                    ..good
                },
                bytes.clone(),
                "does not match",
            ),
            (
                LayerShape { layer: 5, ..good },
                bytes.clone(),
                "out of range",
            ),
        ];
        for (s, b, want) in cases {
            let err = dst.import_layer(&s, &b).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
            assert_eq!(dst.layer_len(0), 0);
        }
        let mut small = KvCache::new(shape(), 2);
        assert!(small
            .import_layer(&good, &bytes)
            .unwrap_err()
            .to_string()
            .contains("capacity"));
    }

    #[test]
    fn len_counts_only_tokens_every_layer_has() {
        let src = filled(4);
        let mut dst = KvCache::new(shape(), 16);
        let (s, b) = export(&src, 0, 0..4);
        dst.import_layer(&s, &b).unwrap();
        assert_eq!(dst.len(), 0);
        assert!(!dst.is_consistent());
        let (s, b) = export(&src, 1, 0..4);
        dst.import_layer(&s, &b).unwrap();
        assert_eq!(dst.len(), 4);
        assert_eq!(dst.used_bytes(), 4 * shape().bytes_per_token());
        dst.truncate(1);
        assert_eq!(dst.len(), 1);
    }
}
