//! Automatic prefix caching: the KV of finished sequences, kept by the blocks of tokens it
//! covers so a later sequence whose prompt starts the same way copies that KV instead of
//! computing it.
//!
//! Tokens are grouped in blocks of `block` tokens; block `i` of a token list is keyed by a
//! hash chain over every token up to its end and the model's identity (`salt`), so equal
//! keys mean equal prefixes (and the tokens are compared as well, so a hash collision can
//! never serve another prefix's KV). Only whole blocks are kept or reused: a prompt that
//! shares 40 tokens with a cached sequence reuses 32 with 16-token blocks, and at least its
//! last token is always computed (its logits start the answer).
//!
//! Entries are reference-free copies (a hit copies the prefix into the sequence's own
//! cache), evicted least recently used first once `budget_bytes` is exceeded. An entry that
//! a longer one covers entirely is dropped when the longer one arrives. Pure data structure:
//! no locking, no I/O; a worker owns one.

use crate::kv_cache::KvCache;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Tokens per block the workers use.
pub const BLOCK_TOKENS: usize = 16;

/// Hash-chain keys of the whole blocks of `tokens`: key `i` covers `tokens[..(i + 1) * block]`.
pub fn block_keys(salt: u64, tokens: &[u32], block: usize) -> Vec<u64> {
    let mut prev = salt;
    tokens
        .chunks_exact(block.max(1))
        .map(|b| {
            // SipHash with fixed keys: stable for a build, the same on every worker.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            prev.hash(&mut h);
            b.hash(&mut h);
            prev = h.finish();
            prev
        })
        .collect()
}

struct Entry {
    tokens: Vec<u32>,
    keys: Vec<u64>,
    kv: KvCache,
    last_used: u64,
}

/// What [`PrefixCache::reuse`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reuse {
    /// Prompt tokens whose KV was copied from the cache (a multiple of the block size).
    pub tokens: usize,
}

pub struct PrefixCache {
    block: usize,
    budget_bytes: usize,
    salt: u64,
    used_bytes: usize,
    clock: u64,
    next_id: u64,
    entries: HashMap<u64, Entry>,
    /// Block key → an entry holding that prefix.
    index: HashMap<u64, u64>,
}

