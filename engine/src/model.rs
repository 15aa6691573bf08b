//! The llama forward pass over caller-owned KV caches.
//!
//! One [`Model::forward`] call runs any mix of sequences: a prefill is one segment with many
//! tokens, a decode step is many segments with one token each. Matmuls are batched across
//! every token of every segment (weights are streamed once per step); attention runs per
//! token against that token's own sequence cache. Each token's arithmetic is independent
//! of the rest of the batch, so batched decoding gives exactly the output of decoding alone.

use crate::error::{EngineError, Result};
use crate::gguf::{GgufModel, LayerWeights, ModelConfig, ModelWeights};
use crate::kv_cache::{KvCache, KvShape};
use crate::ops;
use crate::quant::acts::QuantizedActs;
use crate::quant::matmul::{matmul, matmul_multi_fetching, matmul_tokens};
use crate::quant::side_fetch::SideFetch;
use crate::quant::{attn_avx2, dot_avx2, dot_avx512, QMatrix};
use rayon::prelude::*;
use std::ops::ControlFlow;

/// One sequence's share of a forward step: new tokens and the cache they extend.
pub struct Segment<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// Where to put the log-probability of each of `tokens` after the first, given those
    /// before it (a prompt's, for completions' `echo`); None: only the last token's logits.
    pub scores: Option<&'a mut TokenScores>,
}

impl<'a> Segment<'a> {
    /// A segment whose only output is its last token's logits.
    pub fn new(tokens: &'a [u32], cache: &'a mut KvCache) -> Self {
        Segment {
            tokens,
            cache,
            scores: None,
        }
    }
}

/// A segment's own tokens scored by the model: entry `i` is `tokens[i + 1]`'s logprob
/// under the logits after `tokens[..=i]`, with the `top` most likely alternatives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenScores {
    pub top: usize,
    pub scored: Vec<crate::sampling::Sampled>,
}

/// Positions whose full-vocabulary logits are held at once while a segment is scored.
const SCORE_ROWS: usize = 32;

/// What a pipeline stage hands on: hidden states to the next stage, or (the last stage)
/// each segment's last-token logits.
#[derive(Debug, Clone, PartialEq)]
pub enum StageOutput {
    Hidden(Vec<f32>),
    Logits(Vec<Vec<f32>>),
}

/// A loaded llama model with its own compute thread pool.
pub struct Model {
    config: ModelConfig,
    weights: std::sync::Arc<ModelWeights>,
    pool: rayon::ThreadPool,
    side_fetch_bytes: usize,
    /// Constrained decoding over this model's vocabulary (None: a model made without
    /// its tokenizer, which cannot run constrained sequences).
    grammars: Option<std::sync::Arc<genie_grammar::LazyGrammars>>,
}

/// Activations quantised once and shared by every matrix of the same format.
struct SharedActs<'a> {
    x: &'a [f32],
    cached: Vec<QuantizedActs>,
}

impl<'a> SharedActs<'a> {
    /// `x` with its quantisation for one format already made.
    fn with(x: &'a [f32], acts: QuantizedActs) -> Self {
        SharedActs {
            x,
            cached: vec![acts],
        }
    }

    fn acts_for(&mut self, w: &QMatrix) -> usize {
        let fmt = w.format();
        match self.cached.iter().position(|a| act_format_matches(a, fmt)) {
            Some(i) => i,
            None => {
                self.cached.push(QuantizedActs::for_weight(w, self.x));
                self.cached.len() - 1
            }
        }
    }

    /// `outs[i] = ws[i] · x`, in one parallel region when the matrices share a format.
    fn mul_all(&mut self, ws: &[&QMatrix], outs: &mut [&mut [f32]]) {
        self.mul_all_fetching(ws, outs, &SideFetch::new())
    }

    /// [`SharedActs::mul_all`], prefetching `side` while it computes.
    fn mul_all_fetching(&mut self, ws: &[&QMatrix], outs: &mut [&mut [f32]], side: &SideFetch) {
        let fmt = ws[0].format();
        if ws.iter().all(|w| w.format() == fmt) {
            let i = self.acts_for(ws[0]);
            matmul_multi_fetching(ws, &self.cached[i], outs, side);
        } else {
            for (w, out) in ws.iter().zip(outs.iter_mut()) {
                let i = self.acts_for(w);
                matmul(w, &self.cached[i], out);
            }
        }
    }
}

fn act_format_matches(a: &QuantizedActs, w: crate::quant::WeightFormat) -> bool {
    use crate::quant::WeightFormat as F;
    matches!(
        (a, w),
        (QuantizedActs::F32 { .. }, F::F32)
            | (QuantizedActs::Q8_1 { .. }, F::Q4_1)
            | (QuantizedActs::Q8_0 { .. }, F::Q8_0)
            | (QuantizedActs::Q8K { .. }, F::K(_))
    )
}

impl Model {
    /// Builds the model with `threads` compute threads (0 = one per available core).
    pub fn new(config: ModelConfig, weights: ModelWeights, threads: usize) -> Result<Self> {
        Self::with_shared(config, std::sync::Arc::new(weights), threads)
    }

    /// Another handle on the same weights with its own compute pool of `threads` threads
    /// (0 = one per core): how two workers in one process share one copy of the model.
    pub fn share(&self, threads: usize) -> Result<Self> {
        let mut m = Self::with_shared(
            self.config.clone(),
            std::sync::Arc::clone(&self.weights),
            threads,
        )?;
        m.grammars = self.grammars.clone();
        Ok(m)
    }

