//! Where sequences run. The [`Backend`] owns the waiting queue, the scheduler and the
//! placement loop; a [`Pool`] starts the legs of a placed sequence on its workers:
//! [`LocalPool`] (`genie serve`: worker threads in this process, in-process KV transport)
//! or [`RemotePool`](crate::remote::RemotePool) (`genie gateway`: worker processes reached
//! over HTTP, KV over TCP).

use crate::api_error::ApiError;
use crate::config::{Mode, Routing, ServeConfig};
use crate::remote::RemotePool;
use genie_decode_worker::{DecodeConfig, DecodeInput, DecodeWorker, NewSeq};
use genie_engine::kv_budget::KvBudget;
use genie_engine::kv_cache::KvCache;
use genie_engine::model::Model;
use genie_engine::sampling::{Sampler, SamplingParams};
use genie_kv_transfer::{InProcessTransport, KvTransport};
use genie_prefill_worker::{PrefillConfig, PrefillJob, PrefillWorker};
use genie_protocol::openai::GenieHint;
use genie_protocol::worker::SeqEvent;
use genie_protocol::{SeqId, TransferId, WorkerId};
use genie_scheduler::placement::prefix_hash;
use genie_scheduler::{ExecutionPlan, RequestFacts};
use genie_scheduler::{
    PlaceError, Placement, PlacementRequest, Role, RoutingPolicy, Scheduler, WorkerView,
};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::Notify;

/// One sequence to run.
pub struct SeqRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub stop_token_ids: Vec<u32>,
    pub hint: GenieHint,
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

/// A placed sequence: its event stream and where it runs.
pub struct Dispatched {
    pub events: UnboundedReceiver<SeqEvent>,
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

/// Why a pool could not start a placed sequence.
pub enum StartError {
    /// The decode worker has no KV room right now: wait for room, then place again.
    Busy,
    /// A worker could not be reached (and is now marked unhealthy): place again at once.
    Retry,
    Fatal(ApiError),
}

pub enum Pool {
    Local(LocalPool),
    Remote(Arc<RemotePool>),
}

impl Pool {
    pub fn views(&self) -> Vec<WorkerView> {
        match self {
            Pool::Local(p) => p.views(),
            Pool::Remote(p) => p.views(),
        }
    }
}

pub struct Backend {
    pub pool: Pool,
    scheduler: Mutex<Scheduler>,
    pub plan: Arc<ExecutionPlan>,
    pub routing: Routing,
    /// Prompt tokens `prefix_affinity` routes by.
    pub prefix_tokens: usize,
    /// The config field that pins each role's worker (`plan.pins[k].worker`), for errors.
    pinned_by: Vec<(Role, String)>,
    disaggregated: bool,
    kv_freed: Arc<Notify>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    queue_timeout: Duration,
    kv_bytes_per_token: usize,
    next_id: AtomicU64,
}

fn scheduler(cfg: &ServeConfig) -> Scheduler {
    Scheduler::new(match cfg.scheduler.routing {
        Routing::LeastLoaded => RoutingPolicy::LeastLoaded,
        Routing::RoundRobin => RoutingPolicy::RoundRobin,
        Routing::PowerOfTwo => RoutingPolicy::PowerOfTwo,
        Routing::PrefixAffinity => RoutingPolicy::PrefixAffinity,
    })
}

impl Backend {
    /// `genie serve`: worker threads in this process.
    pub fn local(cfg: &ServeConfig, model: &Model, plan: ExecutionPlan) -> anyhow::Result<Self> {
        let kv_freed = Arc::new(Notify::new());
        let pool = LocalPool::launch(cfg, model, Arc::clone(&kv_freed))?;
        Ok(Self::with_pool(
            cfg,
            Pool::Local(pool),
            kv_freed,
            model.kv_shape().bytes_per_token(),
            plan,
        ))
    }

    /// `genie gateway`: worker processes registered with (or listed for) this gateway.
    pub fn remote(
        cfg: &ServeConfig,
        pool: Arc<RemotePool>,
        kv_bytes_per_token: usize,
        plan: ExecutionPlan,
    ) -> Self {
        let kv_freed = pool.changed();
        Self::with_pool(cfg, Pool::Remote(pool), kv_freed, kv_bytes_per_token, plan)
    }

