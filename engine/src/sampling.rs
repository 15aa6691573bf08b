//! Token sampling: pure functions of the logits, the parameters and a per-request RNG, so
//! a seeded request is reproducible.
//!
//! Order of operations: a grammar's mask (constrained decoding, [`genie_grammar`]) sets
//! the tokens it does not allow to −∞; logit_bias and presence/frequency penalties change the logits;
//! logprobs (if asked) are the log-softmax of those logits; then temperature, top-k, top-p
//! and the draw. Temperature 0 is greedy (ties go to the lowest id).

use genie_grammar::{Constraint, GrammarError, GrammarSpec, LazyGrammars};

/// Sampling parameters of one request (OpenAI semantics; `top_k` is an extension).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    /// Some(n): report the chosen token's logprob and the n most likely alternatives.
    pub logprobs: Option<usize>,
    /// Some(n): also report each prompt token's logprob given the tokens before it, with
    /// the n most likely alternatives (completions' `echo` with `logprobs`). Computed from
    /// the model's raw logits where the prompt is prefilled; the prompt is then computed
    /// whole, never taken from a prefix cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<usize>,
    /// What the output must match (`response_format`, a tool's parameters); None: any
    /// text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<GrammarSpec>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            logprobs: None,
            prompt_logprobs: None,
            grammar: None,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SamplingError {
    #[error("`{field}`: {reason}")]
    InvalidParam { field: &'static str, reason: String },
}

/// How close to its token budget a sequence under a grammar starts checking that its JSON
/// can still be completed in time (each step in the window costs a short closing search).
pub const CLOSE_WINDOW: usize = 48;

/// Largest `logprobs` count accepted (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every range; the error names the field, the value and what is allowed.
    pub fn validate(&self, vocab_size: usize) -> Result<(), SamplingError> {
        let bad = |field, reason: String| Err(SamplingError::InvalidParam { field, reason });
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return bad(
                "temperature",
                format!("{} is not in [0, 2]", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} is not in (0, 1]", self.top_p));
        }
        for (field, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(v.is_finite() && (-2.0..=2.0).contains(&v)) {
                return bad(field, format!("{v} is not in [-2, 2]"));
            }
        }
        for &(tok, b) in &self.logit_bias {
            if tok as usize >= vocab_size {
                return bad(
                    "logit_bias",
                    format!("token id {tok} is not below the vocabulary size {vocab_size}"),
                );
            }
            if !(b.is_finite() && (-100.0..=100.0).contains(&b)) {
                return bad(
                    "logit_bias",
                    format!("bias {b} for token {tok} is not in [-100, 100]"),
                );
            }
        }
        if let Some(n) = self.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return bad(
                "top_logprobs",
                format!("{n} is more than {MAX_TOP_LOGPROBS}"),
            );
        }
        if let Some(n) = self.prompt_logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return bad("logprobs", format!("{n} is more than {MAX_TOP_LOGPROBS}"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
}

/// One sampled token with its log-probabilities when requested.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sampled {
    pub token: u32,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<TokenLogprob>,
}

/// xoshiro256** seeded by SplitMix64: small, fast, identical on every platform.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Per-sequence sampler: owns the RNG, the counts behind the penalties and the grammar's
/// state. It serialises, so a sequence can move from the worker that sampled its first
/// token to another; the grammar's state travels as the tokens it kept, replayed on
/// first use where it lands.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    counts: std::collections::HashMap<u32, u32>,
    /// The tokens kept under the grammar, in order (empty without one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    committed: Vec<u32>,
    /// The compiled grammar, advanced by `committed`; made on first use.
    #[serde(skip)]
    constraint: Option<Box<Constraint>>,
}

