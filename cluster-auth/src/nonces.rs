//! The nonces of verified requests still inside the replay window.
//!
//! Bounded: at most [`NonceCache::CAPACITY`] entries (16-byte nonce and an expiry: about
//! 6 MiB with the map's overhead at the bound). Only proofs whose HMAC verified are
//! recorded, so a peer without the secret cannot fill it; a cluster that signs more than
//! `CAPACITY` requests inside one window is refused with `Busy` (503) rather than have
//! entries evicted early, which would let a replay through.

use std::collections::{HashMap, VecDeque};

pub(crate) struct NonceCache {
    seen: HashMap<[u8; 16], u64>,
    order: VecDeque<([u8; 16], u64)>,
}

pub(crate) enum Insert {
    New,
    Replayed,
    Full,
}

impl NonceCache {
    pub const CAPACITY: usize = 1 << 17;

    pub fn new() -> Self {
        NonceCache {
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `nonce` until `expires` (unix seconds), dropping entries expired by `now`.
    pub fn insert(&mut self, nonce: [u8; 16], expires: u64, now: u64) -> Insert {
        while let Some(&(n, e)) = self.order.front() {
            if e >= now {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&n) == Some(&e) {
                self.seen.remove(&n);
            }
        }
        if self.seen.contains_key(&nonce) {
            return Insert::Replayed;
        }
        if self.seen.len() >= Self::CAPACITY {
            return Insert::Full;
        }
        self.seen.insert(nonce, expires);
        self.order.push_back((nonce, expires));
        Insert::New
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.len()
    }
}
