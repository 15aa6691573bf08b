//! A worker's KV event log: its compute thread records the prefix-cache blocks it stored
//! and removed ([`KvEventLog::record`]); each status report ([`KvEventLog::report`]) carries
//! the net change since the previous report, or every block held (a snapshot) on the first
//! report and every [`SNAPSHOT_EVERY`] reports after, so a router that missed a report
//! catches up.

use genie_engine::prefix_cache::{BlockChange, PrefixCache};
use genie_protocol::worker::KvEvents;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// A snapshot replaces the changes once in this many reports.
pub const SNAPSHOT_EVERY: u64 = 16;

#[derive(Default)]
struct State {
    salt: u64,
    block_tokens: u32,
    /// Blocks held now.
    held: HashSet<u64>,
    /// Blocks held as of the last report.
    reported: HashSet<u64>,
    /// Reports made.
    seq: u64,
}

/// Shared by a worker's compute thread (which records) and its status reports.
#[derive(Clone, Default)]
pub struct KvEventLog(Arc<Mutex<State>>);

impl KvEventLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `cache`'s changes since the last call ([`PrefixCache::take_changes`]) into the
    /// log, with its key salt and block size. Called once when the cache is made, it makes
    /// the worker's first report carry them, so a router can count the blocks of prompts
    /// it sends before the cache reports any.
    pub fn sync(&self, cache: &mut PrefixCache) {
        self.record(cache.salt(), cache.block(), &cache.take_changes());
    }

    /// Applies the changes a prefix cache of `block_tokens`-token blocks keyed from `salt`
    /// reported ([`PrefixCache::take_changes`]).
    fn record(&self, salt: u64, block_tokens: usize, changes: &[BlockChange]) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.salt = salt;
        s.block_tokens = block_tokens as u32;
        for c in changes {
            match *c {
                BlockChange::Stored(k) => s.held.insert(k),
                BlockChange::Removed(k) => s.held.remove(&k),
            };
        }
    }

    /// The next report: the net change since the previous one (or a snapshot), numbered.
    /// `None` before the worker has any cache to report.
    pub fn report(&self) -> Option<KvEvents> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.block_tokens == 0 {
            return None;
        }
        let snapshot = s.seq.is_multiple_of(SNAPSHOT_EVERY);
        let (stored, removed) = if snapshot {
            (s.held.iter().copied().collect(), Vec::new())
        } else {
            (
                s.held.difference(&s.reported).copied().collect(),
                s.reported.difference(&s.held).copied().collect(),
            )
        };
        s.reported = s.held.clone();
        let ev = KvEvents {
            salt: s.salt,
            block_tokens: s.block_tokens,
            seq: s.seq,
            snapshot,
            stored,
            removed,
        };
        s.seq += 1;
        Some(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BlockChange::{Removed, Stored};

    #[test]
    fn reports_carry_net_changes_numbered_with_periodic_snapshots() {
        let log = KvEventLog::new();
        assert_eq!(log.report(), None, "no cache yet");
        log.record(7, 16, &[Stored(1), Stored(2)]);
        let r = log.report().unwrap();
        assert!(r.snapshot);
        assert_eq!((r.salt, r.block_tokens, r.seq), (7, 16, 0));
        let mut got = r.stored.clone();
        got.sort();
        assert_eq!(got, vec![1, 2]);
        // Stored then removed between reports: no trace; removed since: reported.
        log.record(7, 16, &[Stored(3), Removed(3), Removed(1), Stored(4)]);
        let r = log.report().unwrap();
        assert_eq!(
            (r.snapshot, r.seq, r.stored, r.removed),
            (false, 1, vec![4], vec![1])
        );
        let r = log.report().unwrap();
        assert!(r.stored.is_empty() && r.removed.is_empty() && r.seq == 2);
        for _ in 3..SNAPSHOT_EVERY {
            log.report();
        }
        let r = log.report().unwrap();
        assert!(r.snapshot);
        let mut got = r.stored;
        got.sort();
        assert_eq!(got, vec![2, 4]);
    }
}