fn clean(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// `token`'s log-probability under `logits` (their log-softmax; NaN counts as −∞) and the
/// `n` most likely tokens, most likely first (ties to the lower id).
pub fn logprobs_of(logits: &[f32], token: u32, n: usize) -> Sampled {
    let max = logits
        .iter()
        .copied()
        .map(clean)
        .fold(f32::NEG_INFINITY, f32::max);
    let lse = max
        + (logits
            .iter()
            .map(|&l| ((clean(l) - max) as f64).exp())
            .sum::<f64>())
        .ln() as f32;
    let key = |i: &u32| clean(logits[*i as usize]);
    let n = n.min(logits.len());
    let mut idx: Vec<u32> = Vec::new();
    if n > 0 {
        idx = (0..logits.len() as u32).collect();
        idx.select_nth_unstable_by(n - 1, |a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
        idx.truncate(n);
        idx.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
    }
    Sampled {
        token,
        logprob: Some(clean(logits[token as usize]) - lse),
        top_logprobs: idx
            .into_iter()
            .map(|t| TokenLogprob {
                token: t,
                logprob: clean(logits[t as usize]) - lse,
            })
            .collect(),
    }
}

impl Sampler {
    /// `fallback_seed` is used when the request has no seed of its own.
    pub fn new(params: SamplingParams, fallback_seed: u64) -> Self {
        let seed = params.seed.unwrap_or(fallback_seed);
        Sampler {
            params,
            rng: Rng::new(seed),
            counts: Default::default(),
            committed: Vec::new(),
            constraint: None,
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The sampler exactly as it stood after sampling and keeping `generated`, rebuilt
    /// from the request alone: a sequence moved to another worker mid-stream continues
    /// with the same random stream and penalty counts. Each kept token cost one RNG draw
    /// when sampling is random ([`Sampler::sample`] draws once per step; the only step
    /// that does not, all logits NaN or −inf, keeps token 0 and cannot recur in a real
    /// model), none when it is greedy.
    pub fn resume(params: SamplingParams, fallback_seed: u64, generated: &[u32]) -> Self {
        let mut s = Sampler::new(params, fallback_seed);
        let random = !s.is_greedy();
        for &t in generated {
            if random {
                s.rng.next_f64();
            }
            s.counts_and_committed(t);
        }
        s
    }

    /// Records a kept token (for presence/frequency penalties) and advances the grammar
    /// by it.
    pub fn record(&mut self, token: u32) -> Result<(), GrammarError> {
        self.counts_and_committed(token);
        match self.constraint.as_mut() {
            Some(c) => c.commit(token),
            None => Ok(()),
        }
    }

    fn counts_and_committed(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
        if self.params.grammar.is_some() {
            self.committed.push(token);
        }
    }

    /// [`Sampler::sample_within`] with no token budget.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        grammars: Option<&LazyGrammars>,
    ) -> Result<Sampled, GrammarError> {
        self.sample_within(logits, grammars, usize::MAX)
    }

    /// Masks `logits` by the grammar (compiled from `grammars` on first use), adjusts
    /// them in place (bias, penalties) and picks a token. `remaining` is how many tokens
    /// the sequence may still keep, this one included: within [`CLOSE_WINDOW`] of it, a
    /// grammar that is still open is steered so that it completes in time (a token that
    /// would leave no way to close the value within the budget is replaced by the first
    /// token of a closing path), so an answer cut at
    /// `max_tokens` is still whole JSON. Fails only for a grammar: the model has no
    /// vocabulary for it, it does not compile, or its state broke.
    pub fn sample_within(
        &mut self,
        logits: &mut [f32],
        grammars: Option<&LazyGrammars>,
        remaining: usize,
    ) -> Result<Sampled, GrammarError> {
        let Some(spec) = &self.params.grammar else {
            return Ok(self.sample_masked(logits));
        };
        let c = match &mut self.constraint {
            Some(c) => c,
            slot @ None => {
                let g = grammars
                    .ok_or_else(|| {
                        GrammarError::Unavailable("the model has no tokenizer".to_string())
                    })?
                    .get()?;
                slot.insert(Box::new(g.resume(spec, &self.committed)?))
            }
        };
        c.mask(logits)?;
        if c.is_complete() || remaining > CLOSE_WINDOW {
            return Ok(self.sample_masked(logits));
        }
        // Near the budget: the model's token if the value can still be closed after it in
        // the tokens left, else the first token of a closing path. Decided afresh each
        // step from the grammar's state and one draw, so a sampler resumed elsewhere
        // makes the same choices.
        let s = self.sample_masked(logits);
        let Some(c) = self.constraint.as_deref() else {
            return Ok(s);
        };
        if c.closes_after(s.token, remaining.saturating_sub(1)) {
            return Ok(s);
        }
        match c.closing(remaining) {
            Some(path) if !path.is_empty() => Ok(self.describe(logits, path[0])),
            // No way to close within the budget whatever is chosen: the model's token.
            _ => Ok(s),
        }
    }

    fn sample_masked(&mut self, logits: &mut [f32]) -> Sampled {
        self.adjust(logits);
        let token = self.choose(logits);
        self.describe(logits, token)
    }

    /// Logit bias and presence/frequency penalties, in place.
    fn adjust(&self, logits: &mut [f32]) {
        let p = &self.params;
        for &(t, b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &c) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
                }
            }
        }
    }

    fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0 || self.params.top_k == 1
    }

    /// The token: greedy, or one RNG draw.
    fn choose(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            argmax(logits)
        } else {
            self.draw(logits)
        }
    }

    /// `token` with the log-probabilities asked for, from the adjusted logits.
    fn describe(&self, logits: &[f32], token: u32) -> Sampled {
        match self.params.logprobs {
            None => Sampled {
                token,
                logprob: None,
                top_logprobs: Vec::new(),
            },
            Some(n) => logprobs_of(logits, token, n),
        }
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let max = logits
            .iter()
            .copied()
            .map(clean)
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return 0;
        }
        // Candidates: top-k first (partial selection), else every finite logit.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, &l)| clean(l) > f32::NEG_INFINITY)
            .map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp()))
            .collect();
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, desc);
            cand.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            cand.sort_unstable_by(desc);
            let total: f64 = cand.iter().map(|c| c.1 as f64).sum();
            let mut acc = 0.0;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                acc += c.1 as f64 / total;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        let total: f64 = cand.iter().map(|c| c.1 as f64).sum();
        let mut r = self.rng.next_f64() * total;
        for &(t, w) in &cand {
            r -= w as f64;
            if r < 0.0 {
                return t;
            }
        }
        cand.last().map_or(0, |c| c.0)
    }
}

