//! The model's own tokenizer, built from GGUF metadata (no tokenizer.json download).
//!
//! GGUF `gpt2` tokenizers are byte-level BPE: the vocabulary and merges come from the
//! file, the pre-tokenizer (how text is split before BPE) is chosen from
//! `tokenizer.ggml.pre` as llama.cpp does, and no prefix space is added. Control and
//! user-defined tokens (`<|im_start|>`, …) are special tokens: they are recognised in text
//! only when the caller asks for it (rendered chat templates), never in user content.

use std::collections::HashMap;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// What the GGUF says about its tokenizer.
#[derive(Clone, Debug, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`, e.g. `smollm`, `llama-bpe`, `gpt2`.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    /// 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte; empty = all normal.
    pub token_types: Vec<i32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub add_bos_token: bool,
    /// SentencePiece scores (higher merges first); `llama` tokenizers only.
    pub scores: Vec<f32>,
    pub unknown_token_id: Option<u32>,
    /// SentencePiece: a `▁` before the text (`tokenizer.ggml.add_space_prefix`, default
    /// true; Gemma sets false).
    pub add_space_prefix: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "unsupported tokenizer model `{0}` (byte-level BPE `gpt2` and SentencePiece `llama` are supported)"
    )]
    Unsupported(String),
    #[error("malformed tokenizer metadata: {0}")]
    Malformed(String),
    #[error("tokenization failed: {0}")]
    Encode(String),
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    UnknownId { id: u32, vocab: usize },
}

const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regexes llama.cpp applies, in order, for a `tokenizer.ggml.pre` value.
fn split_regexes(pre: Option<&str>) -> Vec<&'static str> {
    match pre.unwrap_or("gpt2") {
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            vec![r"\p{N}", GPT2_SPLIT]
        }
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
            vec![LLAMA3_SPLIT]
        }
        "qwen2" | "deepseek-r1-qwen" => vec![QWEN2_SPLIT],
        _ => vec![GPT2_SPLIT],
    }
}

/// GPT-2's byte ↔ printable-character table: character → byte.
fn byte_decoder() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .filter_map(|(b, c)| char::from_u32(c).map(|c| (c, b as u8)))
        .collect()
}

/// Where to end a chunk of at most `max` bytes of `text`: before the last whitespace in it
/// when there is one (so words stay whole), else at a character boundary.
fn chunk_end(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text[..end].rfind(char::is_whitespace) {
        Some(i) if i > 0 => i,
        _ if end == 0 => text.chars().next().map_or(text.len(), char::len_utf8),
        _ => end,
    }
}

/// How the text becomes tokens.
enum Codec {
    /// Byte-level BPE through the `tokenizers` crate, with and without special tokens.
    Bpe {
        with_special: Box<Tokenizer>,
        plain: Box<Tokenizer>,
    },
    Spm(Box<crate::spm::Spm>),
}

/// A GGUF tokenizer: byte-level BPE (`gpt2`) or SentencePiece BPE (`llama`).
pub struct GgufTokenizer {
    codec: Codec,
    tokens: Vec<String>,
    bytes: Vec<Vec<u8>>,
    control: Vec<bool>,
    ids: HashMap<String, u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    /// The longest token's text in bytes: no text longer than `n` times this can be `n`
    /// tokens or fewer.
    max_token_bytes: usize,
}

/// Bytes of text tokenized at a time when counting toward a limit.
const COUNT_CHUNK_BYTES: usize = 16 << 10;
/// Tokens a chunk boundary may add over tokenizing the whole text (a split word or run of
/// spaces becomes two pre-tokens); counting allows this much per boundary before it
/// declares the limit passed.
const BOUNDARY_SLACK: usize = 8;

