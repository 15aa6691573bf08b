//! Turning OpenAI request bodies into what the workers run ("parse, don't validate"):
//! every field is checked here, and every refusal names the field and says why.

use crate::api_error::ApiError;
use crate::frontend::Frontend;
use genie_engine::chat_template::{
    ChatMessage, RenderOptions, TemplateCall, JSON_CLOSE, JSON_OPEN,
};
use genie_engine::sampling::{SamplingParams, MAX_TOP_LOGPROBS};
use genie_grammar::GrammarSpec;
use genie_protocol::openai::{
    ChatCompletionRequest, CommonParams, CompletionRequest, MessageContent, PromptSpec,
    ResponseFormat,
};
use serde_json::Value;

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Longest stop string, in bytes (stop matching holds this much text back).
pub const MAX_STOP_BYTES: usize = 256;

/// One prompt, tokenized.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// The prompt text (for `echo`).
    pub text: String,
    /// `ids` start with a BOS the gateway put before the client's text (not in `text`).
    pub bos_added: bool,
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
    /// The `priority` extension as asked (the API key's default applies when unset).
    pub priority: Option<i32>,
    /// Tools offered: the answer is read back as `tool_calls` where it is calls.
    pub tools: Option<crate::tools::ToolUse>,
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
        None | Some(0) => 0,
        Some(k) if k > 0 && k as u64 <= fe.vocab_size as u64 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!(
                    "{k} is not allowed; use 0 for no limit, or 1 to {} (the vocabulary size)",
                    fe.vocab_size
                ),
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
        prompt_logprobs: None,
        grammar: grammar(fe, c)?,
    };
    p.validate(fe.vocab_size).map_err(|e| match e {
        genie_engine::sampling::SamplingError::InvalidParam { field, reason } => {
            ApiError::invalid(field, format!("`{field}`: {reason}"))
        }
    })?;
    Ok(p)
}

/// The grammar `response_format` asks for, compiled once here so that a schema which
/// cannot be enforced is refused before the request is admitted.
fn grammar(fe: &Frontend, c: &CommonParams) -> Result<Option<GrammarSpec>, ApiError> {
    let (spec, field) = match &c.response_format {
        None | Some(ResponseFormat::Text) => return Ok(None),
        Some(ResponseFormat::JsonObject) => (GrammarSpec::JsonObject, "response_format"),
        Some(ResponseFormat::JsonSchema { json_schema: f }) => {
            let name_ok = !f.name.is_empty()
                && f.name.len() <= 64
                && f.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(ApiError::invalid(
                    "response_format.json_schema.name",
                    "the name must be 1 to 64 characters of a-z, A-Z, 0-9, `_` and `-`",
                ));
            }
            let spec = GrammarSpec::JsonSchema {
                schema: f
                    .schema
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({"type": "object"})),
                strict: f.strict.unwrap_or(false),
            };
            (spec, "response_format.json_schema.schema")
        }
    };
    if c.ignore_eos == Some(true) {
        return Err(ApiError::invalid(
            "ignore_eos",
            "`ignore_eos` cannot be combined with a JSON `response_format`: the answer ends when its JSON value is complete",
        ));
    }
    check_grammar(fe, &spec, field)?;
    Ok(Some(spec))
}

/// Compiles `spec` once, so one that cannot be enforced is a 400 naming `field`.
fn check_grammar(fe: &Frontend, spec: &GrammarSpec, field: &str) -> Result<(), ApiError> {
    let grammars = fe.grammars.get().map_err(|e| {
        tracing::error!(error = %e, "constrained decoding unavailable");
        ApiError::invalid(
            field,
            "this model cannot constrain its output (its vocabulary could not be read)",
        )
    })?;
    grammars
        .compile(spec)
        .map_err(|e| ApiError::invalid(field, format!("this schema cannot be enforced: {e}")))?;
    Ok(())
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
    if let Some(s) = v.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "a stop sequence of {} bytes is longer than {MAX_STOP_BYTES}",
                s.len()
            ),
        ));
    }
    Ok(v)
}