/// Index of the largest logit, lowest index on ties; NaN counts as -inf.
///
/// Two passes the compiler vectorises (a greedy step over a 49k vocabulary is otherwise
/// a visible share of a batched decode step): the largest value sixteen lanes at a time,
/// then the first index holding it.
pub fn argmax(logits: &[f32]) -> u32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            // `>` is false for NaN, so NaN never becomes the maximum.
            *m = if v > *m { v } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    if max == f32::NEG_INFINITY {
        return 0; // empty, or nothing above -inf: as the one-pass scan would say
    }
    logits.iter().position(|&v| v == max).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            ..Default::default()
        }
    }

    fn dist() -> Vec<f32> {
        (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect()
    }

    #[test]
    fn argmax_equals_the_one_pass_scan_on_ties_nan_signed_zeros_and_tails() {
        let scan = |l: &[f32]| {
            let (mut best, mut best_v) = (0usize, f32::NEG_INFINITY);
            for (i, &v) in l.iter().enumerate() {
                if v > best_v {
                    best = i;
                    best_v = v;
                }
            }
            best as u32
        };
        let mut s = 12345u64;
        for len in [0, 1, 5, 15, 16, 17, 31, 33, 100, 49152] {
            for round in 0..20 {
                let l: Vec<f32> = (0..len)
                    .map(|_| {
                        s = s
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        match (s >> 59, round % 4) {
                            (0, _) => f32::NAN,
                            (1, _) => -0.0,
                            (2, _) => 0.0,
                            (3, 0) => f32::NEG_INFINITY,
                            // Few distinct values, so ties at the maximum are common.
                            _ => ((s >> 40) % 7) as f32 - 3.0,
                        }
                    })
                    .collect();
                assert_eq!(argmax(&l), scan(&l), "len {len} round {round}");
            }
        }
        assert_eq!(argmax(&[f32::NAN; 40]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 40]), 0);
    }

    #[test]
    fn greedy_takes_argmax_lowest_on_ties_and_ignores_nan() {
        let mut s = Sampler::new(SamplingParams::greedy(), 1);
        assert_eq!(s.sample(&mut [1.0, 3.0, 3.0, 2.0], None).unwrap().token, 1);
        assert_eq!(
            s.sample(&mut [f32::NAN, 0.5, f32::NAN], None)
                .unwrap()
                .token,
            1
        );
        let mut k1 = Sampler::new(
            SamplingParams {
                top_k: 1,
                ..params(1.5)
            },
            9,
        );
        assert_eq!(k1.sample(&mut dist(), None).unwrap().token, argmax(&dist()));
        let mut tiny_p = Sampler::new(
            SamplingParams {
                top_p: 1e-6,
                ..params(1.0)
            },
            9,
        );
        assert_eq!(
            tiny_p.sample(&mut dist(), None).unwrap().token,
            argmax(&dist())
        );
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let run = |seed| {
            let mut s = Sampler::new(
                SamplingParams {
                    seed: Some(seed),
                    ..params(1.0)
                },
                0,
            );
            (0..50)
                .map(|_| s.sample(&mut dist(), None).unwrap().token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn frequencies_follow_softmax_with_temperature() {
        let logits = [0.0f32, 1.0, 2.0, 0.5];
        let t = 0.7;
        let mut s = Sampler::new(params(t), 42);
        let mut counts = [0usize; 4];
        let n = 20_000;
        for _ in 0..n {
            counts[s.sample(&mut logits.clone(), None).unwrap().token as usize] += 1;
        }
        let z: f32 = logits.iter().map(|l| (l / t).exp()).sum();
        for i in 0..4 {
            let want = (logits[i] / t).exp() / z;
            let got = counts[i] as f32 / n as f32;
            assert!((want - got).abs() < 0.015, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn a_resumed_sampler_continues_the_same_stream() {
        // Varying logits per step, penalties on: the resumed sampler must pick what the
        // uninterrupted one picks from step k on.
        let logits = |step: usize| -> Vec<f32> {
            (0..64)
                .map(|i| (((i * 7 + step * 13) % 29) as f32) * 0.1)
                .collect()
        };
        let p = SamplingParams {
            frequency_penalty: 0.3,
            top_p: 0.9,
            ..params(0.8)
        };
        let mut whole = Sampler::new(p.clone(), 11);
        let mut kept = Vec::new();
        for step in 0..40 {
            let t = whole.sample(&mut logits(step), None).unwrap().token;
            whole.record(t).unwrap();
            kept.push(t);
        }
        for k in [0usize, 1, 17, 39] {
            let mut resumed = Sampler::resume(p.clone(), 11, &kept[..k]);
            for (step, &t) in kept.iter().enumerate().skip(k) {
                assert_eq!(
                    resumed.sample(&mut logits(step), None).unwrap().token,
                    t,
                    "k={k} step={step}"
                );
                resumed.record(t).unwrap();
            }
        }
        // Greedy draws nothing: resuming is the counts alone.
        let g = Sampler::resume(SamplingParams::greedy(), 5, &[3, 3]);
        assert_eq!(g.counts.get(&3), Some(&2));
    }

    #[test]
    fn bias_and_penalties_move_logits() {
        let mut s = Sampler::new(
            SamplingParams {
                logit_bias: vec![(0, 100.0)],
                ..params(1.0)
            },
            3,
        );
        assert_eq!(s.sample(&mut dist(), None).unwrap().token, 0);
        let mut s = Sampler::new(
            SamplingParams {
                logit_bias: vec![(argmax(&dist()), -100.0)],
                ..SamplingParams::greedy()
            },
            3,
        );
        assert_ne!(s.sample(&mut dist(), None).unwrap().token, argmax(&dist()));
        let mut s = Sampler::new(
            SamplingParams {
                frequency_penalty: 2.0,
                ..SamplingParams::greedy()
            },
            3,
        );
        let mut l = vec![1.0f32, 0.5];
        s.record(0).unwrap();
        s.sample(&mut l, None).unwrap();
        assert_eq!(l[0], -1.0);
    }

    #[test]
    fn logprobs_are_sorted_and_normalised() {
        let mut s = Sampler::new(
            SamplingParams {
                logprobs: Some(3),
                ..SamplingParams::greedy()
            },
            1,
        );
        let mut l = dist();
        let out = s.sample(&mut l, None).unwrap();
        assert_eq!(out.top_logprobs.len(), 3);
        assert!(out
            .top_logprobs
            .windows(2)
            .all(|w| w[0].logprob >= w[1].logprob));
        assert_eq!(out.top_logprobs[0].token, out.token);
        let max = l.iter().copied().fold(f32::MIN, f32::max);
        let lse = max + l.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
        assert!((out.logprob.unwrap() - (l[out.token as usize] - lse)).abs() < 1e-5);
        let total: f32 = l.iter().map(|x| (x - lse).exp()).sum();
        assert!((total - 1.0).abs() < 1e-4);
    }

    #[test]
    fn validation_names_the_field() {
        let v = |p: SamplingParams| p.validate(100).unwrap_err().to_string();
        assert!(v(params(-1.0)).contains("temperature"));
        assert!(v(SamplingParams {
            top_p: 0.0,
            ..params(1.0)
        })
        .contains("top_p"));
        assert!(v(SamplingParams {
            top_p: 1.5,
            ..params(1.0)
        })
        .contains("top_p"));
        assert!(v(SamplingParams {
            logprobs: Some(21),
            ..params(1.0)
        })
        .contains("top_logprobs"));
        assert!(v(SamplingParams {
            logit_bias: vec![(100, 1.0)],
            ..params(1.0)
        })
        .contains("logit_bias"));
        assert!(params(0.0).validate(100).is_ok());
    }
}

#[cfg(test)]
mod grammar_tests {
    use super::*;
    use genie_grammar::Vocabulary;

    /// Every byte a token, a few longer pieces, and a stop token (id 260).
    fn grammars() -> LazyGrammars {
        LazyGrammars::new(|| {
            let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
            for w in ["{\"", "\":", "abc", "[["] {
                tokens.push(w.as_bytes().to_vec());
            }
            tokens.push(b"<|end|>".to_vec());
            let mut special = vec![false; tokens.len()];
            special[260] = true;
            Ok((
                Vocabulary {
                    tokens,
                    special,
                    stop: vec![260],
                },
                262,
            ))
        })
    }

    /// Pseudo-random logits for step `i`, the same whoever asks.
    fn logits(i: usize) -> Vec<f32> {
        (0..262u64)
            .map(|t| ((t * 2654435761 + i as u64 * 40503) % 1000) as f32 / 100.0)
            .collect()
    }

    fn bytes(ids: &[u32]) -> String {
        ids.iter()
            .map(|&t| if t < 256 { t as u8 as char } else { '?' })
            .collect()
    }

    fn run(s: &mut Sampler, g: &LazyGrammars, from: usize, budget: usize, out: &mut Vec<u32>) {
        for i in from..budget {
            let t = s
                .sample_within(&mut logits(i), Some(g), budget - i)
                .unwrap()
                .token;
            if t == 260 {
                return;
            }
            s.record(t).unwrap();
            out.push(t);
        }
    }

    #[test]
    fn under_a_budget_the_answer_is_whole_json_and_a_resumed_sampler_continues_it() {
        let g = grammars();
        let params = SamplingParams {
            temperature: 1.0,
            grammar: Some(GrammarSpec::JsonObject),
            ..SamplingParams::default()
        };
        let mut complete = 0;
        for seed in 0..8u64 {
            for budget in [6, 12, 30] {
                let mut s = Sampler::new(params.clone(), seed);
                let mut out = Vec::new();
                run(&mut s, &g, 0, budget, &mut out);
                assert!(out.len() <= budget);
                let text: String = out
                    .iter()
                    .map(|&t| match t {
                        256 => "{\"".to_string(),
                        257 => "\":".to_string(),
                        258 => "abc".to_string(),
                        259 => "[[".to_string(),
                        _ => bytes(&[t]),
                    })
                    .collect();
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(v) => assert!(v.is_object()),
                    // Valid JSON whose number (random bytes: `3979e979353979317`) is past
                    // f64's range, which serde_json refuses and the grammar allows.
                    Err(e) if e.to_string().contains("number out of range") => {}
                    Err(e) => panic!("seed {seed}, budget {budget}: {e}: {text}"),
                }
                complete += 1;
                // A sampler rebuilt from the kept tokens (a sequence moved mid-answer)
                // goes on exactly as the original did.
                let half = out.len() / 2;
                let mut again = Sampler::resume(params.clone(), seed, &out[..half]);
                let mut rest = out[..half].to_vec();
                run(&mut again, &g, half, budget, &mut rest);
                assert_eq!(rest, out, "seed {seed}, budget {budget}");
            }
        }
        assert_eq!(complete, 24);
    }
}
