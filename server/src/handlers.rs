//! The OpenAI endpoints: chat completions, completions, models; bodies and SSE chunks.

use crate::api_error::ApiError;
use crate::app::AppState;
use crate::body;
use crate::request::{prepare_chat, prepare_completion, GenSpec};
use crate::sequence::{Merged, Piece, PlanTrace, SeqState};
use crate::sse::{deltas, sse_body, sse_json};
use crate::tenant::Tenant;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use genie_protocol::openai::*;
use genie_protocol::worker::{FinishReason, TokenOut};
use genie_router::SeqRequest;
use genie_scheduler::{PlacementHint, RequestFacts, RequestPlan, SeqPlan};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const FINGERPRINT: &str = "genie";

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn new_id(prefix: &str) -> String {
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
pub(crate) async fn prepare<R, F>(st: &AppState, req: R, f: F) -> Result<GenSpec, ApiError>
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

/// Queues and dispatches every sequence of the request, recording its plan under `id`.
/// Holds the request's sequences against its key's cap (the key's rate was checked on
/// arrival), refuses up front what could never fit, then queues and dispatches.
pub(crate) async fn start(
    st: &AppState,
    spec: &GenSpec,
    tenant: Option<&Tenant>,
    arrived: Instant,
    id: &str,
) -> Result<Merged, ApiError> {
    let total = spec.prompts.len() * spec.n;
    let longest = spec.prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
    st.dispatcher.check_fits(total, longest, spec.max_tokens)?;
    let permit = tenant.map(|t| t.admit_sequences(total)).transpose()?;
    let priority = tenant.map_or(spec.priority.unwrap_or(0), |t| t.priority(spec.priority));
    let mut tickets = st.dispatcher.enter_queue(total)?;
    let base = spec.sampling.seed.unwrap_or_else(random_seed);
    let mut seqs = Vec::with_capacity(total);
    let mut placed = Vec::with_capacity(total);
    let mut queued = Vec::with_capacity(total);
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
                stop_token_ids: if spec.ignore_eos {
                    Vec::new()
                } else {
                    st.frontend.eog_ids.clone()
                },
                hint: spec.hint,
                priority,
            };
            let ticket = tickets.pop().expect("one ticket per sequence");
            let d = st.dispatcher.dispatch(req, ticket).await?;
            tracing::debug!(placement = ?d.placement, reason = %d.reason, "sequence placed");
            let index = (pi * spec.n + c) as u32;
            queued.push(d.queued_tokens);
            placed.push(SeqPlan {
                index,
                placement: d.placement,
                transfer_id: d.transfer,
                reason: d.reason.clone(),
                measured: None,
            });
            let trace = PlanTrace {
                log: st.plans.clone(),
                request_id: id.to_string(),
                placed_ms: arrived.elapsed().as_secs_f64() * 1e3,
            };
            seqs.push(SeqState::new(
                index,
                d,
                st.frontend.clone(),
                spec.stop.clone(),
                arrived,
                Some(trace),
            ));
        }
    }
    st.plans.insert(request_plan(st, spec, id, placed, &queued));
    let mut merged = Merged::new(seqs);
    merged.permit = permit;
    Ok(merged)
}

