//! Automatic prefix caching: the KV blocks of earlier sequences, kept so a later sequence
//! whose prompt starts the same way shares them instead of computing them.
//!
//! Tokens are grouped in blocks of the caches' block size; block `i` of a token list is
//! keyed by a hash chain over every token up to its end and the model's identity (`salt`),
//! so equal keys mean equal prefixes. Each kept block also records its own tokens and its
//! parent's key, and a lookup checks both at every step, so a hash collision can never
//! serve another prefix's KV. Only whole blocks are kept or reused: a prompt that shares
//! 40 tokens with a cached one reuses 32 with 16-token blocks, and at least its last token
//! is always computed (its logits start the answer).
//!
//! The blocks are the sequences' own [`KvBlock`]s, shared by reference count: keeping a
//! finished prompt's blocks copies nothing, and a hit hands the same blocks to the new
//! sequence ([`KvCache::share_prefix`]). Past `budget_bytes` the least recently used block
//! that is not the parent of another kept block (a leaf) goes first, so a chain is always
//! cut from its end and what stays is still reachable. Pure data structure: no locking,
//! no I/O; a worker owns one.

use crate::kv_cache::{KvBlock, KvCache};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

pub use crate::kv_cache::BLOCK_TOKENS;

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

struct Cached {
    block: Arc<KvBlock>,
    /// This block's tokens.
    tokens: Vec<u32>,
    /// The key of the block before it (the salt for a first block).
    parent: u64,
    /// Kept blocks whose parent this is.
    children: usize,
    last_used: u64,
}

/// What [`PrefixCache::reuse`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reuse {
    /// Prompt tokens whose KV came from the cache (a multiple of the block size).
    pub tokens: usize,
}

/// A change to the set of blocks a cache holds, by key (what KV events report, so a
/// router can tell which worker holds a prompt's prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockChange {
    Stored(u64),
    Removed(u64),
}

