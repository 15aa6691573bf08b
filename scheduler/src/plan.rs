//! The ExecutionPlan: what [`compile`](crate::compile::compile) makes of a policy, a model
//! and a cluster. Stages (phase, op, pool, replicas, residency, cost) and edges (tensor,
//! bytes per token, transport, criticality), serialised as versioned JSON.

use crate::inventory::Transport;
use crate::policy::{Op, RequestFacts, Selector};
use crate::profile::{Residency, TensorKind};
use genie_protocol::costs::{decode_terms, prefill_terms};
use serde::{Deserialize, Serialize};

/// Bumped whenever a field changes meaning or goes away.
pub const PLAN_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionPlan {
    pub version: u32,
    /// The policy (or pattern) it was compiled from.
    pub policy: String,
    pub model: ModelSummary,
    pub stages: Vec<Stage>,
    pub edges: Vec<Edge>,
    /// Things that hold but deserve a look (a scale-out that got fewer GPUs than asked).
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub name: String,
    pub architecture: String,
    pub layers: usize,
    pub params: u64,
    pub weight_bytes: u64,
    pub kv_bytes_per_token: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    ScaleOut,
    ScaleTo,
}

/// One phase placed on a pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// The phase's name.
    pub phase: String,
    pub op: Op,
    pub op_label: String,
    pub selector: Selector,
    pub selector_label: String,
    pub pool: String,
    pub hardware: String,
    pub scaling: Scaling,
    /// Accelerators given to the stage: `replicas` x `gpus_per_replica`.
    pub gpus: u32,
    pub replicas: u32,
    /// Accelerators one replica spans so that its weights fit (tensor parallel degree).
    pub gpus_per_replica: u32,
    /// Pool chosen by an override (config pin) rather than by hardware type.
    pub pinned_pool: bool,
    /// Runtime override: requests of this stage go to this worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_worker: Option<u64>,
    /// Layers `start..end` it computes.
    pub layers: [usize; 2],
    /// Experts `first..end` of every MoE layer it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts: Option<[usize; 2]>,
    /// Tensors it must sit beside.
    pub colocated_with: Vec<String>,
    pub residency: Vec<Resident>,
    pub cost: StageCost,
}

/// A tensor resident on a stage's workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resident {
    pub tensor: String,
    pub residency: Residency,
    /// Fixed size per replica (weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Size per token (KV cache, activations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_token: Option<u64>,
}

/// The cost model's estimate for one replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageCost {
    pub flops_per_token: f64,
    /// Compute-bound time per prompt token (per input item for encoders).
    pub prompt_ms_per_token: f64,
    /// Memory-bound time of one decode step at batch 1 (weights read once); 0 when the
    /// stage does no decode steps.
    pub step_ms: f64,
    pub weight_bytes_per_replica: u64,
    /// Tokens of KV cache one replica holds beside its weights (stages that keep KV).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_capacity_tokens: Option<u64>,
}

/// How often an edge's tensor moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rate {
    /// Once per request, sized by the prompt (a KV handoff, encoder embeddings).
    OncePerRequest,
    /// For the prompt and again on every decode step.
    EveryStep,
}

/// What waits on an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    /// On the path to the first token.
    Ttft,
    /// On the path of every token (inter-token latency).
    EveryToken,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub tensor: TensorSpec,
    pub rate: Rate,
    pub transport: Transport,
    pub gbps: f64,
    pub criticality: Criticality,
    /// Time to move 1,000 tokens' worth at `gbps` (0 for local edges).
    pub ms_per_1k_tokens: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub kind: TensorKind,
    pub bytes_per_token: u64,
    pub residency: Residency,
}

/// The cost curves of a placed stage's worker, its own or a profile's in their place (see
/// [`ExecutionPlan::predict_live`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LiveStage {
    pub prefill: Option<genie_protocol::costs::LiveCurve>,
    pub decode: Option<genie_protocol::costs::LiveCurve>,
    /// Sequences in the worker's batch, this one included.
    pub batch: usize,
}