impl GgufTokenizer {
    pub fn from_spec(spec: TokenizerSpec) -> Result<Self, TokenizerError> {
        let spm = match spec.model.as_str() {
            "gpt2" => false,
            "llama" => true,
            _ => return Err(TokenizerError::Unsupported(spec.model)),
        };
        if spec.tokens.is_empty() {
            return Err(TokenizerError::Malformed("the vocabulary is empty".into()));
        }
        let n = spec.tokens.len();
        for (name, id) in [
            ("bos", spec.bos_token_id),
            ("eos", spec.eos_token_id),
            ("unknown", spec.unknown_token_id.filter(|_| spm)),
        ] {
            if let Some(id) = id.filter(|&i| i as usize >= n) {
                return Err(TokenizerError::Malformed(format!(
                    "{name} token id {id} is outside the vocabulary of {n}"
                )));
            }
        }
        let types: Vec<i32> = (0..n)
            .map(|i| spec.token_types.get(i).copied().unwrap_or(1))
            .collect();
        let control: Vec<bool> = types.iter().map(|&t| t == 3).collect();
        let mut vocab: HashMap<String, u32> = HashMap::with_capacity(n);
        for (i, t) in spec.tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(i as u32);
        }
        let (codec, bytes) = if spm {
            Self::spm_parts(&spec, &types)?
        } else {
            Self::bpe_parts(&spec, &types, &vocab)?
        };
        let max_token_bytes = bytes.iter().map(Vec::len).max().unwrap_or(1).max(1);
        Ok(GgufTokenizer {
            codec,
            ids: vocab,
            tokens: spec.tokens,
            bytes,
            control,
            bos: spec.bos_token_id,
            eos: spec.eos_token_id,
            add_bos: spec.add_bos_token,
            max_token_bytes,
        })
    }

    /// Byte-level BPE (`gpt2`): the `tokenizers` crate's model with and without the
    /// special tokens, and each token's bytes through the byte-level alphabet (special
    /// tokens: their literal text).
    fn bpe_parts(
        spec: &TokenizerSpec,
        types: &[i32],
        vocab: &HashMap<String, u32>,
    ) -> Result<(Codec, Vec<Vec<u8>>), TokenizerError> {
        let special: Vec<bool> = types.iter().map(|&t| matches!(t, 3 | 4)).collect();
        let merges = spec
            .merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| TokenizerError::Malformed(format!("merge `{m}` has no space")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let build = |with_special: bool| -> Result<Tokenizer, TokenizerError> {
            let bpe = BPE::builder()
                .vocab_and_merges(
                    vocab
                        .iter()
                        .map(|(k, v)| (k.clone(), *v))
                        .collect::<tokenizers::models::bpe::Vocab>(),
                    merges.clone(),
                )
                .build()
                .map_err(|e| TokenizerError::Malformed(e.to_string()))?;
            let mut tk = Tokenizer::new(bpe);
            let mut pre: Vec<PreTokenizerWrapper> = Vec::new();
            for re in split_regexes(spec.pre.as_deref()) {
                let split = Split::new(
                    SplitPattern::Regex(re.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| TokenizerError::Malformed(e.to_string()))?;
                pre.push(split.into());
            }
            pre.push(ByteLevel::new(false, false, false).into());
            tk.with_pre_tokenizer(Some(Sequence::new(pre)));
            tk.with_decoder(Some(ByteLevel::default()));
            if with_special {
                let added: Vec<AddedToken> = (0..spec.tokens.len())
                    .filter(|&i| special[i])
                    .map(|i| AddedToken::from(spec.tokens[i].clone(), true))
                    .collect();
                tk.add_special_tokens(added)
                    .map_err(|e| TokenizerError::Malformed(e.to_string()))?;
            }
            Ok(tk)
        };
        let dec = byte_decoder();
        let bytes = spec
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if special[i] {
                    t.as_bytes().to_vec()
                } else {
                    t.chars()
                        .map(|c| dec.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                        .unwrap_or_else(|| t.as_bytes().to_vec())
                }
            })
            .collect();
        let codec = Codec::Bpe {
            with_special: Box::new(build(true)?),
            plain: Box::new(build(false)?),
        };
        Ok((codec, bytes))
    }

    /// SentencePiece BPE (`llama`): normal tokens are their text with `▁` as a space, byte
    /// tokens `<0xXX>` their byte, control and user-defined tokens their literal text.
    fn spm_parts(
        spec: &TokenizerSpec,
        types: &[i32],
    ) -> Result<(Codec, Vec<Vec<u8>>), TokenizerError> {
        if spec.scores.len() != spec.tokens.len() {
            return Err(TokenizerError::Malformed(format!(
                "{} scores for {} tokens",
                spec.scores.len(),
                spec.tokens.len()
            )));
        }
        let bytes = spec
            .tokens
            .iter()
            .zip(types)
            .map(|(t, &ty)| match ty {
                6 => crate::spm::byte_token(t).map_or_else(|| t.as_bytes().to_vec(), |b| vec![b]),
                1 => crate::spm::piece_text(t).into_bytes(),
                _ => t.as_bytes().to_vec(),
            })
            .collect();
        let codec = Codec::Spm(Box::new(crate::spm::Spm::new(
            &spec.tokens,
            &spec.scores,
            types,
            spec.unknown_token_id,
            spec.add_space_prefix,
        )));
        Ok((codec, bytes))
    }

    /// The tokens of `text` alone (no bos).
    fn encode_text(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        match &self.codec {
            Codec::Bpe {
                with_special,
                plain,
            } => {
                let tk = if parse_special { with_special } else { plain };
                Ok(tk
                    .encode(text, false)
                    .map_err(|e| TokenizerError::Encode(e.to_string()))?
                    .get_ids()
                    .to_vec())
            }
            Codec::Spm(spm) => Ok(spm.encode(text, parse_special)),
        }
    }

    /// Tokenizes `text`. With `parse_special`, control tokens written literally in the text
    /// (`<|im_start|>`) become their ids; without it they are ordinary text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.encode_text(text, parse_special)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        ids.extend(self.leading_bos());
        ids.extend_from_slice(&enc);
        if parse_special {
            self.drop_doubled_bos(&mut ids);
        }
        Ok(ids)
    }

    /// Drops the [`Self::leading_bos`] put before a text that starts with the bos token
    /// itself (a rendered template that writes it, as Gemma's and Llama 3's do): one bos,
    /// not two.
    pub fn drop_doubled_bos(&self, ids: &mut Vec<u32>) {
        if let Some(bos) = self.leading_bos() {
            if ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
                ids.remove(0);
            }
        }
    }

    /// Tokenizes `text` without the leading bos, giving up (`None`) as soon as it is sure
    /// the text is more than `limit` tokens, so an over-long text costs about `limit`
    /// tokens' work, not its whole length:
    /// - every token covers at least one byte, so text of at most `limit` bytes fits;
    /// - no token covers more than [`Self::max_token_bytes`], so longer text than `limit`
    ///   times that cannot fit;
    /// - between the two, the text is tokenized in chunks of about 16 KiB (cut before
    ///   whitespace where there is some) and counted, stopping once the count is past
    ///   `limit` by more than what the chunk boundaries can add; only text that may fit is
    ///   tokenized whole.
    pub fn encode_within(
        &self,
        text: &str,
        parse_special: bool,
        limit: usize,
    ) -> Result<Option<Vec<u32>>, TokenizerError> {
        if text.len() > limit.saturating_mul(self.max_token_bytes) {
            return Ok(None);
        }
        let run = |t: &str| self.encode_text(t, parse_special);
        if text.len() > limit {
            let (mut count, mut rest, mut chunks) = (0usize, text, 0usize);
            while !rest.is_empty() {
                let cut = chunk_end(rest, COUNT_CHUNK_BYTES);
                count += run(&rest[..cut])?.len();
                chunks += 1;
                rest = &rest[cut..];
                if count > limit + BOUNDARY_SLACK * chunks {
                    return Ok(None);
                }
            }
        }
        let ids = run(text)?;
        Ok((ids.len() <= limit).then_some(ids))
    }

    /// The id [`Self::encode`] puts before the text (bos, when the model asks for it).
    pub fn leading_bos(&self) -> Option<u32> {
        self.bos.filter(|_| self.add_bos)
    }

    /// The longest token's text in bytes.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Text of `ids`; `skip_special` drops control tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let mut out = Vec::new();
        for &id in ids {
            let b = self.token_bytes(id).ok_or(TokenizerError::UnknownId {
                id,
                vocab: self.vocab_size(),
            })?;
            if !(skip_special && self.is_control(id)) {
                out.extend_from_slice(b);
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Raw bytes of one token (control tokens: their literal text).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize).map(Vec::as_slice)
    }

    /// The vocabulary string as stored in the GGUF.
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// Exact vocabulary lookup, e.g. `<|im_end|>`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// The `tokenizers` form of a byte-level BPE tokenizer (`None` for SentencePiece).
    pub fn inner(&self) -> Option<&Tokenizer> {
        match &self.codec {
            Codec::Bpe { with_special, .. } => Some(with_special),
            Codec::Spm(_) => None,
        }
    }

    /// An incremental detokenizer for streaming.
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream {
            tok: self,
            inner: TextDecoder::new(skip_special),
        }
    }
}

