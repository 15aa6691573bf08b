//! The prefill worker's handle, its admission and its compute loop.

use genie_engine::model::{Model, Segment, TokenScores};
use genie_engine::prefix_cache::{PrefixCache, BLOCK_TOKENS};
use genie_engine::sampling::Sampler;
use genie_engine::EngineError;
use genie_kv_transfer::{KvSink, KvTransport};
use genie_protocol::batching::StepLimits;
use genie_protocol::worker::{FailureCode, Handoff, SeqEvent};
use genie_protocol::{TransferId, WorkerId};
use genie_worker_core::admit::check_lengths;
use genie_worker_core::events::{prompt_scores, send_prompt_scores};
use genie_worker_core::thread::Inbox;
use genie_worker_core::{next_token, AdmitError, EventSender, KvEventLog, Next, WorkerThread};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

/// Prompts a prefill worker's queue holds at most; a full queue refuses as busy.
pub const DEFAULT_QUEUE: usize = 256;

#[derive(Clone, Debug)]
pub struct PrefillConfig {
    pub id: WorkerId,
    /// Most prompt tokens in one forward (a longer single prompt still runs alone).
    pub max_batch_tokens: usize,
    /// Capacity of the input queue.
    pub queue: usize,
    /// KV bytes of finished prompts kept for reuse (automatic prefix caching; 0: off).
    pub prefix_cache_bytes: usize,
}

/// One prompt to prefill, and where its KV goes.
pub struct PrefillSeq {
    pub transfer: TransferId,
    /// The decode worker's KV endpoint, which reserved the sequence's KV.
    pub kv_endpoint: String,
    pub prompt: Vec<u32>,
    /// Leading prompt tokens whose KV the decode worker already holds: not sent.
    pub skip_tokens: usize,
    pub max_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    pub sampler: Sampler,
}

/// A queued prompt with its open transfer.
struct Job {
    seq: Prompted,
    /// Towards the decode worker that reserved the sequence's KV.
    sink: Box<dyn KvSink>,
}

/// What a queued prompt needs besides its transfer.
struct Prompted {
    prompt: Vec<u32>,
    skip_tokens: usize,
    max_tokens: usize,
    stop_token_ids: Vec<u32>,
    sampler: Sampler,
    events: EventSender,
}

#[derive(Debug, Default)]
pub struct PrefillStats {
    /// Prompts queued or running here.
    pub load: AtomicUsize,
    /// Prompt tokens queued or running here.
    pub queued_tokens: AtomicUsize,
    /// Admissions since the worker started; each takes the next number after it is
    /// counted in `load` (see `WorkerStatus::admitted`).
    pub admissions: AtomicU64,
    /// Cost curve fitted to this worker's prefill forwards.
    pub costs: genie_worker_core::costs::CostTracker,
}

pub struct PrefillWorker {
    pub config: PrefillConfig,
    thread: WorkerThread<Job>,
    transport: Arc<dyn KvTransport>,
    stats: Arc<PrefillStats>,
    kv_events: KvEventLog,
}

impl PrefillWorker {
    /// Starts the compute thread; `transport` reaches the decode workers' KV endpoints.
    pub fn start(
        config: PrefillConfig,
        model: Model,
        transport: Arc<dyn KvTransport>,
    ) -> std::io::Result<Self> {
        let stats = Arc::new(PrefillStats::default());
        let st = Arc::clone(&stats);
        let cfg = config.clone();
        let kv_events = KvEventLog::new();
        let log = kv_events.clone();
        let thread = WorkerThread::start(
            format!("genie-prefill-{}", config.id.0),
            config.queue,
            move |rx| run(cfg, model, st, rx, log),
        )?;
        Ok(PrefillWorker {
            config,
            thread,
            transport,
            stats,
            kv_events,
        })
    }