    fn with_pool(
        cfg: &ServeConfig,
        pool: Pool,
        kv_freed: Arc<Notify>,
        kv_bytes_per_token: usize,
        plan: ExecutionPlan,
    ) -> Self {
        metrics::gauge!("genie_num_requests_waiting").set(0.0);
        let pinned_by = [Role::Prefill, Role::Decode]
            .into_iter()
            .filter_map(|role| {
                let phase = &plan.stage_of(role)?.phase;
                let k = cfg
                    .plan
                    .pins
                    .iter()
                    .rposition(|p| &p.phase == phase && p.worker.is_some())?;
                Some((role, format!("plan.pins[{k}].worker")))
            })
            .collect();
        Backend {
            pool,
            scheduler: Mutex::new(scheduler(cfg)),
            plan: Arc::new(plan),
            routing: cfg.scheduler.routing,
            prefix_tokens: cfg.scheduler.prefix_tokens,
            pinned_by,
            disaggregated: cfg.scheduler.mode == Mode::Disaggregated,
            kv_freed,
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: cfg.limits.max_waiting,
            queue_timeout: Duration::from_secs(cfg.limits.queue_timeout_secs),
            kv_bytes_per_token,
            next_id: AtomicU64::new(1),
        }
    }

    /// Ready when a decode worker (and, disaggregated, a prefill worker) is healthy.
    pub fn is_ready(&self) -> bool {
        let views = self.pool.views();
        let has = |r: Role| views.iter().any(|w| w.role == r && w.healthy);
        let all_local_alive = match &self.pool {
            Pool::Local(p) => p.all_alive(),
            Pool::Remote(_) => true,
        };
        all_local_alive && has(Role::Decode) && (!self.disaggregated || has(Role::Prefill))
    }

    pub fn mode_label(&self) -> &'static str {
        if self.disaggregated {
            "disaggregated"
        } else {
            "colocated"
        }
    }

    /// Enters the waiting queue or refuses with 429 when it is full.
    pub fn enter_queue(&self, sequences: usize) -> Result<Vec<WaitTicket>, ApiError> {
        let now = self.waiting.fetch_add(sequences, Ordering::AcqRel) + sequences;
        let tickets: Vec<WaitTicket> = (0..sequences)
            .map(|_| WaitTicket {
                waiting: Arc::clone(&self.waiting),
            })
            .collect();
        if now > self.max_waiting {
            drop(tickets);
            return Err(ApiError::overloaded(format!(
                "The server is overloaded: {} sequences are already waiting (limit {}). Retry later.",
                now - sequences,
                self.max_waiting
            )));
        }
        metrics::gauge!("genie_num_requests_waiting").set(now as f64);
        Ok(tickets)
    }

