//! The text side of a model, built from GGUF metadata alone: its configuration, tokenizer,
//! chat template and end-of-generation ids. What a gateway or any tokenizer-only user
//! needs; loading it reads the file's header, never its tensor data.

use crate::chat_template::ChatTemplate;
use crate::error::{EngineError, Result};
use crate::gguf::{self, GgufMeta, ModelConfig};
use crate::kv_cache::KvShape;
use crate::tokenizer::{GgufTokenizer, TokenizerSpec};
use std::path::Path;

/// Tokenizer, chat template and the facts that bound a request, without the weights.
pub struct ModelText {
    pub config: ModelConfig,
    pub tokenizer: GgufTokenizer,
    pub template: ChatTemplate,
    /// Token ids that end a turn (eos, `<|im_end|>`, …).
    pub eog_ids: Vec<u32>,
    /// Bytes the weights take loaded (for the plan's model profile).
    pub weights_bytes: usize,
    /// The file has its own output head (else it is tied to the token embeddings).
    pub has_output: bool,
    /// How many tensors the file stores in each type.
    pub quant_mix: std::collections::BTreeMap<String, usize>,
}

impl ModelText {
    /// Reads `path`'s metadata only (no tensor data) and builds the tokenizer and template.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_meta(gguf::read_meta(path)?)
    }

    pub fn from_meta(meta: GgufMeta) -> Result<Self> {
        let (tokenizer, template, eog_ids) =
            text_parts(meta.tokenizer, meta.chat_template.as_deref())?;
        Ok(ModelText {
            config: meta.config,
            tokenizer,
            template,
            eog_ids,
            weights_bytes: meta.weights_bytes,
            has_output: meta.has_output,
            quant_mix: meta.quant_mix,
        })
    }

    /// KV cache shape of this model.
    pub fn kv_shape(&self) -> KvShape {
        KvShape::of(&self.config)
    }
}

/// The vocabulary as constrained decoding reads it: every token's bytes, the control
/// tokens as special (never text), and the end-of-generation ids as the stop tokens a
/// complete grammar allows.
pub fn grammar_vocabulary(tokenizer: &GgufTokenizer, eog_ids: &[u32]) -> genie_grammar::Vocabulary {
    let ids = 0..tokenizer.vocab_size() as u32;
    genie_grammar::Vocabulary {
        tokens: ids
            .clone()
            .map(|i| tokenizer.token_bytes(i).unwrap_or_default().to_vec())
            .collect(),
        special: ids.map(|i| tokenizer.is_control(i)).collect(),
        stop: eog_ids.to_vec(),
    }
}

impl ModelText {
    /// This model's grammar environment, made on first use.
    pub fn grammars(&self) -> genie_grammar::LazyGrammars {
        let vocab = grammar_vocabulary(&self.tokenizer, &self.eog_ids);
        let width = self.config.vocab_size;
        genie_grammar::LazyGrammars::new(move || Ok((vocab.clone(), width)))
    }
}

/// The tokenizer, the chat template (ChatML when the file has none) and the
/// end-of-generation ids found in the vocabulary.
pub(crate) fn text_parts(
    spec: TokenizerSpec,
    chat_template: Option<&str>,
) -> Result<(GgufTokenizer, ChatTemplate, Vec<u32>)> {
    let tokenizer =
        GgufTokenizer::from_spec(spec).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    let tok_text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_str(i))
            .unwrap_or_default()
            .to_string()
    };
    let template = match chat_template {
        Some(src) => ChatTemplate::new(
            src,
            &tok_text(tokenizer.bos_token_id()),
            &tok_text(tokenizer.eos_token_id()),
        )
        .map_err(|e| EngineError::ChatTemplate(e.to_string()))?,
        None => ChatTemplate::chatml(),
    };
    let mut eog_ids: Vec<u32> = tokenizer.eos_token_id().into_iter().collect();
    for name in [
        "<|im_end|>",
        "<|endoftext|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<end_of_turn>",
    ] {
        if let Some(id) = tokenizer.token_id(name) {
            if !eog_ids.contains(&id) {
                eog_ids.push(id);
            }
        }
    }
    Ok((tokenizer, template, eog_ids))
}