/// The request's plan: the stages and prediction of its longest prompt's first sequence as
/// placed (a hint may have moved its prefill), behind the prompt work queued on the worker
/// that prefilled it; `queued` is that per sequence.
fn request_plan(
    st: &AppState,
    spec: &GenSpec,
    id: &str,
    sequences: Vec<SeqPlan>,
    queued: &[usize],
) -> RequestPlan {
    let plan = &st.dispatcher.plan;
    let longest = (0..spec.prompts.len())
        .max_by_key(|&i| spec.prompts[i].ids.len())
        .unwrap_or(0);
    let lead = longest * spec.n;
    let facts = RequestFacts {
        prompt_tokens: spec.prompts.get(longest).map_or(0, |p| p.ids.len()),
        max_tokens: spec.max_tokens,
        inputs: Vec::new(),
    };
    let disaggregated = sequences
        .get(lead)
        .is_some_and(|s| s.placement.prefill().is_some());
    let taken = plan.taken_stages(&facts, disaggregated);
    let ahead = queued.get(lead).copied().unwrap_or(0);
    // The placed workers' own cost curves, where they report them (online calibration):
    // the prefill stage's from the prefill worker, the rest from the decode worker.
    let views = st.dispatcher.views();
    let placement = sequences.get(lead).map(|s| s.placement);
    let prefill_phase = plan
        .stage_of(genie_scheduler::Role::Prefill)
        .map(|s| s.phase.clone());
    let live = |s: &genie_scheduler::Stage| {
        let p = placement?;
        let id = match p.prefill() {
            Some(w) if prefill_phase.as_ref() == Some(&s.phase) => w,
            _ => p.decode(),
        };
        let v = views.iter().find(|v| v.id == id)?;
        // A curve the worker has not fitted yet comes from the configured profile.
        let c = v.costs.unwrap_or_default();
        let profile = st.cost_profile.as_deref();
        // The sequences decoding beside it now, and itself.
        let batch = v.running + 1;
        let stage = genie_scheduler::LiveStage {
            prefill: c.prefill.or(profile.map(|p| p.prefill.as_live())),
            decode: c.decode.or(profile.map(|p| p.decode.live_at(batch))),
            batch,
        };
        (stage.prefill.is_some() || stage.decode.is_some()).then_some(stage)
    };
    // Served plans have one stage with prompt work on the path, on the worker that
    // prefilled: the queue is ahead of that one.
    let predicted = plan.predict_live(&facts, &taken, &|_| ahead, &live);
    let h = spec.hint;
    let hinted =
        h.disaggregate.is_some() || h.prefill_worker.is_some() || h.decode_worker.is_some();
    RequestPlan {
        id: id.into(),
        created: unix_now(),
        policy: plan.policy.clone(),
        plan_version: plan.version,
        prompt_tokens: facts.prompt_tokens,
        max_tokens: spec.max_tokens,
        stages: taken.iter().map(|s| s.phase.clone()).collect(),
        hint: hinted.then(|| PlacementHint {
            disaggregate: h.disaggregate,
            prefill_worker: h.prefill_worker.map(genie_protocol::WorkerId),
            decode_worker: h.decode_worker.map(genie_protocol::WorkerId),
        }),
        predicted,
        sequences,
    }
}

/// The header that gives clients the id of the request's plan.
pub const REQUEST_ID_HEADER: &str = "x-genie-request-id";

pub(crate) fn with_request_id(mut r: Response, id: &str) -> Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(id) {
        r.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    r
}

pub(crate) fn prompt_tokens(spec: &GenSpec) -> u64 {
    spec.prompts.iter().map(|p| p.ids.len() as u64).sum()
}

fn completion_tokens(m: &Merged) -> u64 {
    m.completion_tokens()
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

/// Completions' logprobs of `tokens`; their text offsets start at `offset` (the length of
/// the choice's text before them, an echoed prompt included), which they advance.
fn completion_logprobs(st: &AppState, tokens: &[TokenOut], offset: &mut u32) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        let (text, _) = st.frontend.token_text(t.token);
        out.text_offset.push(*offset);
        *offset += text.len() as u32;
        out.tokens.push(text);
        out.token_logprobs.push(Some(t.logprob.unwrap_or(0.0)));
        out.top_logprobs.push(Some(
            t.top_logprobs
                .iter()
                .map(|&(id, lp)| (st.frontend.token_text(id).0, lp))
                .collect::<BTreeMap<_, _>>(),
        ));
    }
    out
}

/// An echoed prompt's logprobs: `scored` holds its tokens after the first. The first has
/// none (`null`), unless it is a BOS the gateway added, which is not shown at all (it is
/// not in the echoed text), so that the offsets index the choice's `text`.
fn prompt_logprobs(
    st: &AppState,
    prompt: &crate::request::Prompt,
    scored: &[TokenOut],
    offset: &mut u32,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    if !prompt.bos_added {
        if let Some(&first) = prompt.ids.first() {
            let (text, _) = st.frontend.token_text(first);
            out.text_offset.push(*offset);
            *offset += text.len() as u32;
            out.tokens.push(text);
            out.token_logprobs.push(None);
            out.top_logprobs.push(None);
        }
    }
    out.extend(completion_logprobs(st, scored, offset));
    out
}

/// Every choice of a non-streamed answer: text, kept tokens, finish reason.
pub(crate) struct Collected {
    pub(crate) texts: Vec<String>,
    pub(crate) tokens: Vec<Vec<TokenOut>>,
    pub(crate) finish: Vec<FinishReason>,
    /// Each choice's prompt scores, when it asked for them.
    pub(crate) prompts: Vec<Option<Vec<TokenOut>>>,
}