    /// The plan's (or the client's) call for one sequence: disaggregate or not, worker
    /// pins, the prefix hash, and the reason in words.
    fn decide(
        &self,
        req: &SeqRequest,
        kv_bytes: u64,
    ) -> Result<(PlacementRequest, String), ApiError> {
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
            if d && !self.disaggregated {
                return Err(ApiError::invalid(
                    "genie.disaggregate",
                    "this server runs no prefill workers (colocated mode), so a request cannot be disaggregated",
                ));
            }
            if !d && hint.prefill_worker.is_some() {
                return Err(ApiError::invalid(
                    "genie.prefill_worker",
                    "names a prefill worker but `genie.disaggregate` is false",
                ));
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
        if self.routing == Routing::PrefixAffinity {
            preq.prefix_hash = Some(prefix_hash(&req.prompt, self.prefix_tokens));
        }
        Ok((preq, reason))
    }

    /// Places one sequence (waiting for KV room if every decode worker is full) and starts
    /// its legs: the decode worker reserves the KV first, then the prefill worker starts.
    pub async fn dispatch(
        &self,
        req: SeqRequest,
        ticket: WaitTicket,
    ) -> Result<Dispatched, ApiError> {
        let kv_bytes = (req.prompt.len() + req.max_tokens) * self.kv_bytes_per_token;
        let (preq, reason) = self.decide(&req, kv_bytes as u64)?;
        let deadline = tokio::time::Instant::now() + self.queue_timeout;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut retries = 0;
        loop {
            let freed = self.kv_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let views = self.pool.views();
            let placed = {
                let mut s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
                s.place(&preq, &views)
            };
            match placed {
                Ok(placement) => {
                    let (prefills, role) = match placement.prefill() {
                        Some(p) => (p, Role::Prefill),
                        None => (placement.decode(), Role::Decode),
                    };
                    let queued_tokens = views
                        .iter()
                        .find(|w| w.id == prefills && w.role == role)
                        .map_or(0, |w| w.queued_tokens);
                    let started = match &self.pool {
                        Pool::Local(p) => p.start(placement, &req, id, kv_bytes),
                        Pool::Remote(p) => p.start(placement, &req, id).await,
                    };
                    match started {
                        Ok(events) => {
                            return Ok(Dispatched {
                                events,
                                placement,
                                ticket: Some(ticket),
                                transfer: placement.prefill().map(|_| id),
                                reason,
                                queued_tokens,
                            })
                        }
                        Err(StartError::Fatal(e)) => return Err(e),
                        Err(StartError::Retry) if retries < 3 => {
                            retries += 1;
                            continue;
                        }
                        Err(StartError::Retry) => {
                            return Err(ApiError::unavailable(
                                "workers could not be reached; retry later",
                            ))
                        }
                        Err(StartError::Busy) => {}
                    }
                }
                Err(PlaceError::NeverFits {
                    needed_bytes,
                    largest_bytes,
                }) => {
                    return Err(ApiError::invalid(
                        "max_tokens",
                        format!("the request needs {needed_bytes} bytes of KV cache ({} prompt + {} completion tokens) but a decode worker holds at most {largest_bytes}; lower `max_tokens`", req.prompt.len(), req.max_tokens),
                    ));
                }
                Err(PlaceError::NoSuchWorker { role, id }) => {
                    let field = match role {
                        Role::Prefill => "genie.prefill_worker",
                        Role::Decode => "genie.decode_worker",
                    };
                    let msg = format!(
                        "there is no {role:?} worker {} (see GET /v1/plans for the workers)",
                        id.0
                    )
                    .to_lowercase();
                    let hinted = match role {
                        Role::Prefill => req.hint.prefill_worker.is_some(),
                        Role::Decode => req.hint.decode_worker.is_some(),
                    };
                    if hinted {
                        return Err(ApiError::invalid(field, msg));
                    }
                    let pin = self
                        .pinned_by
                        .iter()
                        .find(|(r, _)| *r == role)
                        .map_or("plan.pins", |(_, f)| f.as_str());
                    return Err(ApiError::unavailable(format!(
                        "the plan pins a worker ({pin}): {msg}"
                    )));
                }
                Err(PlaceError::NoWorker(role)) => {
                    return Err(ApiError::unavailable(format!(
                        "no healthy {role:?} worker is available"
                    )));
                }
                Err(PlaceError::Busy { .. }) => {}
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(ApiError::overloaded(
                    "The server is overloaded: no KV cache room freed up in time. Retry later.",
                ));
            }
        }
    }
}

/// Worker threads in this process.
pub struct LocalPool {
    prefill: Vec<PrefillWorker>,
    decode: Vec<DecodeWorker>,
    transport: InProcessTransport,
}

fn endpoint(id: WorkerId) -> String {
    format!("decode-{}", id.0)
}

impl LocalPool {
    /// Starts the workers, each with its own compute pool over the shared weights.
    fn launch(cfg: &ServeConfig, model: &Model, kv_freed: Arc<Notify>) -> anyhow::Result<Self> {
        let transport = InProcessTransport::new();
        let mut decode = Vec::new();
        for i in 0..cfg.decode.workers {
            let id = WorkerId(100 + i as u64);
            let notify = Arc::clone(&kv_freed);
            let w = DecodeWorker::start(
                DecodeConfig {
                    id,
                    max_batch: cfg.decode.max_batch,
                    max_prefill_tokens: cfg.decode.max_prefill_tokens,
                    transfer_timeout: Duration::from_secs(cfg.decode.transfer_timeout_secs),
                },
                model.share(cfg.decode.threads)?,
                KvBudget::new(usize::try_from(cfg.decode.kv_cache_bytes).unwrap_or(usize::MAX)),
                Arc::new(move || notify.notify_waiters()),
            )?;
            transport.register(&endpoint(id), w.kv_deliverer());
            decode.push(w);
        }
        let mut prefill = Vec::new();
        if cfg.scheduler.mode == Mode::Disaggregated {
            for i in 0..cfg.prefill.workers {
                prefill.push(PrefillWorker::start(
                    PrefillConfig {
                        id: WorkerId(i as u64),
                        max_batch_tokens: cfg.prefill.max_batch_tokens,
                    },
                    model.share(cfg.prefill.threads)?,
                )?);
            }
        }
        Ok(LocalPool {
            prefill,
            decode,
            transport,
        })
    }

