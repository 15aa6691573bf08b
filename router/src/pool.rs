//! The worker contract: what the dispatcher needs of a pool of prefill and decode workers,
//! whether they are threads of this process or processes elsewhere.

use futures_util::future::BoxFuture;
use genie_engine::sampling::{Sampler, SamplingParams};
use genie_protocol::worker::{FailureCode, SeqEvent, WorkerRole, WorkerStatus};
use genie_protocol::{SeqId, WorkerId};
use genie_scheduler::{Placement, Role, WorkerView};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc::Receiver;
use tokio::sync::Notify;

/// One sequence to start on the workers a placement chose.
#[derive(Clone, Debug)]
pub struct SeqSpec {
    pub id: SeqId,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub stop_token_ids: Vec<u32>,
    /// How many of `prompt`'s last tokens this sequence generated itself before it moved
    /// here from a lost worker (0 for a new sequence): the sampler resumes after them.
    pub resumed: usize,
}

impl SeqSpec {
    /// The sampler this sequence's next token is drawn with.
    pub fn sampler(&self) -> Sampler {
        let generated = &self.prompt[self.prompt.len() - self.resumed..];
        let mut params = self.sampling.clone();
        if self.resumed > 0 {
            // The prompt's scores went out before its first token; the resumed prompt
            // (with the tokens generated) is not the client's.
            params.prompt_logprobs = None;
        }
        Sampler::resume(params, self.seed, generated)
    }
}

/// Why a pool could not start a placed sequence, as the dispatcher acts on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The decode worker has no KV room right now: wait for room, then place again.
    #[error("no KV room on the decode worker")]
    NoRoom,
    /// `worker` cannot take it now (full queue, unreachable, stopping): place again at
    /// once, on another worker.
    #[error("worker {worker} unavailable: {reason}")]
    Retry { worker: WorkerId, reason: String },
    /// A worker refused the sequence for good or failed; the request fails.
    #[error("{0}")]
    Failed(String),
}

/// What the dispatcher does when `leg` (the worker asked to start one leg of a sequence
/// whose decode worker is `decode`) refuses with `code`: wait for room, place again
/// without the worker at fault, or fail. The one reading of refusal codes, for every pool.
pub fn on_refusal(
    code: FailureCode,
    leg: WorkerId,
    decode: WorkerId,
    reason: String,
) -> StartError {
    match code {
        FailureCode::NoKvRoom => StartError::NoRoom,
        FailureCode::Busy | FailureCode::Stopped => StartError::Retry {
            worker: leg,
            reason,
        },
        // The prefill worker could not reach the decode worker's KV endpoint.
        FailureCode::KvUnreachable => StartError::Retry {
            worker: decode,
            reason,
        },
        _ => StartError::Failed(reason),
    }
}

/// A pool of workers the dispatcher places sequences on.
pub trait WorkerPool: Send + Sync {
    /// A snapshot of every worker's role, health, load and KV room.
    fn views(&self) -> Vec<WorkerView>;

    /// For each worker whose KV events are known, how many leading tokens of `prompt` its
    /// prefix cache holds (what `kv_aware` routing places by).
    fn cached_tokens(&self, prompt: &[u32]) -> HashMap<WorkerId, usize> {
        let _ = prompt;
        HashMap::new()
    }

    /// `worker` was given `prompt` to prefill: count its blocks as held there until its
    /// KV events say otherwise.
    fn routed(&self, worker: WorkerId, prompt: &[u32]) {
        let _ = (worker, prompt);
    }

    /// Every worker this pool itself runs is alive (in-process threads); a remote pool
    /// answers true and reports health per worker in its views.
    fn all_alive(&self) -> bool {
        true
    }

    /// Notified whenever load or health changes (KV freed, a worker registered): requests
    /// waiting for room place again.
    fn changed(&self) -> Arc<Notify>;

    /// `id` is not known to be lost: a sequence running on a worker that the pool lists as
    /// unhealthy (it missed its heartbeats) is moved elsewhere. A worker the pool no longer
    /// lists at all deregistered to drain: its streams end by themselves, and if it dies
    /// meanwhile they break off, which moves them just the same.
    fn alive(&self, id: WorkerId) -> bool {
        !self.views().iter().any(|w| w.id == id && !w.healthy)
    }

    /// Starts both legs of a placed sequence: the decode worker reserves the KV first,
    /// then the prefill worker (if any) starts. Events come in order on the receiver;
    /// dropping it cancels the sequence on every worker.
    fn start<'a>(
        &'a self,
        placement: Placement,
        seq: &'a SeqSpec,
    ) -> BoxFuture<'a, Result<Receiver<SeqEvent>, StartError>>;
}

/// The scheduler's view of a worker from its reported status.
pub fn view(id: WorkerId, role: WorkerRole, healthy: bool, s: &WorkerStatus) -> WorkerView {
    WorkerView {
        id,
        role: match role {
            WorkerRole::Prefill => Role::Prefill,
            WorkerRole::Decode => Role::Decode,
        },
        healthy,
        load: s.load as usize,
        queued_tokens: s.queued_tokens as usize,
        kv_capacity_bytes: s.kv_capacity_bytes,
        kv_free_bytes: s.kv_free_bytes,
        cached_tokens: 0,
        running: s.running as usize,
        costs: s.costs,
    }
}