/// Runs every sequence to its end; `texts` holds each choice's prefix (completions' echo).
pub(crate) async fn collect(
    merged: &mut Merged,
    mut texts: Vec<String>,
) -> Result<Collected, ApiError> {
    let n = texts.len();
    let mut tokens: Vec<Vec<TokenOut>> = vec![Vec::new(); n];
    let mut finish: Vec<FinishReason> = vec![FinishReason::Stop; n];
    let mut prompts = vec![None; n];
    while let Some((i, piece)) = merged.next().await {
        let i = i as usize;
        match piece {
            Piece::Prompt(p) => prompts[i] = Some(p),
            Piece::Delta {
                text,
                tokens: t,
                finish: f,
            } => {
                texts[i].push_str(&text);
                tokens[i].extend(t);
                if let Some(f) = f {
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
    Ok(Collected {
        texts,
        tokens,
        finish,
        prompts,
    })
}

/// The request's tenant (its API key's limits), its rate already taken.
pub(crate) fn tenant(st: &AppState, headers: &HeaderMap) -> Result<Option<Arc<Tenant>>, ApiError> {
    let t = st.tenants.of(headers);
    if let Some(t) = &t {
        t.admit_request()?;
    }
    Ok(t)
}

/// What a streamed chat answer sends for each piece of a choice.
type OnPiece =
    Box<dyn FnMut(u32, String, Vec<TokenOut>, Option<FinishReason>) -> Vec<Event> + Send>;

/// `finish_reason` of an answer that may be tool calls: `tool_calls` where it ended by
/// itself as calls.
fn tool_finish(calls: bool, finish: FinishReason) -> &'static str {
    match (calls, finish) {
        (true, FinishReason::Stop) => "tool_calls",
        _ => finish.as_str(),
    }
}

/// Streamed pieces of an answer offered tools, as OpenAI streams them: text deltas once
/// the answer is known to be text (held until then), or for each call a delta with its
/// id, type and name, then deltas of its arguments as they are written
/// ([`crate::tool_stream`]); then the finish chunk.
fn tool_pieces(
    chunk: impl Fn(Vec<ChatChunkChoice>, Option<Usage>) -> Event + Send + 'static,
    tools: crate::tools::ToolUse,
    n: usize,
) -> OnPiece {
    use crate::tool_stream::{CallReader, Found};
    let mut readers: Vec<CallReader> = (0..n).map(|_| tools.reader()).collect();
    Box::new(move |index, text, _tokens, finish| {
        let Some(reader) = readers.get_mut(index as usize) else {
            return Vec::new();
        };
        let mut found = reader.push(&text);
        if finish.is_some() {
            found.extend(reader.finish());
        }
        let call =
            |k: usize, id: Option<String>, name: Option<String>, arguments: String| ChatDelta {
                tool_calls: Some(vec![ToolCallDelta {
                    index: k as u32,
                    kind: id.as_ref().map(|_| "function".to_string()),
                    id,
                    function: FunctionCallDelta { name, arguments },
                }]),
                ..ChatDelta::default()
            };
        let mut ev: Vec<Event> = found
            .into_iter()
            .map(|f| {
                let delta = match f {
                    Found::Text(t) => ChatDelta {
                        content: Some(t),
                        ..ChatDelta::default()
                    },
                    Found::Call { index: k, name } => {
                        call(k, Some(new_id("call")), Some(name), String::new())
                    }
                    Found::Args { index: k, fragment } => call(k, None, None, fragment),
                };
                chunk(
                    vec![ChatChunkChoice {
                        index,
                        delta,
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                )
            })
            .collect();
        if let Some(finish) = finish {
            ev.push(chunk(
                vec![ChatChunkChoice {
                    index,
                    delta: ChatDelta::default(),
                    logprobs: None,
                    finish_reason: Some(tool_finish(reader.calls() > 0, finish).into()),
                }],
                None,
            ));
        }
        ev
    })
}

pub async fn chat_completions(
    State(st): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let tenant = tenant(&st, &headers)?;
    crate::fields::check(&bytes, crate::fields::Endpoint::Chat)?;
    let req: ChatCompletionRequest = body::parse(&bytes)?;
    let spec = prepare(&st, req, prepare_chat).await?;
    let (id, created) = (new_id("chatcmpl"), unix_now());
    let mut merged = start(&st, &spec, tenant.as_deref(), arrived, &id).await?;
    let rid = id.clone();
    let model = st.frontend.served_name.clone();
    let want_logprobs = spec.sampling.logprobs.is_some();
    let n = merged.seqs.len();
    if spec.stream {
        let chunk = move |choices: Vec<ChatChunkChoice>, usage: Option<Usage>| {
            sse_json(&ChatCompletionChunk {
                id: id.clone(),
                object: "chat.completion.chunk".into(),
                created,
                model: model.clone(),
                choices,
                usage,
                system_fingerprint: FINGERPRINT.into(),
            })
        };
        let first: Vec<Event> = (0..n as u32)
            .map(|index| {
                chunk(
                    vec![ChatChunkChoice {
                        index,
                        delta: ChatDelta {
                            role: Some("assistant".into()),
                            content: Some(String::new()),
                            tool_calls: None,
                        },
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                )
            })
            .collect();
        let piece_chunk = chunk.clone();
        let stall = st.stall_timeout;
        let on_piece: OnPiece = match spec.tools.clone() {
            Some(tools) => tool_pieces(chunk.clone(), tools, n),
            None => Box::new(
                move |index, text: String, tokens: Vec<TokenOut>, finish: Option<FinishReason>| {
                    let mut ev = Vec::new();
                    if !text.is_empty() || (want_logprobs && !tokens.is_empty()) {
                        ev.push(piece_chunk(
                            vec![ChatChunkChoice {
                                index,
                                delta: ChatDelta {
                                    role: None,
                                    content: Some(text),
                                    tool_calls: None,
                                },
                                logprobs: want_logprobs.then(|| ChatLogprobs {
                                    content: chat_logprobs(&st, &tokens),
                                }),
                                finish_reason: None,
                            }],
                            None,
                        ));
                    }
                    if let Some(f) = finish {
                        ev.push(piece_chunk(
                            vec![ChatChunkChoice {
                                index,
                                delta: ChatDelta::default(),
                                logprobs: None,
                                finish_reason: Some(f.as_str().into()),
                            }],
                            None,
                        ));
                    }
                    ev
                },
            ),
        };
        let (include, ptoks) = (spec.include_usage, prompt_tokens(&spec));
        let usage = move |c, k| {
            include.then(|| chunk(Vec::new(), Some(Usage::new(ptoks, c).with_cached(k))))
        };
        return Ok(with_request_id(
            sse_body(merged, first, deltas(on_piece), usage, stall).into_response(),
            &rid,
        ));
    }
    let c = collect(&mut merged, vec![String::new(); n]).await?;
    let usage = Usage::new(prompt_tokens(&spec), completion_tokens(&merged))
        .with_cached(merged.cached_tokens());
    let choices = c
        .texts
        .into_iter()
        .zip(c.tokens)
        .zip(c.finish)
        .enumerate()
        .map(|(i, ((content, tokens), finish))| {
            let calls = spec
                .tools
                .as_ref()
                .and_then(|t| crate::tools::read_calls(&content, t, || new_id("call")));
            ChatChoice {
                index: i as u32,
                finish_reason: Some(tool_finish(calls.is_some(), finish).to_string()),
                message: AssistantMessage {
                    role: "assistant".into(),
                    content: calls.is_none().then_some(content),
                    tool_calls: calls,
                },
                logprobs: want_logprobs.then(|| ChatLogprobs {
                    content: chat_logprobs(&st, &tokens),
                }),
            }
        })
        .collect();
    let body = Json(ChatCompletion {
        id,
        object: "chat.completion".into(),
        created,
        model,
        choices,
        usage,
        system_fingerprint: FINGERPRINT.into(),
    });
    Ok(with_request_id(body.into_response(), &rid))
}

pub async fn completions(
    State(st): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let tenant = tenant(&st, &headers)?;
    crate::fields::check(&bytes, crate::fields::Endpoint::Completion)?;
    let req: CompletionRequest = body::parse(&bytes)?;
    let spec = prepare(&st, req, prepare_completion).await?;
    let (id, created) = (new_id("cmpl"), unix_now());
    let mut merged = start(&st, &spec, tenant.as_deref(), arrived, &id).await?;
    let rid = id.clone();
    let model = st.frontend.served_name.clone();
    let want_logprobs = spec.sampling.logprobs.is_some();
    let n = merged.seqs.len();
    let echoes: Vec<String> = (0..n)
        .map(|i| {
            if spec.echo {
                spec.prompts[i / spec.n].text.clone()
            } else {
                String::new()
            }
        })
        .collect();
    let mk = move |choices: Vec<CompletionChoice>, usage: Option<Usage>| Completion {
        id: id.clone(),
        object: "text_completion".into(),
        created,
        model: model.clone(),
        choices,
        usage,
        system_fingerprint: FINGERPRINT.into(),
    };
    if spec.stream {
        let choice = |index, text, logprobs, finish_reason| CompletionChoice {
            index,
            text,
            logprobs,
            finish_reason,
        };
        // An echo goes first; with logprobs it waits for the prompt's scores, which come
        // before the choice's first token.
        let scored_echo = spec.sampling.prompt_logprobs.is_some();
        let first: Vec<Event> = echoes
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.is_empty() && !scored_echo)
            .map(|(i, e)| sse_json(&mk(vec![choice(i as u32, e.clone(), None, None)], None)))
            .collect();
        let mut echoes: Vec<Option<String>> = echoes
            .into_iter()
            .map(|e| Some(e).filter(|e| scored_echo && !e.is_empty()))
            .collect();
        let mut offsets: Vec<u32> = (0..n)
            .map(|i| match (spec.echo, scored_echo) {
                (true, false) => spec.prompts[i / spec.n].text.len() as u32,
                _ => 0,
            })
            .collect();
        let prompts: Vec<crate::request::Prompt> =
            (0..n).map(|i| spec.prompts[i / spec.n].clone()).collect();
        let piece_mk = mk.clone();
        let stall = st.stall_timeout;
        let on_piece = move |index: u32, piece: Piece| {
            let i = index as usize;
            let mut out = Vec::new();
            let (text, tokens, finish) = match piece {
                Piece::Prompt(scored) => {
                    if let Some(e) = echoes[i].take() {
                        let lp = prompt_logprobs(&st, &prompts[i], &scored, &mut offsets[i]);
                        out.push(sse_json(&piece_mk(
                            vec![choice(index, e, Some(lp), None)],
                            None,
                        )));
                    }
                    return out;
                }
                Piece::Delta {
                    text,
                    tokens,
                    finish,
                } => (text, tokens, finish),
                Piece::Failed(_) => return out,
            };
            if let Some(e) = echoes[i].take() {
                // No scores came (they always precede the first token): the echo alone.
                offsets[i] = e.len() as u32;
                out.push(sse_json(&piece_mk(
                    vec![choice(index, e, None, None)],
                    None,
                )));
            }
            if text.is_empty() && finish.is_none() && (!want_logprobs || tokens.is_empty()) {
                return out;
            }
            let lp = want_logprobs.then(|| completion_logprobs(&st, &tokens, &mut offsets[i]));
            let c = choice(index, text, lp, finish.map(|f| f.as_str().to_string()));
            out.push(sse_json(&piece_mk(vec![c], None)));
            out
        };
        let (include, ptoks) = (spec.include_usage, prompt_tokens(&spec));
        let usage = move |c, k| {
            include.then(|| sse_json(&mk(Vec::new(), Some(Usage::new(ptoks, c).with_cached(k)))))
        };
        return Ok(with_request_id(
            sse_body(merged, first, on_piece, usage, stall).into_response(),
            &rid,
        ));
    }
    let echo_len: Vec<u32> = echoes.iter().map(|e| e.len() as u32).collect();
    let c = collect(&mut merged, echoes).await?;
    let usage = Usage::new(prompt_tokens(&spec), completion_tokens(&merged))
        .with_cached(merged.cached_tokens());
    let choices = c
        .texts
        .into_iter()
        .zip(c.tokens)
        .zip(c.finish)
        .zip(c.prompts)
        .enumerate()
        .map(|(i, (((text, tokens), finish), scored))| {
            let logprobs = want_logprobs.then(|| {
                let mut offset = 0;
                let mut lp = match &scored {
                    Some(p) => prompt_logprobs(&st, &spec.prompts[i / spec.n], p, &mut offset),
                    None => {
                        offset = echo_len[i];
                        CompletionLogprobs::default()
                    }
                };
                lp.extend(completion_logprobs(&st, &tokens, &mut offset));
                lp
            });
            CompletionChoice {
                index: i as u32,
                text,
                logprobs,
                finish_reason: Some(finish.as_str().to_string()),
            }
        })
        .collect();
    Ok(with_request_id(
        Json(mk(choices, Some(usage))).into_response(),
        &rid,
    ))
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
            architecture: Some(st.frontend.architecture.clone()),
            quantization: Some(st.frontend.quant_mix.clone()),
            kv_bytes_per_token: Some(st.frontend.kv_bytes_per_token as u64),
        }],
    })
}
