//! The gateway's index of which prefix-cache blocks each worker holds, kept from the
//! workers' KV events ([`KvEvents`], carried by their status reports), and the lookup the
//! `kv_aware` routing policy places by: how many leading tokens of a prompt each worker
//! already holds. Pure bookkeeping behind a lock; no I/O.

use genie_engine::prefix_cache::block_keys;
use genie_protocol::worker::KvEvents;
use genie_protocol::WorkerId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

struct Held {
    salt: u64,
    block_tokens: usize,
    /// The report expected next; `None` until a snapshot, after a gap.
    next_seq: Option<u64>,
    keys: HashSet<u64>,
}

/// Most block keys kept for one worker (8 bytes each, a few MiB in all): far above what a
/// worker's prefix cache holds (a 256 MiB cache of this model is about 730 blocks), so only
/// a faulty or hostile worker reaches it, and its blocks are then forgotten.
pub const MAX_KEYS_PER_WORKER: usize = 1 << 18;

#[derive(Default)]
pub struct KvIndex {
    workers: Mutex<HashMap<WorkerId, Held>>,
}

impl KvIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one worker's report. A report out of sequence (one was lost) clears the
    /// worker's blocks until its next snapshot: the index may know less, never more.
    pub fn apply(&self, id: WorkerId, ev: &KvEvents) {
        let mut w = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let h = w.entry(id).or_insert_with(|| Held {
            salt: ev.salt,
            block_tokens: ev.block_tokens as usize,
            next_seq: None,
            keys: HashSet::new(),
        });
        let label = id.0.to_string();
        if ev.snapshot && ev.stored.len() <= MAX_KEYS_PER_WORKER {
            h.keys = ev.stored.iter().copied().collect();
            h.salt = ev.salt;
            h.block_tokens = ev.block_tokens as usize;
            h.next_seq = Some(ev.seq + 1);
            metrics::counter!("genie_kv_events_total", "worker" => label, "kind" => "snapshot")
                .increment(ev.stored.len() as u64);
            return;
        }
        if h.next_seq != Some(ev.seq) {
            if h.next_seq.is_some() {
                tracing::debug!(worker = %id, seq = ev.seq, "a KV event report was missed; waiting for a snapshot");
            }
            h.keys.clear();
            h.next_seq = None;
            return;
        }
        h.next_seq = Some(ev.seq + 1);
        for k in &ev.removed {
            h.keys.remove(k);
        }
        h.keys.extend(ev.stored.iter().copied());
        if h.keys.len() > MAX_KEYS_PER_WORKER {
            tracing::warn!(worker = %id, keys = h.keys.len(), "a worker reported more prefix-cache blocks than any cache holds; forgetting them");
            h.keys = HashSet::new();
            h.next_seq = None;
        }
        metrics::counter!("genie_kv_events_total", "worker" => label.clone(), "kind" => "stored")
            .increment(ev.stored.len() as u64);
        metrics::counter!("genie_kv_events_total", "worker" => label, "kind" => "removed")
            .increment(ev.removed.len() as u64);
    }

    /// Records that `id` was just given `prompt` to prefill: it will hold the prompt's
    /// whole blocks (but the last token's) once that prefill runs, before its next report
    /// says so. Placing by it at once keeps a burst of prompts sharing a prefix together
    /// instead of spreading them while the reports catch up; a report that says otherwise
    /// (an eviction, a snapshot) corrects it. Nothing is assumed for a worker that has
    /// not reported yet (its key salt is unknown).
    pub fn assume(&self, id: WorkerId, prompt: &[u32]) {
        let mut w = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(h) = w.get_mut(&id) else { return };
        if h.block_tokens == 0 || prompt.len() < 2 {
            return;
        }
        let usable = (prompt.len() - 1) / h.block_tokens * h.block_tokens;
        h.keys
            .extend(block_keys(h.salt, &prompt[..usable], h.block_tokens));
        if h.keys.len() > MAX_KEYS_PER_WORKER {
            // Assumptions outran the reports: start again from the next snapshot.
            h.keys = HashSet::new();
            h.next_seq = None;
        }
    }

    /// Forgets a worker that left.
    pub fn forget(&self, id: WorkerId) {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// For each worker with known blocks, the leading tokens of `prompt` it holds (whole
    /// blocks of its own size, keyed from its own salt).
    pub fn cached_tokens(&self, prompt: &[u32]) -> HashMap<WorkerId, usize> {
        let w = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let mut chains: HashMap<(u64, usize), Vec<u64>> = HashMap::new();
        w.iter()
            .filter(|(_, h)| !h.keys.is_empty() && h.block_tokens > 0)
            .map(|(id, h)| {
                let keys = chains
                    .entry((h.salt, h.block_tokens))
                    .or_insert_with(|| block_keys(h.salt, prompt, h.block_tokens));
                let n = keys.iter().take_while(|k| h.keys.contains(k)).count();
                (*id, n * h.block_tokens)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64, snapshot: bool, stored: Vec<u64>, removed: Vec<u64>) -> KvEvents {
        KvEvents {
            salt: 9,
            block_tokens: 4,
            seq,
            snapshot,
            stored,
            removed,
        }
    }

    #[test]
    fn a_worker_holds_the_leading_blocks_its_events_reported() {
        let idx = KvIndex::new();
        let prompt: Vec<u32> = (1..=13).collect();
        let k = block_keys(9, &prompt, 4);
        let (a, b) = (WorkerId(1), WorkerId(2));
        idx.apply(a, &report(0, true, vec![k[0], k[1]], vec![]));
        idx.apply(b, &report(0, true, vec![k[0]], vec![]));
        assert_eq!(idx.cached_tokens(&prompt), HashMap::from([(a, 8), (b, 4)]));
        // b gains the third block but not the second: only a leading run counts.
        idx.apply(b, &report(1, false, vec![k[2]], vec![]));
        assert_eq!(idx.cached_tokens(&prompt)[&b], 4);
        idx.apply(a, &report(1, false, vec![k[2]], vec![k[1]]));
        assert_eq!(idx.cached_tokens(&prompt)[&a], 4);
        // A missed report: a forgets everything until a snapshot.
        idx.apply(a, &report(3, false, vec![k[1]], vec![]));
        assert!(!idx.cached_tokens(&prompt).contains_key(&a));
        idx.apply(a, &report(4, false, vec![k[1]], vec![]));
        assert!(!idx.cached_tokens(&prompt).contains_key(&a));
        idx.apply(a, &report(5, true, vec![k[0], k[1], k[2]], vec![]));
        assert_eq!(idx.cached_tokens(&prompt)[&a], 12);
        // A prompt just routed to b counts as held there before b reports it.
        idx.assume(b, &prompt);
        assert_eq!(idx.cached_tokens(&prompt)[&b], 12);
        idx.forget(a);
        assert!(!idx.cached_tokens(&prompt).contains_key(&a));
        // A report larger than any cache forgets the worker's blocks.
        idx.apply(
            b,
            &report(2, false, (0..=MAX_KEYS_PER_WORKER as u64).collect(), vec![]),
        );
        assert!(!idx.cached_tokens(&prompt).contains_key(&b));
        // Another model's keys never match.
        let mut other = report(0, true, vec![k[0]], vec![]);
        other.salt = 10;
        idx.apply(WorkerId(3), &other);
        assert_eq!(idx.cached_tokens(&prompt)[&WorkerId(3)], 0);
    }
}
