//! What the gateway itself needs of the model: tokenizer, chat template and the facts
//! that bound a request (context length, vocabulary, end-of-turn ids, KV bytes per token).

use genie_engine::chat_template::ChatTemplate;
use genie_engine::tokenizer::GgufTokenizer;

pub struct Frontend {
    pub served_name: String,
    pub tokenizer: GgufTokenizer,
    pub template: ChatTemplate,
    pub context_length: usize,
    pub vocab_size: usize,
    /// Token ids that end a turn (eos, `<|im_end|>`, …).
    pub eog_ids: Vec<u32>,
    pub default_max_tokens: usize,
    pub max_n: usize,
    pub created: u64,
}

impl Frontend {
    /// A token's text as clients see it in logprobs (lossy for partial UTF-8).
    pub fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        let b = self.tokenizer.token_bytes(id).unwrap_or_default().to_vec();
        (String::from_utf8_lossy(&b).into_owned(), b)
    }
}