    /// Admits one prompt: opens its KV transfer to the decode worker (which has already
    /// reserved the KV; [`AdmitError::KvUnreachable`] when it cannot be reached) and
    /// queues it ([`AdmitError::Busy`] when the queue is full). The first token (or the
    /// end) goes to `events`. Opening a network transfer may block for the transport's
    /// connect timeout: call it off any async runtime. The answer is the admission's
    /// number, which the worker's status includes once its `admitted` reaches it.
    pub fn admit(&self, s: PrefillSeq, events: EventSender) -> Result<u64, AdmitError> {
        check_lengths(s.prompt.len(), s.max_tokens)?;
        if s.skip_tokens >= s.prompt.len() {
            return Err(AdmitError::Invalid(format!(
                "skip_tokens ({}) must be less than the prompt's {} tokens",
                s.skip_tokens,
                s.prompt.len()
            )));
        }
        let sink = self
            .transport
            .open(&s.kv_endpoint, s.transfer)
            .map_err(|e| AdmitError::KvUnreachable(e.to_string()))?;
        let n = s.prompt.len();
        self.stats.load.fetch_add(1, Ordering::SeqCst);
        self.stats.queued_tokens.fetch_add(n, Ordering::SeqCst);
        let job = Job {
            seq: Prompted {
                prompt: s.prompt,
                skip_tokens: s.skip_tokens,
                max_tokens: s.max_tokens,
                stop_token_ids: s.stop_token_ids,
                sampler: s.sampler,
                events,
            },
            sink,
        };
        self.thread.try_send(job).map_err(|(e, job)| {
            self.stats.load.fetch_sub(1, Ordering::SeqCst);
            self.stats.queued_tokens.fetch_sub(n, Ordering::SeqCst);
            job.sink.abort("the prefill worker refused the sequence");
            e
        })?;
        // Numbered after it is counted: a status whose `admitted` reaches this number
        // reads a load that includes it (or it has ended).
        Ok(self.stats.admissions.fetch_add(1, Ordering::SeqCst) + 1)
    }

    pub fn stats(&self) -> &PrefillStats {
        &self.stats
    }

    pub fn is_alive(&self) -> bool {
        self.thread.is_alive()
    }

    /// Load and queued prompt tokens, as heartbeats and the gateway's placement read them.
    /// Jobs queued or running (what `status` reports as `load`), without taking the KV
    /// events a status report carries.
    pub fn load(&self) -> u64 {
        self.stats.load.load(Ordering::Relaxed) as u64
    }

    pub fn status(&self) -> genie_protocol::worker::WorkerStatus {
        // Read before the counts it vouches for.
        let admitted = self.stats.admissions.load(Ordering::SeqCst);
        genie_protocol::worker::WorkerStatus {
            admitted,
            load: self.stats.load.load(Ordering::SeqCst) as u64,
            queued_tokens: self.stats.queued_tokens.load(Ordering::SeqCst) as u64,
            running: 0,
            kv_capacity_bytes: 0,
            kv_free_bytes: 0,
            max_batch: self.config.max_batch_tokens as u64,
            kv_events: self.kv_events.report(),
            costs: self.stats.costs.report(),
        }
    }
}