/// The cost model's prediction for one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Predicted {
    /// Queueing included (`queue_ms`).
    pub ttft_ms: f64,
    /// Time between tokens at batch 1.
    pub itl_ms: f64,
    /// Bytes that cross the network (non-local edges).
    pub transfer_bytes: u64,
    pub transfer_ms: f64,
    /// The part of `ttft_ms` spent waiting for prompt work already queued on the workers
    /// the request was placed on (first come, first served, as the simulator models it).
    #[serde(default)]
    pub queue_ms: f64,
    /// Some stage was predicted from cost curves (its worker's live ones, or the
    /// configured cost profile's), not only from the compiled costs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
}

impl Stage {
    /// Units of prompt work the request gives this stage: prompt tokens, or input items
    /// of its modality for an encoder; 0 for decode-only stages.
    pub fn prompt_units(&self, facts: &RequestFacts) -> f64 {
        match self.op {
            Op::Encode { modality } if modality != crate::profile::Modality::Text => {
                facts.inputs.iter().filter(|m| **m == modality).count() as f64
            }
            op if op.prompt_work() => facts.prompt_tokens as f64,
            _ => 0.0,
        }
    }

    /// [`Stage::prompt_units`] on a request's path `taken`: a decode stage that no
    /// prefill-like stage on the path feeds (the request prefills on the decode worker)
    /// does the prompt work itself.
    pub fn prompt_units_in(&self, taken: &[&Stage], facts: &RequestFacts) -> f64 {
        let fed = taken
            .iter()
            .any(|s| s.op.prompt_work() && !matches!(s.op, Op::Encode { .. }));
        if self.op == Op::Decode && !fed {
            facts.prompt_tokens as f64
        } else {
            self.prompt_units(facts)
        }
    }
}

impl Edge {
    /// Time to move the tensor for `tokens` tokens.
    pub fn transfer_ms(&self, tokens: f64) -> f64 {
        self.ms_per_1k_tokens * tokens / 1000.0
    }

    /// The part of [`Edge::transfer_ms`] that delays the consumer: a KV cache streams
    /// layer by layer while the producer computes, so one layer's share of `layers`.
    pub fn on_path_ms(&self, tokens: f64, layers: usize) -> f64 {
        match self.tensor.kind {
            TensorKind::KvCache => self.transfer_ms(tokens) / layers.max(1) as f64,
            _ => self.transfer_ms(tokens),
        }
    }
}

