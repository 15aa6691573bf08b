//! Per-request placement: which workers run a request's prefill and decode phases. Whether
//! the request is disaggregated at all is the plan's call ([`ExecutionPlan::prefill_for`]
//! (crate::plan::ExecutionPlan::prefill_for)) or the client's hint; this module picks the
//! workers by a routing policy over their reported load and free KV, honouring pins.

use genie_protocol::WorkerId;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Prefill,
    Decode,
}

/// What the scheduler knows of one worker at decision time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub id: WorkerId,
    pub role: Role,
    pub healthy: bool,
    /// Sequences waiting or running on the worker.
    pub load: usize,
    /// Prompt tokens queued (prefill workers).
    pub queued_tokens: usize,
    pub kv_capacity_bytes: u64,
    pub kv_free_bytes: u64,
    /// Leading tokens of the request being placed whose KV the worker's prefix cache holds,
    /// as its KV events reported (filled per request; 0 when unknown).
    #[serde(default)]
    pub cached_tokens: usize,
    /// Sequences in the worker's running batch (decode workers), as last reported.
    #[serde(default)]
    pub running: usize,
    /// The cost curves the worker fitted to its own forward passes, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub costs: Option<genie_protocol::costs::LiveCosts>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoutingPolicy {
    RoundRobin,
    /// Fewest sequences, then fewest queued prompt tokens, then most free KV.
    #[default]
    LeastLoaded,
    /// Two workers drawn at random, the less loaded wins: near least-loaded balance
    /// without every gateway herding onto the same idle worker.
    PowerOfTwo,
    /// The same prompt prefix goes to the same worker (rendezvous hashing, stable as
    /// workers come and go) unless that worker is `AFFINITY_SLACK` sequences busier than
    /// the least loaded one.
    PrefixAffinity,
    /// The least work ([`kv_aware_cost`]): the prompt tokens the worker would have to
    /// compute or receive (those its prefix cache does not hold, as its KV events report),
    /// plus the prompt tokens queued there, plus, on a decode worker,
    /// `KV_AWARE_LOAD_TOKENS` for every sequence it is running.
    KvAware,
}

/// How much busier than the least loaded worker an affinity target may be.
pub const AFFINITY_SLACK: usize = 4;

/// What a sequence a decode worker is running costs in `kv_aware` placement, in prompt
/// tokens to compute: its decode steps share the worker with the new sequence's prefill
/// (colocated) and decode.
pub const KV_AWARE_LOAD_TOKENS: usize = 256;

/// A worker's cost for a request in `kv_aware` placement (lower is better). A prefill
/// worker's load is its queue, already counted in prompt tokens; a decode worker's is
/// its running batch.
pub fn kv_aware_cost(w: &WorkerView, prompt_tokens: usize) -> usize {
    let running = match w.role {
        Role::Prefill => 0,
        Role::Decode => w.load * KV_AWARE_LOAD_TOKENS,
    };
    prompt_tokens.saturating_sub(w.cached_tokens) + w.queued_tokens + running
}

/// A client's placement hint (the `genie` request extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementHint {
    /// Force (true) or forbid (false) a separate prefill worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disaggregate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_worker: Option<WorkerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_worker: Option<WorkerId>,
}

/// The facts of one sequence that placement needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacementRequest {
    pub prompt_tokens: usize,
    /// KV bytes the sequence holds at most (prompt + max_tokens): no worker with less
    /// capacity can ever run it.
    pub kv_bytes: u64,
    /// KV bytes it takes to start (the blocks of its prompt and first generated token; it
    /// takes more as it grows): a worker with less free cannot admit it now.
    pub kv_start_bytes: u64,
    /// The plan's decision: prefill on a prefill worker (true) or on the decode worker.
    pub disaggregate: bool,
    /// Hash of the prompt's first tokens (for prefix affinity).
    pub prefix_hash: Option<u64>,
    /// Worker pins: the client's hint, else the plan's overrides.
    pub prefill_worker: Option<WorkerId>,
    pub decode_worker: Option<WorkerId>,
}

