//! The explicit, movable KV cache of one sequence, held in fixed-size blocks.
//!
//! The caller owns it: prefill and decode are separate forward calls that append to it, and
//! it can be exported layer by layer to self-describing bytes and imported into another
//! engine instance (another worker), which then continues decoding bit-identically.
//!
//! **Paged.** A cache is a table of [`KvBlock`]s of `block_tokens` tokens each, taken as
//! the sequence grows ([`KvCache::ensure`]), not for its whole lifetime up front. With a
//! [`KvBudget`] every block taken is charged to it, and a block the budget cannot give is
//! refused ([`EngineError::KvCapacity`]) before any work, so a worker can preempt instead.
//! Full blocks are immutable and shared by reference count: a prefix cache and every
//! sequence that starts with that prefix hold the same block
//! ([`KvCache::share_prefix`]); a write into a shared block copies it first. A cache of
//! one block as large as its capacity ([`KvCache::contiguous`]) is the unpaged layout.
//!
//! A layer is exported as its [`LayerShape`] (the description shared with the KV
//! transports, `genie_protocol::kv`) and the K then V bytes, written into a buffer the
//! caller owns; an import takes the shape and the bytes as they arrived. Nothing is parsed
//! back and nothing is copied twice.

use crate::error::{EngineError, Result};
use crate::gguf::ModelConfig;
use crate::kv_budget::{KvBudget, KvReservation};
use genie_protocol::kv::{LayerShape, DTYPE_F16};
use half::f16;
use half::slice::HalfBitsSliceExt;
use std::ops::Range;
use std::sync::Arc;

/// Bytes of one stored K or V element (f16, as llama.cpp's default cache type).
pub const ELEM_BYTES: usize = 2;

/// Tokens per KV block by default (the workers' paged caches and prefix caches).
pub const BLOCK_TOKENS: usize = 16;

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

    /// Bytes of one block of `block_tokens` tokens.
    pub fn block_bytes(&self, block_tokens: usize) -> usize {
        block_tokens * self.bytes_per_token()
    }
}

/// K and V of `tokens` positions for every layer: `[layer][K, V][token][kv_dim]` f16.
#[derive(Debug)]
pub struct KvBlock {
    /// f16 bits; zero-allocated, so untouched pages cost nothing.
    data: Box<[u16]>,
}

impl Clone for KvBlock {
    fn clone(&self) -> Self {
        KvBlock {
            data: self.data.clone(),
        }
    }
}

impl KvBlock {
    fn zeroed(elems: usize) -> Self {
        KvBlock {
            data: vec![0u16; elems].into_boxed_slice(),
        }
    }

    fn values(&self) -> &[f16] {
        self.data.reinterpret_cast()
    }

    fn values_mut(&mut self) -> &mut [f16] {
        self.data.reinterpret_cast_mut()
    }
}

/// K and V of every layer for one sequence, in blocks.
#[derive(Debug)]
pub struct KvCache {
    shape: KvShape,
    block_tokens: usize,
    capacity: usize,
    blocks: Vec<Arc<KvBlock>>,
    /// Tokens held per layer.
    lens: Vec<usize>,
    /// What the blocks are charged to, when the cache has a budget.
    charge: Option<KvReservation>,
}

impl Clone for KvCache {
    /// A copy sharing every block (a write to either copies the block first) and charged
    /// to no budget.
    fn clone(&self) -> Self {
        KvCache {
            shape: self.shape,
            block_tokens: self.block_tokens,
            capacity: self.capacity,
            blocks: self.blocks.clone(),
            lens: self.lens.clone(),
            charge: None,
        }
    }
}

impl KvCache {
    /// A paged cache of up to `capacity` tokens in [`BLOCK_TOKENS`]-token blocks, charged
    /// to no budget.
    pub fn new(shape: KvShape, capacity: usize) -> Self {
        Self::build(shape, BLOCK_TOKENS, capacity, None)
    }

    /// The unpaged layout: one block as large as `capacity` (what every cache was before
    /// paging; kept to measure paging against).
    pub fn contiguous(shape: KvShape, capacity: usize) -> Self {
        Self::build(shape, capacity.max(1), capacity, None)
    }

    /// A paged cache of up to `capacity` tokens in blocks of `block_tokens`, each block
    /// charged to `budget` when taken ([`KvCache::ensure`]).
    pub fn paged(
        shape: KvShape,
        block_tokens: usize,
        capacity: usize,
        budget: Option<&KvBudget>,
    ) -> Result<Self> {
        let charge = match budget {
            Some(b) => Some(b.reserve(0)?),
            None => None,
        };
        Ok(Self::build(shape, block_tokens.max(1), capacity, charge))
    }

