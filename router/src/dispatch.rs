//! The dispatcher: the waiting queue, the plan's call for each sequence (disaggregate or
//! not, pins, hints), placement by the scheduler, and starting the legs on a
//! [`WorkerPool`], waiting for KV room and retrying elsewhere as the pool's typed answers
//! say.

use crate::error::DispatchError;
use crate::pool::{SeqSpec, StartError, WorkerPool};
use crate::wait_queue::{Slot, WaitQueue};
use genie_engine::kv_cache::BLOCK_TOKENS;
use genie_engine::sampling::SamplingParams;
use genie_protocol::openai::GenieHint;
use genie_protocol::worker::SeqEvent;
use genie_protocol::{SeqId, WorkerId};
use genie_scheduler::placement::prefix_hash;
use genie_scheduler::{
    ExecutionPlan, PlaceError, Placement, PlacementRequest, RequestFacts, Role, RoutingPolicy,
    Scheduler, WorkerView,
};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::Receiver;
use tokio::sync::Notify;

/// Start attempts a sequence gets when workers refuse it as unavailable.
const MAX_RETRIES: usize = 3;

/// How the dispatcher behaves.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    pub routing: RoutingPolicy,
    /// Prompt tokens `prefix_affinity` routes by.
    pub prefix_tokens: usize,
    /// Prefill workers run (else every sequence prefills on its decode worker).
    pub disaggregated: bool,
    /// Sequences waiting for their first event; more are refused.
    pub max_waiting: usize,
    /// How long a sequence waits for KV room before it is refused.
    pub queue_timeout: Duration,
    pub kv_bytes_per_token: usize,
    /// The config field that pins each role's worker (`plan.pins[k].worker`), for errors.
    pub pinned_by: Vec<(Role, String)>,
    /// Times a sequence is moved to live workers after losing one mid-stream before it
    /// fails (0: never moved).
    pub migration_limit: usize,
    /// A waiting sequence that has waited this long goes before every higher priority
    /// that has not (the starvation bound of [`WaitQueue`]).
    pub priority_max_wait: Duration,
}

/// One sequence to run.
#[derive(Clone, Debug)]
pub struct SeqRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub stop_token_ids: Vec<u32>,
    pub hint: GenieHint,
    /// Higher is placed first while sequences wait for room.
    pub priority: i32,
}

/// Counts a sequence as waiting until it is dropped (at its first event).
pub struct WaitTicket {
    waiting: Arc<AtomicUsize>,
}

impl Drop for WaitTicket {
    fn drop(&mut self) {
        let left = self.waiting.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("genie_num_requests_waiting").set(left as f64);
    }
}

/// A sequence's legs, started: its events and where it runs.
pub(crate) struct Started {
    pub(crate) events: Receiver<SeqEvent>,
    pub(crate) placement: Placement,
    pub(crate) queued_tokens: usize,
    /// Leading prompt tokens the worker that prefills it held, by its KV events.
    pub(crate) cached_tokens: usize,
}

/// A placed sequence: its event stream and where it runs.
pub struct Dispatched {
    pub events: Receiver<SeqEvent>,
    pub placement: Placement,
    pub ticket: Option<WaitTicket>,
    /// The KV transfer's id (disaggregated sequences).
    pub transfer: Option<u64>,
    /// Why it was placed so.
    pub reason: String,
    /// Prompt tokens already queued on the worker that prefills it, when it was placed
    /// (what the cost model's queueing term reads).
    pub queued_tokens: usize,
}

pub struct Dispatcher {
    pool: Arc<dyn WorkerPool>,
    scheduler: Mutex<Scheduler>,
    pub plan: Arc<ExecutionPlan>,
    cfg: DispatchConfig,
    waiting: Arc<AtomicUsize>,
    next_id: AtomicU64,
    /// Whose turn it is to be placed.
    queue: Mutex<WaitQueue>,
    /// Notified when a sequence leaves the queue or comes back to it.
    turn: Arc<Notify>,
}