fn run(
    config: PrefillConfig,
    model: Model,
    stats: Arc<PrefillStats>,
    rx: Receiver<Inbox<Job>>,
    kv_events: KvEventLog,
) {
    let label = config.id.0.to_string();
    // Keyed by the model's configuration too: a cache never serves another model's KV.
    let mut cache = (config.prefix_cache_bytes > 0).then(|| {
        PrefixCache::new(
            BLOCK_TOKENS,
            config.prefix_cache_bytes,
            &format!("{:?}", model.config()),
        )
    });
    // Reported from the first status on (the key salt with no blocks yet), so a router can
    // count the blocks of prompts it sends here before the cache reports them.
    if let Some(pc) = cache.as_mut() {
        kv_events.sync(pc);
    }
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(Inbox::Work(j)) => j,
                Ok(Inbox::Shutdown) | Err(_) => return,
            },
        };
        let limits = StepLimits {
            max_seqs: usize::MAX,
            max_prompt_tokens: config.max_batch_tokens,
            chunk_tokens: 0,
        };
        let mut jobs = vec![first];
        let mut tokens = jobs[0].seq.prompt.len();
        loop {
            match rx.try_recv() {
                Ok(Inbox::Work(j)) => {
                    if !limits.takes(0, jobs.len(), tokens, j.seq.prompt.len()) {
                        carry = Some(j);
                        break;
                    }
                    tokens += j.seq.prompt.len();
                    jobs.push(j);
                }
                Ok(Inbox::Shutdown) => return,
                Err(_) => break,
            }
        }
        let (n, t) = (jobs.len(), tokens);
        // Clients that left while queued: dropping the job aborts its transfer.
        jobs.retain(|j| !j.seq.events.is_closed());
        if !jobs.is_empty() {
            metrics::histogram!("genie_prefill_batch_tokens", "worker" => label.clone())
                .record(jobs.iter().map(|j| j.seq.prompt.len()).sum::<usize>() as f64);
            // A fault in one batch fails that batch's requests (their senders drop), not
            // the worker.
            let run = std::panic::AssertUnwindSafe(|| {
                prefill(&model, jobs, &label, cache.as_mut(), &stats.costs)
            });
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!("prefill batch panicked; its requests failed");
            }
            if let Some(pc) = cache.as_mut() {
                kv_events.sync(pc);
            }
            // The batch's caches are gone, whichever way it ended.
            metrics::gauge!("genie_kv_cache_used_bytes", "worker" => label.clone()).set(0.0);
        }
        stats.load.fetch_sub(n, Ordering::Relaxed);
        stats.queued_tokens.fetch_sub(t, Ordering::Relaxed);
    }
}

fn fail(events: &EventSender, code: FailureCode, message: &str) {
    events.send(SeqEvent::failed(code, message));
}

