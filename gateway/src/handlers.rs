//! The OpenAI endpoints: chat completions, completions, models; bodies and SSE chunks.

use crate::api_error::ApiError;
use crate::backend::SeqRequest;
use crate::body;
use crate::request::{prepare_chat, prepare_completion, GenSpec};
use crate::sequence::{Merged, Piece, SeqState};
use crate::server::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use genie_protocol::openai::*;
use genie_protocol::worker::TokenOut;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const FINGERPRINT: &str = "genie";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{prefix}-{nanos:x}{:04x}",
        N.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

fn random_seed() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos
        ^ N.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .rotate_left(17)
}

/// Tokenizes and validates off the async runtime.
async fn prepare<R, F>(st: &AppState, req: R, f: F) -> Result<GenSpec, ApiError>
where
    R: Send + 'static,
    F: FnOnce(&crate::frontend::Frontend, R) -> Result<GenSpec, ApiError> + Send + 'static,
{
    let fe = st.frontend.clone();
    tokio::task::spawn_blocking(move || f(&fe, req))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "request preparation panicked");
            ApiError::internal()
        })?
}

/// Queues and dispatches every sequence of the request.
async fn start(st: &AppState, spec: &GenSpec, arrived: Instant) -> Result<Merged, ApiError> {
    let total = spec.prompts.len() * spec.n;
    let mut tickets = st.backend.enter_queue(total)?;
    let base = spec.sampling.seed.unwrap_or_else(random_seed);
    let mut seqs = Vec::with_capacity(total);
    for (pi, prompt) in spec.prompts.iter().enumerate() {
        metrics::counter!("genie_prompt_tokens_total").increment(prompt.ids.len() as u64);
        for c in 0..spec.n {
            let mut sampling = spec.sampling.clone();
            sampling.seed = Some(spec.seed_for(base, c));
            let req = SeqRequest {
                prompt: prompt.ids.clone(),
                max_tokens: spec.max_tokens,
                sampling,
                seed: spec.seed_for(base, c),
                stop_token_ids: st.frontend.eog_ids.clone(),
            };
            let ticket = tickets.pop().expect("one ticket per sequence");
            let d = st.backend.dispatch(req, ticket).await?;
            tracing::debug!(placement = ?d.placement, "sequence placed");
            let index = (pi * spec.n + c) as u32;
            seqs.push(SeqState::new(
                index,
                d,
                st.frontend.clone(),
                spec.stop.clone(),
                arrived,
            ));
        }
    }
    Ok(Merged::new(seqs))
}

fn prompt_tokens(spec: &GenSpec) -> u64 {
    spec.prompts.iter().map(|p| p.ids.len() as u64).sum()
}

fn completion_tokens(m: &Merged) -> u64 {
    m.seqs.iter().map(|s| s.completion_tokens as u64).sum()
}