/// `max_tokens` checked against the context the longest prompt leaves. A prompt that
/// fills the context is refused naming `prompt_field`; one that fits but leaves less room
/// than asked names the `max_tokens` field (the one to lower).
fn max_tokens(
    fe: &Frontend,
    asked: Option<(u64, &str)>,
    longest_prompt: usize,
    prompt_field: &str,
) -> Result<usize, ApiError> {
    let ctx = fe.context_length;
    if longest_prompt >= ctx {
        return Err(ApiError::context_overflow(
            prompt_field,
            format!(
                "This model's maximum context length is {ctx} tokens. However, the prompt has {longest_prompt} tokens, leaving no room for a completion. Please reduce `{prompt_field}`."
            ),
        ));
    }
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
                return Err(ApiError::context_overflow(field, format!(
                    "This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({longest_prompt} in the prompt, {m} for the completion). Please reduce the prompt or `{field}`.",
                    longest_prompt.saturating_add(m)
                )));
            }
            Ok(m)
        }
        None => Ok(fe.default_max_tokens.min(ctx - longest_prompt)),
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

fn priority(c: &CommonParams) -> Result<Option<i32>, ApiError> {
    match c.priority {
        Some(p) if !crate::tenant::PRIORITY_RANGE.contains(&p) => Err(ApiError::invalid(
            "priority",
            format!("{p} is not in [-100, 100]"),
        )),
        p => Ok(p),
    }
}

fn check_model(fe: &Frontend, model: &str) -> Result<(), ApiError> {
    if model != fe.served_name {
        return Err(ApiError::unknown_model(model, &fe.served_name));
    }
    Ok(())
}

/// The refusal of a prompt found longer than the whole context while tokenizing it (the
/// count stops there, so the exact length is not known).
fn too_long(fe: &Frontend, field: &str) -> ApiError {
    ApiError::context_overflow(
        field,
        format!(
            "This model's maximum context length is {} tokens, and `{field}` is longer than that. Please reduce `{field}`.",
            fe.context_length
        ),
    )
}

/// Appends the tokens of `text` to `ids`, refusing once the whole prompt passes the
/// context length: the work done is bounded by the context, not by the text's length.
fn push_tokens(
    fe: &Frontend,
    ids: &mut Vec<u32>,
    text: &str,
    special: bool,
    field: &str,
) -> Result<(), ApiError> {
    if text.is_empty() {
        return Ok(());
    }
    let room = fe.context_length.saturating_sub(ids.len());
    let got = fe
        .tokenizer
        .encode_within(text, special, room)
        .map_err(|e| {
            tracing::warn!(error = %e, "tokenization failed");
            ApiError::invalid(field, "the text could not be tokenized")
        })?
        .ok_or_else(|| too_long(fe, field))?;
    ids.extend(got);
    Ok(())
}

fn tokenize(fe: &Frontend, text: &str, special: bool, field: &str) -> Result<Vec<u32>, ApiError> {
    let mut ids: Vec<u32> = fe.tokenizer.leading_bos().into_iter().collect();
    push_tokens(fe, &mut ids, text, special, field)?;
    if ids.is_empty() {
        return Err(ApiError::invalid(
            field,
            format!("`{field}` is empty after tokenization"),
        ));
    }
    Ok(ids)
}

/// Marks a message's content in the rendered template: private-use characters around the
/// message index.
const MARK_OPEN: char = '\u{E000}';
const MARK_CLOSE: char = '\u{E001}';

fn render(
    fe: &Frontend,
    msgs: &[ChatMessage],
    tools: Option<&Value>,
    mark_json: bool,
) -> Result<String, ApiError> {
    let opts = RenderOptions {
        tools,
        add_generation_prompt: true,
        mark_json,
    };
    fe.template.render_with(msgs, opts).map_err(|e| {
        ApiError::invalid(
            "messages",
            format!("the model's chat template refused these messages: {e}"),
        )
    })
}