/// Prefills `jobs` in one forward, shipping each layer as it completes. A sequence whose
/// client leaves mid-prefill has its transfer aborted at the next layer, so the decode
/// worker frees its reservation without waiting for the batch to end.
///
/// With a prefix cache, each prompt starts from the longest cached whole-block prefix and
/// computes only the rest; the decode worker still gets every layer whole (prefix and
/// suffix), and each prompt's KV is kept for the next ones.
fn prefill(
    model: &Model,
    jobs: Vec<Job>,
    label: &str,
    mut prefix: Option<&mut PrefixCache>,
    costs: &genie_worker_core::costs::CostTracker,
) {
    let mut reused = vec![0; jobs.len()];
    // A prompt whose tokens are scored is computed whole (a cached prefix has no logits).
    let mut scores: Vec<Option<TokenScores>> = jobs
        .iter()
        .map(|j| prompt_scores(&j.seq.sampler, true))
        .collect();
    let mut caches: Vec<_> = jobs
        .iter()
        .zip(reused.iter_mut())
        .zip(&scores)
        .map(|((j, r), scored)| {
            let mut c = model.new_cache(j.seq.prompt.len());
            if let Some(pc) = prefix.as_deref_mut().filter(|_| scored.is_none()) {
                *r = pc.reuse(&j.seq.prompt, &mut c).tokens;
                metrics::counter!("genie_prefix_cache_queries_total", "worker" => label.to_string())
                    .increment(1);
                metrics::counter!("genie_prefix_cache_hit_tokens_total", "worker" => label.to_string())
                    .increment(*r as u64);
                if *r > 0 {
                    j.seq.events.send(SeqEvent::Cached(*r as u32));
                }
            }
            // The blocks for the rest, taken now so the gauge below counts them (the
            // forward would take them anyway; the capacity is the prompt's length).
            if let Err(e) = c.ensure(j.seq.prompt.len()) {
                tracing::warn!(error = %e, "prefill cache refused its blocks");
            }
            c
        })
        .collect();
    let reserved: usize = caches.iter().map(|c| c.reserved_bytes()).sum();
    metrics::gauge!("genie_kv_cache_used_bytes", "worker" => label.to_string())
        .set(reserved as f64);
    // The sinks apart from the jobs: the per-layer hook takes them while the forward
    // borrows the prompts.
    let (mut sinks, jobs): (Vec<Option<Box<dyn KvSink>>>, Vec<Prompted>) =
        jobs.into_iter().map(|j| (Some(j.sink), j.seq)).unzip();
    let computed: Vec<usize> = jobs
        .iter()
        .zip(&reused)
        .map(|(j, &r)| j.prompt.len() - r)
        .collect();
    let t0 = std::time::Instant::now();
    let result = {
        let mut segs: Vec<Segment> = jobs
            .iter()
            .zip(caches.iter_mut())
            .zip(&reused)
            .zip(scores.iter_mut())
            .map(|(((j, c), &r), sc)| Segment {
                tokens: &j.prompt[r..],
                cache: c,
                scores: sc.as_mut(),
            })
            .collect();
        let mut ship = |layer: usize, segs: &[Segment]| {
            for ((seg, slot), j) in segs.iter().zip(sinks.iter_mut()).zip(&jobs) {
                if j.events.is_closed() {
                    if let Some(sink) = slot.take() {
                        sink.abort("client went away");
                        metrics::counter!("genie_prefill_cancelled_total", "worker" => label.to_string())
                            .increment(1);
                    }
                }
                if let Some(sink) = slot {
                    // The layer from where the decode worker's own prefix ends: a prefix
                    // reused here may be one it lacks.
                    let mut bytes = Vec::new();
                    let shape = seg.cache.export_layer_into(
                        layer,
                        j.skip_tokens..seg.cache.layer_len(layer),
                        &mut bytes,
                    );
                    if let Err(e) = sink.send_layer(shape, bytes) {
                        tracing::warn!(error = %e, "KV send failed; dropping the sequence");
                        *slot = None;
                    }
                }
            }
            // Nobody left to prefill for: stop computing.
            if sinks.iter().all(Option::is_none) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        model.forward_observed(&mut segs, &mut ship)
    };
    if result.is_ok() {
        // The forward as the prompts see it, KV shipping by layer included.
        costs.prefill(computed, t0.elapsed().as_secs_f64() * 1e3);
    }
    let logits = match result {
        Ok(l) => l,
        Err(EngineError::Cancelled) => {
            // Every sequence's client left or its transfer failed; tell any still listening.
            for j in &jobs {
                fail(&j.events, FailureCode::TransferFailed, "KV transfer failed");
            }
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "prefill failed");
            for (j, sink) in jobs.iter().zip(sinks) {
                if let Some(s) = sink {
                    s.abort("prefill failed");
                }
                fail(&j.events, FailureCode::Internal, "internal error");
            }
            return;
        }
    };
    if let Some(pc) = prefix {
        for (j, c) in jobs.iter().zip(&caches) {
            pc.insert(&j.prompt, c);
        }
        metrics::gauge!("genie_prefix_cache_bytes", "worker" => label.to_string())
            .set(pc.used_bytes() as f64);
        // A prefill worker's blocks outlive its batches only in its prefix cache.
        metrics::gauge!("genie_kv_blocks_used", "worker" => label.to_string()).set(pc.len() as f64);
        let block = model.kv_shape().block_bytes(pc.block()).max(1);
        metrics::gauge!("genie_kv_blocks_total", "worker" => label.to_string())
            .set((pc.budget_bytes() / block) as f64);
    }
    for (((mut j, sink), mut l), sc) in jobs.into_iter().zip(sinks).zip(logits).zip(scores) {
        let Some(sink) = sink else {
            fail(&j.events, FailureCode::TransferFailed, "KV transfer failed");
            continue;
        };
        send_prompt_scores(&j.events, sc);
        let mut generated = 0;
        let first = match next_token(
            &mut j.sampler,
            &mut l,
            &j.stop_token_ids,
            &mut generated,
            j.max_tokens,
            &j.events,
            model.grammars(),
        ) {
            Next::Continue(t) => t,
            Next::Ended => {
                // Finished at the first token (or the client left): free the decode slot.
                sink.abort("finished at the first token");
                continue;
            }
        };
        let handoff = Handoff {
            prompt_tokens: j.prompt.len() as u32,
            first_token: first,
            sampler: serde_json::to_value(&j.sampler).unwrap_or_default(),
        };
        let trailer = serde_json::to_vec(&handoff).unwrap_or_default();
        if let Err(e) = sink.complete(trailer) {
            tracing::warn!(error = %e, "KV hand-off failed");
            fail(&j.events, FailureCode::TransferFailed, "KV transfer failed");
        }
    }
}
