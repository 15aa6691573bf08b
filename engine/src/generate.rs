//! A loaded model with its tokenizer, chat template and KV budget, and the single-sequence
//! generation loop (`genie generate`). Serving builds on the same pieces with its own
//! batching loop; this loop is the reference behaviour they must agree with.

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::error::{EngineError, Result};
use crate::gguf;
use crate::kv_budget::{KvBudget, KvReservation};
use crate::kv_cache::KvCache;
use crate::model::Model;
use crate::sampling::{Sampled, Sampler, SamplingParams};
use crate::stop::StopMatcher;
use crate::tokenizer::GgufTokenizer;
use std::path::Path;

/// How to load an [`Engine`].
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Compute threads (0 = one per core).
    pub threads: usize,
    /// Bytes of KV cache all sequences together may hold.
    pub kv_capacity_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: 0,
            kv_capacity_bytes: 2 << 30,
        }
    }
}

/// What to generate for one sequence.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Extra stop token ids (the model's end-of-turn tokens always stop).
    pub stop_token_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
}

pub use genie_protocol::worker::FinishReason;

/// One generated token as it streams out.
#[derive(Clone, Debug)]
pub struct TokenEvent {
    pub sampled: Sampled,
    /// Text released by this token (may be empty while a multi-byte character or a
    /// possible stop string is pending).
    pub text: String,
}

/// The finished sequence.
#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub logprobs: Vec<Sampled>,
}

/// Model + tokenizer + template + KV budget.
pub struct Engine {
    pub model: Model,
    pub tokenizer: GgufTokenizer,
    pub template: ChatTemplate,
    pub budget: KvBudget,
    eog_ids: Vec<u32>,
}

impl Engine {
    /// Loads a GGUF model and builds its tokenizer and chat template from its metadata.
    pub fn load(path: &Path, opts: &EngineOptions) -> Result<Self> {
        let g = gguf::load(path)?;
        let (tokenizer, template, eog_ids) =
            crate::model_text::text_parts(g.tokenizer.clone(), g.chat_template.as_deref())?;
        let model = Model::from_gguf(g, opts.threads)?;
        Ok(Engine {
            model,
            tokenizer,
            template,
            budget: KvBudget::new(opts.kv_capacity_bytes),
            eog_ids,
        })
    }

    /// Token ids that end a turn for this model (eos, `<|im_end|>`, …).
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.eog_ids
    }

    /// Renders `messages` with the model's chat template.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.template
            .render(messages, add_generation_prompt)
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))
    }

    /// Tokenizes text; `special` parses control tokens written in the text (rendered chat).
    pub fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, special)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// Refuses an empty prompt or one that, with `max_tokens`, overflows the context.
    pub fn check_context(&self, prompt_tokens: usize, max_tokens: usize) -> Result<()> {
        let ctx = self.model.config().context_length;
        if prompt_tokens == 0 {
            return Err(EngineError::InvalidRequest {
                field: "prompt",
                reason: "the prompt is empty after tokenization".into(),
            });
        }
        if prompt_tokens + max_tokens > ctx {
            return Err(EngineError::ContextOverflow {
                prompt_tokens,
                max_tokens,
                context: ctx,
            });
        }
        Ok(())
    }

    /// Checks context length and reserves KV memory for the request's whole lifetime,
    /// before any compute. Returns the reservation and an empty cache of that size.
    pub fn admit(
        &self,
        prompt_tokens: usize,
        max_tokens: usize,
    ) -> Result<(KvReservation, KvCache)> {
        self.check_context(prompt_tokens, max_tokens)?;
        let tokens = prompt_tokens + max_tokens;
        let reservation = self
            .budget
            .reserve(tokens * self.model.kv_shape().bytes_per_token())?;
        Ok((reservation, self.model.new_cache(tokens)))
    }

    /// Generates one sequence, calling `on_token` for every token kept.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        seed: u64,
        on_token: impl FnMut(&TokenEvent),
    ) -> Result<Generation> {
        let (_reservation, mut cache) = self.admit(req.prompt_ids.len(), req.max_tokens)?;
        let mut forward = |tokens: &[u32]| -> Result<Vec<f32>> {
            if cache.is_empty() {
                self.model.prefill(tokens, &mut cache)
            } else {
                Ok(self
                    .model
                    .decode_batch(&mut [(tokens[0], &mut cache)])?
                    .pop()
                    .unwrap_or_default())
            }
        };
        self.generate_with(req, seed, &mut forward, on_token)
    }

    /// The sampling loop over any forward pass: `forward(tokens)` runs the prompt (first
    /// call) or one new token and returns the last token's logits, wherever the layers
    /// run (this process, or a pipeline of stage workers). Sampling, stop tokens and
    /// stop strings are the same as [`Engine::generate`].
    pub fn generate_with(
        &self,
        req: &GenerateRequest,
        seed: u64,
        forward: &mut dyn FnMut(&[u32]) -> Result<Vec<f32>>,
        mut on_token: impl FnMut(&TokenEvent),
    ) -> Result<Generation> {
        req.sampling
            .validate(self.model.config().vocab_size)
            .map_err(|e| EngineError::InvalidRequest {
                field: "sampling",
                reason: e.to_string(),
            })?;
        self.check_context(req.prompt_ids.len(), req.max_tokens)?;
        let mut sampler = Sampler::new(req.sampling.clone(), seed);
        let mut stops = StopMatcher::new(req.stop_strings.clone());
        let mut detok = self.tokenizer.decode_stream(true);
        let mut out = Generation {
            prompt_tokens: req.prompt_ids.len(),
            token_ids: Vec::new(),
            text: String::new(),
            finish_reason: FinishReason::Length,
            logprobs: Vec::new(),
        };
        if req.max_tokens == 0 {
            return Ok(out);
        }
        let mut logits = forward(&req.prompt_ids)?;
        let grammar_error = |e: genie_grammar::GrammarError| EngineError::InvalidRequest {
            field: "grammar",
            reason: e.to_string(),
        };
        loop {
            let s = sampler
                .sample_within(
                    &mut logits,
                    self.model.grammars(),
                    req.max_tokens - out.token_ids.len(),
                )
                .map_err(grammar_error)?;
            if self.eog_ids.contains(&s.token) || req.stop_token_ids.contains(&s.token) {
                out.finish_reason = FinishReason::Stop;
                break;
            }
            sampler.record(s.token).map_err(grammar_error)?;
            out.token_ids.push(s.token);
            let piece = detok.step(s.token);
            let released = stops.push(&piece);
            out.text.push_str(&released.text);
            on_token(&TokenEvent {
                sampled: s.clone(),
                text: released.text,
            });
            out.logprobs.push(s.clone());
            if released.stopped.is_some() {
                out.finish_reason = FinishReason::Stop;
                return Ok(out);
            }
            if out.token_ids.len() >= req.max_tokens {
                break;
            }
            logits = forward(&[s.token])?;
        }
        let tail = stops.push(&detok.finish());
        if tail.stopped.is_some() {
            out.finish_reason = FinishReason::Stop;
        }
        out.text.push_str(&tail.text);
        out.text.push_str(&stops.finish());
        Ok(out)
    }
}