/// The chat prompt's tokens. The template is rendered with a marker in place of each
/// message's content, and its `tojson` output (tools, call arguments) bracketed; the
/// template's own text is tokenized with its control tokens (`<|im_start|>`), and each
/// content and each JSON as plain text, so a `<|im_end|>` typed by a user is text, not
/// the end of a turn. `parse_special_in_content` restores reading control tokens in
/// client text too.
fn chat_prompt(
    fe: &Frontend,
    msgs: &[ChatMessage],
    tools: Option<&Value>,
) -> Result<Prompt, ApiError> {
    let bytes: usize = msgs.iter().map(|m| m.content.len()).sum::<usize>()
        + tools.map_or(0, |t| t.to_string().len());
    if bytes
        > fe.context_length
            .saturating_mul(fe.tokenizer.max_token_bytes())
    {
        return Err(too_long(fe, "messages"));
    }
    if fe.parse_special_in_content {
        let text = render(fe, msgs, tools, false)?;
        let ids = tokenize(fe, &text, true, "messages")?;
        return Ok(Prompt {
            ids,
            text,
            bos_added: false,
        });
    }
    // An empty content stays empty: templates test it (`{% if message.content %}`).
    let marked: Vec<ChatMessage> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| ChatMessage {
            content: if m.content.is_empty() {
                String::new()
            } else {
                format!("{MARK_OPEN}{i}{MARK_CLOSE}")
            },
            ..m.clone()
        })
        .collect();
    let rendered = render(fe, &marked, tools, true)?;
    let altered = || {
        tracing::error!("the chat template altered the content markers");
        ApiError::internal()
    };
    let mut ids: Vec<u32> = fe.tokenizer.leading_bos().into_iter().collect();
    let mut text = String::with_capacity(rendered.len() + bytes);
    let mut rest = rendered.as_str();
    while let Some(open) = rest.find([MARK_OPEN, JSON_OPEN]) {
        push_tokens(fe, &mut ids, &rest[..open], true, "messages")?;
        text.push_str(&rest[..open]);
        let after = &rest[open + MARK_OPEN.len_utf8()..];
        if rest[open..].starts_with(JSON_OPEN) {
            // JSON the template wrote: client data, plain text (a content inside it,
            // from `content | tojson`, is put back JSON-escaped).
            let close = after.find(JSON_CLOSE).ok_or_else(altered)?;
            let json = unmark_json(&after[..close], msgs);
            push_tokens(fe, &mut ids, &json, false, "messages")?;
            text.push_str(&json);
            rest = &after[close + JSON_CLOSE.len_utf8()..];
            continue;
        }
        let (m, close) = marker(after, msgs).ok_or_else(altered)?;
        push_tokens(fe, &mut ids, &m.content, false, "messages")?;
        text.push_str(&m.content);
        rest = &after[close + MARK_CLOSE.len_utf8()..];
    }
    push_tokens(fe, &mut ids, rest, true, "messages")?;
    text.push_str(rest);
    fe.tokenizer.drop_doubled_bos(&mut ids);
    if ids.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` is empty after tokenization",
        ));
    }
    Ok(Prompt {
        ids,
        text,
        bos_added: false,
    })
}

/// The message a content marker names (the text after `MARK_OPEN`), and where its
/// `MARK_CLOSE` is.
fn marker<'m>(after: &str, msgs: &'m [ChatMessage]) -> Option<(&'m ChatMessage, usize)> {
    let close = after.find(MARK_CLOSE)?;
    let i = after[..close].parse::<usize>().ok()?;
    Some((msgs.get(i)?, close))
}

/// A bracketed JSON with the content markers in it replaced by their contents, written
/// as JSON string characters (the marker sat inside a JSON string).
fn unmark_json(json: &str, msgs: &[ChatMessage]) -> String {
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some(open) = rest.find(MARK_OPEN) {
        out.push_str(&rest[..open]);
        let after = &rest[open + MARK_OPEN.len_utf8()..];
        match marker(after, msgs) {
            Some((m, close)) => {
                let quoted = Value::String(m.content.clone()).to_string();
                out.push_str(&quoted[1..quoted.len() - 1]);
                rest = &after[close + MARK_CLOSE.len_utf8()..];
            }
            None => {
                out.push(MARK_OPEN);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

pub fn prepare_chat(fe: &Frontend, r: ChatCompletionRequest) -> Result<GenSpec, ApiError> {
    check_model(fe, &r.model)?;
    if r.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    let tools = crate::tools::prepare(
        r.tools.as_deref(),
        r.tool_choice.as_ref(),
        r.parallel_tool_calls,
        fe.tool_format,
    )?;
    // Templates that take tools also take calls and results in their own form.
    let native = fe.tool_format == crate::tools::ToolFormat::Hermes;
    let mut msgs = Vec::with_capacity(r.messages.len() + 1);
    for (i, m) in r.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" if native => "tool",
            // A function's result, told to the model as the user's turn (templates
            // without a tool role accept it).
            "tool" => "user",
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!(
                        "role `{other}` is not supported; use system, developer, user or assistant"
                    ),
                ))
            }
        };
        let calls = m.tool_calls.as_deref().filter(|c| !c.is_empty());
        if calls.is_some() && m.role != "assistant" {
            return Err(ApiError::invalid(
                format!("messages[{i}].tool_calls"),
                "only assistant messages carry `tool_calls`",
            ));
        }
        let content = match &m.content {
            None if calls.is_some() => String::new(),
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
        let id = m.tool_call_id.as_deref();
        if m.role == "tool" && id.is_none() {
            return Err(ApiError::invalid(
                format!("messages[{i}].tool_call_id"),
                "a `tool` message needs the `tool_call_id` it answers",
            ));
        }
        let mut msg = ChatMessage::new(role, content);
        match (m.role.as_str(), calls) {
            ("tool", _) if native => msg.tool_call_id = id.map(str::to_string),
            ("tool", _) => {
                msg.content = format!(
                    "Result of function call {}:\n{}",
                    id.unwrap_or_default(),
                    msg.content
                )
            }
            (_, Some(c)) if native => {
                msg.tool_calls = c
                    .iter()
                    .map(|c| TemplateCall {
                        id: c.id.clone(),
                        name: c.function.name.clone(),
                        arguments: serde_json::from_str(&c.function.arguments)
                            .unwrap_or_else(|_| Value::String(c.function.arguments.clone())),
                    })
                    .collect()
            }
            (_, Some(c)) if msg.content.is_empty() => msg.content = crate::tools::history_text(c),
            (_, Some(c)) => {
                msg.content = format!("{}\n{}", msg.content, crate::tools::history_text(c))
            }
            _ => {}
        }
        msgs.push(msg);
    }
    if let Some(block) = &tools.system_block {
        match msgs.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{block}", first.content);
            }
            _ => msgs.insert(0, ChatMessage::new("system", block.clone())),
        }
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
    let mut sampling = sampling(fe, c, logprobs)?;
    if let Some(g) = tools.grammar {
        if sampling.grammar.is_some() {
            return Err(ApiError::invalid(
                "tool_choice",
                "a required or named `tool_choice` cannot be combined with a JSON `response_format`",
            ));
        }
        if c.ignore_eos == Some(true) {
            return Err(ApiError::invalid(
                "ignore_eos",
                "`ignore_eos` cannot be combined with a required or named `tool_choice`",
            ));
        }
        check_grammar(fe, &g, "tools")?;
        sampling.grammar = Some(g);
    }
    let stop = stops(c)?;
    let n = n(fe, c)?;
    let prompt = chat_prompt(fe, &msgs, tools.template_tools.as_ref())?;
    let asked = match (r.max_completion_tokens, c.max_tokens) {
        (Some(m), _) => Some((m, "max_completion_tokens")),
        (None, Some(m)) => Some((m, "max_tokens")),
        (None, None) => None,
    };
    let max_tokens = max_tokens(fe, asked, prompt.ids.len(), "messages")?;
    Ok(GenSpec {
        prompts: vec![prompt],
        n,
        max_tokens,
        sampling,
        stop,
        stream: c.stream.unwrap_or(false),
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        echo: false,
        ignore_eos: c.ignore_eos.unwrap_or(false),
        hint: c.genie.unwrap_or_default(),
        priority: priority(c)?,
        tools: tools.read_back,
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
    let echo = r.echo.unwrap_or(false);
    let mut sampling = sampling(fe, c, logprobs)?;
    // Echoed prompts come with their own tokens' logprobs, as OpenAI's legacy API does.
    sampling.prompt_logprobs = logprobs.filter(|_| echo);
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
        Ok(Prompt {
            ids,
            text,
            bos_added: false,
        })
    };
    let text_prompt = |t: String| -> Result<Prompt, ApiError> {
        let ids = tokenize(fe, &t, fe.parse_special_in_content, "prompt")?;
        Ok(Prompt {
            bos_added: fe.tokenizer.leading_bos().is_some()
                && ids.first() == fe.tokenizer.leading_bos().as_ref(),
            ids,
            text: t,
        })
    };
    let prompts: Vec<Prompt> = match r.prompt {
        PromptSpec::Text(t) => vec![text_prompt(t)?],
        PromptSpec::Texts(ts) => {
            if ts.is_empty() {
                return Err(ApiError::invalid(
                    "prompt",
                    "`prompt` must not be an empty list",
                ));
            }
            ts.into_iter()
                .map(text_prompt)
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
    let max_tokens = max_tokens(
        fe,
        c.max_tokens.map(|m| (m, "max_tokens")),
        longest,
        "prompt",
    )?;
    Ok(GenSpec {
        prompts,
        n,
        max_tokens,
        sampling,
        stop,
        stream: c.stream.unwrap_or(false),
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        echo,
        ignore_eos: c.ignore_eos.unwrap_or(false),
        hint: c.genie.unwrap_or_default(),
        priority: priority(c)?,
        tools: None,
    })
}
