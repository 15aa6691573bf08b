//! `genie plan tune`'s search: which serving configuration gives the most goodput for a
//! workload and an SLO, by [`crate::serve_sim`] runs of each candidate.
//!
//! The knobs: the placement (the prefill:decode worker split, the threads each worker
//! gets from the cost profiles given, one per thread count, and where prompts run:
//! `scheduler.min_prompt_tokens`, or colocated when there are no prefill workers; one
//! knob because they interact), `decode.max_batch`, `prefill.max_batch_tokens` and the
//! routing policy. The search is coordinate descent: from the starting configuration,
//! each knob in turn takes every value while the others hold, the best (most goodput;
//! then lower TTFT p90, then lower ITL p99) is kept, and rounds repeat until one changes
//! nothing (at most [`MAX_ROUNDS`]). With a cheaper screening evaluation (the caller's:
//! a prefix of a large trace), a knob's values are first ranked by it and only the best
//! [`SCREEN_KEEP`] are simulated in full. A knob's values run in parallel; every
//! candidate is simulated once (results are kept by candidate). Pure: the caller
//! supplies the evaluations, so tests drive it with any function.

use crate::placement::RoutingPolicy;
use crate::serve_sim::ServeReport;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

/// Rounds of coordinate descent at most.
pub const MAX_ROUNDS: usize = 4;

/// `min_prompt_tokens` values worth trying (`None`: colocated mode).
pub const THRESHOLDS: [Option<usize>; 8] = [
    None,
    Some(0),
    Some(64),
    Some(128),
    Some(256),
    Some(512),
    Some(1024),
    Some(2048),
];

/// Values of one knob simulated in full after screening.
pub const SCREEN_KEEP: usize = 3;

/// Workers per role and threads per worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Split {
    pub prefill_workers: usize,
    pub decode_workers: usize,
    /// Compute threads of each worker (0: the profile's hardware has no such knob).
    pub threads: usize,
}

/// One serving configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Knobs {
    pub split: Split,
    /// `scheduler.min_prompt_tokens` (0: every prompt to a prefill worker); `None`:
    /// `scheduler.mode = "colocated"`.
    pub min_prompt_tokens: Option<usize>,
    pub decode_max_batch: usize,
    pub prefill_max_batch_tokens: usize,
    pub routing: RoutingPolicy,
}

impl Knobs {
    /// Prompts never leave the decode workers: colocated mode or no prefill workers.
    pub fn colocated(&self) -> bool {
        self.min_prompt_tokens.is_none() || self.split.prefill_workers == 0
    }
}

/// The values each knob may take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Space {
    pub splits: Vec<Split>,
    pub thresholds: Vec<Option<usize>>,
    pub decode_max_batch: Vec<usize>,
    pub prefill_max_batch_tokens: Vec<usize>,
    pub routing: Vec<RoutingPolicy>,
}

/// A candidate and what its simulation predicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub knobs: Knobs,
    pub report: ServeReport,
}

/// One knob's turn: each value tried (with its prediction) and the value kept.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KnobTurn {
    pub round: usize,
    pub knob: &'static str,
    pub tried: Vec<Scored>,
    pub kept: Knobs,
}

/// The search's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tuned {
    pub start: Scored,
    pub chosen: Scored,
    /// The best other candidate simulated.
    pub runner_up: Option<Scored>,
    pub turns: Vec<KnobTurn>,
    /// Distinct candidates simulated.
    pub evaluations: usize,
}

/// Better first: more goodput, then lower TTFT p90, then lower ITL p99.
pub fn better(a: &ServeReport, b: &ServeReport) -> std::cmp::Ordering {
    b.goodput_per_s
        .total_cmp(&a.goodput_per_s)
        .then(a.ttft_ms.p90.total_cmp(&b.ttft_ms.p90))
        .then(a.itl_ms.p99.total_cmp(&b.itl_ms.p99))
}

const KNOBS: [&str; 4] = [
    "placement",
    "decode.max_batch",
    "prefill.max_batch_tokens",
    "routing",
];

