//! The model's vocabulary as the grammar engine reads it.

use crate::GrammarError;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use std::sync::Arc;

/// Every token's raw bytes (byte-level BPE already decoded), which of them are special
/// (control tokens such as `<|im_end|>`, never matched as text), and the stop tokens a
/// complete grammar allows.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    pub tokens: Vec<Vec<u8>>,
    pub special: Vec<bool>,
    pub stop: Vec<u32>,
}

impl Vocabulary {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The grammar environment, `width` ids wide (ids past the vocabulary are empty
    /// tokens, which no grammar allows).
    pub(crate) fn into_env(self, width: usize) -> Result<TokEnv, GrammarError> {
        let unavailable = |why: &str| Err(GrammarError::Unavailable(why.to_string()));
        if self.special.len() != self.tokens.len() {
            return unavailable("one special flag per token is needed");
        }
        let Some(&first_stop) = self.stop.first() else {
            return unavailable("the vocabulary has no stop token");
        };
        if self.stop.iter().any(|&s| s as usize >= self.tokens.len()) {
            return unavailable("a stop token is outside the vocabulary");
        }
        let mut words: Vec<Vec<u8>> = self
            .tokens
            .into_iter()
            .zip(self.special)
            .map(|(b, special)| {
                if special {
                    // llguidance's mark of a special token: never part of matched text.
                    let mut v = Vec::with_capacity(b.len() + 1);
                    v.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    v.extend_from_slice(&b);
                    v
                } else {
                    b
                }
            })
            .collect();
        words.resize(width.max(words.len()), Vec::new());
        let info = TokRxInfo::new(words.len() as u32, first_stop);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&self.stop);
        Ok(Arc::new(Env { trie }))
    }
}

struct Env {
    trie: TokTrie,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Tokens for bytes a grammar forces: greedy longest match. Every byte is still
    /// checked by the grammar, so this could decide only how forced text is split, and
    /// [`Self::tokenize_is_canonical`] says not to use it for that.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    /// False: forced text (a schema's property names, a literal) is not turned into
    /// forced tokens by a greedy split the model never saw in training; the mask allows
    /// every token consistent with it and the model chooses the split.
    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}