/// A sequence's place in the dispatcher's [`WaitQueue`]; leaving it (placed, failed,
/// cancelled) hands the turn on.
struct QueueSlot<'a> {
    d: &'a Dispatcher,
    slot: Slot,
}

impl QueueSlot<'_> {
    fn with<R>(&self, f: impl FnOnce(&mut WaitQueue) -> R) -> R {
        f(&mut self.d.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn is_head(&self) -> bool {
        self.with(|q| q.head(tokio::time::Instant::now()) == Some(self.slot))
    }

    fn placing(&self, placing: bool) {
        self.with(|q| q.set_placing(self.slot, placing));
        if !placing {
            self.d.turn.notify_waiters();
        }
    }
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.with(|q| q.remove(self.slot));
        self.d.turn.notify_waiters();
    }
}

/// Whether `count` sequences of `seq_bytes` KV each can ever be held at once by the
/// decode workers in `views` (their whole capacity, free or not): `Err((needed, total))`
/// when not. A request's sequences are placed one after another and hold their KV until
/// the response is read, so they must fit together. No decode worker: nothing to judge
/// (placement says so).
pub fn fits_together(views: &[WorkerView], seq_bytes: u64, count: usize) -> Result<(), (u64, u64)> {
    let total: u64 = views
        .iter()
        .filter(|w| w.role == Role::Decode && w.healthy)
        .map(|w| w.kv_capacity_bytes)
        .sum();
    let needed = seq_bytes.saturating_mul(count as u64);
    if total > 0 && needed > total {
        return Err((needed, total));
    }
    Ok(())
}