fn chat_logprobs(st: &AppState, tokens: &[TokenOut]) -> Vec<ChatTokenLogprob> {
    tokens
        .iter()
        .map(|t| {
            let (token, bytes) = st.frontend.token_text(t.token);
            ChatTokenLogprob {
                token,
                logprob: t.logprob.unwrap_or(0.0),
                bytes,
                top_logprobs: t
                    .top_logprobs
                    .iter()
                    .map(|&(id, lp)| {
                        let (token, bytes) = st.frontend.token_text(id);
                        ChatTopLogprob {
                            token,
                            logprob: lp,
                            bytes,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

fn completion_logprobs(st: &AppState, tokens: &[TokenOut], offset: &mut u32) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        let (text, _) = st.frontend.token_text(t.token);
        out.text_offset.push(*offset);
        *offset += text.len() as u32;
        out.tokens.push(text);
        out.token_logprobs.push(t.logprob.unwrap_or(0.0));
        out.top_logprobs.push(
            t.top_logprobs
                .iter()
                .map(|&(id, lp)| (st.frontend.token_text(id).0, lp))
                .collect::<BTreeMap<_, _>>(),
        );
    }
    out
}

fn sse_json<T: serde::Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_default())
}

fn sse_error(msg: &str) -> Event {
    let e = ApiError {
        message: msg.to_string(),
        ..ApiError::internal()
    };
    sse_json(&e.envelope())
}

pub async fn chat_completions(
    State(st): State<AppState>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let req: ChatCompletionRequest = body::parse(&bytes)?;
    let spec = prepare(&st, req, prepare_chat).await?;
    let merged = start(&st, &spec, arrived).await?;
    let id = new_id("chatcmpl");
    let created = unix_now();
    let model = st.frontend.served_name.clone();
    let want_logprobs = spec.sampling.logprobs.is_some();
    if spec.stream {
        return Ok(chat_stream(st, spec, merged, id, created, model).into_response());
    }
    let n = merged.seqs.len();
    let mut texts = vec![String::new(); n];
    let mut lps: Vec<Vec<ChatTokenLogprob>> = vec![Vec::new(); n];
    let mut finish: Vec<Option<&'static str>> = vec![None; n];
    let mut merged = merged;
    while let Some((i, piece)) = merged.next().await {
        let i = i as usize;
        match piece {
            Piece::Delta {
                text,
                tokens,
                finish: f,
            } => {
                texts[i].push_str(&text);
                if want_logprobs {
                    lps[i].extend(chat_logprobs(&st, &tokens));
                }
                if f.is_some() {
                    finish[i] = f;
                }
            }
            Piece::Failed(msg) => {
                return Err(ApiError {
                    message: msg,
                    ..ApiError::internal()
                })
            }
        }
    }
    let usage = Usage::new(prompt_tokens(&spec), completion_tokens(&merged));
    let choices = (0..n)
        .map(|i| ChatChoice {
            index: i as u32,
            message: AssistantMessage {
                role: "assistant".into(),
                content: std::mem::take(&mut texts[i]),
            },
            logprobs: want_logprobs.then(|| ChatLogprobs {
                content: std::mem::take(&mut lps[i]),
            }),
            finish_reason: Some(finish[i].unwrap_or("stop").to_string()),
        })
        .collect();
    Ok(Json(ChatCompletion {
        id,
        object: "chat.completion".into(),
        created,
        model,
        choices,
        usage,
        system_fingerprint: FINGERPRINT.into(),
    })
    .into_response())
}

enum Phase {
    Body,
    Usage,
    Done,
    End,
}

fn chat_stream(
    st: AppState,
    spec: GenSpec,
    merged: Merged,
    id: String,
    created: u64,
    model: String,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |choices: Vec<ChatChunkChoice>, usage: Option<Usage>| ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk".into(),
            created,
            model: model.clone(),
            choices,
            usage,
            system_fingerprint: FINGERPRINT.into(),
        }
    };
    let want_logprobs = spec.sampling.logprobs.is_some();
    let first: Vec<Event> = (0..merged.seqs.len())
        .map(|i| {
            sse_json(&chunk(
                vec![ChatChunkChoice {
                    index: i as u32,
                    delta: ChatDelta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                    },
                    logprobs: None,
                    finish_reason: None,
                }],
                None,
            ))
        })
        .collect();
    let body = stream::unfold((merged, Phase::Body), move |(mut m, phase)| {
        let chunk = chunk.clone();
        let st = st.clone();
        let spec_usage = (spec.include_usage, prompt_tokens(&spec));
        async move {
            match phase {
                Phase::Body => match m.next().await {
                    Some((
                        i,
                        Piece::Delta {
                            text,
                            tokens,
                            finish,
                        },
                    )) => {
                        let mut ev = Vec::new();
                        if !text.is_empty() || (want_logprobs && !tokens.is_empty()) {
                            ev.push(sse_json(&chunk(
                                vec![ChatChunkChoice {
                                    index: i,
                                    delta: ChatDelta {
                                        role: None,
                                        content: Some(text),
                                    },
                                    logprobs: want_logprobs.then(|| ChatLogprobs {
                                        content: chat_logprobs(&st, &tokens),
                                    }),
                                    finish_reason: None,
                                }],
                                None,
                            )));
                        }
                        if let Some(f) = finish {
                            ev.push(sse_json(&chunk(
                                vec![ChatChunkChoice {
                                    index: i,
                                    delta: ChatDelta::default(),
                                    logprobs: None,
                                    finish_reason: Some(f.into()),
                                }],
                                None,
                            )));
                        }
                        Some((ev, (m, Phase::Body)))
                    }
                    Some((_, Piece::Failed(msg))) => {
                        Some((vec![sse_error(&msg)], (m, Phase::Done)))
                    }
                    None => Some((Vec::new(), (m, Phase::Usage))),
                },
                Phase::Usage => {
                    let ev = if spec_usage.0 {
                        vec![sse_json(&chunk(
                            Vec::new(),
                            Some(Usage::new(spec_usage.1, completion_tokens(&m))),
                        ))]
                    } else {
                        Vec::new()
                    };
                    Some((ev, (m, Phase::Done)))
                }
                Phase::Done => Some((vec![Event::default().data("[DONE]")], (m, Phase::End))),
                Phase::End => None,
            }
        }
    });
    let events = stream::iter(first)
        .chain(body.flat_map(stream::iter))
        .map(Ok);
    Sse::new(events)
}