impl PlacementRequest {
    pub fn new(prompt_tokens: usize, kv_bytes: u64, disaggregate: bool) -> Self {
        PlacementRequest {
            prompt_tokens,
            kv_bytes,
            kv_start_bytes: kv_bytes,
            disaggregate,
            prefix_hash: None,
            prefill_worker: None,
            decode_worker: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Placement {
    Colocated { decode: WorkerId },
    Disaggregated { prefill: WorkerId, decode: WorkerId },
}

impl Placement {
    pub fn decode(&self) -> WorkerId {
        match *self {
            Placement::Colocated { decode } | Placement::Disaggregated { decode, .. } => decode,
        }
    }

    pub fn prefill(&self) -> Option<WorkerId> {
        match *self {
            Placement::Colocated { .. } => None,
            Placement::Disaggregated { prefill, .. } => Some(prefill),
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PlaceError {
    #[error("no healthy {0:?} worker")]
    NoWorker(Role),
    /// A pinned worker (hint or override) is not registered with that role.
    #[error("there is no {role:?} worker {id}")]
    NoSuchWorker { role: Role, id: WorkerId },
    /// The sequence needs more KV than any decode worker has in all: it can never run.
    #[error("the request needs {needed_bytes} bytes of KV cache; the largest decode worker holds {largest_bytes}")]
    NeverFits {
        needed_bytes: u64,
        largest_bytes: u64,
    },
    /// Every decode worker that could hold it is full right now: wait and retry.
    #[error("no decode worker has {needed_bytes} bytes of KV cache free right now")]
    Busy { needed_bytes: u64 },
}

/// Placement state: the routing policy, round-robin cursors and the random stream of
/// power-of-two choices (seeded, so a decision log replays exactly).
#[derive(Clone, Debug)]
pub struct Scheduler {
    pub routing: RoutingPolicy,
    cursor: [usize; 2],
    rng: u64,
}

fn load_key(w: &WorkerView) -> (usize, usize, u64) {
    (w.load, w.queued_tokens, u64::MAX - w.kv_free_bytes)
}

/// SplitMix64 finaliser: a well-mixed 64-bit hash of `x`.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Hash of the first `n` tokens of a prompt (all of it when shorter).
pub fn prefix_hash(tokens: &[u32], n: usize) -> u64 {
    tokens
        .iter()
        .take(n)
        .fold(0xCBF2_9CE4_8422_2325, |h, &t| mix64(h ^ t as u64))
}

impl Scheduler {
    pub fn new(routing: RoutingPolicy) -> Self {
        Scheduler {
            routing,
            cursor: [0, 0],
            rng: 0x2545_F491_4F6C_DD1D,
        }
    }

    /// Places one sequence, or says why it cannot be placed now (or ever).
    pub fn place(
        &mut self,
        req: &PlacementRequest,
        workers: &[WorkerView],
    ) -> Result<Placement, PlaceError> {
        let mut largest = None::<u64>;
        for w in workers
            .iter()
            .filter(|w| w.role == Role::Decode && w.healthy)
        {
            largest = Some(largest.unwrap_or(0).max(w.kv_capacity_bytes));
        }
        let Some(largest) = largest else {
            return Err(PlaceError::NoWorker(Role::Decode));
        };
        if req.kv_bytes > largest {
            return Err(PlaceError::NeverFits {
                needed_bytes: req.kv_bytes,
                largest_bytes: largest,
            });
        }
        let fits = |w: &WorkerView| w.kv_free_bytes >= req.kv_start_bytes;
        let decode = self
            .pick(Role::Decode, req, workers, req.decode_worker, &fits)?
            .ok_or(PlaceError::Busy {
                needed_bytes: req.kv_start_bytes,
            })?;
        if !req.disaggregate {
            return Ok(Placement::Colocated { decode });
        }
        let prefill = self
            .pick(Role::Prefill, req, workers, req.prefill_worker, &|_| true)?
            .ok_or(PlaceError::NoWorker(Role::Prefill))?;
        Ok(Placement::Disaggregated { prefill, decode })
    }

    fn pick(
        &mut self,
        role: Role,
        req: &PlacementRequest,
        workers: &[WorkerView],
        pinned: Option<WorkerId>,
        ok: &dyn Fn(&WorkerView) -> bool,
    ) -> Result<Option<WorkerId>, PlaceError> {
        if let Some(id) = pinned {
            let Some(w) = workers.iter().find(|w| w.id == id && w.role == role) else {
                return Err(PlaceError::NoSuchWorker { role, id });
            };
            if !w.healthy {
                return Err(PlaceError::NoWorker(role));
            }
            return Ok(ok(w).then_some(id));
        }
        let eligible = |w: &&WorkerView| w.role == role && w.healthy && ok(w);
        let n = workers.iter().filter(eligible).count();
        if n == 0 {
            return Ok(None);
        }
        let nth = |i: usize| workers.iter().filter(eligible).nth(i).expect("i < n");
        let slot = &mut self.cursor[role as usize];
        let w = match self.routing {
            RoutingPolicy::RoundRobin => {
                let w = nth(*slot % n);
                *slot = slot.wrapping_add(1);
                w
            }
            // Ties rotate so equal workers share the work.
            RoutingPolicy::LeastLoaded => {
                let start = *slot % n;
                *slot = slot.wrapping_add(1);
                workers
                    .iter()
                    .filter(eligible)
                    .enumerate()
                    .min_by_key(|(i, w)| (load_key(w), (i + n - start) % n))
                    .map(|(_, w)| w)
                    .expect("n > 0")
            }
            RoutingPolicy::PowerOfTwo => {
                self.rng = mix64(self.rng);
                let a = (self.rng % n as u64) as usize;
                let b = if n == 1 {
                    a
                } else {
                    let r = ((self.rng >> 32) % (n as u64 - 1)) as usize;
                    if r >= a {
                        r + 1
                    } else {
                        r
                    }
                };
                let (wa, wb) = (nth(a), nth(b));
                if load_key(wb) < load_key(wa) {
                    wb
                } else {
                    wa
                }
            }
            // Ties rotate, as least-loaded's do.
            RoutingPolicy::KvAware => {
                let start = *slot % n;
                *slot = slot.wrapping_add(1);
                workers
                    .iter()
                    .filter(eligible)
                    .enumerate()
                    .min_by_key(|(i, w)| (kv_aware_cost(w, req.prompt_tokens), (i + n - start) % n))
                    .map(|(_, w)| w)
                    .expect("n > 0")
            }
            RoutingPolicy::PrefixAffinity => {
                let least = workers
                    .iter()
                    .filter(eligible)
                    .map(|w| w.load)
                    .min()
                    .expect("n > 0");
                match req.prefix_hash {
                    Some(h) => workers
                        .iter()
                        .filter(eligible)
                        .filter(|w| w.load <= least + AFFINITY_SLACK)
                        .max_by_key(|w| mix64(h ^ mix64(w.id.0)))
                        .expect("the least loaded worker qualifies"),
                    None => workers
                        .iter()
                        .filter(eligible)
                        .min_by_key(|w| load_key(w))
                        .expect("n > 0"),
                }
            }
        };
        Ok(Some(w.id))
    }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
