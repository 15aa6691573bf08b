//! What the HTTP API itself needs of the model: tokenizer, chat template and the facts
//! that bound a request (context length, vocabulary, end-of-turn ids). Built from GGUF
//! metadata alone ([`ModelText`]), so a gateway never holds the weights.

use genie_engine::chat_template::ChatTemplate;
use genie_engine::model_text::ModelText;
use genie_engine::tokenizer::GgufTokenizer;
use std::path::Path;

pub struct Frontend {
    pub served_name: String,
    pub tokenizer: GgufTokenizer,
    pub template: ChatTemplate,
    /// How the template gives the model functions and how the model writes calls.
    pub tool_format: crate::tools::ToolFormat,
    pub context_length: usize,
    pub vocab_size: usize,
    /// What `/v1/models` says of the file: architecture, tensor types, KV bytes a token.
    pub architecture: String,
    pub quant_mix: std::collections::BTreeMap<String, usize>,
    pub kv_bytes_per_token: usize,
    /// Token ids that end a turn (eos, `<|im_end|>`, …).
    pub eog_ids: Vec<u32>,
    pub default_max_tokens: usize,
    pub max_n: usize,
    /// Control-token strings in client text (message content, completion prompts) become
    /// control tokens; off by default, so clients cannot forge turns.
    pub parse_special_in_content: bool,
    pub created: u64,
    /// Constrained decoding over the vocabulary: `response_format` schemas are compiled
    /// here before a request is admitted, so one that cannot be enforced is a 400.
    pub grammars: genie_grammar::LazyGrammars,
}

/// Request limits the API enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `max_tokens` when a request gives none (capped by the context left).
    pub default_max_tokens: usize,
    /// Largest `n`.
    pub max_n: usize,
    /// Read control-token strings (`<|im_end|>`) in message content and completion prompts
    /// as control tokens (`server.parse_special_in_content`; default false: plain text).
    pub parse_special_in_content: bool,
}

impl Frontend {
    pub fn new(served_name: String, text: ModelText, limits: Limits) -> Self {
        let grammars = text.grammars();
        let kv_bytes_per_token = text.kv_shape().bytes_per_token();
        Frontend {
            grammars,
            served_name,
            tokenizer: text.tokenizer,
            tool_format: crate::tools::ToolFormat::of(&text.template),
            template: text.template,
            context_length: text.config.context_length,
            architecture: text.config.architecture,
            kv_bytes_per_token,
            quant_mix: text.quant_mix,
            vocab_size: text.config.vocab_size,
            eog_ids: text.eog_ids,
            default_max_tokens: limits.default_max_tokens,
            max_n: limits.max_n,
            parse_special_in_content: limits.parse_special_in_content,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// The model id clients send by default: the file name without its quantisation
    /// suffix (`SmolLM2-135M-Instruct.Q4_1.gguf` → `SmolLM2-135M-Instruct`), else `fallback`
    /// (the GGUF's `general.name`).
    pub fn default_name(path: &Path, fallback: &str) -> String {
        path.file_name()
            .map(|s| {
                s.to_string_lossy()
                    .split('.')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| fallback.to_string())
    }

    /// A token's text as clients see it in logprobs (lossy for partial UTF-8).
    pub fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        let b = self.tokenizer.token_bytes(id).unwrap_or_default().to_vec();
        (String::from_utf8_lossy(&b).into_owned(), b)
    }
}
