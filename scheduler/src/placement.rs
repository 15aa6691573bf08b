//! Per-request placement: which workers run a request's prefill and decode phases.

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoutingPolicy {
    RoundRobin,
    #[default]
    LeastLoaded,
}

/// When a request is disaggregated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum DisaggregationMode {
    /// Prefill always runs on the decode worker (the baseline).
    Colocated,
    /// Prompts of at least `min_prompt_tokens` prefill on a prefill worker; shorter ones
    /// prefill on the decode worker (conditional disaggregation).
    Disaggregated { min_prompt_tokens: usize },
}

/// The facts of one sequence that placement needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacementRequest {
    pub prompt_tokens: usize,
    /// KV bytes the sequence holds at most (prompt + max_tokens).
    pub kv_bytes: u64,
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

/// Placement state: the policy and the round-robin cursors.
#[derive(Clone, Debug)]
pub struct Scheduler {
    pub routing: RoutingPolicy,
    pub mode: DisaggregationMode,
    cursor: [usize; 2],
}

impl Scheduler {
    pub fn new(routing: RoutingPolicy, mode: DisaggregationMode) -> Self {
        Scheduler {
            routing,
            mode,
            cursor: [0, 0],
        }
    }

    /// Places one sequence, or says why it cannot be placed now (or ever).
    pub fn place(
        &mut self,
        req: &PlacementRequest,
        workers: &[WorkerView],
    ) -> Result<Placement, PlaceError> {
        let decoders: Vec<&WorkerView> = workers
            .iter()
            .filter(|w| w.role == Role::Decode && w.healthy)
            .collect();
        if decoders.is_empty() {
            return Err(PlaceError::NoWorker(Role::Decode));
        }
        let largest = decoders
            .iter()
            .map(|w| w.kv_capacity_bytes)
            .max()
            .unwrap_or(0);
        if req.kv_bytes > largest {
            return Err(PlaceError::NeverFits {
                needed_bytes: req.kv_bytes,
                largest_bytes: largest,
            });
        }
        let fits: Vec<&WorkerView> = decoders
            .into_iter()
            .filter(|w| w.kv_free_bytes >= req.kv_bytes)
            .collect();
        let decode = self.pick(Role::Decode, &fits).ok_or(PlaceError::Busy {
            needed_bytes: req.kv_bytes,
        })?;
        let disaggregate = match self.mode {
            DisaggregationMode::Colocated => false,
            DisaggregationMode::Disaggregated { min_prompt_tokens } => {
                req.prompt_tokens >= min_prompt_tokens
            }
        };
        if !disaggregate {
            return Ok(Placement::Colocated { decode });
        }
        let prefillers: Vec<&WorkerView> = workers
            .iter()
            .filter(|w| w.role == Role::Prefill && w.healthy)
            .collect();
        let prefill = self
            .pick(Role::Prefill, &prefillers)
            .ok_or(PlaceError::NoWorker(Role::Prefill))?;
        Ok(Placement::Disaggregated { prefill, decode })
    }

