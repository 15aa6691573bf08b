//! Completing a grammar within a token budget: the path a sequence is steered onto near
//! `max_tokens`, so that even a cut answer is a whole JSON value.

use crate::Constraint;
use llguidance::toktrie::{SimpleVob, TokTrie};
use llguidance::Matcher;
use std::sync::Arc;

/// The single tokens that end what is open, in the order a closing path tries them: `"`
/// (ends a string; where a value is due, starts the shortest one), `}`, `]`, and `0`
/// (the shortest number). Those the vocabulary lacks as one token are left out.
pub(crate) fn closers(trie: &TokTrie) -> Arc<[u32]> {
    [&b"\""[..], b"}", b"]", b"0"]
        .iter()
        .filter_map(|b| trie.token_id(b))
        .collect()
}

impl Constraint {
    /// Tokens that complete the grammar from its current state, chosen without the model:
    /// at each step the first allowed closer, else the longest allowed token (the rest of
    /// a property name the schema fixes, an enum value, `true`); at most `limit` of them.
    /// Empty when the grammar is already complete; the stop token alone when it may end
    /// here but could go on (a Lark repetition: another `<tool_call>` block); None when
    /// no path within `limit` was found this way.
    pub fn closing(&self, limit: usize) -> Option<Vec<u32>> {
        let path = close_from(self.matcher.deep_clone(), self, limit)?;
        if path.is_empty() && !self.matcher.is_stopped() {
            return Some(vec![self.env.tok_trie().eos_token()]);
        }
        Some(path)
    }

    /// Whether, after `token`, the grammar can still be completed within `limit` more
    /// tokens (by [`Self::closing`]'s path).
    pub fn closes_after(&self, token: u32, limit: usize) -> bool {
        let mut m = self.matcher.deep_clone();
        m.consume_token(token).is_ok() && close_from(m, self, limit).is_some()
    }
}

fn close_from(mut m: Matcher, c: &Constraint, limit: usize) -> Option<Vec<u32>> {
    let trie = c.env.tok_trie();
    let mut path = Vec::new();
    loop {
        if m.is_stopped() || m.is_accepting().ok()? {
            return Some(path);
        }
        if path.len() >= limit {
            return None;
        }
        let mask = m.compute_mask().ok()?;
        let t = c
            .closers
            .iter()
            .copied()
            .find(|&t| mask.is_allowed(t))
            .or_else(|| longest(&mask, trie))?;
        m.consume_token(t).ok()?;
        path.push(t);
    }
}

/// The allowed token with the most bytes (the lowest id among equals).
fn longest(mask: &SimpleVob, trie: &TokTrie) -> Option<u32> {
    let mut best: Option<(usize, u32)> = None;
    for (w, &bits) in mask.as_slice().iter().enumerate() {
        let mut bits = bits;
        while bits != 0 {
            let t = (w * 32) as u32 + bits.trailing_zeros();
            bits &= bits - 1;
            let len = trie.token_len(t);
            if len > 0 && best.is_none_or(|(l, _)| len > l) {
                best = Some((len, t));
            }
        }
    }
    best.map(|(_, t)| t)
}
