//! The decode worker's vocabulary: its settings, the sequences it is given and the inputs
//! its batch loop reads.

use genie_engine::kv_cache::KvCache;
use genie_engine::prefix_cache::PrefixCache;
use genie_engine::sampling::Sampler;
use genie_kv_transfer::KvMessage;
use genie_protocol::{TransferId, WorkerId};
use genie_worker_core::EventSender;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The worker's prefix cache, shared by admission (a disaggregated prompt's cached prefix
/// is looked up when it is admitted, so only the rest is sent) and the batch loop.
pub(crate) type SharedPrefix = Arc<Mutex<PrefixCache>>;

/// The prefix cache, whatever a panicking holder left (its state is always consistent
/// between calls).
pub(crate) fn lock(p: &SharedPrefix) -> MutexGuard<'_, PrefixCache> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Inputs a decode worker's queue holds at most (sequences and KV traffic); a full queue
/// refuses new sequences as busy.
pub const DEFAULT_QUEUE: usize = 1024;

#[derive(Clone, Debug)]
pub struct DecodeConfig {
    pub id: WorkerId,
    /// Most sequences in one decode step.
    pub max_batch: usize,
    /// Most prompt tokens prefilled in one step (colocated sequences).
    pub max_prefill_tokens: usize,
    /// While sequences are decoding, a colocated prompt is prefilled in chunks of at most
    /// this many tokens a step (0: whole), bounding how long their next token waits.
    pub prefill_chunk_tokens: usize,
    /// A transfer that stalls this long between two layers is dropped.
    pub transfer_timeout: Duration,
    /// How long a reserved sequence waits for its transfer's first layer (the prefill
    /// worker's queue: the gateway cancels it sooner if that worker is lost).
    pub kv_wait_timeout: Duration,
    /// Capacity of the input queue.
    pub queue: usize,
    /// KV bytes of prompts prefilled here or received kept for reuse (automatic prefix
    /// caching; 0: off).
    pub prefix_cache_bytes: usize,
}

/// Where a sequence's prompt KV comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvSource {
    /// Prefill the prompt here (colocated).
    Prompt(Vec<u32>),
    /// A prefill worker sends the KV of `prompt` as `transfer`. The ids are kept to
    /// recompute the sequence here if it is preempted.
    Transfer {
        transfer: TransferId,
        prompt: Vec<u32>,
    },
}

impl KvSource {
    pub fn prompt_tokens(&self) -> usize {
        match self {
            KvSource::Prompt(p) | KvSource::Transfer { prompt: p, .. } => p.len(),
        }
    }
}

/// A sequence to admit.
pub struct DecodeSeq {
    pub source: KvSource,
    /// Tokens to generate in all (including a first token sampled by a prefill worker).
    pub max_tokens: usize,
    /// Token ids that end the sequence (end of turn, eos).
    pub stop_token_ids: Vec<u32>,
    /// Replaced by the hand-off's sampler for disaggregated sequences.
    pub sampler: Sampler,
}

/// An admitted sequence as the batch loop holds it.
pub(crate) struct NewSeq {
    pub max_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    pub sampler: Sampler,
    pub events: EventSender,
    /// The tokens whose KV the cache holds or is about to: the prompt, then each
    /// generated token once it has been fed. A preempted sequence is recomputed from them.
    pub tokens: Vec<u32>,
    /// Its KV blocks, charged to the worker's budget as they are taken and given back as
    /// they are dropped.
    pub cache: KvCache,
}

pub(crate) enum DecodeInput {
    /// A sequence whose KV will arrive as `transfer`.
    Expect { transfer: TransferId, seq: NewSeq },
    /// Prefill `seq.tokens` here, then decode (colocated).
    Prefill { seq: NewSeq },
    /// KV transfer traffic for an expected sequence.
    Kv(KvMessage),
}

/// A sequence [`DecodeWorker::admit`](crate::DecodeWorker::admit) took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Leading prompt tokens whose KV this worker's prefix cache already holds (0 for a
    /// colocated sequence): the prefill worker sends only the rest.
    pub cached: usize,
    /// The admission's number ([`genie_protocol::worker::ADMISSION_HEADER`]).
    pub number: u64,
}

/// Live counters the gateway reads for placement and metrics.
#[derive(Debug, Default)]
pub struct DecodeStats {
    /// Sequences expected, queued or running in the batch loop, as it last published
    /// (after each step).
    pub load: AtomicUsize,
    /// Colocated prompt tokens queued in the batch loop or in its current step, as it last
    /// published.
    pub queued_tokens: AtomicUsize,
    /// Sequences admitted that the loop had not taken in by its last publish, and their
    /// colocated prompt tokens: counted at admission, so that placement sees a sequence
    /// from the moment it is admitted, not only after the step running then ends.
    pub pending: AtomicUsize,
    pub pending_tokens: AtomicUsize,
    /// Admissions since the worker started; each takes the next number after it is
    /// counted as pending ([`DecodeStats::admitted`]).
    pub admissions: AtomicU64,
    /// Sequences in the running batch.
    pub running: AtomicUsize,
    /// Preempted sequences waiting to be recomputed: while any waits, admission refuses
    /// new sequences so the freed blocks go to it first.
    pub preempted: AtomicUsize,
    /// Preemptions since the worker started.
    pub preemptions: AtomicUsize,
    /// Steps that prefilled a prompt up to a chunk's end, leaving the rest for later
    /// steps (`decode.prefill_chunk_tokens`), since the worker started.
    pub prefill_chunks: AtomicUsize,
    /// Cost curves fitted to this worker's steps: decode steps alone, and steps that
    /// only prefill (colocated prompts with nothing running).
    pub costs: genie_worker_core::costs::CostTracker,
}

impl DecodeStats {
    /// Sequences admitted here and not yet ended (what `status` reports as `load`). The
    /// pending count is read first: the loop publishes its own count before it takes the
    /// pending ones off, so a sequence moving from one to the other is seen at least once.
    pub fn load(&self) -> usize {
        let pending = self.pending.load(Ordering::SeqCst);
        pending + self.load.load(Ordering::SeqCst)
    }
    /// The number of the last admission that `load` and `queued_tokens` read after this
    /// include (each admission is counted as pending before it takes its number), so it
    /// is read first.
    pub fn admitted(&self) -> u64 {
        self.admissions.load(Ordering::SeqCst)
    }
    /// Colocated prompt tokens admitted here and not yet prefilled (read as `load` is).
    pub fn queued_tokens(&self) -> usize {
        let pending = self.pending_tokens.load(Ordering::SeqCst);
        pending + self.queued_tokens.load(Ordering::SeqCst)
    }
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
    pub fn preempted(&self) -> usize {
        self.preempted.load(Ordering::Relaxed)
    }
    pub fn preemptions(&self) -> usize {
        self.preemptions.load(Ordering::Relaxed)
    }
}