    fn with_shared(
        config: ModelConfig,
        weights: std::sync::Arc<ModelWeights>,
        threads: usize,
    ) -> Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("genie-compute-{i}"))
            .build()
            .map_err(|e| EngineError::Unsupported(format!("cannot start compute threads: {e}")))?;
        Ok(Model {
            config,
            weights,
            pool,
            side_fetch_bytes: SIDE_FETCH_BYTES,
            grammars: None,
        })
    }

    /// How many bytes of the next layer's K/V each layer's gate/up matmul prefetches
    /// (default [`SIDE_FETCH_BYTES`]; 0 turns it off). Changes speed only, never values.
    pub fn set_side_fetch_bytes(&mut self, bytes: usize) {
        self.side_fetch_bytes = bytes;
    }

    pub fn from_gguf(m: GgufModel, threads: usize) -> Result<Self> {
        let (spec, template, width) = (m.tokenizer, m.chat_template, m.config.vocab_size);
        let mut model = Self::new(m.config, m.weights, threads)?;
        // The vocabulary is read from the tokenizer only when a constrained sequence
        // first needs it.
        model.grammars = Some(std::sync::Arc::new(genie_grammar::LazyGrammars::new(
            move || {
                let (tokenizer, _, eog) =
                    crate::model_text::text_parts(spec.clone(), template.as_deref())
                        .map_err(|e| e.to_string())?;
                Ok((
                    crate::model_text::grammar_vocabulary(&tokenizer, &eog),
                    width,
                ))
            },
        )));
        Ok(model)
    }

    /// Constrained decoding over this model's vocabulary, where the model has one.
    pub fn grammars(&self) -> Option<&genie_grammar::LazyGrammars> {
        self.grammars.as_deref()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn weights(&self) -> &ModelWeights {
        &self.weights
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    pub fn kv_shape(&self) -> KvShape {
        KvShape::of(&self.config)
    }

    /// An empty cache for up to `capacity` tokens of this model.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(self.kv_shape(), capacity)
    }

    /// Runs `tokens` after what `cache` holds; returns the last token's logits.
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let mut segs = [Segment::new(tokens, cache)];
        Ok(self.forward(&mut segs)?.pop().unwrap_or_default())
    }

    /// One decode step for a batch: each `(token, cache)` pair advances by one token.
    pub fn decode_batch(&self, batch: &mut [(u32, &mut KvCache)]) -> Result<Vec<Vec<f32>>> {
        let tokens: Vec<[u32; 1]> = batch.iter().map(|(t, _)| [*t]).collect();
        let mut segs: Vec<Segment> = batch
            .iter_mut()
            .zip(&tokens)
            .map(|((_, cache), t)| Segment::new(t, cache))
            .collect();
        self.forward(&mut segs)
    }

    /// Runs every segment; returns each segment's last-token logits.
    pub fn forward(&self, segs: &mut [Segment]) -> Result<Vec<Vec<f32>>> {
        self.forward_observed(segs, &mut |_, _| ControlFlow::Continue(()))
    }

    /// Like [`Model::forward`], calling `on_layer(layer, segments)` as soon as each layer's
    /// K/V for all new tokens is in the caches (so a prefill can ship layer `l` while
    /// layer `l + 1` computes). `on_layer` returning `Break` stops the forward there with
    /// [`EngineError::Cancelled`] (nobody wants the result any more); the caches then hold
    /// layers of different lengths and must be dropped or truncated.
    pub fn forward_observed(
        &self,
        segs: &mut [Segment],
        on_layer: &mut (dyn FnMut(usize, &[Segment]) -> ControlFlow<()> + Send),
    ) -> Result<Vec<Vec<f32>>> {
        self.check(segs)?;
        if segs.is_empty() {
            return Ok(Vec::new());
        }
        take_blocks(segs)?;
        self.pool.install(|| self.run(segs, on_layer))
    }

    fn check(&self, segs: &[Segment]) -> Result<()> {
        self.check_shape(segs, self.kv_shape())
    }

    fn check_shape(&self, segs: &[Segment], shape: KvShape) -> Result<()> {
        let c = &self.config;
        for s in segs {
            if s.tokens.is_empty() {
                return Err(EngineError::InvalidRequest {
                    field: "tokens",
                    reason: "a forward segment needs at least one token".into(),
                });
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(EngineError::InvalidRequest {
                    field: "tokens",
                    reason: format!(
                        "token id {t} is outside the vocabulary (size {})",
                        c.vocab_size
                    ),
                });
            }
            if s.cache.shape() != shape {
                return Err(EngineError::KvImport(format!(
                    "cache shape {:?} does not match the model {:?}",
                    s.cache.shape(),
                    shape
                )));
            }
            if !s.cache.is_consistent() {
                return Err(EngineError::KvImport(
                    "cache layers hold different token counts (incomplete import)".into(),
                ));
            }
            let end = s.cache.len() + s.tokens.len();
            if end > c.context_length {
                return Err(EngineError::ContextOverflow {
                    prompt_tokens: s.cache.len(),
                    max_tokens: s.tokens.len(),
                    context: c.context_length,
                });
            }
            if end > s.cache.capacity() {
                return Err(EngineError::InvalidRequest {
                    field: "max_tokens",
                    reason: format!(
                        "sequence would reach {end} tokens but its KV cache was reserved for {}",
                        s.cache.capacity()
                    ),
                });
            }
        }
        Ok(())
    }

    fn run(
        &self,
        segs: &mut [Segment],
        on_layer: &mut (dyn FnMut(usize, &[Segment]) -> ControlFlow<()> + Send),
    ) -> Result<Vec<Vec<f32>>> {
        let mut x = self.embed(segs);
        self.run_layers(segs, 0..self.config.n_layers, &mut x, on_layer)?;
        Ok(self.head(segs, &x))
    }

    /// Runs layers `layers` of the model: the first stage of a pipeline embeds the tokens
    /// (`hidden: None`), a later one continues from the previous stage's hidden states
    /// (`[tokens][hidden]` f32, in segment order). Each segment's cache holds only this
    /// stage's layers ([`Model::stage_shape`]). The last stage returns each segment's
    /// last-token logits, the others the hidden states to hand on. Stages composed this
    /// way compute exactly what [`Model::forward`] does: the same operations in the same
    /// order, split at a layer boundary.
    pub fn forward_stage(
        &self,
        layers: std::ops::Range<usize>,
        segs: &mut [Segment],
        hidden: Option<Vec<f32>>,
    ) -> Result<StageOutput> {
        let c = &self.config;
        if layers.start >= layers.end || layers.end > c.n_layers {
            return Err(EngineError::InvalidRequest {
                field: "layers",
                reason: format!(
                    "layers {}..{} is not a non-empty range of the model's {} layers",
                    layers.start, layers.end, c.n_layers
                ),
            });
        }
        self.check_shape(segs, self.stage_shape(layers.len()))?;
        take_blocks(segs)?;
        let n: usize = segs.iter().map(|s| s.tokens.len()).sum();
        match &hidden {
            None if layers.start != 0 => {
                return Err(EngineError::InvalidRequest {
                    field: "hidden",
                    reason: format!(
                        "a stage starting at layer {} needs the previous stage's hidden states",
                        layers.start
                    ),
                })
            }
            Some(h) if h.len() != n * c.hidden => {
                return Err(EngineError::InvalidRequest {
                    field: "hidden",
                    reason: format!(
                        "{} hidden values for {n} tokens of width {}",
                        h.len(),
                        c.hidden
                    ),
                })
            }
            _ => {}
        }
        if segs.is_empty() {
            return Ok(StageOutput::Hidden(Vec::new()));
        }
        let last = layers.end == c.n_layers;
        self.pool.install(|| {
            let mut x = match hidden {
                Some(h) => h,
                None => self.embed(segs),
            };
            self.run_layers(segs, layers, &mut x, &mut |_, _| ControlFlow::Continue(()))?;
            Ok(if last {
                StageOutput::Logits(self.head(segs, &x))
            } else {
                StageOutput::Hidden(x)
            })
        })
    }

    /// The KV shape of a stage that holds `layers` of the model's layers.
    pub fn stage_shape(&self, layers: usize) -> KvShape {
        KvShape {
            n_layers: layers,
            ..self.kv_shape()
        }
    }

    /// Token embeddings of every new token, in segment order.
    fn embed(&self, segs: &[Segment]) -> Vec<f32> {
        let h = self.config.hidden;
        let n: usize = segs.iter().map(|s| s.tokens.len()).sum();
        let mut x = vec![0.0f32; n * h];
        for (row, tok) in x
            .chunks_exact_mut(h)
            .zip(segs.iter().flat_map(|s| s.tokens.iter()))
        {
            self.weights.token_embd.dequantize_row(*tok as usize, row);
        }
        let scale = self.config.embed_scale();
        if scale != 1.0 {
            x.iter_mut().for_each(|v| *v *= scale);
        }
        x
    }

    /// Layers `layers` over the residual stream `x`; cache layer `l - layers.start` holds
    /// model layer `l`.
    fn run_layers(
        &self,
        segs: &mut [Segment],
        layers: std::ops::Range<usize>,
        x: &mut [f32],
        on_layer: &mut (dyn FnMut(usize, &[Segment]) -> ControlFlow<()> + Send),
    ) -> Result<()> {
        let c = &self.config;
        let (h, kv, qd, hd) = (c.hidden, c.kv_dim(), c.q_dim(), c.head_dim);
        // (segment, position) of every token in the step, in order.
        let mut token_at: Vec<(usize, usize)> = Vec::new();
        for (si, s) in segs.iter().enumerate() {
            let start = s.cache.len();
            token_at.extend((0..s.tokens.len()).map(|i| (si, start + i)));
        }
        let n = token_at.len();
        // RoPE tables per token: the global layers' and, with sliding windows, the local
        // layers' (their own base, no scaling).
        let tables = |base: f32, scale: f32, factors: Option<&[f32]>| -> Vec<Vec<[f32; 2]>> {
            token_at
                .iter()
                .map(|&(_, pos)| {
                    let mut t = Vec::new();
                    ops::rope_table_scaled(pos, c.rope_dim, base, scale, factors, &mut t);
                    t
                })
                .collect()
        };
        let rope_global = tables(
            c.rope_base,
            c.rope_freq_scale,
            self.weights.rope_freqs.as_deref(),
        );
        let rope_local = c
            .sliding_window
            .map(|_| tables(c.rope_base_local, 1.0, None));
        let mut xn = vec![0.0f32; n * h];
        let mut q = vec![0.0f32; n * qd];
        let mut k = vec![0.0f32; n * kv];
        let mut v = vec![0.0f32; n * kv];
        let mut att = vec![0.0f32; n * qd];
        let mut proj = vec![0.0f32; n * h];
        let mut gate = vec![0.0f32; n * c.ffn];
        let mut up = vec![0.0f32; n * c.ffn];
        let mut normed = Vec::new();
        let first_layer = layers.start;
        for li in layers {
            let l = &self.weights.layers[li];
            let cl = li - first_layer;
            let local = c.is_local(li);
            let rope = match (&rope_local, local) {
                (Some(t), true) => t,
                _ => &rope_global,
            };
            let acts = norm_then_quantize(x, &l.attn_norm, c.rms_eps, &mut xn, &l.wq);
            SharedActs::with(&xn, acts)
                .mul_all(&[&l.wq, &l.wk, &l.wv], &mut [&mut q, &mut k, &mut v]);
            for (buf, bias) in [
                (&mut q, &l.q_bias),
                (&mut k, &l.k_bias),
                (&mut v, &l.v_bias),
            ] {
                if let Some(b) = bias {
                    ops::add_bias(buf, b);
                }
            }
            for (buf, norm) in [(&mut q, &l.q_norm), (&mut k, &l.k_norm)] {
                if let Some(w) = norm {
                    // Each head is a row of `head_dim` values.
                    normed.clear();
                    normed.resize(buf.len(), 0.0);
                    ops::rms_norm(buf, w, c.rms_eps, &mut normed);
                    buf.copy_from_slice(&normed);
                }
            }
            let rotate = if c.family.rope_neox() {
                ops::apply_rope_neox
            } else {
                ops::apply_rope
            };
            for t in 0..n {
                rotate(&mut q[t * qd..(t + 1) * qd], hd, &rope[t]);
                rotate(&mut k[t * kv..(t + 1) * kv], hd, &rope[t]);
            }
            let mut first = 0;
            for s in segs.iter_mut() {
                let m = s.tokens.len();
                s.cache.append(
                    cl,
                    &k[first * kv..(first + m) * kv],
                    &v[first * kv..(first + m) * kv],
                );
                first += m;
            }
            let blocks: Vec<SeqBlocks> = segs
                .iter()
                .map(|s| (s.cache.layer_blocks(cl), s.cache.block_tokens()))
                .collect();
            let window = c.sliding_window.filter(|_| local);
            self.attention(&q, &blocks, &token_at, window, &mut att);
            drop(blocks);
            matmul_f32(&l.wo, &att, &mut proj);
            add_normed(x, &proj, l.post_attn_norm.as_deref(), c.rms_eps, &mut xn);
            // The next layer's attention reads every sequence's K/V of that layer from
            // memory; the gate/up matmul is compute-bound at a batch, so it fetches them.
            let mut side = SideFetch::with_budget(self.side_fetch_bytes);
            if let Some(next) = Some(cl + 1).filter(|&c| c < segs[0].cache.shape().n_layers) {
                for s in segs.iter() {
                    for (k, v) in s.cache.layer_blocks(next) {
                        side.add(k);
                        side.add(v);
                    }
                }
            }
            self.ffn(l, x, &mut xn, [&mut gate, &mut up], &mut proj, &side);
            add_normed(x, &proj, l.post_ffn_norm.as_deref(), c.rms_eps, &mut xn);
            if on_layer(li, segs).is_break() {
                return Err(EngineError::Cancelled);
            }
        }
        Ok(())
    }

    /// Logits for each segment's last token, and the scores of segments that ask for them.
    fn head(&self, segs: &mut [Segment], x: &[f32]) -> Vec<Vec<f32>> {
        let h = self.config.hidden;
        let mut start = 0;
        for s in segs.iter_mut() {
            let n = s.tokens.len();
            if let Some(scores) = s.scores.as_deref_mut() {
                self.score(&x[start * h..(start + n) * h], s.tokens, scores);
            }
            start += n;
        }
        self.last_logits(segs, x)
    }

    /// Scores `tokens[1..]` from the hidden states `x` of `tokens`, [`SCORE_ROWS`]
    /// positions at a time through the output head.
    fn score(&self, x: &[f32], tokens: &[u32], out: &mut TokenScores) {
        let h = self.config.hidden;
        let head = self.weights.output_head();
        let eps = self.config.rms_eps;
        let positions = tokens.len().saturating_sub(1);
        out.scored.reserve(positions);
        let mut logits = vec![0.0f32; SCORE_ROWS.min(positions.max(1)) * head.rows()];
        for first in (0..positions).step_by(SCORE_ROWS) {
            let rows = SCORE_ROWS.min(positions - first);
            let xs = &x[first * h..(first + rows) * h];
            let mut normed = vec![0.0f32; xs.len()];
            let acts = norm_then_quantize(xs, &self.weights.output_norm, eps, &mut normed, head);
            let mut outs: Vec<&mut [f32]> = logits.chunks_mut(head.rows()).take(rows).collect();
            matmul_tokens(head, &acts, &mut outs);
            for (r, l) in outs.iter().enumerate() {
                let next = tokens[first + r + 1];
                out.scored
                    .push(crate::sampling::logprobs_of(l, next, out.top));
            }
        }
    }

    /// Logits for each segment's last token only.
    fn last_logits(&self, segs: &[Segment], x: &[f32]) -> Vec<Vec<f32>> {
        let h = self.config.hidden;
        let mut last = Vec::with_capacity(segs.len() * h);
        let mut end = 0;
        for s in segs.iter() {
            end += s.tokens.len();
            last.extend_from_slice(&x[(end - 1) * h..end * h]);
        }
        let mut normed = vec![0.0f32; last.len()];
        let head = self.weights.output_head();
        let eps = self.config.rms_eps;
        let acts = norm_then_quantize(&last, &self.weights.output_norm, eps, &mut normed, head);
        // Each sequence's logits written in place (no copy of a batch-wide buffer).
        let mut logits: Vec<Vec<f32>> = segs.iter().map(|_| vec![0.0f32; head.rows()]).collect();
        let mut rows: Vec<&mut [f32]> = logits.iter_mut().map(|l| &mut l[..]).collect();
        matmul_tokens(head, &acts, &mut rows);
        logits
    }

    fn ffn(
        &self,
        l: &LayerWeights,
        x: &[f32],
        xn: &mut [f32],
        [gate, up]: [&mut [f32]; 2],
        out: &mut [f32],
        side: &SideFetch,
    ) {
        let acts = norm_then_quantize(x, &l.ffn_norm, self.config.rms_eps, xn, &l.w_gate);
        SharedActs::with(xn, acts).mul_all_fetching(
            &[&l.w_gate, &l.w_up],
            &mut [&mut *gate, &mut *up],
            side,
        );
        // SiLU and the down projection's quantisation in one region.
        let ffn = self.config.ffn;
        let acts = QuantizedActs::make_then_quantize(
            l.w_down.format(),
            ffn,
            gate,
            ops::PARALLEL_EXP_ELEMENTS.div_ceil(ffn),
            |first, g| {
                let u = &up[first * ffn..][..g.len()];
                if self.config.family.gelu() {
                    ops::gelu_mul_in_place(g, u)
                } else {
                    crate::expf::silu_mul_in_place(g, u)
                }
            },
        );
        matmul(&l.w_down, &acts, out);
    }

    /// Causal attention of every new token over its own sequence's cache (grouped-query:
    /// query head `h` reads KV head `h / (n_heads / n_kv_heads)`).
    ///
    /// Work is split into (query block, KV head) tasks: a block is up to [`QUERY_BLOCK`]
    /// consecutive tokens of one sequence. With AVX2 (and no AVX-512 attention kernels),
    /// a block of several tokens goes through [`attend_block`]: each K/V row is widened
    /// in registers once for every token and head of the block. A single token (decode),
    /// or a CPU with the AVX-512 kernels, goes token by token, up to four heads of the
    /// group a call reading the f16 cache. Without AVX2, each K/V row is widened to f32
    /// once for the block and reused by every head and token. All give the same bits:
    /// each (token, head) result is computed with the same operations in the same order
    /// whatever the block, so batching never changes the output.
    fn attention(
        &self,
        q: &[f32],
        caches: &[SeqBlocks],
        token_at: &[(usize, usize)],
        window: Option<usize>,
        out: &mut [f32],
    ) {
        let c = &self.config;
        // `hidden` is the row stride of `q` and `out`: the query width here.
        let (hd, kv, hidden) = (c.head_dim, c.kv_dim(), c.q_dim());
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut blocks: Vec<(usize, usize)> = Vec::new();
        for (t, &(seg, _)) in token_at.iter().enumerate() {
            match blocks.last_mut() {
                Some((start, len)) if token_at[*start].0 == seg && *len < QUERY_BLOCK => *len += 1,
                _ => blocks.push((t, 1)),
            }
        }
        let tasks: Vec<(usize, usize)> = (0..blocks.len())
            .flat_map(|b| (0..c.n_kv_heads).map(move |g| (b, g)))
            .collect();
        let ptr = OutPtr(out.as_mut_ptr());
        let fused = ops::f16_kernels();
        tasks.par_iter().for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(scores, acc, rows_f32): &mut (Vec<f32>, Vec<f32>, Vec<f32>), &(b, g)| {
                let (t0, m) = blocks[b];
                let (seg, pos0) = token_at[t0];
                let ctx = pos0 + m;
                let (blocks, bt) = (&caches[seg].0[..], caches[seg].1);
                let rows = m * group;
                let qrow = |ti: usize, h: usize| {
                    let head = g * group + h;
                    &q[(t0 + ti) * hidden + head * hd..(t0 + ti) * hidden + (head + 1) * hd]
                };
                // Token ti sees keys lo..=pos0+ti: all of them, or the window's.
                let span = |ti: usize| {
                    let seen = pos0 + ti + 1;
                    (window.map_or(0, |w| seen.saturating_sub(w)), seen)
                };
                let block = fused
                    .filter(|k| m > 1 && attn_avx2::width_ok(hd) && k.avx512_for(hd).is_none());
                if let Some(k) = block {
                    // The whole block at once: each K/V row widened once for every token
                    // and head of it, the same bits as token by token.
                    let qrows: Vec<&[f32]> =
                        (0..rows).map(|r| qrow(r / group, r % group)).collect();
                    let spans: Vec<(usize, usize)> = (0..m).map(span).collect();
                    attend_block(
                        k.avx2,
                        &qrows,
                        &spans,
                        (blocks, bt, kv, g * hd),
                        scale,
                        scores,
                        acc,
                    );
                    for ti in 0..m {
                        // SAFETY: the `group` heads from `g * group` of token `t0 + ti`
                        // (`group * hd` values) belong to this task alone and end at
                        // `(g + 1) * group * hd <= n_heads * hd <= hidden`, inside `out`
                        // (`n * hidden`, as `run_layers` sizes it); `acc` is a separate
                        // buffer of `rows * hd`.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                acc[ti * group * hd..].as_ptr(),
                                ptr.get().add((t0 + ti) * hidden + g * group * hd),
                                group * hd,
                            )
                        };
                    }
                    return;
                }
                if let Some(k) = fused {
                    // Token by token, up to four heads of the group a call, straight from
                    // the f16 cache.
                    for ti in 0..m {
                        let (lo, seen) = span(ti);
                        for h0 in (0..group).step_by(4) {
                            let heads = (group - h0).min(4);
                            let mut qs: [&[f32]; 4] = [&[]; 4];
                            for (h, q) in qs.iter_mut().enumerate().take(heads) {
                                *q = qrow(ti, h0 + h);
                            }
                            acc.clear();
                            acc.resize(heads * hd, 0.0);
                            attend_f16(
                                k,
                                &qs[..heads],
                                (blocks, bt, kv, g * hd),
                                lo,
                                seen,
                                scale,
                                scores,
                                acc,
                            );
                            // SAFETY: the `heads` heads from `g * group + h0` of token
                            // `t0 + ti` (`heads * hd` values) belong to this task alone and
                            // end at `(g * group + h0 + heads) * hd <= n_heads * hd <=
                            // hidden`, inside `out` (`n * hidden`, as `run_layers` sizes
                            // it); `acc` is a separate buffer of `heads * hd`.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    acc.as_ptr(),
                                    ptr.get().add((t0 + ti) * hidden + (g * group + h0) * hd),
                                    heads * hd,
                                )
                            };
                        }
                    }
                    return;
                }
                // This KV head's keys for positions 0..ctx, widened once for the block.
                widen_head(blocks, bt, false, kv, g * hd, hd, ctx, rows_f32);
                scores.clear();
                scores.resize(rows * ctx, 0.0);
                for ti in 0..m {
                    let (lo, seen) = span(ti);
                    for h in 0..group {
                        let r = ti * group + h;
                        let sc = &mut scores[r * ctx + lo..r * ctx + seen];
                        ops::dot_rows(qrow(ti, h), &rows_f32[lo * hd..seen * hd], scale, sc);
                        ops::softmax(sc);
                        // As llama.cpp's f16 KQV product: probabilities meet the f16 V cache
                        // as f16. (Q stays f32 against the f16 K cache: one rounding fewer.)
                        ops::round_to_f16(sc);
                    }
                }
                widen_head(blocks, bt, true, kv, g * hd, hd, ctx, rows_f32);
                acc.clear();
                acc.resize(rows * hd, 0.0);
                for ti in 0..m {
                    let (lo, seen) = span(ti);
                    for h in 0..group {
                        let r = ti * group + h;
                        ops::weighted_rows(
                            &scores[r * ctx + lo..r * ctx + seen],
                            &rows_f32[lo * hd..seen * hd],
                            &mut acc[r * hd..(r + 1) * hd],
                        );
                    }
                }
                for ti in 0..m {
                    for h in 0..group {
                        let head = g * group + h;
                        let dst = (t0 + ti) * hidden + head * hd;
                        let r = ti * group + h;
                        // SAFETY: each (token, head) slot of `out` belongs to exactly one
                        // task; `dst + hd <= out.len()` because t0 + ti < n, head < n_heads
                        // and `out` holds `n * hidden` values (as `run_layers` sizes it);
                        // `acc[r * hd..]` holds at least `hd` values (`r < rows`).
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                acc[r * hd..].as_ptr(),
                                ptr.get().add(dst),
                                hd,
                            )
                        };
                    }
                }
            },
        );
    }
}

