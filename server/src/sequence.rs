//! The gateway's side of one running sequence: it turns worker events into client text
//! (incremental detokenization, streaming-safe stop strings), records latency metrics, and
//! cancels the sequence (by dropping its event receiver) when a stop string ends it.
//! [`Merged`] polls all sequences of one request as a single stream.

use crate::frontend::Frontend;
use futures_util::Stream;
use genie_engine::stop::StopMatcher;
use genie_engine::tokenizer::TextDecoder;
use genie_protocol::worker::{FinishReason, SeqEvent, TokenOut};
use genie_router::{Dispatched, WaitTicket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::mpsc::Receiver;

/// What one event contributed to one choice.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// New text (possibly empty while held back) and the tokens that produced it.
    Delta {
        text: String,
        tokens: Vec<TokenOut>,
        finish: Option<FinishReason>,
    },
    /// The prompt's tokens after the first with their logprobs (completions' `echo` with
    /// `logprobs`); at most once, before any `Delta` with tokens.
    Prompt(Vec<TokenOut>),
    /// The sequence failed; the message is safe to show the client.
    Failed(String),
}

/// Where a sequence reports how it went: the plan log and its request's id.
pub struct PlanTrace {
    pub log: Arc<crate::plan_log::PlanLog>,
    pub request_id: String,
    /// Arrival to placement.
    pub placed_ms: f64,
}

pub struct SeqState {
    pub index: u32,
    trace: Option<PlanTrace>,
    first_token: Option<Instant>,
    rx: Option<Receiver<SeqEvent>>,
    ticket: Option<WaitTicket>,
    fe: Arc<Frontend>,
    decoder: TextDecoder,
    stops: StopMatcher,
    arrived: Instant,
    last_token: Option<Instant>,
    pub completion_tokens: usize,
    /// Prompt tokens a worker took from its prefix cache.
    pub cached_tokens: usize,
    /// Its prompt's scores were passed on.
    scored: bool,
    pub done: bool,
}

impl SeqState {
    pub fn new(
        index: u32,
        d: Dispatched,
        fe: Arc<Frontend>,
        stop: Vec<String>,
        arrived: Instant,
        trace: Option<PlanTrace>,
    ) -> Self {
        SeqState {
            index,
            trace,
            first_token: None,
            rx: Some(d.events),
            ticket: d.ticket,
            fe,
            decoder: TextDecoder::new(true),
            stops: StopMatcher::new(stop),
            arrived,
            last_token: None,
            completion_tokens: 0,
            cached_tokens: 0,
            scored: false,
            done: false,
        }
    }

    fn finish(&mut self, reason: &str) {
        self.done = true;
        // Dropping the receiver is the cancellation signal: the worker frees the KV at its
        // next step.
        self.rx = None;
        self.ticket = None;
        metrics::histogram!("genie_e2e_request_latency_seconds")
            .record(self.arrived.elapsed().as_secs_f64());
        metrics::counter!("genie_generation_tokens_total").increment(self.completion_tokens as u64);
        self.report(reason);
    }

    /// Puts the measured timings into the request's plan.
    fn report(&mut self, reason: &str) {
        let Some(t) = self.trace.take() else { return };
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let itl = match (self.first_token, self.last_token) {
            (Some(a), Some(b)) if self.completion_tokens > 1 => {
                Some(ms(b - a) / (self.completion_tokens - 1) as f64)
            }
            _ => None,
        };
        t.log.measured(
            &t.request_id,
            self.index,
            genie_scheduler::Measured {
                placed_ms: t.placed_ms,
                ttft_ms: self.first_token.map(|f| ms(f - self.arrived)),
                itl_ms: itl,
                e2e_ms: ms(self.arrived.elapsed()),
                completion_tokens: self.completion_tokens,
                cached_tokens: self.cached_tokens,
                finish_reason: reason.into(),
            },
        );
    }