impl Dispatcher {
    pub fn new(cfg: DispatchConfig, pool: Arc<dyn WorkerPool>, plan: ExecutionPlan) -> Self {
        metrics::gauge!("genie_num_requests_waiting").set(0.0);
        let max_wait = cfg.priority_max_wait;
        Dispatcher {
            queue: Mutex::new(WaitQueue::new(max_wait)),
            turn: Arc::new(Notify::new()),
            pool,
            scheduler: Mutex::new(Scheduler::new(cfg.routing)),
            plan: Arc::new(plan),
            cfg,
            waiting: Arc::new(AtomicUsize::new(0)),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn config(&self) -> &DispatchConfig {
        &self.cfg
    }

    /// Every worker as placement sees it.
    pub fn views(&self) -> Vec<WorkerView> {
        self.pool.views()
    }

    /// Ready when a decode worker (and, disaggregated, a prefill worker) is healthy.
    pub fn is_ready(&self) -> bool {
        let views = self.pool.views();
        let has = |r: Role| views.iter().any(|w| w.role == r && w.healthy);
        self.pool.all_alive()
            && has(Role::Decode)
            && (!self.cfg.disaggregated || has(Role::Prefill))
    }

    pub fn mode_label(&self) -> &'static str {
        if self.cfg.disaggregated {
            "disaggregated"
        } else {
            "colocated"
        }
    }

    /// Enters the waiting queue, or is refused when it is full.
    pub fn enter_queue(&self, sequences: usize) -> Result<Vec<WaitTicket>, DispatchError> {
        let now = self.waiting.fetch_add(sequences, Ordering::AcqRel) + sequences;
        let tickets: Vec<WaitTicket> = (0..sequences)
            .map(|_| WaitTicket {
                waiting: Arc::clone(&self.waiting),
            })
            .collect();
        if now > self.cfg.max_waiting {
            drop(tickets);
            return Err(DispatchError::Overloaded {
                waiting: now - sequences,
                limit: self.cfg.max_waiting,
            });
        }
        metrics::gauge!("genie_num_requests_waiting").set(now as f64);
        Ok(tickets)
    }

    /// Refuses up front a request whose `sequences` (each `prompt_tokens + max_tokens`)
    /// could never be held at once by every decode worker together, instead of letting it
    /// wait for room until the queue timeout.
    pub fn check_fits(
        &self,
        sequences: usize,
        prompt_tokens: usize,
        max_tokens: usize,
    ) -> Result<(), DispatchError> {
        let seq_bytes = ((prompt_tokens + max_tokens) * self.cfg.kv_bytes_per_token) as u64;
        let views = self.pool.views();
        let largest = views
            .iter()
            .filter(|w| w.role == Role::Decode)
            .map(|w| w.kv_capacity_bytes)
            .max()
            .unwrap_or(0);
        // One sequence, or one too large for any worker: placement refuses it naming
        // `max_tokens`.
        if sequences <= 1 || seq_bytes > largest {
            return Ok(());
        }
        fits_together(&views, seq_bytes, sequences).map_err(|(needed_bytes, total_bytes)| {
            DispatchError::RequestNeverFits {
                sequences,
                needed_bytes,
                total_bytes,
            }
        })
    }

    /// The plan's (or the client's) call for one sequence: disaggregate or not, worker
    /// pins, the prefix hash, and the reason in words.
    fn decide(
        &self,
        req: &SeqRequest,
        kv_bytes: u64,
    ) -> Result<(PlacementRequest, String), DispatchError> {
        let facts = RequestFacts {
            prompt_tokens: req.prompt.len(),
            max_tokens: req.max_tokens,
            inputs: Vec::new(),
        };
        let (mut disaggregate, mut reason) = match self.plan.prefill_for(&facts) {
            Some((s, colocated)) => (
                !colocated,
                format!("plan stage `{}` ({})", s.phase, s.selector_label),
            ),
            None => (
                false,
                "no prefill stage selects it: prefill on the decode worker".into(),
            ),
        };
        let hint = req.hint;
        let wants = hint.disaggregate.or(hint.prefill_worker.map(|_| true));
        if let Some(d) = wants {
            if d && !self.cfg.disaggregated {
                return Err(DispatchError::InvalidHint {
                    field: "genie.disaggregate",
                    reason: "this server runs no prefill workers (colocated mode), so a request cannot be disaggregated".into(),
                });
            }
            if !d && hint.prefill_worker.is_some() {
                return Err(DispatchError::InvalidHint {
                    field: "genie.prefill_worker",
                    reason: "names a prefill worker but `genie.disaggregate` is false".into(),
                });
            }
            disaggregate = d;
            reason = format!("client hint (disaggregate = {d})");
        }
        let pinned = |role| {
            self.plan
                .stage_of(role)
                .and_then(|s| s.pinned_worker)
                .map(WorkerId)
        };
        let mut preq = PlacementRequest::new(req.prompt.len(), kv_bytes, disaggregate);
        // Paged KV: a decode worker takes the blocks of the prompt and the first generated
        // token to admit a sequence, and the rest as it grows.
        let start = (req.prompt.len() + 1).div_ceil(BLOCK_TOKENS) * BLOCK_TOKENS;
        preq.kv_start_bytes = (start * self.cfg.kv_bytes_per_token) as u64;
        preq.prefill_worker = hint
            .prefill_worker
            .map(WorkerId)
            .or_else(|| pinned(Role::Prefill));
        preq.decode_worker = hint
            .decode_worker
            .map(WorkerId)
            .or_else(|| pinned(Role::Decode));
        if hint.prefill_worker.is_some() || hint.decode_worker.is_some() {
            reason.push_str("; worker chosen by the client");
        } else if preq.prefill_worker.is_some() || preq.decode_worker.is_some() {
            reason.push_str("; worker pinned by the plan");
        }
        if self.cfg.routing == RoutingPolicy::PrefixAffinity {
            preq.prefix_hash = Some(prefix_hash(&req.prompt, self.cfg.prefix_tokens));
        }
        Ok((preq, reason))
    }

    /// What a placement refusal means for this request.
    fn place_error(&self, e: PlaceError, req: &SeqRequest) -> DispatchError {
        match e {
            PlaceError::NeverFits {
                needed_bytes,
                largest_bytes,
            } => DispatchError::NeverFits {
                needed_bytes,
                largest_bytes,
                prompt_tokens: req.prompt.len(),
                max_tokens: req.max_tokens,
            },
            PlaceError::NoSuchWorker { role, id } => {
                let (field, hinted) = match role {
                    Role::Prefill => ("genie.prefill_worker", req.hint.prefill_worker.is_some()),
                    Role::Decode => ("genie.decode_worker", req.hint.decode_worker.is_some()),
                };
                if hinted {
                    return DispatchError::UnknownWorker { field, role, id };
                }
                let pin = self
                    .cfg
                    .pinned_by
                    .iter()
                    .find(|(r, _)| *r == role)
                    .map_or("plan.pins", |(_, f)| f.as_str());
                DispatchError::PinnedWorkerMissing {
                    pin: pin.to_string(),
                    role,
                    id,
                }
            }
            PlaceError::NoWorker(role) => DispatchError::NoWorker(role),
            PlaceError::Busy { .. } => unreachable!("busy is waited on, not returned"),
        }
    }

    /// Places one sequence (waiting for KV room if every decode worker is full) and starts
    /// its legs: the decode worker reserves the KV first, then the prefill worker starts.
    /// A worker that refuses as unavailable is left out of this sequence's next placement.
    /// Unless migration is off, a supervisor moves the sequence to live workers when one
    /// of its workers is lost mid-stream ([`crate::migrate`]); the events come as one
    /// stream either way.
    pub async fn dispatch(
        self: &Arc<Self>,
        req: SeqRequest,
        ticket: WaitTicket,
    ) -> Result<Dispatched, DispatchError> {
        let kv_bytes = (req.prompt.len() + req.max_tokens) * self.cfg.kv_bytes_per_token;
        let (preq, mut reason) = self.decide(&req, kv_bytes as u64)?;
        let seq = SeqSpec {
            id: self.new_id(),
            prompt: req.prompt.clone(),
            max_tokens: req.max_tokens,
            sampling: req.sampling.clone(),
            seed: req.seed,
            stop_token_ids: req.stop_token_ids.clone(),
            resumed: 0,
        };
        let started = self.place_and_start(&preq, &seq, &req, &[]).await?;
        let (placement, queued_tokens) = (started.placement, started.queued_tokens);
        if self.cfg.routing == RoutingPolicy::KvAware {
            let at = placement.prefill().unwrap_or(placement.decode()).0;
            reason.push_str(&format!(
                "; kv_aware: worker {at} held {} of the {} prompt tokens (least work: uncached + queued prompt tokens, + {} per sequence a decode worker runs)",
                started.cached_tokens,
                seq.prompt.len(),
                genie_scheduler::placement::KV_AWARE_LOAD_TOKENS
            ));
        }
        let events = if self.cfg.migration_limit > 0 {
            crate::migrate::supervise(Arc::clone(self), req, preq, seq.clone(), started)
        } else {
            started.events
        };
        Ok(Dispatched {
            events,
            placement,
            ticket: Some(ticket),
            transfer: placement.prefill().map(|_| seq.id.0),
            reason,
            queued_tokens,
        })
    }

    /// Resolves when a worker of `placement` is no longer alive (a worker that froze
    /// while answering a start call never answers it).
    async fn lost_worker(&self, placement: Placement) -> WorkerId {
        loop {
            tokio::time::sleep(crate::migrate::LIVENESS_CHECK).await;
            if let Some(w) = crate::migrate::first_lost(self.pool.as_ref(), placement, true) {
                return w;
            }
        }
    }

    pub(crate) fn new_id(&self) -> SeqId {
        SeqId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn pool(&self) -> &Arc<dyn WorkerPool> {
        &self.pool
    }

    /// The placement loop: place `seq` on healthy workers other than `exclude`, start its
    /// legs, wait for KV room (up to the queue timeout) and place again without a worker
    /// that refused as unavailable. `req` is the client's request, for errors.
    pub(crate) async fn place_and_start(
        &self,
        preq: &PlacementRequest,
        seq: &SeqSpec,
        req: &SeqRequest,
        exclude: &[WorkerId],
    ) -> Result<Started, DispatchError> {
        let deadline = tokio::time::Instant::now() + self.cfg.queue_timeout;
        let changed = self.pool.changed();
        let mut refused: Vec<WorkerId> = Vec::new();
        let slot = QueueSlot {
            d: self,
            slot: self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(req.priority, tokio::time::Instant::now()),
        };
        loop {
            let freed = changed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let turn = self.turn.notified();
            tokio::pin!(turn);
            turn.as_mut().enable();
            if !slot.is_head() {
                // Not its turn: wait for the queue to move, room to free up, or its own
                // wait to reach the bound that puts it first.
                let now = tokio::time::Instant::now();
                let wake = match slot.with(|q| q.ages_at(slot.slot)) {
                    Some(ages) if ages > now => ages.min(deadline),
                    _ => deadline,
                };
                tokio::select! {
                    _ = turn.as_mut() => {}
                    _ = freed.as_mut() => {}
                    _ = tokio::time::sleep_until(wake) => {}
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(DispatchError::QueueTimeout);
                }
                continue;
            }
            let mut views = self.pool.views();
            if self.cfg.routing == RoutingPolicy::KvAware {
                let held = self.pool.cached_tokens(&seq.prompt);
                for v in views.iter_mut() {
                    v.cached_tokens = held.get(&v.id).copied().unwrap_or(0);
                }
            }
            for v in views
                .iter_mut()
                .filter(|v| refused.contains(&v.id) || exclude.contains(&v.id))
            {
                v.healthy = false;
            }
            let placed = {
                let mut s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
                s.place(preq, &views)
            };
            match placed {
                Ok(placement) => {
                    let (prefills, role) = match placement.prefill() {
                        Some(p) => (p, Role::Prefill),
                        None => (placement.decode(), Role::Decode),
                    };
                    let (queued_tokens, cached_tokens) = views
                        .iter()
                        .find(|w| w.id == prefills && w.role == role)
                        .map_or((0, 0), |w| (w.queued_tokens, w.cached_tokens));
                    slot.placing(true);
                    let started = tokio::select! {
                        r = self.pool.start(placement, seq) => r,
                        w = self.lost_worker(placement) => Err(StartError::Retry {
                            worker: w,
                            reason: "lost while starting the sequence".into(),
                        }),
                    };
                    slot.placing(false);
                    match started {
                        Ok(events) => {
                            if self.cfg.routing == RoutingPolicy::KvAware {
                                // Both legs will hold the prompt's blocks once it is
                                // prefilled and received.
                                self.pool.routed(placement.decode(), &seq.prompt);
                                if let Some(p) = placement.prefill() {
                                    self.pool.routed(p, &seq.prompt);
                                }
                            }
                            return Ok(Started {
                                events,
                                placement,
                                queued_tokens,
                                cached_tokens,
                            });
                        }
                        Err(StartError::Failed(why)) => {
                            tracing::error!(%why, "a worker failed to start a sequence");
                            return Err(DispatchError::Failed(why));
                        }
                        Err(StartError::Retry { worker, reason }) => {
                            tracing::debug!(%worker, %reason, "worker refused; placing elsewhere");
                            if refused.len() >= MAX_RETRIES {
                                return Err(DispatchError::Unreachable);
                            }
                            refused.push(worker);
                            continue;
                        }
                        Err(StartError::NoRoom) => {}
                    }
                }
                Err(PlaceError::Busy { .. }) => {}
                Err(e) => {
                    // A worker left out after refusing (or lost) is "no worker", not a bad
                    // request.
                    let left_out = !refused.is_empty() || !exclude.is_empty();
                    if left_out && matches!(e, PlaceError::NoWorker(_)) {
                        return Err(DispatchError::Unreachable);
                    }
                    return Err(self.place_error(e, req));
                }
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(DispatchError::QueueTimeout);
            }
        }
    }
}
