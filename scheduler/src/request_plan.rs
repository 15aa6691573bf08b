//! One request's plan: the stages it takes, where each of its sequences ran and why, what
//! the cost model predicted, and (once done) what was measured. Served to clients at
//! `GET /v1/plans/requests/{id}`; the predicted/measured pairs are what profile-guided
//! tuning of the cost model reads.

use crate::placement::{Placement, PlacementHint};
use crate::plan::Predicted;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestPlan {
    /// The id clients see (the response's `id` and its `x-genie-request-id` header).
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub policy: String,
    pub plan_version: u32,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    /// The plan's stages this request takes.
    pub stages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<PlacementHint>,
    pub predicted: Predicted,
    pub sequences: Vec<SeqPlan>,
}

/// One sequence (one choice of one prompt).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeqPlan {
    pub index: u32,
    pub placement: Placement,
    /// The KV transfer's id when the sequence was disaggregated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<u64>,
    /// Why it was placed so: the stage and selector that matched, a hint, a pin.
    pub reason: String,
    /// Filled in when the sequence ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<Measured>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// From arrival to placement (queueing for KV room included).
    pub placed_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Mean time between tokens after the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itl_ms: Option<f64>,
    pub e2e_ms: f64,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV a worker took from its prefix cache.
    #[serde(default)]
    pub cached_tokens: usize,
    /// `stop`, `length`, `error` or `cancelled` (the client went away).
    pub finish_reason: String,
}

/// How the cost model's predictions compare with what was measured over recent requests:
/// the ratio measured / predicted (1.0 = exact), the input of profile-guided tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Calibration {
    /// Sequences with both a prediction and a measurement.
    pub sequences: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ratio: Option<RatioSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itl_ratio: Option<RatioSummary>,
    /// The same over the sequences predicted from cost curves (the workers' live ones or
    /// a cost profile's) rather than the compiled costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Box<Calibration>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RatioSummary {
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
}

impl RatioSummary {
    fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some(RatioSummary {
            p10: at(0.1),
            p50: at(0.5),
            p90: at(0.9),
        })
    }
}

/// Measured / predicted TTFT and inter-token latency over `plans` (finished sequences
/// only; cancelled and failed ones say nothing about the cost model).
pub fn calibrate<'a>(plans: impl IntoIterator<Item = &'a RequestPlan>) -> Calibration {
    let plans: Vec<&RequestPlan> = plans.into_iter().collect();
    let mut all = ratios(plans.iter().copied());
    let live = ratios(plans.iter().copied().filter(|p| p.predicted.live));
    if live.sequences > 0 {
        all.live = Some(Box::new(live));
    }
    all
}

fn ratios<'a>(plans: impl Iterator<Item = &'a RequestPlan>) -> Calibration {
    let (mut ttft, mut itl, mut n) = (Vec::new(), Vec::new(), 0);
    for p in plans {
        for s in &p.sequences {
            let Some(m) = &s.measured else { continue };
            if !matches!(m.finish_reason.as_str(), "stop" | "length") {
                continue;
            }
            n += 1;
            if let Some(t) = m.ttft_ms.filter(|_| p.predicted.ttft_ms > 0.0) {
                ttft.push(t / p.predicted.ttft_ms);
            }
            if let Some(t) = m.itl_ms.filter(|_| p.predicted.itl_ms > 0.0) {
                itl.push(t / p.predicted.itl_ms);
            }
        }
    }
    Calibration {
        sequences: n,
        ttft_ratio: RatioSummary::of(ttft),
        itl_ratio: RatioSummary::of(itl),
        live: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genie_protocol::WorkerId;

    fn plan(pred_ttft: f64, ttft: Option<f64>, finish: &str) -> RequestPlan {
        RequestPlan {
            id: "x".into(),
            created: 0,
            policy: "p".into(),
            plan_version: 1,
            prompt_tokens: 10,
            max_tokens: 4,
            stages: vec![],
            hint: None,
            predicted: Predicted {
                ttft_ms: pred_ttft,
                itl_ms: 10.0,
                transfer_bytes: 0,
                transfer_ms: 0.0,
                queue_ms: 0.0,
                live: false,
            },
            sequences: vec![SeqPlan {
                index: 0,
                placement: Placement::Colocated {
                    decode: WorkerId(1),
                },
                transfer_id: None,
                reason: String::new(),
                measured: ttft.map(|t| Measured {
                    placed_ms: 0.0,
                    ttft_ms: Some(t),
                    itl_ms: Some(20.0),
                    e2e_ms: t + 60.0,
                    completion_tokens: 4,
                    cached_tokens: 0,
                    finish_reason: finish.into(),
                }),
            }],
        }
    }

    #[test]
    fn ratios_cover_finished_sequences_only() {
        let plans = [
            plan(100.0, Some(50.0), "stop"),
            plan(100.0, Some(100.0), "length"),
            plan(100.0, Some(300.0), "length"),
            plan(100.0, Some(9999.0), "cancelled"),
            plan(100.0, None, "stop"),
        ];
        let c = calibrate(&plans);
        assert_eq!(c.sequences, 3);
        let t = c.ttft_ratio.unwrap();
        assert_eq!((t.p10, t.p50, t.p90), (0.5, 1.0, 3.0));
        assert_eq!(c.itl_ratio.unwrap().p50, 2.0);
        assert!(c.live.is_none(), "no prediction used live curves");
        assert_eq!(calibrate(&[]), Calibration::default());
    }

    #[test]
    fn the_live_summary_covers_the_predictions_made_from_live_curves() {
        let mut plans = vec![
            plan(100.0, Some(300.0), "stop"),
            plan(100.0, Some(90.0), "stop"),
            plan(100.0, Some(110.0), "length"),
        ];
        plans[1].predicted.live = true;
        plans[2].predicted.live = true;
        let c = calibrate(&plans);
        assert_eq!(c.sequences, 3);
        let live = c.live.unwrap();
        assert_eq!(live.sequences, 2);
        let t = live.ttft_ratio.unwrap();
        assert_eq!((t.p10, t.p90), (0.9, 1.1));
        assert!(live.live.is_none());
    }
}
