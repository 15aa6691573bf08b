//! Request migration: a sequence whose worker is lost mid-stream (its process died, its
//! event stream broke off, or it stopped answering heartbeats) is placed again on live
//! workers and continues where it stopped.
//!
//! The gateway holds all a move needs: the prompt, the tokens generated so far and the
//! sampling state, which [`genie_engine::sampling::Sampler::resume`] rebuilds from the
//! seed and those tokens. The new placement prefills `prompt + generated` (on a prefill
//! worker or on the new decode worker, as the original placement did), samples the next
//! token exactly where the lost worker would have, and decodes the rest of `max_tokens`.
//! The client's stream sees one sequence: no token twice, none missing. The engine's
//! kernels give the same bits for a token whether it is prefilled or decoded, so a greedy
//! or seeded run continues token for token as the uninterrupted one would.
//!
//! At most `migration_limit` moves per sequence once tokens have flowed (a sequence lost
//! before its first token is simply started again elsewhere, at most [`MAX_RESTARTS`]
//! times); past that, or when no live worker can take it, the client gets a clean error
//! event. `genie_request_migrations_total{outcome}`
//! counts `migrated`, `exhausted` and `failed`.

use crate::dispatch::{Dispatcher, SeqRequest, Started};
use crate::pool::{SeqSpec, WorkerPool};
use genie_protocol::worker::{events_capacity, FailureCode, FinishReason, SeqEvent};
use genie_protocol::WorkerId;
use genie_scheduler::{Placement, PlacementRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{channel, Receiver, Sender};

/// How often a running sequence checks that its workers are still alive (a frozen worker
/// sends nothing; the pool's heartbeat timeout decides when it is lost).
pub(crate) const LIVENESS_CHECK: Duration = Duration::from_millis(500);

/// Times a sequence lost before its first token is started again elsewhere.
const MAX_RESTARTS: usize = 3;

/// Failures that mean a worker or the link between two was lost, not that the sequence
/// itself is bad: these are moved, the others reach the client.
fn is_loss(code: FailureCode) -> bool {
    matches!(
        code,
        FailureCode::WorkerLost
            | FailureCode::TransferFailed
            | FailureCode::KvUnreachable
            | FailureCode::Stopped
    )
}

fn count(outcome: &'static str) {
    metrics::counter!("genie_request_migrations_total", "outcome" => outcome).increment(1);
}

/// Runs `started` under a supervisor that moves it when a worker is lost; returns the
/// sequence's one event stream.
pub(crate) fn supervise(
    dispatcher: Arc<Dispatcher>,
    req: SeqRequest,
    preq: PlacementRequest,
    seq: SeqSpec,
    started: Started,
) -> Receiver<SeqEvent> {
    let (tx, rx) = channel(events_capacity(seq.max_tokens));
    tokio::spawn(run(dispatcher, req, preq, seq, started, tx));
    rx
}

/// Where the sequence runs now.
struct Leg {
    events: Receiver<SeqEvent>,
    placement: Placement,
    /// This placement has sent a token (its prefill, if any, is done).
    got_token: bool,
}

impl Leg {
    /// The workers to leave out of the next placement: those the pool no longer counts
    /// as alive, and the one the failure points at (the decode worker once tokens flow,
    /// before that the worker that prefills).
    fn lost_workers(&self, dispatcher: &Dispatcher, code: Option<FailureCode>) -> Vec<WorkerId> {
        let pool = dispatcher.pool();
        let p = self.placement;
        let mut out: Vec<WorkerId> = [Some(p.decode()), p.prefill()]
            .into_iter()
            .flatten()
            .filter(|w| !pool.alive(*w))
            .collect();
        let blamed = match (code, p.prefill()) {
            (Some(FailureCode::KvUnreachable), _) => p.decode(),
            (_, Some(prefill)) if !self.got_token => prefill,
            _ => p.decode(),
        };
        if !out.contains(&blamed) {
            out.push(blamed);
        }
        out
    }

    /// A worker of this placement that the pool no longer counts as alive (its prefill
    /// worker only until the first token).
    fn dead_worker(&self, dispatcher: &Dispatcher) -> Option<WorkerId> {
        first_lost(dispatcher.pool().as_ref(), self.placement, !self.got_token)
    }
}

/// The first worker of `p` that `pool` no longer counts as alive: the decode worker, then
/// the prefill worker if `prefill_too`.
pub(crate) fn first_lost(
    pool: &dyn WorkerPool,
    p: Placement,
    prefill_too: bool,
) -> Option<WorkerId> {
    if !pool.alive(p.decode()) {
        return Some(p.decode());
    }
    p.prefill().filter(|w| prefill_too && !pool.alive(*w))
}

async fn run(
    dispatcher: Arc<Dispatcher>,
    req: SeqRequest,
    preq: PlacementRequest,
    seq: SeqSpec,
    started: Started,
    tx: Sender<SeqEvent>,
) {
    let mut leg = Leg {
        events: started.events,
        placement: started.placement,
        got_token: false,
    };
    let mut generated: Vec<u32> = Vec::new();
    let mut scored = false;
    let (mut moves, mut restarts) = (0, 0);
    let mut tick = tokio::time::interval(LIVENESS_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (why, code) = tokio::select! {
            ev = leg.events.recv() => match ev {
                Some(SeqEvent::Token(t)) => {
                    generated.push(t.token);
                    leg.got_token = true;
                    if tx.send(SeqEvent::Token(t)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(SeqEvent::Failed(f)) if is_loss(f.code) => (f.message, Some(f.code)),
                Some(SeqEvent::PromptLogprobs(p)) => {
                    // Sent once: a restart after them does not ask again.
                    scored = true;
                    if tx.send(SeqEvent::PromptLogprobs(p)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(ev) => {
                    let end = ev.is_terminal();
                    if tx.send(ev).await.is_err() || end {
                        return;
                    }
                    continue;
                }
                None => ("the worker's event stream ended".to_string(), None),
            },
            _ = tx.closed() => return,
            _ = tick.tick() => match leg.dead_worker(&dispatcher) {
                Some(w) => (format!("worker {w} was lost (no heartbeat)"), None),
                None => continue,
            },
        };
        let exclude = leg.lost_workers(&dispatcher, code);
        // Dropping the old legs cancels whatever of them is still running.
        drop(std::mem::replace(&mut leg.events, channel(1).1));
        if generated.len() >= seq.max_tokens {
            // Lost between the last token and its `length` event.
            let _ = tx.send(SeqEvent::Finished(FinishReason::Length)).await;
            return;
        }
        // Lost before its first token, a sequence is simply started again elsewhere (no
        // client has seen anything of it); those restarts are bounded too, so that a
        // request that kills every worker it reaches cannot go round the pool.
        let (used, limit, what) = if generated.is_empty() {
            restarts += 1;
            (restarts, MAX_RESTARTS, "restarted before its first token")
        } else {
            moves += 1;
            let limit = dispatcher.config().migration_limit;
            (moves, limit, "moved mid-stream")
        };
        if used > limit {
            count("exhausted");
            tracing::warn!(seq = %seq.id, %why, limit, what, "sequence lost its worker past the limit");
            let msg = format!("{why}; the sequence was already {what} {limit} time(s), the limit");
            let _ = tx
                .send(SeqEvent::failed(FailureCode::WorkerLost, msg))
                .await;
            return;
        }
        let mut next = seq.clone();
        next.id = dispatcher.new_id();
        next.prompt.extend_from_slice(&generated);
        next.max_tokens = seq.max_tokens - generated.len();
        next.resumed = generated.len();
        if scored {
            next.sampling.prompt_logprobs = None;
        }
        let mut p = preq;
        p.prompt_tokens = next.prompt.len();
        let placed = tokio::select! {
            r = dispatcher.place_and_start(&p, &next, &req, &exclude) => r,
            _ = tx.closed() => return,
        };
        match placed {
            Ok(s) => {
                count("migrated");
                tracing::warn!(
                    seq = %seq.id, %why, from = ?leg.placement, to = ?s.placement,
                    generated = generated.len(), "sequence moved to live workers"
                );
                leg = Leg {
                    events: s.events,
                    placement: s.placement,
                    got_token: false,
                };
            }
            Err(e) => {
                count("failed");
                tracing::warn!(seq = %seq.id, %why, error = %e, "a lost sequence could not be moved");
                let msg = format!("{why}; moving the sequence to another worker failed: {e}");
                let _ = tx
                    .send(SeqEvent::failed(FailureCode::WorkerLost, msg))
                    .await;
                return;
            }
        }
    }
}
