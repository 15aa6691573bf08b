//! The continuous-batching loop: one thread, one forward step at a time.

use crate::types::{lock, SharedPrefix};
use crate::types::{DecodeConfig, DecodeInput, DecodeStats, NewSeq};
use genie_engine::kv_budget::KvBudget;
use genie_engine::model::{Model, Segment, TokenScores};
use genie_engine::prefix_cache::BLOCK_TOKENS;
use genie_engine::sampling::Sampler;
use genie_engine::EngineError;
use genie_kv_transfer::KvMessage;
use genie_protocol::batching::StepLimits;
use genie_protocol::worker::{FailureCode, Handoff, SeqEvent};
use genie_protocol::TransferId;
use genie_worker_core::events::{prompt_scores, send_prompt_scores};
use genie_worker_core::thread::Inbox;
use genie_worker_core::{next_token, KvEventLog, Next};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often an idle worker checks whether sequences waiting for KV were cancelled.
const CANCEL_CHECK: Duration = Duration::from_secs(1);

/// A sequence whose KV is still arriving.
struct Incoming {
    seq: NewSeq,
    deadline: Instant,
    layers_seen: usize,
}

/// A sequence in (or ready to join) the running batch.
struct Running {
    seq: NewSeq,
    /// The token the next step feeds.
    next: u32,
    generated: usize,
}

/// A sequence to prefill here: a colocated prompt (`generated == 0`), or a preempted
/// sequence to recompute (its prompt and every token generated so far).
struct Pending {
    seq: NewSeq,
    generated: usize,
    /// Leading tokens of `seq.tokens` in its cache (shared from the prefix cache, or
    /// prefilled by earlier chunks); `None` until its cache is readied.
    done: Option<usize>,
}

impl Pending {
    fn new(seq: NewSeq, generated: usize) -> Self {
        Pending {
            seq,
            generated,
            done: None,
        }
    }

    /// Tokens still to prefill.
    fn left(&self) -> usize {
        self.seq.tokens.len() - self.done.unwrap_or(0)
    }
}

pub(crate) struct BatchLoop {
    config: DecodeConfig,
    model: Model,
    budget: KvBudget,
    stats: Arc<DecodeStats>,
    on_free: Arc<dyn Fn() + Send + Sync>,
    incoming: HashMap<TransferId, Incoming>,
    prefills: VecDeque<Pending>,
    ready: VecDeque<Running>,
    running: Vec<Running>,
    worker_label: String,
    /// Prompts' KV (prefilled here or received), for later prompts that start the same
    /// way; shared with admission, which looks up a disaggregated prompt's prefix.
    prefix: Option<SharedPrefix>,
    /// Where the prefix cache's stored and evicted blocks are reported.
    kv_events: KvEventLog,
    /// Sequences (and their colocated prompt tokens) taken from the queue since the last
    /// publish: admission counted them as pending, the published figures count them now.
    taken: (usize, usize),
}

/// The token after `logits` for a sequence, by the workers' shared rule.
fn step_sequence(
    model: &Model,
    seq: &mut NewSeq,
    generated: &mut usize,
    logits: &mut [f32],
) -> Option<u32> {
    match next_token(
        &mut seq.sampler,
        logits,
        &seq.stop_token_ids,
        generated,
        seq.max_tokens,
        &seq.events,
        model.grammars(),
    ) {
        Next::Continue(t) => Some(t),
        Next::Ended => None,
    }
}

fn transfer_failed(seq: &NewSeq, why: &str) {
    seq.events
        .send(SeqEvent::failed(FailureCode::TransferFailed, why));
}

/// What a step computed, as the live cost curves see it: decode alone (each running
/// sequence's context), prefill alone (each prompt's tokens), both (fits neither curve),
/// or nothing.
enum StepKind {
    Decode(Vec<usize>),
    Prefill(Vec<usize>),
    Mixed { batch: usize, prompt_tokens: usize },
    Idle,
}

