//! Turning OpenAI request bodies into what the workers run ("parse, don't validate"):
//! every field is checked here, and every refusal names the field and says why.

use crate::api_error::ApiError;
use crate::frontend::Frontend;
use genie_engine::chat_template::ChatMessage;
use genie_engine::sampling::{SamplingParams, MAX_TOP_LOGPROBS};
use genie_protocol::openai::{
    ChatCompletionRequest, CommonParams, CompletionRequest, MessageContent, PromptSpec,
};

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// One prompt, tokenized.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// The prompt text (for `echo`).
    pub text: String,
}

/// A validated generation request: `prompts.len() * n` sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSpec {
    pub prompts: Vec<Prompt>,
    pub n: usize,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub echo: bool,
    /// Do not stop at end-of-turn / eos (the `ignore_eos` extension).
    pub ignore_eos: bool,
    /// The `genie` placement hint.
    pub hint: genie_protocol::openai::GenieHint,
}

impl GenSpec {
    /// The seed of choice `i` of a prompt: the request seed plus `i`, so `n > 1` choices
    /// differ while the whole response stays reproducible.
    pub fn seed_for(&self, base: u64, choice: usize) -> u64 {
        base.wrapping_add(choice as u64)
    }
}

fn sampling(
    fe: &Frontend,
    c: &CommonParams,
    logprobs: Option<usize>,
) -> Result<SamplingParams, ApiError> {
    let top_k = match c.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("{k} is not allowed; use a positive k, or 0 / -1 for no limit"),
            ))
        }
    };
    let mut logit_bias = Vec::new();
    for (k, &v) in c.logit_bias.iter().flatten() {
        let tok: u32 = k
            .parse()
            .map_err(|_| ApiError::invalid("logit_bias", format!("key `{k}` is not a token id")))?;
        logit_bias.push((tok, v));
    }
    let p = SamplingParams {
        temperature: c.temperature.unwrap_or(1.0),
        top_p: c.top_p.unwrap_or(1.0),
        top_k,
        seed: c.seed.map(|s| s as u64),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        logit_bias,
        logprobs,
    };
    p.validate(fe.vocab_size).map_err(|e| match e {
        genie_engine::sampling::SamplingError::InvalidParam { field, reason } => {
            ApiError::invalid(field, format!("`{field}`: {reason}"))
        }
    })?;
    Ok(p)
}

fn stops(c: &CommonParams) -> Result<Vec<String>, ApiError> {
    let v = c.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if v.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "{} stop sequences given; at most {MAX_STOP} are allowed",
                v.len()
            ),
        ));
    }
    if v.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid(
            "stop",
            "stop sequences must not be empty",
        ));
    }
    Ok(v)
}

/// `max_tokens` checked against the context the longest prompt leaves.
fn max_tokens(
    fe: &Frontend,
    asked: Option<(u64, &str)>,
    longest_prompt: usize,
) -> Result<usize, ApiError> {
    let ctx = fe.context_length;
    match asked {
        Some((m, field)) => {
            if m == 0 {
                return Err(ApiError::invalid(
                    field,
                    format!("`{field}` must be at least 1"),
                ));
            }
            let m = usize::try_from(m).unwrap_or(usize::MAX);
            if longest_prompt.saturating_add(m) > ctx {
                return Err(ApiError::context_overflow(format!(
                    "This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({longest_prompt} in the prompt, {m} for the completion). Please reduce the prompt or `{field}`.",
                    longest_prompt.saturating_add(m)
                )));
            }
            Ok(m)
        }
        None => {
            if longest_prompt >= ctx {
                return Err(ApiError::context_overflow(format!(
                    "This model's maximum context length is {ctx} tokens. However, the prompt has {longest_prompt} tokens, leaving no room for a completion."
                )));
            }
            Ok(fe.default_max_tokens.min(ctx - longest_prompt))
        }
    }
}

fn n(fe: &Frontend, c: &CommonParams) -> Result<usize, ApiError> {
    match c.n {
        None => Ok(1),
        Some(0) => Err(ApiError::invalid("n", "`n` must be at least 1")),
        Some(n) if n as usize > fe.max_n => Err(ApiError::invalid(
            "n",
            format!("`n` is {n}; at most {} is allowed", fe.max_n),
        )),
        Some(n) => Ok(n as usize),
    }
}

fn check_model(fe: &Frontend, model: &str) -> Result<(), ApiError> {
    if model != fe.served_name {
        return Err(ApiError::unknown_model(model, &fe.served_name));
    }
    Ok(())
}

fn tokenize(fe: &Frontend, text: &str, special: bool, field: &str) -> Result<Vec<u32>, ApiError> {
    let ids = fe.tokenizer.encode(text, special).map_err(|e| {
        tracing::warn!(error = %e, "tokenization failed");
        ApiError::invalid(field, "the text could not be tokenized")
    })?;
    if ids.is_empty() {
        return Err(ApiError::invalid(
            field,
            format!("`{field}` is empty after tokenization"),
        ));
    }
    Ok(ids)
}