    fn all_alive(&self) -> bool {
        self.decode.iter().all(|w| w.is_alive()) && self.prefill.iter().all(|w| w.is_alive())
    }

    fn views(&self) -> Vec<WorkerView> {
        let p = self.prefill.iter().map(|w| WorkerView {
            id: w.config.id,
            role: Role::Prefill,
            healthy: w.is_alive(),
            load: w.stats().load.load(Ordering::Relaxed),
            queued_tokens: w.stats().queued_tokens.load(Ordering::Relaxed),
            kv_capacity_bytes: 0,
            kv_free_bytes: 0,
        });
        let d = self.decode.iter().map(|w| {
            let b = w.budget();
            WorkerView {
                id: w.config.id,
                role: Role::Decode,
                healthy: w.is_alive(),
                load: w.stats().load(),
                queued_tokens: 0,
                kv_capacity_bytes: b.capacity_bytes() as u64,
                kv_free_bytes: (b.capacity_bytes() - b.used_bytes()) as u64,
            }
        });
        p.chain(d).collect()
    }

    fn start(
        &self,
        placement: Placement,
        req: &SeqRequest,
        id: u64,
        kv_bytes: usize,
    ) -> Result<UnboundedReceiver<SeqEvent>, StartError> {
        let Some(decode) = self
            .decode
            .iter()
            .find(|w| w.config.id == placement.decode())
        else {
            return Err(StartError::Fatal(ApiError::internal()));
        };
        // Another request may have taken the room since the snapshot: wait and retry.
        let reservation = decode
            .budget()
            .reserve(kv_bytes)
            .map_err(|_| StartError::Busy)?;
        let (tx, rx) = unbounded_channel();
        let sampler = Sampler::new(req.sampling.clone(), req.seed);
        let seq = NewSeq {
            id: SeqId(id),
            max_tokens: req.max_tokens,
            stop_token_ids: req.stop_token_ids.clone(),
            sampler: sampler.clone(),
            events: tx.clone(),
            reservation,
            cache: KvCache::new(decode.kv_shape(), req.prompt.len() + req.max_tokens),
        };
        let stopped = |what: &str| {
            StartError::Fatal(ApiError::unavailable(format!("the {what} worker stopped")))
        };
        match placement {
            Placement::Colocated { .. } => {
                if !decode.send(DecodeInput::Prefill {
                    seq,
                    prompt: req.prompt.clone(),
                }) {
                    return Err(stopped("decode"));
                }
            }
            Placement::Disaggregated { prefill, .. } => {
                let transfer = TransferId(id);
                let Some(p) = self.prefill.iter().find(|w| w.config.id == prefill) else {
                    return Err(StartError::Fatal(ApiError::internal()));
                };
                if !decode.send(DecodeInput::Expect { transfer, seq }) {
                    return Err(stopped("decode"));
                }
                let sink = self
                    .transport
                    .open(&endpoint(decode.config.id), transfer)
                    .map_err(|e| {
                        tracing::error!(error = %e, "cannot open KV transfer");
                        StartError::Fatal(ApiError::internal())
                    })?;
                let job = PrefillJob {
                    id: SeqId(id),
                    prompt: req.prompt.clone(),
                    max_tokens: req.max_tokens,
                    stop_token_ids: req.stop_token_ids.clone(),
                    sampler,
                    events: tx,
                    sink,
                };
                if p.submit(job).is_err() {
                    return Err(stopped("prefill"));
                }
            }
        }
        Ok(rx)
    }
}