fn variants(space: &Space, k: &Knobs, knob: &str) -> Vec<Knobs> {
    match knob {
        // Without prefill workers every prompt is colocated; with them, each threshold
        // (colocated mode there would leave them idle).
        "placement" => space
            .splits
            .iter()
            .flat_map(|&split| {
                let thresholds: Vec<Option<usize>> = if split.prefill_workers == 0 {
                    vec![None]
                } else {
                    space
                        .thresholds
                        .iter()
                        .copied()
                        .filter(Option::is_some)
                        .collect()
                };
                thresholds.into_iter().map(move |min_prompt_tokens| Knobs {
                    split,
                    min_prompt_tokens,
                    ..*k
                })
            })
            .collect(),
        "decode.max_batch" => space
            .decode_max_batch
            .iter()
            .map(|&decode_max_batch| Knobs {
                decode_max_batch,
                ..*k
            })
            .collect(),
        "prefill.max_batch_tokens" => space
            .prefill_max_batch_tokens
            .iter()
            .map(|&prefill_max_batch_tokens| Knobs {
                prefill_max_batch_tokens,
                ..*k
            })
            .collect(),
        _ => space
            .routing
            .iter()
            .map(|&routing| Knobs { routing, ..*k })
            .collect(),
    }
}

/// Evaluates `cands` (in parallel over `threads`), reusing earlier results.
fn evaluate(
    cands: &[Knobs],
    seen: &Mutex<HashMap<Knobs, ServeReport>>,
    eval: &(dyn Fn(&Knobs) -> ServeReport + Sync),
    threads: usize,
) -> Vec<Scored> {
    let todo: Vec<Knobs> = {
        let seen = seen.lock().expect("no panics while held");
        let mut t: Vec<Knobs> = cands
            .iter()
            .filter(|k| !seen.contains_key(*k))
            .copied()
            .collect();
        t.dedup();
        t
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, todo.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(k) = todo.get(i) else { break };
                let r = eval(k);
                seen.lock().expect("no panics while held").insert(*k, r);
            });
        }
    });
    let seen = seen.lock().expect("no panics while held");
    cands
        .iter()
        .map(|k| Scored {
            knobs: *k,
            report: seen[k].clone(),
        })
        .collect()
}