/// A block of tokens' attention for the query rows `q` (token `ti`'s heads of one KV head
/// at `ti * group..`, `group = q.len() / spans.len()`), token `ti` over key positions
/// `spans[ti].0..spans[ti].1`; writes `[rows][hd]` into `out`.
///
/// Scores come for every row over the union of the spans (a token's keys past its own
/// are computed and left out of its softmax), then each row's softmax over its own span.
/// The weighted sum takes each row's keys in position order, as the one-token path does:
/// a window's first keys token by token, the keys every token sees with all rows
/// together, then each token's last keys.
fn attend_block(
    k: dot_avx2::Avx2,
    q: &[&[f32]],
    spans: &[(usize, usize)],
    (blocks, bt, kv, offset): F16Head,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut Vec<f32>,
) {
    let (rows, hd) = (q.len(), q[0].len());
    let group = rows / spans.len();
    let lo_min = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let lo_max = spans.iter().map(|s| s.0).max().unwrap_or(0);
    let seen_min = spans.iter().map(|s| s.1).min().unwrap_or(0);
    let ctx = spans.iter().map(|s| s.1).max().unwrap_or(0);
    let w = ctx - lo_min;
    let skip = |b: usize, first: usize| (first - b * bt) * kv;
    scores.clear();
    scores.resize(rows * w, 0.0);
    for (b, first, end) in block_spans(bt, lo_min, ctx) {
        if let Some(&(kc, _)) = blocks.get(b + 1) {
            prefetch_head(kc, kv, offset, hd, bt.min(ctx.saturating_sub((b + 1) * bt)));
        }
        let kc = &blocks[b].0[skip(b, first)..];
        let sc = &mut scores[first - lo_min..];
        attn_avx2::scores(k, q, kc, kv, offset, scale, end - first, sc, w);
    }
    let mut own: Vec<&mut [f32]> = scores
        .chunks_exact_mut(w)
        .enumerate()
        .map(|(r, sc)| {
            let (lo, seen) = spans[r / group];
            &mut sc[lo - lo_min..seen - lo_min]
        })
        .collect();
    ops::softmax_rows(&mut own);
    own.iter_mut().for_each(|sc| ops::round_to_f16(sc));
    out.clear();
    out.resize(rows * hd, 0.0);
    let scores = &scores[..];
    // Rows `rs` accumulate keys `a..e`.
    let mut run = |rs: std::ops::Range<usize>, a: usize, e: usize| {
        for (b, first, end) in block_spans(bt, a, e) {
            let vc = &blocks[b].1[skip(b, first)..];
            let p: Vec<&[f32]> = rs
                .clone()
                .map(|r| &scores[r * w + first - lo_min..r * w + end - lo_min])
                .collect();
            let mut o: Vec<&mut [f32]> = out[rs.start * hd..rs.end * hd]
                .chunks_exact_mut(hd)
                .collect();
            attn_avx2::weighted(k, &p, vc, kv, offset, &mut o);
        }
    };
    let shared = lo_max < seen_min;
    for (ti, &(lo, seen)) in spans.iter().enumerate() {
        let end = if shared { lo_max } else { seen };
        if lo < end {
            run(ti * group..(ti + 1) * group, lo, end);
        }
    }
    if shared {
        run(0..rows, lo_max, seen_min);
        for (ti, &(_, seen)) in spans.iter().enumerate() {
            if seen_min < seen {
                run(ti * group..(ti + 1) * group, seen_min, seen);
            }
        }
    }
}

