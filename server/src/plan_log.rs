//! The recent requests' plans, kept in memory for `GET /v1/plans/requests[/{id}]` and the
//! plan page: bounded (the oldest go first), each filled in with measured timings when its
//! sequences end.

use genie_scheduler::{Measured, RequestPlan};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

pub struct PlanLog {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    order: VecDeque<String>,
    plans: HashMap<String, RequestPlan>,
}

impl PlanLog {
    pub fn new(capacity: usize) -> Self {
        PlanLog {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, plan: RequestPlan) {
        let mut g = self.lock();
        while g.order.len() >= self.capacity {
            if let Some(old) = g.order.pop_front() {
                g.plans.remove(&old);
            }
        }
        g.order.push_back(plan.id.clone());
        g.plans.insert(plan.id.clone(), plan);
    }

    /// Records how sequence `index` of request `id` went (no-op once the plan aged out).
    pub fn measured(&self, id: &str, index: u32, m: Measured) {
        let mut g = self.lock();
        if let Some(s) = g
            .plans
            .get_mut(id)
            .and_then(|p| p.sequences.iter_mut().find(|s| s.index == index))
        {
            s.measured = Some(m);
        }
    }

    pub fn get(&self, id: &str) -> Option<RequestPlan> {
        self.lock().plans.get(id).cloned()
    }

    /// The newest `limit` plans, newest first.
    pub fn recent(&self, limit: usize) -> Vec<RequestPlan> {
        let g = self.lock();
        g.order
            .iter()
            .rev()
            .take(limit)
            .filter_map(|id| g.plans.get(id).cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genie_protocol::WorkerId;
    use genie_scheduler::{Placement, Predicted, SeqPlan};

    fn plan(id: &str) -> RequestPlan {
        RequestPlan {
            id: id.into(),
            created: 0,
            policy: "p".into(),
            plan_version: 1,
            prompt_tokens: 3,
            max_tokens: 4,
            stages: vec![],
            hint: None,
            predicted: Predicted::default(),
            sequences: vec![SeqPlan {
                index: 0,
                placement: Placement::Colocated {
                    decode: WorkerId(1),
                },
                transfer_id: None,
                reason: "r".into(),
                measured: None,
            }],
        }
    }

    #[test]
    fn keeps_the_newest_and_fills_in_measurements() {
        let log = PlanLog::new(2);
        for id in ["a", "b", "c"] {
            log.insert(plan(id));
        }
        assert!(log.get("a").is_none());
        let ids: Vec<String> = log.recent(10).into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["c", "b"]);
        let m = Measured {
            placed_ms: 1.0,
            ttft_ms: Some(2.0),
            itl_ms: None,
            e2e_ms: 3.0,
            completion_tokens: 1,
            cached_tokens: 0,
            finish_reason: "stop".into(),
        };
        log.measured("c", 0, m.clone());
        log.measured("a", 0, m.clone());
        assert_eq!(log.get("c").unwrap().sequences[0].measured, Some(m));
    }
}