/// Coordinate descent over `space` from `start`, scoring each candidate by `eval`, with
/// up to `threads` simulations at once; `screen`, where given, ranks a knob's values
/// first and only the best [`SCREEN_KEEP`] are scored by `eval`.
pub fn tune(
    space: &Space,
    start: Knobs,
    eval: &(dyn Fn(&Knobs) -> ServeReport + Sync),
    screen: Option<&(dyn Fn(&Knobs) -> ServeReport + Sync)>,
    threads: usize,
) -> Tuned {
    let seen = Mutex::new(HashMap::new());
    let screened = Mutex::new(HashMap::new());
    let first = evaluate(&[start], &seen, eval, threads).remove(0);
    let mut best = first.clone();
    let mut turns = Vec::new();
    for round in 1..=MAX_ROUNDS {
        let before = best.knobs;
        for knob in KNOBS {
            let mut cands = variants(space, &best.knobs, knob);
            if cands.len() < 2 && cands.first() == Some(&best.knobs) {
                continue;
            }
            if let (Some(screen), true) = (screen, cands.len() > SCREEN_KEEP) {
                let mut ranked = evaluate(&cands, &screened, screen, threads);
                ranked.sort_by(|a, b| better(&a.report, &b.report));
                cands = ranked
                    .into_iter()
                    .take(SCREEN_KEEP)
                    .map(|s| s.knobs)
                    .collect();
            }
            // The kept value first, so a tie keeps it (the sort is stable).
            let mut tried = vec![best.clone()];
            for c in evaluate(&cands, &seen, eval, threads) {
                if c.knobs != best.knobs {
                    tried.push(c);
                }
            }
            tried.sort_by(|a, b| better(&a.report, &b.report));
            best = tried[0].clone();
            turns.push(KnobTurn {
                round,
                knob,
                tried,
                kept: best.knobs,
            });
        }
        if best.knobs == before {
            break;
        }
    }
    let all = seen.into_inner().expect("no panics while held");
    let evaluations = all.len();
    let runner_up = all
        .into_iter()
        .filter(|(k, _)| *k != best.knobs)
        .map(|(knobs, report)| Scored { knobs, report })
        .min_by(|a, b| {
            better(&a.report, &b.report)
                .then_with(|| format!("{:?}", a.knobs).cmp(&format!("{:?}", b.knobs)))
        });
    Tuned {
        start: first,
        chosen: best,
        runner_up,
        turns,
        evaluations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::Percentiles;

    fn report(goodput: f64, ttft_p90: f64) -> ServeReport {
        ServeReport {
            requests: 1,
            completed: 1,
            refused: 0,
            disaggregated: 0,
            ttft_ms: Percentiles {
                p90: ttft_p90,
                ..Percentiles::default()
            },
            itl_ms: Percentiles::default(),
            e2e_ms: Percentiles::default(),
            duration_s: 1.0,
            goodput_per_s: goodput,
            slo_met: 0,
            mean_decode_batch: 0.0,
            prefill_utilisation: 0.0,
            decode_utilisation: 0.0,
            kv_overflows: 0,
        }
    }

    fn space() -> Space {
        Space {
            splits: vec![
                Split {
                    prefill_workers: 0,
                    decode_workers: 2,
                    threads: 1,
                },
                Split {
                    prefill_workers: 1,
                    decode_workers: 1,
                    threads: 1,
                },
                Split {
                    prefill_workers: 2,
                    decode_workers: 1,
                    threads: 1,
                },
            ],
            thresholds: THRESHOLDS.to_vec(),
            decode_max_batch: vec![8, 16, 64],
            prefill_max_batch_tokens: vec![1024, 4096],
            routing: vec![RoutingPolicy::LeastLoaded, RoutingPolicy::RoundRobin],
        }
    }

    #[test]
    fn descent_finds_the_separable_optimum_and_names_a_runner_up() {
        // Goodput peaks at 1P1D, threshold 256, batch 16, 4096 tokens; routing ties, and
        // TTFT breaks ties toward least-loaded.
        let eval = |k: &Knobs| {
            let mut g = 10.0;
            g -= if k.split.prefill_workers == 1 {
                0.0
            } else {
                3.0
            };
            g -= match k.min_prompt_tokens {
                Some(256) => 0.0,
                Some(1024) => 1.0,
                _ => 2.0,
            };
            g -= (k.decode_max_batch as f64 - 16.0).abs() / 16.0;
            g -= if k.prefill_max_batch_tokens == 4096 {
                0.0
            } else {
                0.5
            };
            let ttft = if k.routing == RoutingPolicy::LeastLoaded {
                1.0
            } else {
                2.0
            };
            report(g, ttft)
        };
        let start = Knobs {
            split: space().splits[0],
            min_prompt_tokens: Some(0),
            decode_max_batch: 64,
            prefill_max_batch_tokens: 1024,
            routing: RoutingPolicy::RoundRobin,
        };
        let t = tune(&space(), start, &eval, None, 2);
        let k = t.chosen.knobs;
        assert_eq!(k.split, space().splits[1]);
        assert_eq!(k.min_prompt_tokens, Some(256));
        assert_eq!(k.decode_max_batch, 16);
        assert_eq!(k.prefill_max_batch_tokens, 4096);
        assert_eq!(k.routing, RoutingPolicy::LeastLoaded);
        assert_eq!(t.chosen.report.goodput_per_s, 10.0);
        let r = t.runner_up.as_ref().expect("a runner-up");
        assert!(r.report.goodput_per_s <= 10.0 && r.knobs != k);
        assert_eq!(t.start.knobs, start);
        // Each candidate once; far fewer than the 360 of the whole grid.
        assert!(t.evaluations < 40, "{}", t.evaluations);
        // A second round confirmed the first.
        assert!(t.turns.iter().any(|turn| turn.round == 2));
        // Deterministic whatever the threads.
        assert_eq!(t, tune(&space(), start, &eval, None, 1));
        // Screening by the same function finds the same.
        let screened = tune(&space(), start, &eval, Some(&eval), 2);
        assert_eq!(screened.chosen.knobs, k);
    }
}
