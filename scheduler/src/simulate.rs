//! A discrete-event run of any plan over a synthetic workload, with the plan's own cost
//! model: requests arrive (Poisson, seeded), take their active stages in dependency order,
//! wait for a free replica of each stage (first come, first served), pay the edge
//! transfers, and decode at the plan's per-token time. Plans the gateway does not serve
//! (pipeline, expert parallel, fusion) can be sized and compared this way.
//!
//! Decode is modelled at the batch-1 step time for every sequence (continuous batching
//! keeps memory-bound decode steps close to flat as the batch grows); prompt work queues.

use crate::placement::mix64;
use crate::plan::{ExecutionPlan, Stage};
use crate::policy::RequestFacts;
use crate::profile::Modality;
use crate::Transport;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub requests: usize,
    /// Mean arrivals per second (Poisson).
    pub rate_per_s: f64,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    /// Non-text inputs each request carries (e.g. one image).
    pub inputs: Vec<Modality>,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub(crate) fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.p50, self.p90, self.p99, self.max
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageUse {
    pub phase: String,
    pub replicas: u32,
    /// Prompt work over the run's length, averaged over replicas (decode steps batch and
    /// are not counted).
    pub utilisation: f64,
    /// Longest wait for a free replica.
    pub max_wait_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    pub requests: usize,
    pub ttft_ms: Percentiles,
    pub e2e_ms: Percentiles,
    pub makespan_ms: f64,
    pub output_tokens_per_s: f64,
    pub stages: Vec<StageUse>,
}

pub fn simulate(plan: &ExecutionPlan, w: &Workload) -> SimReport {
    let facts = RequestFacts {
        prompt_tokens: w.prompt_tokens,
        max_tokens: w.output_tokens,
        inputs: w.inputs.clone(),
    };
    let active: Vec<usize> = (0..plan.stages.len())
        .filter(|&i| plan.stages[i].selector.matches(&facts))
        .collect();
    let taken: Vec<&Stage> = active.iter().map(|&i| &plan.stages[i]).collect();
    let itl = plan.predict(&facts).itl_ms;
    let mut free: Vec<Vec<f64>> = plan
        .stages
        .iter()
        .map(|s| vec![0.0; s.replicas.max(1) as usize])
        .collect();
    let mut busy = vec![0.0f64; plan.stages.len()];
    let mut max_wait = vec![0.0f64; plan.stages.len()];
    let (mut ttfts, mut e2es) = (Vec::new(), Vec::new());
    let mut rng = w.seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut now = 0.0f64;
    let mut end = 0.0f64;
    let tokens = w.prompt_tokens as f64;
    for _ in 0..w.requests {
        rng = mix64(rng);
        let u = ((rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        now += -u.ln() / w.rate_per_s.max(1e-9) * 1e3;
        let mut done: Vec<(usize, f64)> = Vec::new();
        let mut ttft = 0.0f64;
        for &i in &active {
            let s = &plan.stages[i];
            let mut ready = now;
            for e in plan.edges.iter().filter(|e| e.to == s.phase) {
                let Some(&(_, t)) = done.iter().find(|(j, _)| plan.stages[*j].phase == e.from)
                else {
                    continue;
                };
                let ms = if e.transport == Transport::Local {
                    0.0
                } else {
                    e.on_path_ms(tokens, plan.model.layers)
                };
                ready = ready.max(t + ms);
            }
            let service = s.prompt_units_in(&taken, &facts) * s.cost.prompt_ms_per_token;
            let finish = if service > 0.0 {
                let (r, at) = free[i]
                    .iter()
                    .copied()
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("a stage has a replica");
                let start = ready.max(at);
                max_wait[i] = max_wait[i].max(start - ready);
                free[i][r] = start + service;
                busy[i] += service;
                start + service
            } else {
                ready
            };
            ttft = ttft.max(finish);
            done.push((i, finish));
        }
        let e2e = ttft + w.output_tokens.saturating_sub(1) as f64 * itl;
        ttfts.push(ttft - now);
        e2es.push(e2e - now);
        end = end.max(e2e);
    }
    let makespan = end.max(1e-9);
    SimReport {
        requests: w.requests,
        ttft_ms: Percentiles::of(ttfts),
        e2e_ms: Percentiles::of(e2es),
        makespan_ms: makespan,
        output_tokens_per_s: (w.requests * w.output_tokens) as f64 / (makespan / 1e3),
        stages: active
            .iter()
            .map(|&i| {
                let s = &plan.stages[i];
                StageUse {
                    phase: s.phase.clone(),
                    replicas: s.replicas,
                    utilisation: (busy[i] / (makespan * s.replicas.max(1) as f64)).min(1.0),
                    max_wait_ms: max_wait[i],
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Inventory, Pool};
    use crate::patterns::multimodal;
    use crate::{compile, ModelProfile, ResourcePolicy};

    fn fusion(fusion_gpus: u32) -> ExecutionPlan {
        let inv = Inventory {
            pools: vec![
                Pool {
                    name: "l40s".into(),
                    hardware: "L40S".into(),
                    count: 4,
                },
                Pool {
                    name: "h100".into(),
                    hardware: "H100".into(),
                    count: 4,
                },
                Pool {
                    name: "a100".into(),
                    hardware: "A100".into(),
                    count: 2,
                },
            ],
            ..Inventory::default()
        };
        compile(
            &multimodal::parallel_fusion(
                ResourcePolicy::scale_out(1, "L40S"),
                ResourcePolicy::scale_out(fusion_gpus, "H100"),
                ResourcePolicy::scale_to(1, "A100"),
            ),
            &ModelProfile::preset("llava-1.5-7b").unwrap(),
            &inv,
            &[],
        )
        .unwrap()
    }

    fn load(rate: f64) -> Workload {
        Workload {
            requests: 400,
            rate_per_s: rate,
            prompt_tokens: 512,
            output_tokens: 64,
            inputs: vec![Modality::Image],
            seed: 7,
        }
    }

    #[test]
    fn queueing_grows_with_load_and_more_replicas_relieve_it() {
        let plan = fusion(1);
        let light = simulate(&plan, &load(1.0));
        let heavy = simulate(&plan, &load(400.0));
        assert!(
            heavy.ttft_ms.p99 > 3.0 * light.ttft_ms.p99,
            "{light:?} {heavy:?}"
        );
        let busiest = |r: &SimReport| {
            r.stages
                .iter()
                .map(|s| s.utilisation)
                .fold(0.0f64, f64::max)
        };
        assert!(busiest(&heavy) > busiest(&light));
        let wider = simulate(&fusion(4), &load(400.0));
        assert!(wider.ttft_ms.p99 < heavy.ttft_ms.p99, "{wider:?} {heavy:?}");
        // Seeded: the same run twice gives the same report.
        assert_eq!(simulate(&plan, &load(50.0)), simulate(&plan, &load(50.0)));
        // Without an image the vision tower is idle.
        let text_only = simulate(
            &plan,
            &Workload {
                inputs: vec![],
                ..load(50.0)
            },
        );
        assert!(text_only.stages.iter().all(|s| s.phase != "vision_encoder"));
    }
}