/// Turns tokens into text as they arrive, holding back bytes of an unfinished UTF-8
/// character (a token may end in the middle of one). Owns no tokenizer: each step is given
/// one, so a decoder can live in a long-lived per-sequence state.
#[derive(Clone, Debug, Default)]
pub struct TextDecoder {
    skip_special: bool,
    pending: Vec<u8>,
}

impl TextDecoder {
    pub fn new(skip_special: bool) -> Self {
        TextDecoder {
            skip_special,
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text it completes (possibly empty). Unknown ids add nothing.
    pub fn step(&mut self, tok: &GgufTokenizer, id: u32) -> String {
        if self.skip_special && tok.is_control(id) {
            return String::new();
        }
        if let Some(b) = tok.token_bytes(id) {
            self.pending.extend_from_slice(b);
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        // Invalid bytes: replace them and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// End of stream: any held bytes, lossily.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// A [`TextDecoder`] bound to its tokenizer.
pub struct DecodeStream<'a> {
    tok: &'a GgufTokenizer,
    inner: TextDecoder,
}

impl DecodeStream<'_> {
    /// Adds one token; returns the text it completes (possibly empty).
    pub fn step(&mut self, id: u32) -> String {
        self.inner.step(self.tok, id)
    }

    /// End of stream: any held bytes, lossily.
    pub fn finish(&mut self) -> String {
        self.inner.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny byte-level vocabulary: all 256 byte characters, a few merges, two control tokens.
    fn tiny() -> GgufTokenizer {
        let dec = byte_decoder();
        let mut by_byte: Vec<(u8, char)> = dec.iter().map(|(c, b)| (*b, *c)).collect();
        by_byte.sort();
        let mut tokens = vec!["<|im_start|>".to_string(), "<|im_end|>".to_string()];
        tokens.extend(by_byte.iter().map(|(_, c)| c.to_string()));
        tokens.extend(["he", "ll", "hell", "hello", "Ġw", "Ġwo"].map(String::from));
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"]
            .map(String::from)
            .to_vec();
        let mut types = vec![3, 3];
        types.resize(tokens.len(), 1);
        GgufTokenizer::from_spec(TokenizerSpec {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens,
            merges,
            token_types: types,
            bos_token_id: Some(0),
            eos_token_id: Some(1),
            add_bos_token: false,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn counting_within_a_limit_stops_early_and_agrees_with_whole_encoding() {
        let t = tiny();
        assert_eq!(t.max_token_bytes(), "<|im_start|>".len());
        // Short text: tokenized whole, same ids as `encode`.
        let text = "hello wor hello";
        assert_eq!(
            t.encode_within(text, false, 100).unwrap().unwrap(),
            t.encode(text, false).unwrap()
        );
        // Past limit x longest token: refused without tokenizing.
        assert_eq!(t.encode_within(&"x".repeat(121), false, 10).unwrap(), None);
        // Long text that fits (every `hello` is one token): counted in chunks, then whole.
        let fits = "hello ".repeat(9_000);
        let ids = t.encode_within(&fits, false, 20_000).unwrap().unwrap();
        assert_eq!(ids, t.encode(&fits, false).unwrap());
        // One token short of fitting: refused.
        let n = ids.len();
        assert_eq!(t.encode_within(&fits, false, n - 1).unwrap(), None);
        // Multi-byte text and no whitespace: chunks cut at character boundaries, and the
        // count still finds it one token too long.
        let wide = "é".repeat(30_000);
        let whole = t.encode(&wide, false).unwrap();
        assert_eq!(
            t.encode_within(&wide, false, whole.len()).unwrap().unwrap(),
            whole
        );
        assert_eq!(
            t.encode_within(&wide, false, whole.len() - 1).unwrap(),
            None
        );
        assert_eq!(chunk_end(&wide, 5), 4, "a cut never splits a character");
        assert_eq!(chunk_end("ab cd ef", 7), 5, "cut before the last space");
    }

    #[test]
    fn merges_apply_and_text_roundtrips() {
        let t = tiny();
        let ids = t.encode("hello wor", false).unwrap();
        assert_eq!(t.token_str(ids[0]), Some("hello"));
        assert_eq!(t.decode(&ids, false).unwrap(), "hello wor");
        for s in ["a  b\n\n c", "héllo wörld ✓ 😀", "数字123", "\t x "] {
            assert_eq!(t.decode(&t.encode(s, false).unwrap(), false).unwrap(), s);
        }
    }

    #[test]
    fn digits_are_split_one_by_one() {
        let t = tiny();
        let ids = t.encode("2024", false).unwrap();
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn special_tokens_only_when_asked() {
        let t = tiny();
        assert_eq!(t.encode("<|im_start|>hello", true).unwrap()[0], 0);
        let plain = t.encode("<|im_start|>hello", false).unwrap();
        assert!(plain.len() > 2 && !plain.contains(&0));
        assert_eq!(t.decode(&[0, 1], true).unwrap(), "");
        assert_eq!(t.decode(&[0], false).unwrap(), "<|im_start|>");
    }

    #[test]
    fn stream_holds_back_partial_characters() {
        let t = tiny();
        let s = "añ😀b";
        let ids = t.encode(s, false).unwrap();
        let mut d = t.decode_stream(true);
        let mut out = String::new();
        for id in ids {
            let piece = d.step(id);
            assert!(!piece.contains('\u{FFFD}'));
            out.push_str(&piece);
        }
        out.push_str(&d.finish());
        assert_eq!(out, s);
    }

    #[test]
    fn rejects_unsupported_models_and_bad_ids() {
        let err = GgufTokenizer::from_spec(TokenizerSpec {
            model: "rwkv".into(),
            tokens: vec!["a".into()],
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("rwkv"));
        // A SentencePiece vocabulary without its scores is malformed, not a panic.
        let err = GgufTokenizer::from_spec(TokenizerSpec {
            model: "llama".into(),
            tokens: vec!["a".into()],
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("scores"), "{err}");
        assert!(tiny().decode(&[99_999], false).is_err());
    }
}