pub fn prepare_chat(fe: &Frontend, r: ChatCompletionRequest) -> Result<GenSpec, ApiError> {
    check_model(fe, &r.model)?;
    if r.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    let mut msgs = Vec::with_capacity(r.messages.len());
    for (i, m) in r.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!(
                        "role `{other}` is not supported; use system, developer, user or assistant"
                    ),
                ))
            }
        };
        let content = match &m.content {
            None => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    "`content` is required",
                ))
            }
            Some(MessageContent::Text(t)) => t.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut s = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        ("text", None) => return Err(ApiError::invalid(format!("messages[{i}].content[{j}].text"), "a text part needs `text`")),
                        (other, _) => return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}].type"),
                            format!("content part type `{other}` is not supported by this text-only model; use `text`"),
                        )),
                    }
                }
                s
            }
        };
        msgs.push(ChatMessage {
            role: role.into(),
            content,
        });
    }
    if r.top_logprobs.is_some() && r.logprobs != Some(true) {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` requires `logprobs` to be true",
        ));
    }
    let logprobs = match r.logprobs {
        Some(true) => {
            let k = r.top_logprobs.unwrap_or(0) as usize;
            if k > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("{k} is more than {MAX_TOP_LOGPROBS}"),
                ));
            }
            Some(k)
        }
        _ => None,
    };
    let c = &r.common();
    let sampling = sampling(fe, c, logprobs)?;
    let stop = stops(c)?;
    let n = n(fe, c)?;
    let text = fe.template.render(&msgs, true).map_err(|e| {
        ApiError::invalid(
            "messages",
            format!("the model's chat template refused these messages: {e}"),
        )
    })?;
    let ids = tokenize(fe, &text, true, "messages")?;
    let asked = match (r.max_completion_tokens, c.max_tokens) {
        (Some(m), _) => Some((m, "max_completion_tokens")),
        (None, Some(m)) => Some((m, "max_tokens")),
        (None, None) => None,
    };
    let max_tokens = max_tokens(fe, asked, ids.len())?;
    Ok(GenSpec {
        prompts: vec![Prompt { ids, text }],
        n,
        max_tokens,
        sampling,
        stop,
        stream: c.stream.unwrap_or(false),
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        echo: false,
        ignore_eos: c.ignore_eos.unwrap_or(false),
        hint: c.genie.unwrap_or_default(),
    })
}

pub fn prepare_completion(fe: &Frontend, r: CompletionRequest) -> Result<GenSpec, ApiError> {
    check_model(fe, &r.model)?;
    let logprobs = match r.logprobs {
        Some(k) if k as usize > MAX_TOP_LOGPROBS => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("{k} is more than {MAX_TOP_LOGPROBS}"),
            ))
        }
        Some(k) => Some(k as usize),
        None => None,
    };
    let c = &r.common();
    let sampling = sampling(fe, c, logprobs)?;
    let stop = stops(c)?;
    let n = n(fe, c)?;
    let check_ids = |ids: Vec<u32>| -> Result<Prompt, ApiError> {
        if ids.is_empty() {
            return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
        }
        if let Some(t) = ids.iter().find(|&&t| t as usize >= fe.vocab_size) {
            return Err(ApiError::invalid(
                "prompt",
                format!(
                    "token id {t} is not below the vocabulary size {}",
                    fe.vocab_size
                ),
            ));
        }
        let text = fe.tokenizer.decode(&ids, false).unwrap_or_default();
        Ok(Prompt { ids, text })
    };
    let prompts: Vec<Prompt> = match r.prompt {
        PromptSpec::Text(t) => vec![Prompt {
            ids: tokenize(fe, &t, false, "prompt")?,
            text: t,
        }],
        PromptSpec::Texts(ts) => {
            if ts.is_empty() {
                return Err(ApiError::invalid(
                    "prompt",
                    "`prompt` must not be an empty list",
                ));
            }
            ts.into_iter()
                .map(|t| {
                    Ok(Prompt {
                        ids: tokenize(fe, &t, false, "prompt")?,
                        text: t,
                    })
                })
                .collect::<Result<_, ApiError>>()?
        }
        PromptSpec::Tokens(ids) => vec![check_ids(ids)?],
        PromptSpec::TokenLists(l) => {
            if l.is_empty() {
                return Err(ApiError::invalid(
                    "prompt",
                    "`prompt` must not be an empty list",
                ));
            }
            l.into_iter().map(check_ids).collect::<Result<_, _>>()?
        }
    };
    if prompts.len() * n > fe.max_n * 4 {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "{} prompts x n={n} is more than {} sequences",
                prompts.len(),
                fe.max_n * 4
            ),
        ));
    }
    let longest = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
    let max_tokens = max_tokens(fe, c.max_tokens.map(|m| (m, "max_tokens")), longest)?;
    Ok(GenSpec {
        prompts,
        n,
        max_tokens,
        sampling,
        stop,
        stream: c.stream.unwrap_or(false),
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        echo: r.echo.unwrap_or(false),
        ignore_eos: c.ignore_eos.unwrap_or(false),
        hint: c.genie.unwrap_or_default(),
    })
}
