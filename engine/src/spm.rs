//! SentencePiece-style BPE as GGUF `llama` tokenizers define it (Gemma, Llama 2, Mistral):
//! spaces become `▁`, the text starts as single characters, and the adjacent pair whose
//! joined text is a vocabulary entry of highest score is merged, repeatedly (ties: the
//! leftmost); a character left outside the vocabulary becomes its UTF-8 bytes' `<0xXX>`
//! tokens. This is llama.cpp's SPM tokenizer, written here from its description.
//!
//! Special tokens are cut out of the text first, longest first at each position:
//! user-defined ones (Gemma's newline runs, …) always, control ones (`<start_of_turn>`)
//! only when the caller parses special tokens, so user content never becomes a control
//! token. Control and user-defined tokens never take part in merges.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The space marker of SentencePiece vocabularies.
pub const SPACE: char = '\u{2581}';

pub struct Spm {
    /// Normal tokens only: what merges may produce.
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    bytes: [Option<u32>; 256],
    unk: Option<u32>,
    add_space_prefix: bool,
    /// Special tokens by their first byte, each list longest first: `(text, id, control)`.
    special: HashMap<u8, Vec<(String, u32, bool)>>,
}

/// A candidate merge of the symbols at `left` and the one after it.
struct Bigram {
    score: f32,
    left: usize,
    /// Bytes of the joined text: a stale candidate no longer matches its symbols.
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Higher score first, then the leftmost.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

/// A symbol of the text being merged: bytes `start..start + len`, linked to its
/// neighbours (`usize::MAX` at the ends); `len == 0` once merged into its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

impl Spm {
    /// From the vocabulary, scores and token types (1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 6 byte).
    pub fn new(
        tokens: &[String],
        scores: &[f32],
        types: &[i32],
        unk: Option<u32>,
        add_space_prefix: bool,
    ) -> Self {
        let ty = |i: usize| types.get(i).copied().unwrap_or(1);
        let mut ids = HashMap::with_capacity(tokens.len());
        let mut bytes = [None; 256];
        let mut special: HashMap<u8, Vec<(String, u32, bool)>> = HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            match ty(i) {
                3 | 4 if !t.is_empty() => special.entry(t.as_bytes()[0]).or_default().push((
                    t.clone(),
                    i as u32,
                    ty(i) == 3,
                )),
                6 => {
                    if let Some(b) = byte_token(t) {
                        bytes[b as usize].get_or_insert(i as u32);
                    }
                }
                1 => {
                    ids.entry(t.clone()).or_insert(i as u32);
                }
                _ => {}
            }
        }
        for list in special.values_mut() {
            list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        }
        Spm {
            ids,
            scores: scores.to_vec(),
            bytes,
            unk,
            add_space_prefix,
            special,
        }
    }

    /// Tokens of `text` (no bos).
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        let mut plain_start = 0;
        let mut first = true;
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let hit = self.special.get(&b[i]).and_then(|list| {
                list.iter().find(|(t, _, control)| {
                    (parse_special || !control) && b[i..].starts_with(t.as_bytes())
                })
            });
            match hit {
                Some((t, id, _)) => {
                    self.encode_plain(&text[plain_start..i], first, &mut out);
                    out.push(*id);
                    first = false;
                    i += t.len();
                    plain_start = i;
                }
                None => i += 1,
            }
        }
        self.encode_plain(&text[plain_start..], first, &mut out);
        out
    }

    /// One fragment without special tokens.
    fn encode_plain(&self, text: &str, first: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && first {
            s.push(SPACE);
        }
        s.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));
        let mut syms: Vec<Symbol> = s
            .char_indices()
            .map(|(start, c)| Symbol {
                start,
                len: c.len_utf8(),
                prev: NONE,
                next: NONE,
            })
            .collect();
        let n = syms.len();
        for (k, sym) in syms.iter_mut().enumerate() {
            sym.prev = if k == 0 { NONE } else { k - 1 };
            sym.next = if k + 1 == n { NONE } else { k + 1 };
        }
        let mut heap = BinaryHeap::new();
        let pair = |syms: &[Symbol], left: usize, heap: &mut BinaryHeap<Bigram>| {
            if left == NONE || syms[left].next == NONE {
                return;
            }
            let (l, r) = (syms[left], syms[syms[left].next]);
            let joined = &s[l.start..r.start + r.len];
            if let Some(&id) = self.ids.get(joined) {
                heap.push(Bigram {
                    score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                    left,
                    len: joined.len(),
                });
            }
        };
        for k in 0..n.saturating_sub(1) {
            pair(&syms, k, &mut heap);
        }
        while let Some(bg) = heap.pop() {
            let l = syms[bg.left];
            if l.len == 0 || l.next == NONE {
                continue;
            }
            let r = syms[l.next];
            if r.len == 0 || l.len + r.len != bg.len {
                continue;
            }
            // Merge the right symbol into the left one.
            syms[bg.left].len += r.len;
            syms[bg.left].next = r.next;
            let gone = l.next;
            syms[gone].len = 0;
            if r.next != NONE {
                syms[r.next].prev = bg.left;
            }
            pair(&syms, syms[bg.left].prev, &mut heap);
            pair(&syms, bg.left, &mut heap);
        }
        let mut k = if n == 0 { NONE } else { 0 };
        while k != NONE {
            let sym = syms[k];
            let piece = &s[sym.start..sym.start + sym.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for byte in piece.bytes() {
                        if let Some(id) = self.bytes[byte as usize].or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
            k = sym.next;
        }
    }
}

/// The byte a byte token (`<0x41>`) stands for.
pub fn byte_token(token: &str) -> Option<u8> {
    token
        .strip_prefix("<0x")
        .and_then(|h| h.strip_suffix('>'))
        .and_then(|h| u8::from_str_radix(h, 16).ok())
}

/// The text a normal SPM token stands for: `▁` as a space.
pub fn piece_text(token: &str) -> String {
    token.replace(SPACE, " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm() -> Spm {
        // 0 <unk>, 1 <start>, 2..: normal pieces with scores, then two byte tokens and a
        // user-defined newline pair.
        let toks = [
            "<unk>", "<start>", "▁", "h", "e", "l", "o", "he", "ll", "hell", "hello", "▁hello",
            "<0xC3>", "<0xA9>", "\n\n", "w", "▁w",
        ];
        let types = [2, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 6, 6, 4, 1, 1];
        let scores = [
            0.0, 0.0, -1.0, -2.0, -2.0, -2.0, -2.0, -1.5, -1.4, -1.0, -0.5, -0.1, 0.0, 0.0, 0.0,
            -2.0, -1.0,
        ];
        let toks: Vec<String> = toks.iter().map(|s| s.to_string()).collect();
        Spm::new(&toks, &scores, &types, Some(0), false)
    }

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        let s = spm();
        assert_eq!(s.encode(" hello", false), vec![11]);
        assert_eq!(s.encode("hello", false), vec![10]);
        assert_eq!(s.encode("hel", false), vec![7, 5]);
        // é is outside the vocabulary: its two UTF-8 bytes.
        assert_eq!(s.encode("é", false), vec![12, 13]);
    }

    #[test]
    fn control_tokens_only_when_asked_user_defined_always() {
        let s = spm();
        assert_eq!(s.encode("<start>hello", true), vec![1, 10]);
        assert!(!s.encode("<start>hello", false).contains(&1));
        assert_eq!(s.encode("hello\n\n w", false), vec![10, 14, 16]);
    }
}
