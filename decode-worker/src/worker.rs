//! The decode worker's handle: admission (the first KV blocks taken before anything is
//! queued), its input queue, its KV budget and its compute thread.

use crate::batch::BatchLoop;
use crate::types::{
    lock, Admission, DecodeConfig, DecodeInput, DecodeSeq, DecodeStats, KvSource, NewSeq,
    SharedPrefix,
};
use genie_engine::kv_budget::KvBudget;
use genie_engine::kv_cache::{KvCache, KvShape, BLOCK_TOKENS};
use genie_engine::model::Model;
use genie_engine::prefix_cache::PrefixCache;
use genie_engine::EngineError;
use genie_kv_transfer::{Deliver, TransferRegistry};
use genie_protocol::worker::WorkerStatus;
use genie_worker_core::admit::check_lengths;
use genie_worker_core::thread::Inbox;
use genie_worker_core::{AdmitError, EventSender, KvEventLog, WorkerThread};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// A decode worker: its input queue, its KV budget and its compute thread.
pub struct DecodeWorker {
    pub config: DecodeConfig,
    thread: WorkerThread<DecodeInput>,
    budget: KvBudget,
    kv_shape: KvShape,
    stats: Arc<DecodeStats>,
    /// Where a network KV receiver learns which transfers to accept (none in-process).
    registry: Option<TransferRegistry>,
    prefix: Option<SharedPrefix>,
    kv_events: KvEventLog,
}

impl DecodeWorker {
    /// Starts the worker's thread. `on_free` is called whenever sequences leave (their KV
    /// is released), so a gateway waiting for room can retry. `registry` is the network
    /// KV receiver's, when this worker receives KV over the network.
    pub fn start(
        config: DecodeConfig,
        model: Model,
        budget: KvBudget,
        on_free: Arc<dyn Fn() + Send + Sync>,
        registry: Option<TransferRegistry>,
    ) -> std::io::Result<Self> {
        let stats = Arc::new(DecodeStats::default());
        let kv_shape = model.kv_shape();
        // Keyed by the model's configuration too: a cache never serves another model's KV.
        let prefix = (config.prefix_cache_bytes > 0).then(|| {
            Arc::new(Mutex::new(PrefixCache::new(
                BLOCK_TOKENS,
                config.prefix_cache_bytes,
                &format!("{:?}", model.config()),
            )))
        });
        let kv_events = KvEventLog::new();
        // Reported from the first status on (the key salt with no blocks yet), so a router
        // can count the blocks of prompts it sends here before the cache reports them.
        if let Some(pc) = prefix.as_ref() {
            kv_events.sync(&mut lock(pc));
        }
        let mut batch = BatchLoop::new(
            config.clone(),
            model,
            budget.clone(),
            Arc::clone(&stats),
            on_free,
            prefix.clone(),
            kv_events.clone(),
        );
        let thread = WorkerThread::start(
            format!("genie-decode-{}", config.id.0),
            config.queue,
            move |rx| batch.run(rx),
        )?;
        Ok(DecodeWorker {
            config,
            thread,
            budget,
            kv_shape,
            stats,
            registry,
            prefix,
            kv_events,
        })
    }

