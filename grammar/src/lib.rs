//! Constrained decoding: what a request's `response_format` (or a tool's parameters)
//! allows the model to write, as a mask over the vocabulary at each step.
//!
//! The grammar engine is [llguidance] (the engine behind llama.cpp's and vLLM's guidance
//! backends): a [`GrammarSpec`] (any JSON object, a JSON schema, or a Lark grammar) is
//! compiled against the model's vocabulary ([`Vocabulary`], the raw bytes of every token)
//! into a per-sequence [`Constraint`]. Each step, [`Constraint::mask`] sets every token
//! the grammar does not allow to −∞ (once the grammar is complete, only the stop tokens
//! remain), and [`Constraint::commit`] advances it by the token kept.
//!
//! A `Constraint` does not serialise: a sequence that moves to another worker carries its
//! spec and the tokens it committed, and [`Grammars::resume`] replays them (about a
//! microsecond a token).

mod close;
mod spec;
mod vocab;

pub use spec::{json_rule, GrammarSpec};
pub use vocab::Vocabulary;

use llguidance::api::ParserLimits;
use llguidance::toktrie::InferenceCapabilities;
use llguidance::{Matcher, ParserFactory};
use std::sync::{Arc, OnceLock};

/// Why a grammar could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrammarError {
    /// The spec cannot be compiled: an unsupported schema feature, a schema that is not
    /// an object, a Lark syntax error. The client's to fix; the message says what.
    #[error("{0}")]
    Invalid(String),
    /// The grammar's state refused a step (a token it did not allow was committed, or it
    /// had already failed): a bug, not the client's.
    #[error("grammar state: {0}")]
    State(String),
    /// This model's vocabulary could not be read into a grammar environment.
    #[error("constrained decoding is unavailable for this model: {0}")]
    Unavailable(String),
}

/// A model's compiled vocabulary: made once (tens of milliseconds for a 49k vocabulary),
/// shared by every sequence.
pub struct Grammars {
    factory: ParserFactory,
    width: usize,
    /// Single tokens that close what is open, in the order a closing path prefers them.
    closers: Arc<[u32]>,
}

impl Grammars {
    /// The grammar environment of `vocab`, for logits `width` wide (at least the
    /// vocabulary; ids past it are never allowed).
    pub fn new(vocab: Vocabulary, width: usize) -> Result<Self, GrammarError> {
        let width = width.max(vocab.len());
        let env = vocab.into_env(width)?;
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| GrammarError::Unavailable(e.to_string()))?;
        factory.quiet();
        // Errors name the failing feature, not the whole grammar and parser state.
        *factory.limits_mut() = ParserLimits {
            verbose_errors: false,
            ..ParserLimits::default()
        };
        let closers = close::closers(factory.tok_env().tok_trie());
        Ok(Grammars {
            factory,
            width,
            closers,
        })
    }

    /// Compiles `spec` for a new sequence.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Constraint, GrammarError> {
        let parser = self
            .factory
            .create_parser(spec.to_llguidance()?)
            .map_err(|e| GrammarError::Invalid(e.to_string()))?;
        Ok(Constraint {
            matcher: Matcher::new(Ok(parser)),
            width: self.width,
            env: self.factory.tok_env().clone(),
            closers: self.closers.clone(),
        })
    }

    /// `spec` compiled and advanced by `committed`, the tokens a sequence already kept
    /// under it (on another worker, or before a move).
    pub fn resume(
        &self,
        spec: &GrammarSpec,
        committed: &[u32],
    ) -> Result<Constraint, GrammarError> {
        let mut c = self.compile(spec)?;
        for &t in committed {
            c.commit(t)?;
        }
        Ok(c)
    }
}

/// [`Grammars`] made on first use: most requests never need one, and a worker should not
/// pay for the vocabulary environment at start-up.
pub struct LazyGrammars {
    make: Box<dyn Fn() -> Result<(Vocabulary, usize), String> + Send + Sync>,
    made: OnceLock<Result<Arc<Grammars>, GrammarError>>,
}

impl LazyGrammars {
    /// `make` returns the vocabulary and the logits width.
    pub fn new(
        make: impl Fn() -> Result<(Vocabulary, usize), String> + Send + Sync + 'static,
    ) -> Self {
        LazyGrammars {
            make: Box::new(make),
            made: OnceLock::new(),
        }
    }

    /// The grammar environment, made now if this is its first use.
    pub fn get(&self) -> Result<Arc<Grammars>, GrammarError> {
        self.made
            .get_or_init(|| {
                let (vocab, width) = (self.make)().map_err(GrammarError::Unavailable)?;
                Grammars::new(vocab, width).map(Arc::new)
            })
            .clone()
    }
}

impl std::fmt::Debug for LazyGrammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyGrammars")
            .field("made", &self.made.get().map(|r| r.is_ok()))
            .finish()
    }
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
    width: usize,
    env: llguidance::toktrie::TokEnv,
    closers: Arc<[u32]>,
}

impl Constraint {
    /// Sets every logit the grammar does not allow next to −∞. Once the grammar is
    /// complete (a JSON value closed), only the vocabulary's stop tokens are allowed.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), GrammarError> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| GrammarError::State(e.to_string()))?;
        let words = allowed.as_slice();
        for (i, chunk) in logits.chunks_mut(32).enumerate() {
            let w = words.get(i).copied().unwrap_or(0);
            if w == u32::MAX {
                continue;
            }
            for (j, l) in chunk.iter_mut().enumerate() {
                if (w >> j) & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        // Ids past the grammar's width (a wider logits row) are never allowed.
        if logits.len() > self.width {
            logits[self.width..].fill(f32::NEG_INFINITY);
        }
        Ok(())
    }

    /// Advances the grammar by `token`, which the last mask must have allowed.
    pub fn commit(&mut self, token: u32) -> Result<(), GrammarError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| GrammarError::State(e.to_string()))
    }

    /// True once the grammar is complete: nothing but a stop token may follow.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}

impl Clone for Constraint {
    /// An independent copy (its own lexer cache), safe to advance on another thread.
    fn clone(&self) -> Self {
        Constraint {
            matcher: self.matcher.deep_clone(),
            width: self.width,
            env: self.env.clone(),
            closers: self.closers.clone(),
        }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("complete", &self.is_complete())
            .finish()
    }
}

#[cfg(test)]
mod tests;
