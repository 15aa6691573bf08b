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
    /// `stop`, `length`, `error` or `cancelled` (the client went away).
    pub finish_reason: String,
}