impl PrefixCache {
    /// A cache of blocks of `block` tokens (at least 1) holding at most `budget_bytes` of
    /// KV, for the model (and adapter) named by `model_identity`.
    pub fn new(block: usize, budget_bytes: usize, model_identity: &str) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        model_identity.hash(&mut h);
        PrefixCache {
            block: block.max(1),
            budget_bytes,
            salt: h.finish(),
            used_bytes: 0,
            clock: 0,
            next_id: 0,
            entries: HashMap::new(),
            index: HashMap::new(),
        }
    }

    pub fn block(&self) -> usize {
        self.block
    }

    /// KV bytes held.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// Sequences held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Copies the longest cached whole-block prefix of `prompt` into `cache` (empty, with
    /// room for the prompt), leaving at least the last prompt token to compute. Returns how
    /// many tokens it copied (0 on a miss; `cache` is then untouched).
    pub fn reuse(&mut self, prompt: &[u32], cache: &mut KvCache) -> Reuse {
        if prompt.len() < 2 || !cache.is_empty() {
            return Reuse::default();
        }
        let usable = (prompt.len() - 1) / self.block;
        let keys = block_keys(self.salt, &prompt[..usable * self.block], self.block);
        for (i, key) in keys.iter().enumerate().rev() {
            let Some(id) = self.index.get(key).copied() else {
                continue;
            };
            let n = (i + 1) * self.block;
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            if e.tokens.len() < n || e.tokens[..n] != prompt[..n] {
                continue; // a hash collision: never serve another prefix's KV
            }
            if cache.copy_prefix_from(&e.kv, n).is_err() {
                return Reuse::default();
            }
            self.clock += 1;
            e.last_used = self.clock;
            return Reuse { tokens: n };
        }
        Reuse::default()
    }

    /// Keeps the whole blocks of `tokens` whose KV `cache` holds (a finished sequence: its
    /// prompt and the generated tokens the cache has seen). Returns the tokens now cached
    /// for it (0 when it has no whole block, or its KV alone exceeds the budget).
    pub fn insert(&mut self, tokens: &[u32], cache: &KvCache) -> usize {
        let n = tokens.len().min(cache.len()) / self.block * self.block;
        if n == 0 {
            return 0;
        }
        let keys = block_keys(self.salt, &tokens[..n], self.block);
        let last = *keys.last().expect("n >= block");
        self.clock += 1;
        if let Some(e) = self
            .index
            .get(&last)
            .and_then(|id| self.entries.get_mut(id))
        {
            if e.tokens[..n] == tokens[..n] {
                e.last_used = self.clock;
                return n;
            }
        }
        let bytes = n * cache.shape().bytes_per_token();
        if bytes > self.budget_bytes {
            return 0;
        }
        let mut kv = KvCache::new(cache.shape(), n);
        if kv.copy_prefix_from(cache, n).is_err() {
            return 0;
        }
        let id = self.next_id;
        self.next_id += 1;
        // Keys that pointed at older entries now point at this one.
        let mut displaced: Vec<u64> = keys
            .iter()
            .filter_map(|k| self.index.insert(*k, id))
            .collect();
        displaced.sort_unstable();
        displaced.dedup();
        self.entries.insert(
            id,
            Entry {
                tokens: tokens[..n].to_vec(),
                keys,
                kv,
                last_used: self.clock,
            },
        );
        self.used_bytes += bytes;
        // Of those, the ones the new entry covers entirely (no key points to them any
        // more) go.
        for eid in displaced {
            let covered = self
                .entries
                .get(&eid)
                .is_some_and(|e| e.keys.iter().all(|k| self.index.get(k) != Some(&eid)));
            if covered {
                self.remove(eid);
            }
        }
        while self.used_bytes > self.budget_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .filter(|(eid, _)| **eid != id)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(eid, _)| *eid)
            else {
                break;
            };
            self.remove(oldest);
        }
        n
    }

    fn remove(&mut self, id: u64) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        self.used_bytes -= e.kv.len() * e.kv.shape().bytes_per_token();
        for k in &e.keys {
            if self.index.get(k) == Some(&id) {
                // Another entry may hold the same prefix: point the key at it.
                match self.entries.iter().find(|(_, o)| o.keys.contains(k)) {
                    Some((other, _)) => self.index.insert(*k, *other),
                    None => self.index.remove(k),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::KvShape;

    const SHAPE: KvShape = KvShape {
        n_layers: 2,
        kv_heads: 1,
        head_dim: 2,
    };

    /// A cache whose K/V rows encode each token's id, so a copy can be checked.
    fn cache_of(tokens: &[u32]) -> KvCache {
        let mut c = KvCache::new(SHAPE, tokens.len() + 8);
        for l in 0..SHAPE.n_layers {
            let rows: Vec<f32> = tokens.iter().flat_map(|&t| [t as f32, l as f32]).collect();
            c.append(l, &rows, &rows);
        }
        c
    }

    fn ids(c: &KvCache) -> Vec<u32> {
        c.layer_k(0)
            .chunks(2)
            .map(|r| r[0].to_f32() as u32)
            .collect()
    }

    #[test]
    fn a_prompt_reuses_the_longest_whole_block_prefix_and_computes_its_last_token() {
        let mut pc = PrefixCache::new(4, 1 << 20, "m");
        let seq: Vec<u32> = (1..=14).collect();
        assert_eq!(pc.insert(&seq, &cache_of(&seq)), 12, "3 whole blocks of 4");
        // Shares 10 tokens: 2 blocks.
        let prompt: Vec<u32> = (1..=10).chain([99, 98]).collect();
        let mut c = KvCache::new(SHAPE, 16);
        assert_eq!(pc.reuse(&prompt, &mut c).tokens, 8);
        assert_eq!(ids(&c), (1..=8).collect::<Vec<_>>());
        // Exactly the cached 12 tokens: the last block is recomputed for its logits.
        let mut c = KvCache::new(SHAPE, 16);
        assert_eq!(pc.reuse(&seq[..12], &mut c).tokens, 8);
        let mut c = KvCache::new(SHAPE, 16);
        assert_eq!(pc.reuse(&seq[..13], &mut c).tokens, 12);
        // A different first token: nothing.
        let mut c = KvCache::new(SHAPE, 16);
        assert_eq!(pc.reuse(&[0, 2, 3, 4, 5, 6], &mut c).tokens, 0);
        assert!(c.is_empty());
        // Another model's cache never matches.
        let mut other = PrefixCache::new(4, 1 << 20, "other");
        other.insert(&seq, &cache_of(&seq));
        assert_ne!(
            block_keys(pc.salt, &seq, 4)[0],
            block_keys(other.salt, &seq, 4)[0]
        );
    }

    #[test]
    fn longer_entries_replace_covered_ones_and_the_budget_evicts_least_recent() {
        let bpt = SHAPE.bytes_per_token();
        let mut pc = PrefixCache::new(4, 20 * bpt, "m");
        let a: Vec<u32> = (1..=8).collect();
        pc.insert(&a, &cache_of(&a));
        let a_longer: Vec<u32> = (1..=16).collect();
        pc.insert(&a_longer, &cache_of(&a_longer));
        assert_eq!(
            pc.len(),
            1,
            "the 8-token entry is covered by the 16-token one"
        );
        assert_eq!(pc.used_bytes(), 16 * bpt);
        // A second sequence over the budget evicts the least recently used.
        let b: Vec<u32> = (100..108).collect();
        pc.insert(&b, &cache_of(&b));
        assert_eq!(pc.len(), 1);
        assert_eq!(pc.used_bytes(), 8 * bpt);
        let mut c = KvCache::new(SHAPE, 20);
        assert_eq!(pc.reuse(&a_longer, &mut c).tokens, 0, "evicted");
        let mut c = KvCache::new(SHAPE, 20);
        assert_eq!(
            pc.reuse(&[100, 101, 102, 103, 104, 105, 106, 107, 1], &mut c)
                .tokens,
            8
        );
        // A sequence larger than the whole budget is not kept.
        let huge: Vec<u32> = (0..24).collect();
        assert_eq!(pc.insert(&huge, &cache_of(&huge)), 0);
        assert_eq!(pc.len(), 1);
    }

    #[test]
    fn two_entries_sharing_a_prefix_keep_it_reachable_after_one_is_evicted() {
        let bpt = SHAPE.bytes_per_token();
        let mut pc = PrefixCache::new(4, 16 * bpt, "m");
        let x: Vec<u32> = (1..=4).chain([50, 51, 52, 53]).collect();
        let y: Vec<u32> = (1..=4).chain([60, 61, 62, 63]).collect();
        pc.insert(&x, &cache_of(&x));
        pc.insert(&y, &cache_of(&y));
        assert_eq!(pc.len(), 2);
        // A third evicts x (least recent); y still serves the shared first block.
        let z: Vec<u32> = (200..208).collect();
        pc.insert(&z, &cache_of(&z));
        assert_eq!(pc.len(), 2);
        let mut c = KvCache::new(SHAPE, 20);
        assert_eq!(pc.reuse(&[1, 2, 3, 4, 50, 51, 52, 53, 9], &mut c).tokens, 4);
        assert_eq!(ids(&c), vec![1, 2, 3, 4]);
    }
}