    fn build(
        shape: KvShape,
        block_tokens: usize,
        capacity: usize,
        charge: Option<KvReservation>,
    ) -> Self {
        KvCache {
            shape,
            block_tokens,
            capacity,
            blocks: Vec::new(),
            lens: vec![0; shape.n_layers],
            charge,
        }
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }

    /// Most tokens this cache may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// Blocks taken.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    fn block_elems(&self) -> usize {
        2 * self.shape.n_layers * self.block_tokens * self.shape.kv_dim()
    }

    /// Tokens held in `layer`.
    pub fn layer_len(&self, layer: usize) -> usize {
        self.lens[layer]
    }

    /// Tokens held by every layer (the usable length).
    pub fn len(&self) -> usize {
        self.lens.iter().copied().min().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when every layer holds the same number of tokens.
    pub fn is_consistent(&self) -> bool {
        self.lens.iter().all(|&n| n == self.lens[0])
    }

    /// Bytes of K/V currently stored.
    pub fn used_bytes(&self) -> usize {
        self.len() * self.shape.bytes_per_token()
    }

    /// Bytes of the blocks taken.
    pub fn reserved_bytes(&self) -> usize {
        self.blocks.len() * self.shape.block_bytes(self.block_tokens)
    }

    /// Takes blocks (charging the budget, if any) until the cache has room for `tokens`.
    /// Refused, with the blocks already taken kept, when `tokens` exceeds the capacity or
    /// the budget has no room for another block.
    pub fn ensure(&mut self, tokens: usize) -> Result<()> {
        if tokens > self.capacity {
            return Err(EngineError::InvalidRequest {
                field: "max_tokens",
                reason: format!(
                    "sequence would reach {tokens} tokens but its KV cache holds at most {}",
                    self.capacity
                ),
            });
        }
        let block_bytes = self.shape.block_bytes(self.block_tokens);
        while self.blocks.len() * self.block_tokens < tokens {
            if let Some(c) = self.charge.as_mut() {
                c.try_grow(block_bytes)?;
            }
            self.blocks
                .push(Arc::new(KvBlock::zeroed(self.block_elems())));
        }
        Ok(())
    }

    /// Blocks `ensure(tokens)` would still take.
    pub fn blocks_needed(&self, tokens: usize) -> usize {
        tokens
            .div_ceil(self.block_tokens)
            .saturating_sub(self.blocks.len())
    }

    /// Offset of `layer`'s K (`v = false`) or V rows inside a block.
    fn part(&self, layer: usize, v: bool) -> usize {
        (2 * layer + usize::from(v)) * self.block_tokens * self.shape.kv_dim()
    }

    /// The K and V rows `layer` holds, block by block, in order: each slice is the block's
    /// filled rows of `kv_dim` values (`block_tokens` of them, fewer in the last block).
    pub fn layer_blocks(&self, layer: usize) -> Vec<(&[f16], &[f16])> {
        let (bt, kv, len) = (self.block_tokens, self.shape.kv_dim(), self.lens[layer]);
        let (k, v) = (self.part(layer, false), self.part(layer, true));
        self.blocks[..len.div_ceil(bt)]
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let n = (len - i * bt).min(bt) * kv;
                let d = b.values();
                (&d[k..k + n], &d[v..v + n])
            })
            .collect()
    }

    /// The full blocks every layer holds, in order (what a prefix cache may keep).
    pub fn full_blocks(&self) -> &[Arc<KvBlock>] {
        &self.blocks[..self.len() / self.block_tokens]
    }

    /// `layer`'s K (`v = false`) or V rows of the tokens it holds, copied out contiguously
    /// (`[token][kv_dim]`): for checks and tests, not the hot path.
    pub fn layer_rows(&self, layer: usize, v: bool) -> Vec<f16> {
        let mut out = Vec::with_capacity(self.lens[layer] * self.shape.kv_dim());
        for (k, vv) in self.layer_blocks(layer) {
            out.extend_from_slice(if v { vv } else { k });
        }
        out
    }

    /// Starts this cache, which holds no token yet, with `tokens` tokens whose KV are
    /// `blocks` (full blocks of this cache's size, shared, not copied). Blocks it took
    /// beforehand (at admission) make way for them; its budget is charged the difference.
    /// Refused, with this cache unchanged, when it holds a token, `tokens` is not `blocks`
    /// full blocks, a block is of another size, or they exceed the capacity or the budget.
    pub fn share_prefix(&mut self, blocks: &[Arc<KvBlock>], tokens: usize) -> Result<()> {
        let bad = |m: String| Err(EngineError::KvImport(m));
        if self.lens.iter().any(|&n| n > 0) {
            return bad("a prefix can only start an empty cache".into());
        }
        if tokens != blocks.len() * self.block_tokens || tokens > self.capacity {
            return bad(format!(
                "{tokens} tokens in {} blocks of {} do not fit this cache (capacity {})",
                blocks.len(),
                self.block_tokens,
                self.capacity
            ));
        }
        if blocks.iter().any(|b| b.data.len() != self.block_elems()) {
            return bad("a shared block is of another size".into());
        }
        let block_bytes = self.shape.block_bytes(self.block_tokens);
        let (have, want) = (self.blocks.len() * block_bytes, blocks.len() * block_bytes);
        if let Some(c) = self.charge.as_mut() {
            if want > have {
                c.try_grow(want - have)?;
            } else {
                c.shrink(have - want);
            }
        }
        self.blocks.clear();
        self.blocks.extend(blocks.iter().cloned());
        self.lens.iter_mut().for_each(|n| *n = tokens);
        Ok(())
    }

    /// Rows `first..first + count` of `layer`'s K or V, writable: the block is copied first
    /// if another cache shares it. The rows must lie in one block already taken.
    fn rows_mut(&mut self, layer: usize, v: bool, first: usize, count: usize) -> &mut [f16] {
        let kv = self.shape.kv_dim();
        let (b, r) = (first / self.block_tokens, first % self.block_tokens);
        debug_assert!(r + count <= self.block_tokens);
        let off = self.part(layer, v) + r * kv;
        let block = Arc::make_mut(&mut self.blocks[b]);
        &mut block.values_mut()[off..off + count * kv]
    }

    /// Appends K/V rows (`n * kv_dim` each, rounded to f16) to one layer; the blocks must
    /// have been taken ([`KvCache::ensure`]).
    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        debug_assert_eq!(k.len(), v.len());
        let kv = self.shape.kv_dim();
        let n = k.len() / kv;
        let mut done = 0;
        while done < n {
            let pos = self.lens[layer] + done;
            let take = (self.block_tokens - pos % self.block_tokens).min(n - done);
            let (src_k, src_v) = (
                &k[done * kv..(done + take) * kv],
                &v[done * kv..(done + take) * kv],
            );
            crate::ops::store_f16(self.rows_mut(layer, false, pos, take), src_k);
            crate::ops::store_f16(self.rows_mut(layer, true, pos, take), src_v);
            done += take;
        }
        self.lens[layer] += n;
    }

    /// Drops every token at position `len` and beyond (all layers), and the blocks no
    /// longer needed (their charge given back).
    pub fn truncate(&mut self, len: usize) {
        for n in self.lens.iter_mut() {
            *n = (*n).min(len);
        }
        let keep = self
            .lens
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .div_ceil(self.block_tokens);
        if keep < self.blocks.len() {
            let freed = (self.blocks.len() - keep) * self.shape.block_bytes(self.block_tokens);
            self.blocks.truncate(keep);
            if let Some(c) = self.charge.as_mut() {
                c.shrink(freed);
            }
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
        let blocks = self.layer_blocks(layer);
        for v in [false, true] {
            let mut pos = range.start;
            while pos < range.end {
                let (b, r) = (pos / self.block_tokens, pos % self.block_tokens);
                let take = (self.block_tokens - r).min(range.end - pos);
                let rows = if v { blocks[b].1 } else { blocks[b].0 };
                for x in &rows[r * kv..(r + take) * kv] {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                pos += take;
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

    /// Appends one layer's K/V as exported by [`KvCache::export_layer_into`], taking the
    /// blocks it needs. The shape must be this model's (f16), continue the layer exactly
    /// where it ends and fit the capacity and the budget, and `bytes` must be exactly what
    /// it declares; otherwise nothing changes and the error says why.
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
        let kv = self.shape.kv_dim();
        let expected = 2 * count * kv * ELEM_BYTES;
        if bytes.len() != expected {
            return bad(format!(
                "the chunk is {} bytes, its shape declares {expected}",
                bytes.len()
            ));
        }
        self.ensure(have + count)?;
        let (k, v) = bytes.split_at(bytes.len() / 2);
        for (src, is_v) in [(k, false), (v, true)] {
            let mut done = 0;
            while done < count {
                let pos = have + done;
                let take = (self.block_tokens - pos % self.block_tokens).min(count - done);
                let dst = self.rows_mut(layer, is_v, pos, take);
                let src = &src[done * kv * ELEM_BYTES..(done + take) * kv * ELEM_BYTES];
                for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *d = f16::from_le_bytes([c[0], c[1]]);
                }
                done += take;
            }
        }
        self.lens[layer] += count;
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
        filled_in(KvCache::new(shape(), 16), n)
    }

    fn filled_in(mut c: KvCache, n: usize) -> KvCache {
        c.ensure(c.len() + n).unwrap();
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
            assert_eq!(dst.layer_rows(l, false), src.layer_rows(l, false));
            assert_eq!(dst.layer_rows(l, true), src.layer_rows(l, true));
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

    fn paged(block: usize, budget: Option<&KvBudget>) -> KvCache {
        KvCache::paged(shape(), block, 64, budget).unwrap()
    }

    #[test]
    fn every_block_size_holds_and_exports_the_same_rows() {
        let want = filled_in(KvCache::contiguous(shape(), 64), 37);
        for block in [1, 3, 16, 64] {
            // Appended in uneven pieces that straddle block boundaries.
            let mut c = paged(block, None);
            for n in [5, 1, 13, 18] {
                c = filled_in(c, n);
            }
            let mut fresh = paged(block, None);
            fresh = filled_in(fresh, 37);
            for l in 0..2 {
                assert_eq!(fresh.layer_rows(l, false), want.layer_rows(l, false));
                assert_eq!(fresh.layer_rows(l, true), want.layer_rows(l, true));
                assert_eq!(export(&fresh, l, 3..29), export(&want, l, 3..29));
            }
            assert_eq!(c.len(), 37);
            assert_eq!(c.blocks(), 37usize.div_ceil(block));
        }
    }

    #[test]
    fn blocks_are_charged_as_taken_and_given_back() {
        let bpt = shape().bytes_per_token();
        let budget = KvBudget::new(5 * 4 * bpt);
        let mut a = paged(4, Some(&budget));
        a.ensure(1).unwrap();
        assert_eq!(budget.used_bytes(), 4 * bpt);
        a = filled_in(a, 9);
        assert_eq!((a.blocks(), budget.used_bytes()), (3, 12 * bpt));
        let mut b = paged(4, Some(&budget));
        b.ensure(8).unwrap();
        assert!(matches!(b.ensure(9), Err(EngineError::KvCapacity { .. })));
        assert_eq!(b.blocks(), 2, "a refused block leaves the ones taken");
        a.truncate(4);
        assert_eq!((a.blocks(), budget.used_bytes()), (1, 12 * bpt));
        drop(a);
        drop(b);
        assert_eq!(budget.used_bytes(), 0);
        assert!(paged(4, None).ensure(65).is_err(), "past the capacity");
    }

    #[test]
    fn shared_blocks_are_copied_before_a_write() {
        let src = filled_in(paged(4, None), 8);
        let blocks: Vec<_> = src.full_blocks().to_vec();
        assert_eq!(blocks.len(), 2);
        let mut a = paged(4, None);
        a.share_prefix(&blocks, 8).unwrap();
        assert!(Arc::ptr_eq(&a.blocks[0], &src.blocks[0]));
        a = filled_in(a, 3);
        // A write into a shared block (after a truncate) leaves the other owners' rows.
        let before = src.layer_rows(0, false);
        a.truncate(6);
        a = filled_in(a, 1);
        assert_eq!(src.layer_rows(0, false), before);
        assert!(!Arc::ptr_eq(&a.blocks[1], &src.blocks[1]));
        assert!(Arc::ptr_eq(&a.blocks[0], &src.blocks[0]));
        let mut b = paged(4, None);
        assert!(b.share_prefix(&blocks, 7).is_err());
        // Blocks taken for a prompt (admission) make way for a shared prefix, and the
        // budget is charged only the difference.
        let bpt = shape().bytes_per_token();
        let budget = KvBudget::new(3 * 4 * bpt);
        let mut d = paged(4, Some(&budget));
        d.ensure(9).unwrap();
        assert_eq!(budget.used_bytes(), 12 * bpt);
        d.share_prefix(&blocks, 8).unwrap();
        assert_eq!((d.blocks(), d.len(), budget.used_bytes()), (2, 8, 8 * bpt));
        assert!(Arc::ptr_eq(&d.blocks[1], &src.blocks[1]));
        assert!(d.share_prefix(&blocks, 8).is_err(), "it holds tokens now");
        let mut c = paged(8, None);
        assert!(
            c.share_prefix(&blocks[..1], 8).is_err(),
            "another block size"
        );
    }
}