impl ExecutionPlan {
    pub fn stage(&self, phase: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.phase == phase)
    }

    /// The stage a worker role serves: the prefill stage that ships its KV (prefill
    /// workers), or the decode stage (decode workers).
    pub fn stage_of(&self, role: crate::placement::Role) -> Option<&Stage> {
        use crate::placement::Role;
        self.stages.iter().find(|s| match role {
            Role::Prefill => s.op == Op::Prefill && s.colocated_with.is_empty(),
            Role::Decode => s.op == Op::Decode,
        })
    }

    /// Stages a request takes, in plan order.
    pub fn active_stages(&self, facts: &RequestFacts) -> Vec<&Stage> {
        self.stages
            .iter()
            .filter(|s| s.selector.matches(facts))
            .collect()
    }

    /// The prefill stage a request takes and whether it runs on the decode worker (its
    /// KV cache stays put) rather than shipping the KV.
    pub fn prefill_for(&self, facts: &RequestFacts) -> Option<(&Stage, bool)> {
        self.active_stages(facts)
            .into_iter()
            .find(|s| s.op == Op::Prefill)
            .map(|s| (s, s.colocated_with.iter().any(|t| t == "kv_cache")))
    }

    /// The stages a placed request takes: the plan's own choice, except that the prefill
    /// follows the placement. A client hint can send a prompt the plan would prefill on the
    /// decode worker to a prefill worker (`disaggregated`), or keep one the plan would ship
    /// on the decode worker: then the KV-shipping prefill stage gives way to the plan's
    /// colocated one (`prefill_local`), or to none, and the decode stage prefills.
    pub fn taken_stages(&self, facts: &RequestFacts, disaggregated: bool) -> Vec<&Stage> {
        let active = self.active_stages(facts);
        let planned = self.prefill_for(facts).is_some_and(|(_, local)| !local);
        if planned == disaggregated {
            return active;
        }
        let prefill = if disaggregated {
            self.stage_of(crate::placement::Role::Prefill)
        } else {
            self.stages
                .iter()
                .find(|s| s.op == Op::Prefill && s.colocated_with.iter().any(|t| t == "kv_cache"))
        };
        self.stages
            .iter()
            .filter(|s| {
                if s.op == Op::Prefill {
                    prefill.is_some_and(|p| std::ptr::eq(p, *s))
                } else {
                    active.iter().any(|a| std::ptr::eq(*a, *s))
                }
            })
            .collect()
    }

    /// The prediction for the stages the plan itself picks, on idle workers.
    pub fn predict(&self, facts: &RequestFacts) -> Predicted {
        self.predict_taken(facts, &self.active_stages(facts), &|_| 0)
    }

    /// TTFT along the slowest path through `taken` (from [`ExecutionPlan::taken_stages`]),
    /// ITL as the sum of the decode-step stages and the per-token edges. A stage starts
    /// its prompt work once its inputs arrive and its worker has worked off the
    /// `queued(stage)` prompt units already waiting there. Transfers of a KV cache are
    /// streamed layer by layer, so only one layer's share adds to TTFT. A decode stage
    /// that no prefill stage feeds prefills the prompt itself.
    pub fn predict_taken(
        &self,
        facts: &RequestFacts,
        taken: &[&Stage],
        queued: &dyn Fn(&Stage) -> usize,
    ) -> Predicted {
        self.predict_live(facts, taken, queued, &|_| None)
    }

    /// [`Self::predict_taken`] with the live cost curves of the workers the stages were
    /// placed on, where `live` has them: a stage's prompt work takes its worker's prefill
    /// curve (`[1, n, n²]` for the `n` prompt tokens; the queue ahead at its per-token
    /// cost), its step work the decode curve at the worker's batch with this sequence in
    /// it (every sequence assumed at this one's mid-answer context). Stages without a
    /// curve keep the compiled costs.
    pub fn predict_live(
        &self,
        facts: &RequestFacts,
        taken: &[&Stage],
        queued: &dyn Fn(&Stage) -> usize,
        live: &dyn Fn(&Stage) -> Option<LiveStage>,
    ) -> Predicted {
        let is_taken = |name: &str| taken.iter().any(|s| s.phase == name);
        let tokens = facts.prompt_tokens as f64;
        let mut done: Vec<(String, f64)> = Vec::new();
        let mut out = Predicted::default();
        // Stages are in dependency order (compile sorts them).
        for s in taken {
            let mut ready: f64 = 0.0;
            for e in self
                .edges
                .iter()
                .filter(|e| e.to == s.phase && is_taken(&e.from))
            {
                let sent = done.iter().find(|(n, _)| *n == e.from).map_or(0.0, |d| d.1);
                if e.transport != Transport::Local {
                    out.transfer_bytes += (e.tensor.bytes_per_token as f64 * tokens) as u64;
                    out.transfer_ms += e.transfer_ms(tokens);
                }
                ready = ready.max(sent + e.on_path_ms(tokens, self.model.layers));
            }
            let units = s.prompt_units_in(taken, facts);
            let mut finish = ready;
            let live = live(s).unwrap_or_default();
            out.live |=
                live.prefill.is_some() && units > 0.0 || live.decode.is_some() && s.op.step_work();
            if units > 0.0 {
                let (per_unit, work) = match live.prefill {
                    Some(c) => (c.coef[1], c.ms(prefill_terms([units]))),
                    None => (
                        s.cost.prompt_ms_per_token,
                        units * s.cost.prompt_ms_per_token,
                    ),
                };
                let free_at = queued(s) as f64 * per_unit;
                out.queue_ms += (free_at - ready).max(0.0);
                finish = ready.max(free_at) + work;
            }
            out.ttft_ms = out.ttft_ms.max(finish);
            done.push((s.phase.clone(), finish));
            if s.op.step_work() {
                out.itl_ms += match live.decode {
                    Some(c) => {
                        let ctx = tokens + facts.max_tokens as f64 / 2.0;
                        c.ms(decode_terms(std::iter::repeat_n(ctx, live.batch.max(1))))
                    }
                    None => s.cost.step_ms,
                };
            }
        }
        for e in &self.edges {
            if e.rate == Rate::EveryStep && is_taken(&e.from) && is_taken(&e.to) {
                out.itl_ms += e.ms_per_1k_tokens / 1000.0;
            }
        }
        out
    }
}