/// One token's attention for the `group` query heads `qs(h)` of one KV head over the key
/// positions `lo..ctx`, reading the f16 cache directly (each K/V row widened once, in
/// registers, for every head of the group): the same operations in the same order as the
/// widen-then-f32 path, so the result is bit-identical. Writes `[group][hd]` into `out`
/// for a group of 1 to 4 query heads.
#[allow(clippy::too_many_arguments)]
fn attend_f16(
    k: ops::F16Kernels,
    qs: &[&[f32]],
    cache: F16Head,
    lo: usize,
    ctx: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    #[allow(clippy::too_many_arguments)]
    fn run<const G: usize>(
        k: ops::F16Kernels,
        qs: &[&[f32]],
        (blocks, bt, kv, offset): F16Head,
        lo: usize,
        ctx: usize,
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let width = ctx - lo;
        scores.clear();
        scores.resize(G * width, 0.0);
        let hd = out.len() / G;
        let wide = k.avx512_for(hd);
        // Block by block: each score depends on its own row only, so the split changes
        // nothing. Each block's rows are a short run of memory the hardware prefetcher
        // meets cold, so the rows `ahead` blocks on are fetched while this one computes.
        let ahead = PREFETCH_TOKENS.div_ceil(bt);
        let first_block = lo / bt;
        let fetch = |b: usize, v: bool| {
            if let Some(&(kc, vc)) = blocks.get(b) {
                let rows = bt.min(ctx.saturating_sub(b * bt));
                prefetch_head(if v { vc } else { kc }, kv, offset, hd, rows);
            }
        };
        // Where block `b`'s rows from position `first` on start.
        let skip = |b: usize, first: usize| (first - b * bt) * kv;
        (first_block..first_block + ahead).for_each(|b| fetch(b, false));
        for (b, first, end) in block_spans(bt, lo, ctx) {
            let kc = &blocks[b].0[skip(b, first)..];
            fetch(b + ahead, false);
            let mut sc = scores.chunks_exact_mut(width);
            let sc: [&mut [f32]; G] =
                std::array::from_fn(|_| &mut sc.next().expect("G rows")[first - lo..end - lo]);
            let q = std::array::from_fn(|h| qs[h]);
            match wide {
                Some(k5) => dot_avx512::dot_rows_f16(k5, q, kc, kv, offset, scale, sc),
                None => dot_avx2::dot_rows_f16(k.avx2, q, kc, kv, offset, scale, sc),
            }
        }
        (first_block..first_block + ahead).for_each(|b| fetch(b, true));
        for sc in scores.chunks_exact_mut(width) {
            ops::softmax(sc);
            ops::round_to_f16(sc);
        }
        // The weighted sum accumulates into `out` row after row, in position order, with
        // the same operations whether the rows come in one block or many.
        for (b, first, end) in block_spans(bt, lo, ctx) {
            let vc = &blocks[b].1[skip(b, first)..];
            fetch(b + ahead, true);
            let mut o = out.chunks_exact_mut(hd);
            let o: [&mut [f32]; G] = std::array::from_fn(|_| o.next().expect("G rows"));
            let p: [&[f32]; G] =
                std::array::from_fn(|h| &scores[h * width + first - lo..h * width + end - lo]);
            match wide {
                Some(k5) => dot_avx512::weighted_rows_f16(k5, p, vc, kv, offset, o),
                None => dot_avx2::weighted_rows_f16(k.avx2, p, vc, kv, offset, o),
            }
        }
    }
    match qs.len() {
        1 => run::<1>(k, qs, cache, lo, ctx, scale, scores, out),
        2 => run::<2>(k, qs, cache, lo, ctx, scale, scores, out),
        3 => run::<3>(k, qs, cache, lo, ctx, scale, scores, out),
        4 => run::<4>(k, qs, cache, lo, ctx, scale, scores, out),
        n => unreachable!("attend_f16 takes 1 to 4 query heads, got {n}"),
    }
}