    fn pick(&mut self, role: Role, candidates: &[&WorkerView]) -> Option<WorkerId> {
        if candidates.is_empty() {
            return None;
        }
        let slot = &mut self.cursor[role as usize];
        let w = match self.routing {
            RoutingPolicy::RoundRobin => {
                let w = candidates[*slot % candidates.len()];
                *slot = slot.wrapping_add(1);
                w
            }
            // Fewest sequences, then fewest queued prompt tokens, then most free KV; ties
            // rotate so equal workers share the work.
            RoutingPolicy::LeastLoaded => {
                let start = *slot % candidates.len();
                *slot = slot.wrapping_add(1);
                let rotated = candidates[start..].iter().chain(&candidates[..start]);
                *rotated
                    .min_by_key(|w| (w.load, w.queued_tokens, u64::MAX - w.kv_free_bytes))
                    .expect("candidates is not empty")
            }
        };
        Some(w.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: u64, role: Role, load: usize, free: u64) -> WorkerView {
        WorkerView {
            id: WorkerId(id),
            role,
            healthy: true,
            load,
            queued_tokens: 0,
            kv_capacity_bytes: 1000,
            kv_free_bytes: free,
        }
    }

    fn req(prompt: usize, kv: u64) -> PlacementRequest {
        PlacementRequest {
            prompt_tokens: prompt,
            kv_bytes: kv,
        }
    }

    #[test]
    fn short_prompts_stay_on_the_decode_worker_long_ones_disaggregate() {
        let ws = [w(1, Role::Prefill, 0, 0), w(2, Role::Decode, 0, 1000)];
        let mut s = Scheduler::new(
            RoutingPolicy::LeastLoaded,
            DisaggregationMode::Disaggregated {
                min_prompt_tokens: 64,
            },
        );
        assert_eq!(
            s.place(&req(10, 100), &ws),
            Ok(Placement::Colocated {
                decode: WorkerId(2)
            })
        );
        assert_eq!(
            s.place(&req(64, 100), &ws),
            Ok(Placement::Disaggregated {
                prefill: WorkerId(1),
                decode: WorkerId(2)
            })
        );
        let mut c = Scheduler::new(RoutingPolicy::LeastLoaded, DisaggregationMode::Colocated);
        assert_eq!(
            c.place(&req(5000, 100), &ws),
            Ok(Placement::Colocated {
                decode: WorkerId(2)
            })
        );
    }

    #[test]
    fn least_loaded_prefers_idle_workers_and_skips_full_or_unhealthy_ones() {
        let mut sick = w(3, Role::Decode, 0, 1000);
        sick.healthy = false;
        let ws = [
            w(1, Role::Decode, 5, 1000),
            w(2, Role::Decode, 1, 1000),
            sick,
            w(4, Role::Decode, 0, 10),
            w(9, Role::Prefill, 0, 0),
        ];
        let mut s = Scheduler::new(
            RoutingPolicy::LeastLoaded,
            DisaggregationMode::Disaggregated {
                min_prompt_tokens: 0,
            },
        );
        for _ in 0..4 {
            assert_eq!(s.place(&req(8, 100), &ws).unwrap().decode(), WorkerId(2));
        }
    }

    #[test]
    fn round_robin_rotates() {
        let ws = [w(1, Role::Decode, 9, 1000), w(2, Role::Decode, 0, 1000)];
        let mut s = Scheduler::new(RoutingPolicy::RoundRobin, DisaggregationMode::Colocated);
        let got: Vec<u64> = (0..4)
            .map(|_| s.place(&req(1, 1), &ws).unwrap().decode().0)
            .collect();
        assert_eq!(got, vec![1, 2, 1, 2]);
    }

    #[test]
    fn capacity_errors_say_whether_to_wait_or_give_up() {
        let ws = [w(1, Role::Decode, 0, 50), w(2, Role::Prefill, 0, 0)];
        let mut s = Scheduler::new(RoutingPolicy::LeastLoaded, DisaggregationMode::Colocated);
        assert_eq!(
            s.place(&req(1, 2000), &ws),
            Err(PlaceError::NeverFits {
                needed_bytes: 2000,
                largest_bytes: 1000
            })
        );
        assert_eq!(
            s.place(&req(1, 100), &ws),
            Err(PlaceError::Busy { needed_bytes: 100 })
        );
        assert_eq!(
            s.place(&req(1, 1), &[w(2, Role::Prefill, 0, 0)]),
            Err(PlaceError::NoWorker(Role::Decode))
        );
        let mut d = Scheduler::new(
            RoutingPolicy::LeastLoaded,
            DisaggregationMode::Disaggregated {
                min_prompt_tokens: 0,
            },
        );
        assert_eq!(
            d.place(&req(1, 1), &[w(1, Role::Decode, 0, 50)]),
            Err(PlaceError::NoWorker(Role::Prefill))
        );
    }
}