    /// Admits one sequence: takes the KV blocks its prompt and first generated token need
    /// (more are taken as it grows, [`KvCache::ensure`]) or refuses with
    /// [`AdmitError::NoKvRoom`] (also while a preempted sequence waits for room, so the
    /// room goes to it first), registers an expected transfer with the KV receiver before
    /// any byte can arrive, and queues it ([`AdmitError::Busy`] when the queue is full).
    /// A sequence whose whole life (prompt + `max_tokens`) exceeds the budget is refused
    /// as never fitting. Its events go to `events`; dropping their receiver cancels it.
    /// A refusal leaves nothing taken.
    ///
    /// A disaggregated sequence starts with the longest prefix of its prompt this worker's
    /// prefix cache holds (shared blocks); the answer is how many tokens that is, so the
    /// prefill worker sends only the rest (0 for a colocated one, whose lookup happens when
    /// it is prefilled here).
    ///
    /// The answer also gives the admission's number, which the worker's status includes
    /// once its `admitted` reaches it.
    pub fn admit(&self, s: DecodeSeq, events: EventSender) -> Result<Admission, AdmitError> {
        // The prompt moves into the sequence; `expected` is its transfer, if disaggregated.
        let (prompt, expected) = match s.source {
            KvSource::Prompt(p) => (p, None),
            KvSource::Transfer { transfer, prompt } => (prompt, Some(transfer)),
        };
        let prompt_tokens = prompt.len();
        check_lengths(prompt_tokens, s.max_tokens)?;
        let tokens = prompt_tokens.saturating_add(s.max_tokens);
        let lifetime = tokens.saturating_mul(self.kv_shape.bytes_per_token());
        let start = (prompt_tokens + 1).div_ceil(BLOCK_TOKENS) * BLOCK_TOKENS;
        let needed = start * self.kv_shape.bytes_per_token();
        let no_room = |needed_bytes, free_bytes| AdmitError::NoKvRoom {
            needed_bytes,
            free_bytes,
        };
        if lifetime > self.budget.capacity_bytes() {
            return Err(no_room(lifetime, self.budget.free_bytes()));
        }
        if self.stats.preempted() > 0 || needed > self.budget.free_bytes() {
            return Err(no_room(needed, self.budget.free_bytes()));
        }
        let mut cached = 0;
        let cache = KvCache::paged(self.kv_shape, BLOCK_TOKENS, tokens, Some(&self.budget))
            .and_then(|mut c| {
                if let (Some(pc), Some(_)) = (&self.prefix, expected) {
                    cached = self.reuse(pc, &prompt, &mut c);
                }
                c.ensure(prompt_tokens + 1).map(|()| c)
            })
            .map_err(|e| {
                let free_bytes = match e {
                    EngineError::KvCapacity {
                        available_bytes, ..
                    } => available_bytes,
                    _ => self.budget.free_bytes(),
                };
                no_room(needed, free_bytes)
            })?;
        let seq = NewSeq {
            max_tokens: s.max_tokens,
            stop_token_ids: s.stop_token_ids,
            sampler: s.sampler,
            events,
            tokens: prompt,
            cache,
        };
        let input = match expected {
            None => DecodeInput::Prefill { seq },
            Some(transfer) => DecodeInput::Expect { transfer, seq },
        };
        // Registered before the sequence is queued: its first byte may come right after.
        if let (Some(r), Some(t)) = (&self.registry, expected) {
            let bytes = (prompt_tokens - cached) * self.kv_shape.bytes_per_token();
            r.expect_within(
                t,
                bytes,
                self.config.kv_wait_timeout,
                self.config.transfer_timeout,
            );
        }
        // Counted before it is queued, so that no status read between the two misses it
        // (the loop takes it over at its next publish).
        let queued = if expected.is_none() { prompt_tokens } else { 0 };
        self.stats.pending.fetch_add(1, Ordering::SeqCst);
        self.stats
            .pending_tokens
            .fetch_add(queued, Ordering::SeqCst);
        self.thread.try_send(input).map_err(|(e, _)| {
            self.stats.pending.fetch_sub(1, Ordering::SeqCst);
            self.stats
                .pending_tokens
                .fetch_sub(queued, Ordering::SeqCst);
            if let (Some(r), Some(t)) = (&self.registry, expected) {
                r.forget(t);
            }
            e
        })?;
        // Numbered after it is counted: a status whose `admitted` reaches this number
        // reads a load that includes it (or it has ended).
        let number = self.stats.admissions.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Admission { cached, number })
    }

    /// Starts `cache` with the longest cached prefix of `prompt`; the tokens shared.
    fn reuse(&self, pc: &SharedPrefix, prompt: &[u32], cache: &mut KvCache) -> usize {
        let n = lock(pc).reuse(prompt, cache).tokens;
        let w = self.config.id.0.to_string();
        metrics::counter!("genie_prefix_cache_queries_total", "worker" => w.clone()).increment(1);
        metrics::counter!("genie_prefix_cache_hit_tokens_total", "worker" => w).increment(n as u64);
        n
    }

    /// What the KV receiver delivers into: this worker's queue. It waits for room (KV of
    /// an admitted sequence is never dropped); false once the worker has stopped.
    pub fn kv_deliverer(&self) -> Deliver {
        let tx = self.thread.sender();
        Arc::new(move |m| tx.send(Inbox::Work(DecodeInput::Kv(m))).is_ok())
    }

    /// The KV shape of this worker's model.
    pub fn kv_shape(&self) -> KvShape {
        self.kv_shape
    }

    pub fn budget(&self) -> &KvBudget {
        &self.budget
    }

    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    pub fn is_alive(&self) -> bool {
        self.thread.is_alive()
    }

    /// Sequences queued, in transfer or running (what `status` reports as `load`),
    /// without taking the KV events a status report carries.
    pub fn load(&self) -> u64 {
        self.stats.load() as u64
    }

    /// Load and KV room, as heartbeats and the gateway's placement read them.
    pub fn status(&self) -> WorkerStatus {
        // Read before the counts it vouches for.
        let admitted = self.stats.admitted();
        WorkerStatus {
            admitted,
            load: self.stats.load() as u64,
            queued_tokens: self.stats.queued_tokens() as u64,
            running: self.stats.running() as u64,
            kv_capacity_bytes: self.budget.capacity_bytes() as u64,
            kv_free_bytes: self.budget.free_bytes() as u64,
            max_batch: self.config.max_batch as u64,
            kv_events: self.kv_events.report(),
            costs: self.stats.costs.report(),
        }
    }
}