/// Tokens of K/V rows fetched ahead of the attention kernels in a paged cache.
const PREFETCH_TOKENS: usize = 32;

/// Asks for the first `rows` rows' (at most [`PREFETCH_TOKENS`]) `hd` values at `offset`
/// (f16, rows `kv` wide) to be brought into the cache; changes no value.
#[inline]
fn prefetch_head(rows_src: &[half::f16], kv: usize, offset: usize, hd: usize, rows: usize) {
    let bytes = hd * 2;
    // At most the look-ahead: a contiguous cache is one block, streamed well already.
    for r in 0..rows.min(PREFETCH_TOKENS).min(rows_src.len() / kv.max(1)) {
        let start = rows_src[r * kv + offset..].as_ptr() as usize;
        let mut line = start & !63;
        while line < start + bytes {
            crate::quant::side_fetch::prefetch(line);
            line += 64;
        }
    }
}

/// One sequence's K and V rows of one layer, block by block, and the block size.
type SeqBlocks<'c> = (Vec<(&'c [half::f16], &'c [half::f16])>, usize);

/// One KV head of one cache layer: its (K, V) blocks, tokens per block, the row width and
/// the head's offset.
type F16Head<'c> = (
    &'c [(&'c [half::f16], &'c [half::f16])],
    usize,
    usize,
    usize,
);

