//! The local emulation backend of `genie serve`: prefill and decode workers as threads in
//! this process, the in-process KV transport between them, and the dispatcher that asks
//! the scheduler for a placement and starts both legs of each sequence.

use crate::api_error::ApiError;
use crate::config::{Mode, Routing, ServeConfig};
use genie_decode_worker::{DecodeConfig, DecodeInput, DecodeWorker, NewSeq};
use genie_engine::kv_budget::KvBudget;
use genie_engine::model::Model;
use genie_engine::sampling::{Sampler, SamplingParams};
use genie_kv_transfer::{InProcessTransport, KvTransport};
use genie_prefill_worker::{PrefillConfig, PrefillJob, PrefillWorker};
use genie_protocol::worker::SeqEvent;
use genie_protocol::{SeqId, TransferId, WorkerId};
use genie_scheduler::{
    DisaggregationMode, PlaceError, Placement, PlacementRequest, Role, RoutingPolicy, Scheduler,
    WorkerView,
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
}

pub struct Backend {
    prefill: Vec<PrefillWorker>,
    decode: Vec<DecodeWorker>,
    transport: InProcessTransport,
    scheduler: Mutex<Scheduler>,
    kv_freed: Arc<Notify>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    queue_timeout: Duration,
    kv_bytes_per_token: usize,
    next_id: AtomicU64,
}

fn endpoint(id: WorkerId) -> String {
    format!("decode-{}", id.0)
}

impl Backend {
    /// Starts the workers, each with its own compute pool over the shared weights.
    pub fn start(cfg: &ServeConfig, model: &Model) -> anyhow::Result<Self> {
        let transport = InProcessTransport::new();
        let kv_freed = Arc::new(Notify::new());
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
        let mode = match cfg.scheduler.mode {
            Mode::Colocated => DisaggregationMode::Colocated,
            Mode::Disaggregated => DisaggregationMode::Disaggregated {
                min_prompt_tokens: cfg.scheduler.min_prompt_tokens,
            },
        };
        let routing = match cfg.scheduler.routing {
            Routing::LeastLoaded => RoutingPolicy::LeastLoaded,
            Routing::RoundRobin => RoutingPolicy::RoundRobin,
        };
        metrics::gauge!("genie_num_requests_waiting").set(0.0);
        Ok(Backend {
            prefill,
            decode,
            transport,
            scheduler: Mutex::new(Scheduler::new(routing, mode)),
            kv_freed,
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: cfg.limits.max_waiting,
            queue_timeout: Duration::from_secs(cfg.limits.queue_timeout_secs),
            kv_bytes_per_token: model.kv_shape().bytes_per_token(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Ready when every worker thread is alive and both phases have somewhere to run.
    pub fn is_ready(&self) -> bool {
        !self.decode.is_empty()
            && self.decode.iter().all(|w| w.is_alive())
            && self.prefill.iter().all(|w| w.is_alive())
    }

    pub fn mode_label(&self) -> &'static str {
        if self.prefill.is_empty() {
            "colocated"
        } else {
            "disaggregated"
        }
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

    /// Places one sequence (waiting for KV room if every decode worker is full) and starts
    /// its legs: the decode worker reserves the KV first, then the prefill worker starts.
    pub async fn dispatch(
        &self,
        req: SeqRequest,
        ticket: WaitTicket,
    ) -> Result<Dispatched, ApiError> {
        let kv_bytes = (req.prompt.len() + req.max_tokens) * self.kv_bytes_per_token;
        let preq = PlacementRequest {
            prompt_tokens: req.prompt.len(),
            kv_bytes: kv_bytes as u64,
        };
        let deadline = tokio::time::Instant::now() + self.queue_timeout;
        let (placement, reservation, decode) = loop {
            let freed = self.kv_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let placed = {
                let views = self.views();
                let mut s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
                s.place(&preq, &views)
            };
            match placed {
                Ok(p) => {
                    let Some(d) = self.decode.iter().find(|w| w.config.id == p.decode()) else {
                        return Err(ApiError::internal());
                    };
                    // Another request may have taken the room since the snapshot: retry.
                    if let Ok(r) = d.budget().reserve(kv_bytes) {
                        break (p, r, d);
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
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = unbounded_channel();
        let sampler = Sampler::new(req.sampling, req.seed);
        let cache_tokens = req.prompt.len() + req.max_tokens;
        let seq = NewSeq {
            id: SeqId(id),
            max_tokens: req.max_tokens,
            stop_token_ids: req.stop_token_ids.clone(),
            sampler: sampler.clone(),
            events: tx.clone(),
            reservation,
            cache: decode_cache(decode, cache_tokens),
        };
        match placement {
            Placement::Colocated { .. } => {
                if !decode.send(DecodeInput::Prefill {
                    seq,
                    prompt: req.prompt,
                }) {
                    return Err(ApiError::unavailable("the decode worker stopped"));
                }
            }
            Placement::Disaggregated { prefill, .. } => {
                let transfer = TransferId(id);
                let Some(p) = self.prefill.iter().find(|w| w.config.id == prefill) else {
                    return Err(ApiError::internal());
                };
                if !decode.send(DecodeInput::Expect { transfer, seq }) {
                    return Err(ApiError::unavailable("the decode worker stopped"));
                }
                let sink = self
                    .transport
                    .open(&endpoint(decode.config.id), transfer)
                    .map_err(|e| {
                        tracing::error!(error = %e, "cannot open KV transfer");
                        ApiError::internal()
                    })?;
                let job = PrefillJob {
                    id: SeqId(id),
                    prompt: req.prompt,
                    max_tokens: req.max_tokens,
                    stop_token_ids: req.stop_token_ids,
                    sampler,
                    events: tx,
                    sink,
                };
                if p.submit(job).is_err() {
                    return Err(ApiError::unavailable("the prefill worker stopped"));
                }
            }
        }
        Ok(Dispatched {
            events: rx,
            placement,
            ticket: Some(ticket),
        })
    }
}

fn decode_cache(w: &DecodeWorker, tokens: usize) -> genie_engine::kv_cache::KvCache {
    genie_engine::kv_cache::KvCache::new(w.kv_shape(), tokens)
}