impl BatchLoop {
    pub(crate) fn new(
        config: DecodeConfig,
        model: Model,
        budget: KvBudget,
        stats: Arc<DecodeStats>,
        on_free: Arc<dyn Fn() + Send + Sync>,
        prefix: Option<SharedPrefix>,
        kv_events: KvEventLog,
    ) -> Self {
        let worker_label = config.id.0.to_string();
        BatchLoop {
            config,
            model,
            budget,
            stats,
            on_free,
            incoming: HashMap::new(),
            prefills: VecDeque::new(),
            ready: VecDeque::new(),
            running: Vec::new(),
            worker_label,
            prefix,
            kv_events,
            taken: (0, 0),
        }
    }

    fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.ready.is_empty() || !self.prefills.is_empty()
    }

    pub(crate) fn run(&mut self, rx: Receiver<Inbox<DecodeInput>>) {
        loop {
            // Block only when there is nothing to compute; wake for transfer deadlines and
            // to see whether a waiting sequence's gateway went away (its KV is freed).
            if !self.has_work() {
                let wait = self
                    .incoming
                    .values()
                    .map(|i| i.deadline.saturating_duration_since(Instant::now()))
                    .min()
                    .map_or(Duration::from_secs(3600), |d| d.min(CANCEL_CHECK));
                match rx.recv_timeout(wait) {
                    Ok(input) => {
                        if !self.accept(input) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(input) => {
                        if !self.accept(input) {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            self.expire_and_cancel();
            // A step's cost for the live curves is its whole turn of the loop: the forward,
            // sampling, the prefix cache and the status it publishes, which is how often a
            // running sequence gets a token (its inter-token latency).
            let t0 = Instant::now();
            let kind = self.step();
            self.publish();
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            // One trace event a step, for replaying a run against the serving simulator
            // (`GENIE_LOG=genie_decode_worker::batch=trace`).
            match kind {
                StepKind::Decode(contexts) => {
                    tracing::trace!(
                        worker = %self.worker_label,
                        batch = contexts.len(),
                        context = contexts.iter().sum::<usize>(),
                        ms,
                        "decode step"
                    );
                    self.stats.costs.decode(contexts, ms)
                }
                StepKind::Prefill(prompts) => {
                    tracing::trace!(
                        worker = %self.worker_label,
                        prompts = prompts.len(),
                        tokens = prompts.iter().sum::<usize>(),
                        ms,
                        "prefill step"
                    );
                    self.stats.costs.prefill(prompts, ms)
                }
                StepKind::Mixed {
                    batch,
                    prompt_tokens,
                } => tracing::trace!(
                    worker = %self.worker_label,
                    batch,
                    prompt_tokens,
                    ms,
                    "mixed step"
                ),
                StepKind::Idle => {}
            }
        }
    }

    /// Handles one input; false means shut down.
    fn accept(&mut self, input: Inbox<DecodeInput>) -> bool {
        let input = match input {
            Inbox::Work(i) => i,
            Inbox::Shutdown => {
                for seq in self.all_seqs() {
                    seq.events.send(SeqEvent::failed(
                        FailureCode::Stopped,
                        "the decode worker shut down",
                    ));
                }
                return false;
            }
        };
        match input {
            DecodeInput::Expect { transfer, seq } => {
                self.taken.0 += 1;
                self.incoming.insert(
                    transfer,
                    Incoming {
                        seq,
                        deadline: Instant::now() + self.config.kv_wait_timeout,
                        layers_seen: 0,
                    },
                );
            }
            DecodeInput::Prefill { seq } => {
                self.taken.0 += 1;
                self.taken.1 += seq.tokens.len();
                self.prefills.push_back(Pending::new(seq, 0))
            }
            DecodeInput::Kv(m) => self.on_kv(m),
        }
        true
    }

    fn all_seqs(&self) -> Vec<&NewSeq> {
        self.incoming
            .values()
            .map(|i| &i.seq)
            .chain(self.prefills.iter().map(|p| &p.seq))
            .chain(self.ready.iter().map(|r| &r.seq))
            .chain(self.running.iter().map(|r| &r.seq))
            .collect()
    }

    fn on_kv(&mut self, m: KvMessage) {
        let transfer = m.transfer();
        let Some(inc) = self.incoming.get_mut(&transfer) else {
            // Cancelled or expired: the reservation is already gone.
            tracing::debug!(%transfer, "KV for a transfer this worker no longer expects");
            return;
        };
        match m {
            KvMessage::Layer { meta, bytes, .. } => {
                match inc.seq.cache.import_layer(&meta, &bytes) {
                    Ok(_) => {
                        inc.layers_seen += 1;
                        // Only a stalled transfer expires: each layer renews the deadline.
                        inc.deadline = Instant::now() + self.config.transfer_timeout;
                    }
                    Err(e) => {
                        let inc = self.incoming.remove(&transfer).expect("present");
                        tracing::warn!(%transfer, error = %e, "KV layer refused");
                        transfer_failed(&inc.seq, "KV transfer failed");
                        (self.on_free)();
                    }
                }
            }
            KvMessage::Hidden { .. } => {
                let inc = self.incoming.remove(&transfer).expect("present");
                tracing::warn!(%transfer, "hidden states sent to a decode worker's KV port");
                transfer_failed(&inc.seq, "KV transfer failed");
                (self.on_free)();
            }
            KvMessage::Abort { reason, .. } => {
                tracing::debug!(%transfer, %reason, "KV transfer aborted");
                self.incoming.remove(&transfer);
                (self.on_free)();
            }
            KvMessage::Complete { trailer, .. } => {
                let inc = self.incoming.remove(&transfer).expect("present");
                match self.admit_handoff(inc, &trailer) {
                    Ok(r) => self.ready.push_back(r),
                    Err(b) => {
                        let (seq, why) = *b;
                        tracing::warn!(%transfer, %why, "KV hand-off refused");
                        transfer_failed(&seq, "KV transfer failed");
                        (self.on_free)();
                    }
                }
            }
        }
    }

    fn admit_handoff(
        &self,
        inc: Incoming,
        trailer: &[u8],
    ) -> Result<Running, Box<(NewSeq, String)>> {
        let mut seq = inc.seq;
        let h: Handoff = match serde_json::from_slice(trailer) {
            Ok(h) => h,
            Err(e) => return Err(Box::new((seq, format!("bad trailer: {e}")))),
        };
        let n_layers = self.model.config().n_layers;
        if inc.layers_seen != n_layers
            || !seq.cache.is_consistent()
            || seq.cache.len() != h.prompt_tokens as usize
            || seq.tokens.len() != h.prompt_tokens as usize
        {
            let why = format!(
                "incomplete KV: {} of {n_layers} layers, {} of {} tokens ({} prompt ids admitted)",
                inc.layers_seen,
                seq.cache.len(),
                h.prompt_tokens,
                seq.tokens.len()
            );
            return Err(Box::new((seq, why)));
        }
        match serde_json::from_value::<Sampler>(h.sampler) {
            Ok(s) => seq.sampler = s,
            Err(e) => return Err(Box::new((seq, format!("bad sampler state: {e}")))),
        }
        // The received prompt is kept like a prefilled one: a later prompt that starts the
        // same way needs only the rest sent.
        if let Some(pc) = self.prefix.as_ref() {
            let mut pc = lock(pc);
            pc.insert(&seq.tokens, &seq.cache);
            metrics::gauge!("genie_prefix_cache_bytes", "worker" => self.worker_label.clone())
                .set(pc.used_bytes() as f64);
        }
        Ok(Running {
            seq,
            next: h.first_token,
            generated: 1,
        })
    }

    /// Drops sequences whose client went away and transfers past their deadline.
    fn expire_and_cancel(&mut self) {
        let now = Instant::now();
        let before = self.count();
        self.incoming.retain(|_, i| {
            if i.seq.events.is_closed() {
                return false;
            }
            if now >= i.deadline {
                transfer_failed(&i.seq, "KV transfer timed out");
                return false;
            }
            true
        });
        let before_pending = self.prefills.len();
        self.prefills.retain(|p| !p.seq.events.is_closed());
        if self.prefills.len() < before_pending {
            self.count_preempted();
        }
        self.ready.retain(|r| !r.seq.events.is_closed());
        self.running.retain(|r| !r.seq.events.is_closed());
        if self.count() < before {
            (self.on_free)();
        }
    }

    fn count(&self) -> usize {
        self.incoming.len() + self.prefills.len() + self.ready.len() + self.running.len()
    }

    /// Preempted sequences still waiting to be recomputed, as admission reads them.
    fn count_preempted(&self) {
        let n = self.prefills.iter().filter(|p| p.generated > 0).count();
        self.stats.preempted.store(n, Ordering::Relaxed);
    }

    /// Gives every running sequence the block its next token needs, oldest first. When
    /// the budget has none left, the newest running sequence is preempted (its blocks
    /// freed, it is recomputed later) until the older ones fit: the oldest always
    /// advances, so a sequence that fits alone always finishes.
    fn grow_running(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let cache = &mut self.running[i].seq.cache;
            match cache.ensure(cache.len() + 1) {
                Ok(()) => i += 1,
                Err(EngineError::KvCapacity { .. }) => {
                    let victim = self.running.pop().expect("i < len");
                    self.preempt(victim);
                }
                Err(e) => {
                    // Past its own capacity: validated at admission, so an internal fault.
                    tracing::error!(error = %e, "a running sequence cannot grow");
                    let r = self.running.remove(i);
                    r.seq
                        .events
                        .send(SeqEvent::failed(FailureCode::Internal, "internal error"));
                    (self.on_free)();
                }
            }
        }
    }

    /// Recompute, not swap: the KV lives in host memory already, so there is nowhere
    /// cheaper to park it, and recomputing a sequence is one prefill (vLLM's default for
    /// the same reason). Its blocks go back to the budget now; it waits at the front of
    /// the prefill queue with every token it has, and resumes with the same sampler, so
    /// its answer does not change.
    fn preempt(&mut self, mut r: Running) {
        r.seq.tokens.push(r.next);
        r.seq.cache.truncate(0);
        self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("genie_preemptions_total", "worker" => self.worker_label.clone())
            .increment(1);
        tracing::debug!(
            tokens = r.seq.tokens.len(),
            "KV blocks ran out: a sequence is preempted and will be recomputed"
        );
        self.prefills.push_front(Pending::new(r.seq, r.generated));
    }

    /// Readies the front pending sequence's cache for its prefill: the longest cached
    /// prefix shared, blocks for the rest taken. Returns the tokens reused, or `None`
    /// (the cache left empty) when the budget has no room for it yet.
    fn ready_prefill(&mut self, p: &mut Pending) -> Option<usize> {
        let want = p.seq.tokens.len();
        let mut reused = 0;
        // A prompt whose tokens are scored is computed whole (a cached prefix has no logits).
        let scored = prompt_scores(&p.seq.sampler, p.generated == 0).is_some();
        if let Some(pc) = self.prefix.as_ref().filter(|_| !scored) {
            // The blocks taken at admission make way for the shared ones.
            reused = lock(pc).reuse(&p.seq.tokens, &mut p.seq.cache).tokens;
            metrics::counter!("genie_prefix_cache_queries_total", "worker" => self.worker_label.clone())
                .increment(1);
            metrics::counter!("genie_prefix_cache_hit_tokens_total", "worker" => self.worker_label.clone())
                .increment(reused as u64);
        }
        match p.seq.cache.ensure(want + 1) {
            Ok(()) => Some(reused),
            Err(_) => {
                p.seq.cache.truncate(0);
                None
            }
        }
    }

    /// One forward step: running decodes plus admitted colocated prefills.
    /// One forward over the running batch and the prompts that join it; says what it
    /// computed, for the live cost curves.
    fn step(&mut self) -> StepKind {
        let max = self.config.max_batch;
        while self.running.len() < max {
            match self.ready.pop_front() {
                Some(r) => {
                    r.seq.events.send(SeqEvent::Running);
                    self.running.push(r)
                }
                None => break,
            }
        }
        self.grow_running();
        // Prompts to prefill: (sequence, the first and one past the last of its tokens this
        // step computes, its prompt's scores when it asked for them).
        let mut prefilling: Vec<(Pending, usize, usize, Option<TokenScores>)> = Vec::new();
        let mut prompt_tokens = 0;
        let limits = StepLimits {
            max_seqs: max,
            max_prompt_tokens: self.config.max_prefill_tokens,
            chunk_tokens: self.config.prefill_chunk_tokens,
        };
        // With sequences decoding, prompts go in chunks (chunked prefill), so that no
        // running sequence's next token waits for a whole long prompt. A prompt whose
        // tokens are scored goes whole.
        while let Some(p) = self.prefills.front() {
            let room = limits.room(self.running.len(), prompt_tokens);
            if room == 0
                || !limits.takes(
                    self.running.len(),
                    prefilling.len(),
                    prompt_tokens,
                    p.left().min(room),
                )
            {
                break;
            }
            let mut p = self.prefills.pop_front().expect("front exists");
            let start = match p.done {
                Some(done) => done,
                None => {
                    let Some(reused) = self.ready_prefill(&mut p) else {
                        // No room yet: it stays first in line.
                        self.prefills.push_front(p);
                        break;
                    };
                    if p.generated == 0 {
                        p.seq.events.send(SeqEvent::Running);
                        if reused > 0 {
                            p.seq.events.send(SeqEvent::Cached(reused as u32));
                        }
                    }
                    p.done = Some(reused);
                    reused
                }
            };
            let scores = prompt_scores(&p.seq.sampler, p.generated == 0);
            let total = p.seq.tokens.len();
            let end = match scores {
                None => start.saturating_add(room).min(total),
                Some(_) => total,
            };
            prompt_tokens += end - start;
            prefilling.push((p, start, end, scores));
            if end < total {
                // Its next chunk goes first in a later step.
                break;
            }
        }
        self.count_preempted();
        if self.running.is_empty() && prefilling.is_empty() {
            return StepKind::Idle;
        }
        let inputs: Vec<[u32; 1]> = self.running.iter().map(|r| [r.next]).collect();
        let mut segs: Vec<Segment> = self
            .running
            .iter_mut()
            .zip(&inputs)
            .map(|(r, t)| Segment::new(t, &mut r.seq.cache))
            .collect();
        for (p, start, end, scores) in prefilling.iter_mut() {
            segs.push(Segment {
                tokens: &p.seq.tokens[*start..*end],
                cache: &mut p.seq.cache,
                scores: scores.as_mut(),
            });
        }
        let n_decode = inputs.len();
        metrics::histogram!("genie_decode_batch_size", "worker" => self.worker_label.clone())
            .record(n_decode as f64);
        // What the step is, for the live cost curves: decode alone, or prefill alone (a
        // step that mixes both fits neither curve).
        let contexts: Vec<usize> = segs[..n_decode].iter().map(|s| s.cache.len()).collect();
        let prompts: Vec<usize> = segs[n_decode..].iter().map(|s| s.tokens.len()).collect();
        let result = self.model.forward(&mut segs);
        drop(segs);
        let kind = match (result.is_ok(), contexts.is_empty(), prompts.is_empty()) {
            (false, _, _) => StepKind::Idle,
            (true, false, true) => StepKind::Decode(contexts),
            (true, true, false) => StepKind::Prefill(prompts),
            _ => StepKind::Mixed {
                batch: contexts.len(),
                prompt_tokens: prompts.iter().sum(),
            },
        };
        let mut logits = match result {
            Ok(l) => l,
            Err(e) => {
                // Validated before admission, so this is an internal fault: fail the step's
                // sequences, keep the worker alive for the others.
                tracing::error!(error = %e, "decode step failed");
                let internal = || SeqEvent::failed(FailureCode::Internal, "internal error");
                for r in self.running.drain(..) {
                    r.seq.events.send(internal());
                }
                for (p, _, _, _) in prefilling {
                    p.seq.events.send(internal());
                }
                (self.on_free)();
                return StepKind::Idle;
            }
        };
        let prefill_logits = logits.split_off(n_decode);
        // A prompt prefilled up to a chunk's end goes back to the front of the queue, its
        // logits unused; the others are whole now.
        let mut chunked = None;
        let prefilling: Vec<_> = prefilling
            .into_iter()
            .zip(prefill_logits)
            .filter_map(|((mut p, _, end, scores), l)| {
                if end < p.seq.tokens.len() {
                    p.done = Some(end);
                    chunked = Some(p);
                    None
                } else {
                    Some((p, scores, l))
                }
            })
            .collect();
        let before = self.running.len() + prefilling.len();
        let mut kept = Vec::with_capacity(self.running.len() + prefilling.len());
        let mut finished = Vec::new();
        for (mut r, mut l) in self.running.drain(..).zip(logits) {
            r.seq.tokens.push(r.next);
            if let Some(t) = step_sequence(&self.model, &mut r.seq, &mut r.generated, &mut l) {
                r.next = t;
                kept.push(r);
            } else {
                finished.push(r);
            }
        }
        if let Some(pc) = self.prefix.as_ref() {
            let mut pc = lock(pc);
            // A finished sequence's prompt and answer: the next turn of a chat resends
            // both (the blocks are shared, not copied).
            for r in &finished {
                pc.insert(&r.seq.tokens, &r.seq.cache);
            }
            for (p, _, _) in &prefilling {
                pc.insert(&p.seq.tokens, &p.seq.cache);
            }
            metrics::gauge!("genie_prefix_cache_bytes", "worker" => self.worker_label.clone())
                .set(pc.used_bytes() as f64);
        }
        for (p, scores, mut l) in prefilling {
            let Pending {
                mut seq,
                mut generated,
                ..
            } = p;
            send_prompt_scores(&seq.events, scores);
            if let Some(t) = step_sequence(&self.model, &mut seq, &mut generated, &mut l) {
                kept.push(Running {
                    seq,
                    next: t,
                    generated,
                });
            }
        }
        if let Some(p) = chunked {
            self.prefills.push_front(p);
            self.stats.prefill_chunks.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("genie_prefill_chunks_total", "worker" => self.worker_label.clone())
                .increment(1);
        }
        // The finished sequences' KV goes back to the budget before anyone is told there
        // is room.
        drop(finished);
        self.running = kept;
        if self.running.len() < before {
            (self.on_free)();
        }
        kind
    }

    fn publish(&mut self) {
        if let Some(pc) = self.prefix.as_ref() {
            self.kv_events.sync(&mut lock(pc));
        }
        let s = &self.stats;
        s.load.store(self.count(), Ordering::SeqCst);
        // Prompts still to prefill (a step's own prompts left the queue when it began and
        // stayed counted, in the figure published before it, until it ended).
        let queued: usize = self.prefills.iter().map(Pending::left).sum();
        s.queued_tokens.store(queued, Ordering::SeqCst);
        // Counted above now: off the pending counts (a reader, which reads the pending
        // count first, may count one twice for a moment, never miss it).
        let (seqs, tokens) = std::mem::take(&mut self.taken);
        s.pending.fetch_sub(seqs, Ordering::SeqCst);
        s.pending_tokens.fetch_sub(tokens, Ordering::SeqCst);
        s.running.store(self.running.len(), Ordering::Relaxed);
        let w = self.worker_label.clone();
        metrics::gauge!("genie_num_requests_running", "worker" => w.clone())
            .set(self.running.len() as f64);
        metrics::gauge!("genie_kv_cache_usage_ratio", "worker" => w.clone())
            .set(self.budget.usage_ratio());
        metrics::gauge!("genie_kv_cache_used_bytes", "worker" => w.clone())
            .set(self.budget.used_bytes() as f64);
        let block = self.model.kv_shape().block_bytes(BLOCK_TOKENS).max(1);
        metrics::gauge!("genie_kv_blocks_used", "worker" => w.clone())
            .set((self.budget.used_bytes() / block) as f64);
        metrics::gauge!("genie_kv_blocks_total", "worker" => w)
            .set((self.budget.capacity_bytes() / block) as f64);
    }
}