    /// Applies one worker event; `None` when it changes nothing the client sees.
    pub fn apply(&mut self, ev: Option<SeqEvent>) -> Option<Piece> {
        match ev {
            Some(SeqEvent::Running) => {
                self.ticket = None;
                None
            }
            Some(SeqEvent::Cached(n)) => {
                self.cached_tokens = n as usize;
                None
            }
            Some(SeqEvent::PromptLogprobs(p)) => {
                // A sequence restarted before its first token may send them again.
                if self.scored || self.completion_tokens > 0 {
                    return None;
                }
                self.scored = true;
                Some(Piece::Prompt(p))
            }
            Some(SeqEvent::Token(t)) => {
                self.ticket = None;
                let now = Instant::now();
                match self.last_token {
                    None => metrics::histogram!("genie_time_to_first_token_seconds")
                        .record((now - self.arrived).as_secs_f64()),
                    Some(prev) => metrics::histogram!("genie_inter_token_latency_seconds")
                        .record((now - prev).as_secs_f64()),
                }
                self.last_token = Some(now);
                self.first_token.get_or_insert(now);
                self.completion_tokens += 1;
                let piece = self.decoder.step(&self.fe.tokenizer, t.token);
                let out = self.stops.push(&piece);
                let finish = if out.stopped.is_some() {
                    self.finish(FinishReason::Stop.as_str());
                    Some(FinishReason::Stop)
                } else {
                    None
                };
                Some(Piece::Delta {
                    text: out.text,
                    tokens: vec![t],
                    finish,
                })
            }
            Some(SeqEvent::Finished(f)) => {
                let tail = self.stops.push(&self.decoder.finish());
                let mut text = tail.text;
                text.push_str(&self.stops.finish());
                let reason = if tail.stopped.is_some() {
                    FinishReason::Stop
                } else {
                    f
                };
                self.finish(reason.as_str());
                Some(Piece::Delta {
                    text,
                    tokens: Vec::new(),
                    finish: Some(reason),
                })
            }
            Some(SeqEvent::Failed(f)) => {
                tracing::warn!(code = %f.code, message = %f.message, "sequence failed");
                self.finish("error");
                Some(Piece::Failed(f.message))
            }
            None => {
                self.finish("error");
                Some(Piece::Failed(
                    "the worker running this sequence stopped".into(),
                ))
            }
        }
    }
}

impl Drop for SeqState {
    /// A sequence dropped before it ended: the client went away.
    fn drop(&mut self) {
        if !self.done {
            self.report("cancelled");
        }
    }
}

/// All sequences of one request as one stream of `(choice index, piece)`.
pub struct Merged {
    pub seqs: Vec<SeqState>,
    next: usize,
    /// The sequences held against the API key's cap, released with the response.
    pub permit: Option<crate::tenant::SeqPermit>,
}

impl Merged {
    pub fn new(seqs: Vec<SeqState>) -> Self {
        Merged {
            seqs,
            next: 0,
            permit: None,
        }
    }

    /// Tokens generated so far over every choice.
    /// Prompt tokens of all sequences that came from prefix caches.
    pub fn cached_tokens(&self) -> u64 {
        self.seqs.iter().map(|s| s.cached_tokens as u64).sum()
    }

    pub fn completion_tokens(&self) -> u64 {
        self.seqs.iter().map(|s| s.completion_tokens as u64).sum()
    }
}

impl Stream for Merged {
    type Item = (u32, Piece);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let n = this.seqs.len();
        let mut live = false;
        // Start where the last poll stopped so one busy sequence cannot starve the others.
        for k in 0..n {
            let i = (this.next + k) % n;
            let s = &mut this.seqs[i];
            if s.done {
                continue;
            }
            live = true;
            while let Some(rx) = s.rx.as_mut() {
                match rx.poll_recv(cx) {
                    Poll::Ready(ev) => {
                        if let Some(p) = s.apply(ev) {
                            this.next = (i + 1) % n;
                            return Poll::Ready(Some((s.index, p)));
                        }
                    }
                    Poll::Pending => break,
                }
            }
        }
        if live {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }
}