pub async fn completions(State(st): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let req: CompletionRequest = body::parse(&bytes)?;
    let spec = prepare(&st, req, prepare_completion).await?;
    let merged = start(&st, &spec, arrived).await?;
    let id = new_id("cmpl");
    let created = unix_now();
    let model = st.frontend.served_name.clone();
    let want_logprobs = spec.sampling.logprobs.is_some();
    let echo_text = |i: usize| -> String {
        if spec.echo {
            spec.prompts[i / spec.n].text.clone()
        } else {
            String::new()
        }
    };
    let mk = {
        let (id, model) = (id.clone(), model.clone());
        move |choices: Vec<CompletionChoice>, usage: Option<Usage>| Completion {
            id: id.clone(),
            object: "text_completion".into(),
            created,
            model: model.clone(),
            choices,
            usage,
            system_fingerprint: FINGERPRINT.into(),
        }
    };
    let n = merged.seqs.len();
    if spec.stream {
        let echoes: Vec<String> = (0..n).map(echo_text).collect();
        let include_usage = spec.include_usage;
        let ptoks = prompt_tokens(&spec);
        let first: Vec<Event> = echoes
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.is_empty())
            .map(|(i, e)| {
                sse_json(&mk(
                    vec![CompletionChoice {
                        index: i as u32,
                        text: e.clone(),
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                ))
            })
            .collect();
        let offsets = vec![0u32; n];
        let body = stream::unfold(
            (merged, Phase::Body, offsets),
            move |(mut m, phase, mut offsets)| {
                let mk = mk.clone();
                let st = st.clone();
                async move {
                    match phase {
                        Phase::Body => match m.next().await {
                            Some((
                                i,
                                Piece::Delta {
                                    text,
                                    tokens,
                                    finish,
                                },
                            )) => {
                                let ev = if text.is_empty()
                                    && finish.is_none()
                                    && (!want_logprobs || tokens.is_empty())
                                {
                                    Vec::new()
                                } else {
                                    let lp = want_logprobs.then(|| {
                                        completion_logprobs(&st, &tokens, &mut offsets[i as usize])
                                    });
                                    vec![sse_json(&mk(
                                        vec![CompletionChoice {
                                            index: i,
                                            text,
                                            logprobs: lp,
                                            finish_reason: finish.map(String::from),
                                        }],
                                        None,
                                    ))]
                                };
                                Some((ev, (m, Phase::Body, offsets)))
                            }
                            Some((_, Piece::Failed(msg))) => {
                                Some((vec![sse_error(&msg)], (m, Phase::Done, offsets)))
                            }
                            None => Some((Vec::new(), (m, Phase::Usage, offsets))),
                        },
                        Phase::Usage => {
                            let ev = if include_usage {
                                vec![sse_json(&mk(
                                    Vec::new(),
                                    Some(Usage::new(ptoks, completion_tokens(&m))),
                                ))]
                            } else {
                                Vec::new()
                            };
                            Some((ev, (m, Phase::Done, offsets)))
                        }
                        Phase::Done => Some((
                            vec![Event::default().data("[DONE]")],
                            (m, Phase::End, offsets),
                        )),
                        Phase::End => None,
                    }
                }
            },
        );
        let events = stream::iter(first)
            .chain(body.flat_map(stream::iter))
            .map(Ok::<_, Infallible>);
        return Ok(Sse::new(events).into_response());
    }
    let mut texts: Vec<String> = (0..n).map(echo_text).collect();
    let mut lps: Vec<CompletionLogprobs> = vec![CompletionLogprobs::default(); n];
    let mut offsets = vec![0u32; n];
    let mut finish: Vec<Option<&'static str>> = vec![None; n];
    let mut merged = merged;
    while let Some((i, piece)) = merged.next().await {
        let i = i as usize;
        match piece {
            Piece::Delta {
                text,
                tokens,
                finish: f,
            } => {
                texts[i].push_str(&text);
                if want_logprobs {
                    let l = completion_logprobs(&st, &tokens, &mut offsets[i]);
                    lps[i].tokens.extend(l.tokens);
                    lps[i].token_logprobs.extend(l.token_logprobs);
                    lps[i].top_logprobs.extend(l.top_logprobs);
                    lps[i].text_offset.extend(l.text_offset);
                }
                if f.is_some() {
                    finish[i] = f;
                }
            }
            Piece::Failed(msg) => {
                return Err(ApiError {
                    message: msg,
                    ..ApiError::internal()
                })
            }
        }
    }
    let usage = Usage::new(prompt_tokens(&spec), completion_tokens(&merged));
    let choices = (0..n)
        .map(|i| CompletionChoice {
            index: i as u32,
            text: std::mem::take(&mut texts[i]),
            logprobs: want_logprobs.then(|| std::mem::take(&mut lps[i])),
            finish_reason: Some(finish[i].unwrap_or("stop").to_string()),
        })
        .collect();
    Ok(Json(mk(choices, Some(usage))).into_response())
}

pub async fn models(State(st): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: st.frontend.served_name.clone(),
            object: "model".into(),
            created: st.frontend.created,
            owned_by: "genie".into(),
            max_model_len: Some(st.frontend.context_length as u64),
        }],
    })
}