/// The most K/V bytes a layer's gate/up matmul prefetches for the next layer's
/// attention: about what stays in the caches until then (more would be evicted unread).
pub const SIDE_FETCH_BYTES: usize = 1536 * 1024;

/// Tokens of one sequence whose attention is computed together.
const QUERY_BLOCK: usize = 16;

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the pointer is into `attention`'s `out`, whose exclusive borrow that fn holds
// until every task has finished; attention tasks write disjoint (token, head) slots of it.
unsafe impl Send for OutPtr {}
// SAFETY: shared `&OutPtr`s only copy the pointer out; the writes through it go to the
// (token, head) slots of the one task that owns them, so concurrent use does not race.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Positions `0..ctx` of one KV head's K (`v = false`) or V rows (`hd` values at `offset`
/// in each `kv`-wide row of the cache's blocks of `bt` tokens) widened exactly to f32,
/// contiguous `[ctx][hd]` in `dst`.
#[allow(clippy::too_many_arguments)]
fn widen_head(
    blocks: &[(&[half::f16], &[half::f16])],
    bt: usize,
    v: bool,
    kv: usize,
    offset: usize,
    hd: usize,
    ctx: usize,
    dst: &mut Vec<f32>,
) {
    dst.resize(ctx * hd, 0.0);
    for (b, first, end) in block_spans(bt, 0, ctx) {
        let src = if v { blocks[b].1 } else { blocks[b].0 };
        ops::widen_f16_rows(src, kv, offset, hd, &mut dst[first * hd..end * hd]);
    }
}