pub struct PrefixCache {
    block: usize,
    budget_bytes: usize,
    salt: u64,
    block_bytes: usize,
    clock: u64,
    blocks: HashMap<u64, Cached>,
    /// Changes since the last [`PrefixCache::take_changes`].
    changes: Vec<BlockChange>,
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
            block_bytes: 0,
            clock: 0,
            blocks: HashMap::new(),
            changes: Vec::new(),
        }
    }

    /// The first link of every key chain: the model's (and adapter's) identity hashed.
    pub fn salt(&self) -> u64 {
        self.salt
    }

    /// The blocks stored and removed since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<BlockChange> {
        std::mem::take(&mut self.changes)
    }

    /// The keys of every block held (a snapshot for a router that lost track).
    pub fn keys(&self) -> Vec<u64> {
        self.blocks.keys().copied().collect()
    }

    pub fn block(&self) -> usize {
        self.block
    }

    /// Most KV bytes it keeps.
    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// KV bytes of the blocks held (a block a running sequence shares counts here too).
    pub fn used_bytes(&self) -> usize {
        self.blocks.len() * self.block_bytes
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The keys of the kept blocks of the longest cached whole-block prefix of `tokens`,
    /// checked token by token.
    fn chain(&self, tokens: &[u32]) -> Vec<u64> {
        let keys = block_keys(self.salt, tokens, self.block);
        let mut parent = self.salt;
        let mut found = Vec::new();
        for (key, want) in keys.into_iter().zip(tokens.chunks_exact(self.block)) {
            match self.blocks.get(&key) {
                Some(c) if c.parent == parent && c.tokens == want => found.push(key),
                _ => break, // a miss, or a hash collision: never serve another prefix's KV
            }
            parent = key;
        }
        found
    }

    /// Starts `cache` (empty, of this cache's block size) with the longest cached
    /// whole-block prefix of `prompt`, leaving at least the last prompt token to compute.
    /// Returns how many tokens it shares (0 on a miss, or when `cache`'s budget refuses
    /// the blocks; `cache` is then untouched).
    pub fn reuse(&mut self, prompt: &[u32], cache: &mut KvCache) -> Reuse {
        if prompt.len() < 2 || !cache.is_empty() || cache.block_tokens() != self.block {
            return Reuse::default();
        }
        let usable = (prompt.len() - 1) / self.block;
        let keys = self.chain(&prompt[..usable * self.block]);
        if keys.is_empty() {
            return Reuse::default();
        }
        let blocks: Vec<Arc<KvBlock>> = keys
            .iter()
            .map(|k| Arc::clone(&self.blocks[k].block))
            .collect();
        let n = keys.len() * self.block;
        if cache.share_prefix(&blocks, n).is_err() {
            return Reuse::default();
        }
        self.touch(&keys);
        Reuse { tokens: n }
    }

    /// Tokens of the longest cached whole-block prefix of `tokens` (a lookup that changes
    /// nothing, for routing and reporting).
    pub fn cached_tokens(&self, tokens: &[u32]) -> usize {
        self.chain(tokens).len() * self.block
    }

    fn touch(&mut self, keys: &[u64]) {
        self.clock += 1;
        for k in keys {
            if let Some(c) = self.blocks.get_mut(k) {
                c.last_used = self.clock;
            }
        }
    }

    /// Keeps the whole blocks of `tokens` whose KV `cache` holds (a prompt after its
    /// prefill, or a finished sequence: its prompt and the generated tokens the cache has
    /// seen). The blocks are shared, not copied. Returns the tokens now cached for it (0
    /// when it has no whole block, its block size differs, or its KV alone exceeds the
    /// budget).
    pub fn insert(&mut self, tokens: &[u32], cache: &KvCache) -> usize {
        if cache.block_tokens() != self.block {
            return 0;
        }
        let full = cache.full_blocks();
        let n_blocks = (tokens.len() / self.block).min(full.len());
        if n_blocks == 0 {
            return 0;
        }
        self.block_bytes = cache.shape().block_bytes(self.block);
        if n_blocks * self.block_bytes > self.budget_bytes {
            return 0;
        }
        let n = n_blocks * self.block;
        let keys = block_keys(self.salt, &tokens[..n], self.block);
        self.clock += 1;
        let mut parent = self.salt;
        for (i, &key) in keys.iter().enumerate() {
            let want = &tokens[i * self.block..(i + 1) * self.block];
            match self.blocks.get_mut(&key) {
                Some(c) if c.parent == parent && c.tokens == want => c.last_used = self.clock,
                Some(_) => return i * self.block, // a collision: keep what is certain
                None => {
                    if let Some(p) = self.blocks.get_mut(&parent) {
                        p.children += 1;
                    }
                    self.changes.push(BlockChange::Stored(key));
                    self.blocks.insert(
                        key,
                        Cached {
                            block: Arc::clone(&full[i]),
                            tokens: want.to_vec(),
                            parent,
                            children: 0,
                            last_used: self.clock,
                        },
                    );
                }
            }
            parent = key;
        }
        while self.used_bytes() > self.budget_bytes && self.evict_one() {}
        n
    }

    /// Drops the least recently used leaf block not touched by the latest operation;
    /// false when there is none.
    fn evict_one(&mut self) -> bool {
        let clock = self.clock;
        let Some(key) = self
            .blocks
            .iter()
            .filter(|(_, c)| c.children == 0 && c.last_used < clock)
            .min_by_key(|(_, c)| c.last_used)
            .map(|(k, _)| *k)
        else {
            return false;
        };
        let gone = self.blocks.remove(&key).expect("present");
        self.changes.push(BlockChange::Removed(key));
        if let Some(p) = self.blocks.get_mut(&gone.parent) {
            p.children -= 1;
        }
        true
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

    fn empty(capacity: usize) -> KvCache {
        KvCache::paged(SHAPE, 4, capacity, None).unwrap()
    }

    /// A cache whose K/V rows encode each token's id, so a shared prefix can be checked.
    fn cache_of(tokens: &[u32]) -> KvCache {
        let mut c = empty(tokens.len() + 8);
        c.ensure(tokens.len()).unwrap();
        for l in 0..SHAPE.n_layers {
            let rows: Vec<f32> = tokens.iter().flat_map(|&t| [t as f32, l as f32]).collect();
            c.append(l, &rows, &rows);
        }
        c
    }

    fn ids(c: &KvCache) -> Vec<u32> {
        c.layer_rows(0, false)
            .chunks(2)
            .map(|r| r[0].to_f32() as u32)
            .collect()
    }

    #[test]
    fn a_prompt_reuses_the_longest_whole_block_prefix_and_computes_its_last_token() {
        let mut pc = PrefixCache::new(4, 1 << 20, "m");
        let seq: Vec<u32> = (1..=14).collect();
        let held = cache_of(&seq);
        assert_eq!(pc.insert(&seq, &held), 12, "3 whole blocks of 4");
        assert_eq!(pc.cached_tokens(&seq), 12);
        // Shares 10 tokens: 2 blocks, the very blocks the first cache holds.
        let prompt: Vec<u32> = (1..=10).chain([99, 98]).collect();
        let mut c = empty(16);
        assert_eq!(pc.reuse(&prompt, &mut c).tokens, 8);
        assert_eq!(ids(&c), (1..=8).collect::<Vec<_>>());
        assert!(Arc::ptr_eq(&c.full_blocks()[1], &held.full_blocks()[1]));
        // Exactly the cached 12 tokens: the last block is recomputed for its logits.
        let mut c = empty(16);
        assert_eq!(pc.reuse(&seq[..12], &mut c).tokens, 8);
        let mut c = empty(16);
        assert_eq!(pc.reuse(&seq[..13], &mut c).tokens, 12);
        // A different first token: nothing.
        let mut c = empty(16);
        assert_eq!(pc.reuse(&[0, 2, 3, 4, 5, 6], &mut c).tokens, 0);
        assert!(c.is_empty());
        // A cache of another block size is not served.
        let mut c = KvCache::paged(SHAPE, 8, 16, None).unwrap();
        assert_eq!(pc.reuse(&seq, &mut c).tokens, 0);
        // Another model's cache never matches.
        let mut other = PrefixCache::new(4, 1 << 20, "other");
        other.insert(&seq, &cache_of(&seq));
        assert_ne!(
            block_keys(pc.salt, &seq, 4)[0],
            block_keys(other.salt, &seq, 4)[0]
        );
    }

    #[test]
    fn a_colliding_key_never_serves_another_prefix() {
        let mut pc = PrefixCache::new(4, 1 << 20, "m");
        let seq: Vec<u32> = (1..=9).collect();
        pc.insert(&seq, &cache_of(&seq));
        // Forge a collision: the second block's key now claims other tokens.
        let keys = block_keys(pc.salt, &seq[..8], 4);
        pc.blocks.get_mut(&keys[1]).unwrap().tokens = vec![7, 7, 7, 7];
        let mut c = empty(16);
        assert_eq!(
            pc.reuse(&seq, &mut c).tokens,
            4,
            "stops before the bad block"
        );
        assert_eq!(ids(&c), vec![1, 2, 3, 4]);
    }

    #[test]
    fn the_budget_evicts_least_recent_blocks_from_the_ends_of_chains() {
        let bpt = SHAPE.bytes_per_token();
        let mut pc = PrefixCache::new(4, 20 * bpt, "m");
        let a: Vec<u32> = (1..=8).collect();
        pc.insert(&a, &cache_of(&a));
        let a_longer: Vec<u32> = (1..=16).collect();
        pc.insert(&a_longer, &cache_of(&a_longer));
        assert_eq!(pc.len(), 4, "the longer one adds only its two new blocks");
        assert_eq!(pc.used_bytes(), 16 * bpt);
        // Two more blocks: over the budget of five, the least recent leaf goes.
        let b: Vec<u32> = (100..108).collect();
        pc.insert(&b, &cache_of(&b));
        assert_eq!(pc.len(), 5);
        let mut c = empty(20);
        let probe: Vec<u32> = a_longer.iter().copied().chain([1]).collect();
        assert_eq!(pc.reuse(&probe, &mut c).tokens, 12, "cut from its end");
        let mut c = empty(20);
        assert_eq!(
            pc.reuse(&[100, 101, 102, 103, 104, 105, 106, 107, 1], &mut c)
                .tokens,
            8
        );
        // A sequence larger than the whole budget is not kept.
        let huge: Vec<u32> = (0..24).collect();
        assert_eq!(pc.insert(&huge, &cache_of(&huge)), 0);
        assert_eq!(pc.len(), 5);
    }

    #[test]
    fn changes_report_every_block_stored_and_evicted_in_order() {
        let bpt = SHAPE.bytes_per_token();
        let mut pc = PrefixCache::new(4, 8 * bpt, "m");
        let a: Vec<u32> = (1..=8).collect();
        pc.insert(&a, &cache_of(&a));
        let ka = block_keys(pc.salt(), &a, 4);
        assert_eq!(
            pc.take_changes(),
            vec![BlockChange::Stored(ka[0]), BlockChange::Stored(ka[1])]
        );
        pc.insert(&a, &cache_of(&a));
        assert!(pc.take_changes().is_empty(), "nothing new");
        let b: Vec<u32> = (50..54).collect();
        pc.insert(&b, &cache_of(&b));
        let kb = block_keys(pc.salt(), &b, 4);
        // Over the budget of two blocks: a's leaf goes, its first block stays.
        assert_eq!(
            pc.take_changes(),
            vec![BlockChange::Stored(kb[0]), BlockChange::Removed(ka[1])]
        );
        let mut keys = pc.keys();
        keys.sort();
        let mut want = vec![ka[0], kb[0]];
        want.sort();
        assert_eq!(keys, want);
    }

    #[test]
    fn two_entries_sharing_a_prefix_keep_it_reachable_after_one_is_evicted() {
        let bpt = SHAPE.bytes_per_token();
        let mut pc = PrefixCache::new(4, 16 * bpt, "m");
        let x: Vec<u32> = (1..=4).chain([50, 51, 52, 53]).collect();
        let y: Vec<u32> = (1..=4).chain([60, 61, 62, 63]).collect();
        pc.insert(&x, &cache_of(&x));
        pc.insert(&y, &cache_of(&y));
        assert_eq!(pc.len(), 3);
        // A third evicts x's own block (least recent); the shared first block stays.
        let z: Vec<u32> = (200..208).collect();
        pc.insert(&z, &cache_of(&z));
        assert_eq!(pc.len(), 4);
        let mut c = empty(20);
        assert_eq!(pc.reuse(&[1, 2, 3, 4, 50, 51, 52, 53, 9], &mut c).tokens, 4);
        assert_eq!(ids(&c), vec![1, 2, 3, 4]);
        let mut c = empty(20);
        assert_eq!(pc.reuse(&[1, 2, 3, 4, 60, 61, 62, 63, 9], &mut c).tokens, 8);
    }
}