/// Positions `lo..ctx` split by blocks of `bt` tokens: `(block, first, end)` for each block
/// holding any of them.
fn block_spans(bt: usize, lo: usize, ctx: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (lo / bt..ctx.div_ceil(bt)).map(move |b| (b, (b * bt).max(lo), ((b + 1) * bt).min(ctx)))
}

/// Takes the KV blocks every segment's new tokens need, before any compute, so a budget
/// that cannot give them refuses the forward ([`EngineError::KvCapacity`]) instead of
/// failing midway.
fn take_blocks(segs: &mut [Segment]) -> Result<()> {
    for s in segs.iter_mut() {
        let end = s.cache.len() + s.tokens.len();
        s.cache.ensure(end)?;
    }
    Ok(())
}

/// Rows of a batch from which RMS norm and the quantisation of its output run split
/// across the compute threads (below it one thread does both: the wake-up would cost
/// more than it saves).
const NORM_PARALLEL_ROWS: usize = 8;

/// `x += y`, or `x += rms_norm(y)` where the layer norms its sublayer's output (Gemma 3),
/// `tmp` holding the normed values.
fn add_normed(x: &mut [f32], y: &[f32], norm: Option<&[f32]>, eps: f32, tmp: &mut [f32]) {
    match norm {
        Some(w) => {
            ops::rms_norm(y, w, eps, tmp);
            ops::add_assign(x, tmp);
        }
        None => ops::add_assign(x, y),
    }
}

/// `xn = rms_norm(x)` and `xn` quantised for `w`, in one parallel region for a batch.
fn norm_then_quantize(
    x: &[f32],
    weight: &[f32],
    eps: f32,
    xn: &mut [f32],
    w: &QMatrix,
) -> QuantizedActs {
    let d = weight.len();
    QuantizedActs::make_then_quantize(w.format(), d, xn, NORM_PARALLEL_ROWS, |first, out| {
        ops::rms_norm(&x[first * d..][..out.len()], weight, eps, out)
    })
}

fn matmul_f32(w: &QMatrix, x: &[f32], out: &mut [f32]) {
    matmul(w, &QuantizedActs::for_weight(w, x), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(seed: u32, n: usize) -> Vec<f32> {
        crate::quant::test_values(seed as u64, n, 2.0)
    }

    /// A block of tokens through `attend_block` equals each token through `attend_f16`,
    /// bit for bit: paged blocks, a block starting mid-cache, windows narrower and wider
    /// than the block, three and four query heads a KV head.
    #[test]
    fn block_attention_equals_token_by_token_bit_for_bit() {
        let Some(k) = ops::f16_kernels() else {
            eprintln!("skipped: CPU lacks AVX2/F16C");
            return;
        };
        let (bt, kv_heads) = (16, 2);
        for (hd, group) in [(64, 3), (256, 4), (16, 1)] {
            let kv = kv_heads * hd;
            let ctx: usize = 75;
            let cache: Vec<(Vec<half::f16>, Vec<half::f16>)> = (0..ctx.div_ceil(bt))
                .map(|b| {
                    let f = |seed| {
                        values(seed, bt * kv)
                            .into_iter()
                            .map(half::f16::from_f32)
                            .collect::<Vec<_>>()
                    };
                    (f(2 * b as u32), f(2 * b as u32 + 1))
                })
                .collect();
            let blocks: Vec<(&[half::f16], &[half::f16])> =
                cache.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            for (pos0, m, window) in [
                (0usize, 16usize, None::<usize>),
                (40, 16, None),
                (59, 16, Some(20)),
                (50, 9, Some(4)),
                (3, 2, None),
            ] {
                let spans: Vec<(usize, usize)> = (0..m)
                    .map(|ti| {
                        let seen = pos0 + ti + 1;
                        (window.map_or(0, |w| seen.saturating_sub(w)), seen)
                    })
                    .collect();
                let q: Vec<Vec<f32>> = (0..m * group).map(|r| values(100 + r as u32, hd)).collect();
                let qr: Vec<&[f32]> = q.iter().map(|q| &q[..]).collect();
                let head = (&blocks[..], bt, kv, hd);
                let (mut scores, mut out) = (Vec::new(), Vec::new());
                attend_block(k.avx2, &qr, &spans, head, 0.125, &mut scores, &mut out);
                for (ti, &(lo, seen)) in spans.iter().enumerate() {
                    let mut want = vec![0.0f32; group * hd];
                    let k2 = ops::F16Kernels { avx512: None, ..k };
                    attend_f16(
                        k2,
                        &qr[ti * group..(ti + 1) * group],
                        head,
                        lo,
                        seen,
                        0.125,
                        &mut scores,
                        &mut want,
                    );
                    let got: Vec<u32> = out[ti * group * hd..(ti + 1) * group * hd]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect();
                    let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(
                        got, want,
                        "hd {hd} pos0 {pos0} m {m} window {window:?} token {ti}"
                    );
                }
            }
        }
    }
}
