//! `compile(policy, model profile, cluster inventory) → ExecutionPlan`: checks the policy
//! against the model and the cluster, places each phase on a pool, sizes replicas, sorts
//! the stages in dependency order, derives the edges and estimates costs. Every refusal is
//! a [`PlanError`] naming the field and the reason.

use crate::inventory::{Hardware, Inventory, Transport};
use crate::plan::*;
use crate::policy::{balanced, Op, Phase, Policy, ResourcePolicy, Selector, REQUEST_INPUTS};
use crate::profile::{Modality, ModelProfile, Residency, TensorKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An override from config: pin a phase to a pool (at compile time) or to one worker (at
/// routing time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<u64>,
}

/// Why a plan cannot be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanErrorKind {
    Empty,
    Duplicate,
    InvalidValue,
    UnknownTensor,
    UnknownPhase,
    UnknownPool,
    UnknownHardware,
    Cycle,
    ModelMismatch,
    Capacity,
    Conflict,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct PlanError {
    pub kind: PlanErrorKind,
    /// Where, as a path into the policy or config (`phases[1].data_dependencies[0]`).
    pub field: String,
    pub reason: String,
}

fn err<T>(
    kind: PlanErrorKind,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> Result<T, PlanError> {
    Err(PlanError {
        kind,
        field: field.into(),
        reason: reason.into(),
    })
}

/// Weights one replica may fill: the rest of the memory is for KV and activations.
const WEIGHT_MEMORY_SHARE: f64 = 0.9;

pub fn compile(
    policy: &Policy,
    model: &ModelProfile,
    inv: &Inventory,
    pins: &[Pin],
) -> Result<ExecutionPlan, PlanError> {
    use PlanErrorKind::*;
    check_inventory(inv)?;
    if policy.phases.is_empty() {
        return err(Empty, "phases", "a policy needs at least one phase");
    }
    let mut producers: BTreeMap<&str, (usize, TensorKind)> = BTreeMap::new();
    for (i, ph) in policy.phases.iter().enumerate() {
        let f = |s: &str| format!("phases[{i}].{s}");
        if ph.name.trim().is_empty() {
            return err(InvalidValue, f("name"), "must not be empty");
        }
        if policy.phases[..i].iter().any(|p| p.name == ph.name) {
            return err(
                Duplicate,
                f("name"),
                format!("two phases are named `{}`", ph.name),
            );
        }
        if ph.resources.gpus() == 0 {
            return err(InvalidValue, f("resources.gpus"), "must be at least 1");
        }
        if let Selector::PromptTokens {
            min: Some(a),
            max: Some(b),
        } = ph.selector
        {
            if a >= b {
                return err(
                    InvalidValue,
                    f("selector.prompt_tokens"),
                    format!("min {a} must be below max {b}: no prompt would match"),
                );
            }
        }
        check_op(ph.op, model, &f("op"))?;
        for (j, o) in ph.produces.iter().enumerate() {
            if let Some(&(other, kind)) = producers.get(o.name.as_str()) {
                if kind != o.kind {
                    return err(
                        Conflict,
                        f(&format!("produces[{j}]")),
                        format!(
                            "`{}` is a {:?} here but a {:?} in phase `{}`",
                            o.name, o.kind, kind, policy.phases[other].name
                        ),
                    );
                }
            } else {
                producers.insert(&o.name, (i, o.kind));
            }
        }
    }
    let produced = |t: &str| producers.contains_key(t);
    let known: Vec<&str> = producers.keys().copied().collect();
    for (i, ph) in policy.phases.iter().enumerate() {
        for (j, c) in ph.consumes.iter().enumerate() {
            if !produced(c) && !REQUEST_INPUTS.contains(&c.as_str()) {
                return err(UnknownTensor, format!("phases[{i}].consumes[{j}]"), format!("no phase produces `{c}` and it is not a request input (produced: {}; inputs: {})", list(&known), REQUEST_INPUTS.join(", ")));
            }
        }
        for (j, t) in ph.colocated_tensors().enumerate() {
            if !produced(t) {
                return err(
                    UnknownTensor,
                    format!("phases[{i}].data_dependencies[{j}]"),
                    format!(
                        "ColocateWith(\"{t}\"): no phase produces `{t}` (produced: {})",
                        list(&known)
                    ),
                );
            }
        }
    }
    let order = topo_order(policy)?;
    for (k, p) in pins.iter().enumerate() {
        if policy.get(&p.phase).is_none() {
            return err(
                UnknownPhase,
                format!("plan.pins[{k}].phase"),
                format!(
                    "no phase is named `{}` (phases: {})",
                    p.phase,
                    list(
                        &policy
                            .phases
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                    )
                ),
            );
        }
        if p.pool.is_none() && p.worker.is_none() {
            return err(
                InvalidValue,
                format!("plan.pins[{k}]"),
                "a pin names a pool or a worker",
            );
        }
    }
    let pools = assign_pools(policy, inv, pins)?;
    let mut warnings = Vec::new();
    let mut used: BTreeMap<String, u32> = BTreeMap::new();
    let mut group_gpus: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut stages = Vec::new();
    for &i in &order {
        let ph = &policy.phases[i];
        let pool = inv.pool(&pools[i]).expect("assigned pools exist");
        let hw = inv
            .hardware(&pool.hardware)
            .expect("checked by check_inventory");
        let span = ph.op.layer_span(model.layers);
        let experts = match ph.op {
            Op::ExpertShard { shard, shards } => {
                let (a, b) = balanced(model.experts.map_or(0, |e| e.count), shard, shards);
                Some([a, b])
            }
            _ => None,
        };
        let weights = stage_weights(ph.op, model, span, experts);
        let per_gpu = (hw.memory_bytes() as f64 * WEIGHT_MEMORY_SHARE) as u64;
        let gpus_per_replica = weights.div_ceil(per_gpu.max(1)).max(1) as u32;
        let f = format!("phases[{i}].resources");
        // Phases colocated through a tensor share their workers: count them once.
        let group = ph.colocated_tensors().next().map(str::to_owned);
        let (gpus, replicas) = if let Some(&(g, r)) = group.as_ref().and_then(|g| group_gpus.get(g))
        {
            (g, r)
        } else {
            let left = pool.count - used.get(&pool.name).copied().unwrap_or(0);
            let want = ph.resources.gpus();
            let gpus = match &ph.resources {
                ResourcePolicy::ScaleTo { .. } if want > left => {
                    return err(
                        Capacity,
                        f,
                        format!(
                            "scale_to {want} {} but pool `{}` has {left} of its {} left",
                            pool.hardware, pool.name, pool.count
                        ),
                    );
                }
                ResourcePolicy::ScaleOut { .. } if left == 0 => {
                    return err(
                        Capacity,
                        f,
                        format!(
                            "pool `{}` has no {} left for phase `{}`",
                            pool.name, pool.hardware, ph.name
                        ),
                    );
                }
                ResourcePolicy::ScaleOut { .. } if want > left => {
                    warnings.push(format!(
                        "phase `{}` asked to scale out to {want} {} and got {left} (pool `{}`)",
                        ph.name, pool.hardware, pool.name
                    ));
                    left
                }
                _ => want,
            };
            if gpus < gpus_per_replica {
                return err(Capacity, f, format!("phase `{}` needs {} GiB of weights per replica, {gpus_per_replica} {} at least, and has {gpus}", ph.name, weights >> 30, pool.hardware));
            }
            *used.entry(pool.name.clone()).or_default() += gpus;
            let replicas = gpus / gpus_per_replica;
            if let Some(g) = &group {
                group_gpus.insert(g.clone(), (gpus, replicas));
            }
            (gpus, replicas)
        };
        let kv_per_token = ph
            .produces
            .iter()
            .chain(ph.colocated_tensors().filter_map(|t| {
                policy
                    .phases
                    .iter()
                    .flat_map(|p| &p.produces)
                    .find(|o| o.name == t)
            }))
            .find(|o| o.kind == TensorKind::KvCache)
            .map(|_| model.kv_bytes_per_token(span.1 - span.0));
        let mut residency = vec![Resident {
            tensor: "weights".into(),
            residency: Residency::PersistentWeights,
            bytes: Some(weights),
            bytes_per_token: None,
        }];
        for t in ph.colocated_tensors() {
            let kind = producers[t].1;
            residency.push(Resident {
                tensor: t.into(),
                residency: kind.residency(),
                bytes: None,
                bytes_per_token: Some(tensor_bytes(model, kind, span)),
            });
        }
        let mem = hw.memory_bytes() * gpus_per_replica as u64;
        let kv_capacity_tokens = kv_per_token
            .filter(|_| ph.colocated_tensors().next().is_some())
            .map(|b| mem.saturating_sub(weights) * 9 / 10 / b.max(1));
        let cost = stage_cost(ph.op, model, &hw, span, weights, gpus_per_replica);
        stages.push(Stage {
            phase: ph.name.clone(),
            op: ph.op,
            op_label: ph.op.label(),
            selector: ph.selector.clone(),
            selector_label: ph.selector.label(),
            pool: pool.name.clone(),
            hardware: pool.hardware.clone(),
            scaling: match ph.resources {
                ResourcePolicy::ScaleOut { .. } => Scaling::ScaleOut,
                ResourcePolicy::ScaleTo { .. } => Scaling::ScaleTo,
            },
            gpus,
            replicas,
            gpus_per_replica,
            pinned_pool: ph.pool.is_some()
                || pins.iter().any(|p| p.phase == ph.name && p.pool.is_some()),
            pinned_worker: pins
                .iter()
                .rev()
                .find(|p| p.phase == ph.name)
                .and_then(|p| p.worker),
            layers: [span.0, span.1],
            experts,
            colocated_with: ph.colocated_tensors().map(str::to_owned).collect(),
            residency,
            cost: StageCost {
                kv_capacity_tokens,
                ..cost
            },
        });
    }
    let edges = edges(policy, model, inv, &stages);
    Ok(ExecutionPlan {
        version: PLAN_VERSION,
        policy: policy.name.clone(),
        model: ModelSummary {
            name: model.name.clone(),
            architecture: model.architecture.clone(),
            layers: model.layers,
            params: model.params,
            weight_bytes: model.weight_bytes,
            kv_bytes_per_token: model.kv_bytes_per_token(model.layers),
        },
        stages,
        edges,
        warnings,
    })
}

fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn check_inventory(inv: &Inventory) -> Result<(), PlanError> {
    use PlanErrorKind::*;
    if inv.pools.is_empty() {
        return err(Empty, "plan.cluster.pools", "the cluster has no pools");
    }
    for (i, p) in inv.pools.iter().enumerate() {
        if inv.pools[..i].iter().any(|q| q.name == p.name) {
            return err(
                Duplicate,
                format!("plan.cluster.pools[{i}].name"),
                format!("two pools are named `{}`", p.name),
            );
        }
        if p.count == 0 {
            return err(
                InvalidValue,
                format!("plan.cluster.pools[{i}].count"),
                "must be at least 1",
            );
        }
        if inv.hardware(&p.hardware).is_none() {
            return err(UnknownHardware, format!("plan.cluster.pools[{i}].hardware"), format!("`{}` is neither a preset (H100, H200, A100, L40S, cpu) nor listed under plan.cluster.hardware", p.hardware));
        }
    }
    for (i, h) in inv.hardware.iter().enumerate() {
        if !(h.tflops > 0.0 && h.memory_gib > 0.0 && h.memory_gbps > 0.0) {
            return err(
                InvalidValue,
                format!("plan.cluster.hardware[{i}]"),
                "tflops, memory_gib and memory_gbps must be positive",
            );
        }
    }
    for (i, l) in inv.links.iter().enumerate() {
        for (end, name) in [("from", &l.from), ("to", &l.to)] {
            if inv.pool(name).is_none() {
                return err(
                    UnknownPool,
                    format!("plan.cluster.links[{i}].{end}"),
                    format!("no pool is named `{name}`"),
                );
            }
        }
        if l.gbps.is_some_and(|g| g.is_nan() || g <= 0.0) {
            return err(
                InvalidValue,
                format!("plan.cluster.links[{i}].gbps"),
                "must be positive",
            );
        }
    }
    Ok(())
}

fn check_op(op: Op, model: &ModelProfile, field: &str) -> Result<(), PlanError> {
    use PlanErrorKind::*;
    match op {
        Op::PipelineStage { stage, stages } => {
            if stages == 0 || stage >= stages {
                return err(
                    InvalidValue,
                    field,
                    format!("stage {stage} of {stages} does not exist"),
                );
            }
            if stages > model.layers {
                return err(ModelMismatch, field, format!("{stages} pipeline stages but `{}` has {} layers: each stage needs at least one", model.name, model.layers));
            }
        }
        Op::ExpertShard { shard, shards } => {
            let Some(e) = model.experts else {
                return err(
                    ModelMismatch,
                    field,
                    format!(
                        "expert shards need a mixture-of-experts model; `{}` is dense",
                        model.name
                    ),
                );
            };
            if shards == 0 || shard >= shards {
                return err(
                    InvalidValue,
                    field,
                    format!("shard {shard} of {shards} does not exist"),
                );
            }
            if shards > e.count {
                return err(
                    ModelMismatch,
                    field,
                    format!(
                        "{shards} expert shards but `{}` has {} experts per layer",
                        model.name, e.count
                    ),
                );
            }
        }
        Op::Encode { modality }
            if modality != Modality::Text && model.encoder(modality).is_none() =>
        {
            return err(
                ModelMismatch,
                field,
                format!("`{}` has no {} encoder", model.name, modality.as_str()),
            );
        }
        Op::Attention if model.experts.is_none() => {
            return err(
                ModelMismatch,
                field,
                format!(
                    "an attention/router phase needs a mixture-of-experts model; `{}` is dense",
                    model.name
                ),
            );
        }
        _ => {}
    }
    Ok(())
}

/// Phases in dependency order (producers before consumers), or the cycle.
fn topo_order(policy: &Policy) -> Result<Vec<usize>, PlanError> {
    let n = policy.phases.len();
    let feeds = |a: &Phase, b: &Phase| {
        a.name != b.name && a.produces.iter().any(|o| b.consumes.contains(&o.name))
    };
    let mut indeg: Vec<usize> = (0..n)
        .map(|j| {
            (0..n)
                .filter(|&i| feeds(&policy.phases[i], &policy.phases[j]))
                .count()
        })
        .collect();
    let mut order = Vec::with_capacity(n);
    let mut ready: Vec<usize> = (0..n).filter(|&j| indeg[j] == 0).collect();
    ready.reverse();
    while let Some(i) = ready.pop() {
        order.push(i);
        for (j, d) in indeg.iter_mut().enumerate() {
            if feeds(&policy.phases[i], &policy.phases[j]) {
                *d -= 1;
                if *d == 0 {
                    ready.push(j);
                }
            }
        }
        ready.sort_unstable_by(|a, b| b.cmp(a));
    }
    if order.len() < n {
        let stuck: Vec<&str> = (0..n)
            .filter(|i| !order.contains(i))
            .map(|i| policy.phases[i].name.as_str())
            .collect();
        return err(
            PlanErrorKind::Cycle,
            "phases",
            format!(
                "phases {} consume each other's outputs in a cycle",
                stuck.join(", ")
            ),
        );
    }
    Ok(order)
}

/// The pool of every phase: pins first, then phases colocated through a tensor share one
/// pool, then the hardware type picks (a pool named after the phase wins a tie).
fn assign_pools(policy: &Policy, inv: &Inventory, pins: &[Pin]) -> Result<Vec<String>, PlanError> {
    use PlanErrorKind::*;
    let mut out: Vec<Option<String>> = vec![None; policy.phases.len()];
    for (i, ph) in policy.phases.iter().enumerate() {
        // A config pin wins over the phase's own `pool`; errors name whichever set it.
        let pinned = pins
            .iter()
            .enumerate()
            .rev()
            .find_map(|(k, p)| {
                let pool = p.pool.clone().filter(|_| p.phase == ph.name)?;
                Some((pool, format!("plan.pins[{k}].pool")))
            })
            .or_else(|| ph.pool.clone().map(|p| (p, format!("phases[{i}].pool"))));
        if let Some((name, field)) = pinned {
            let Some(pool) = inv.pool(&name) else {
                return err(UnknownPool, field, format!("phase `{}` is pinned to pool `{name}`, which the cluster does not have (pools: {})", ph.name, list(&inv.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>())));
            };
            if pool.hardware != ph.resources.hardware() {
                return err(
                    Conflict,
                    field,
                    format!(
                        "phase `{}` asks for {} but is pinned to pool `{name}` of {}",
                        ph.name,
                        ph.resources.hardware(),
                        pool.hardware
                    ),
                );
            }
            out[i] = Some(name);
        }
    }
    // Colocated phases take the pool of any pinned member.
    for i in 0..policy.phases.len() {
        for t in policy.phases[i].colocated_tensors() {
            let members: Vec<usize> = (0..policy.phases.len())
                .filter(|&j| policy.phases[j].colocated_tensors().any(|u| u == t))
                .collect();
            let pinned: Vec<&String> = members.iter().filter_map(|&j| out[j].as_ref()).collect();
            if let Some(first) = pinned.first().map(|s| (*s).clone()) {
                if let Some(other) = pinned.iter().find(|p| ***p != first) {
                    return err(Conflict, format!("phases[{i}].data_dependencies"), format!("phases colocated with `{t}` are pinned to different pools (`{first}`, `{other}`)"));
                }
                for &j in &members {
                    out[j] = Some(first.clone());
                }
            }
            let hw: Vec<&str> = members
                .iter()
                .map(|&j| policy.phases[j].resources.hardware())
                .collect();
            if hw.iter().any(|h| *h != hw[0]) {
                return err(
                    Conflict,
                    format!("phases[{i}].data_dependencies"),
                    format!(
                        "phases colocated with `{t}` ask for different hardware ({})",
                        hw.join(", ")
                    ),
                );
            }
        }
    }
    let mut taken: BTreeMap<String, u32> = BTreeMap::new();
    for (i, ph) in policy.phases.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        let hwname = ph.resources.hardware();
        let candidates: Vec<&crate::inventory::Pool> =
            inv.pools.iter().filter(|p| p.hardware == hwname).collect();
        if candidates.is_empty() {
            let have: Vec<String> = inv
                .pools
                .iter()
                .map(|p| format!("{} ({} x{})", p.name, p.hardware, p.count))
                .collect();
            return err(
                UnknownHardware,
                format!("phases[{i}].resources.hardware"),
                format!("no pool has `{hwname}` (pools: {})", have.join(", ")),
            );
        }
        // The phase and every phase colocated with it: a pool named after any of them wins.
        let group: Vec<&Phase> = policy
            .phases
            .iter()
            .filter(|o| {
                o.name == ph.name
                    || o.colocated_tensors()
                        .any(|u| ph.colocated_tensors().any(|t| t == u))
            })
            .collect();
        let by_name = candidates
            .iter()
            .find(|p| group.iter().any(|g| g.name == p.name));
        let pool = by_name.copied().unwrap_or_else(|| {
            *candidates
                .iter()
                .max_by_key(|p| {
                    p.count
                        .saturating_sub(taken.get(&p.name).copied().unwrap_or(0))
                })
                .expect("not empty")
        });
        *taken.entry(pool.name.clone()).or_default() += ph.resources.gpus();
        out[i] = Some(pool.name.clone());
        for (j, other) in policy.phases.iter().enumerate() {
            if out[j].is_none() && group.iter().any(|g| g.name == other.name) {
                out[j] = Some(pool.name.clone());
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|p| p.expect("every phase has a pool"))
        .collect())
}

fn stage_weights(
    op: Op,
    m: &ModelProfile,
    span: (usize, usize),
    experts: Option<[usize; 2]>,
) -> u64 {
    let dense = 1.0 - m.expert_fraction();
    match op {
        Op::Encode { modality } => m
            .encoder(modality)
            .map_or((m.vocab * m.hidden * m.act_elem_bytes / 2) as u64, |e| {
                e.weight_bytes
            }),
        Op::Attention => (m.weight_bytes as f64 * dense) as u64,
        Op::ExpertShard { .. } => {
            let [a, b] = experts.unwrap_or([0, 0]);
            let count = m.experts.map_or(1, |e| e.count.max(1));
            (m.weight_bytes as f64 * m.expert_fraction() * (b - a) as f64 / count as f64) as u64
        }
        _ => m.weight_bytes_for(span.1 - span.0),
    }
}

fn tensor_bytes(m: &ModelProfile, kind: TensorKind, span: (usize, usize)) -> u64 {
    let layers = if kind == TensorKind::KvCache && span.1 > span.0 {
        span.1 - span.0
    } else {
        m.layers
    };
    m.bytes_per_token(kind, layers)
}

fn stage_cost(
    op: Op,
    m: &ModelProfile,
    hw: &Hardware,
    span: (usize, usize),
    weights: u64,
    tp: u32,
) -> StageCost {
    let flops = match op {
        Op::Encode { modality } => m
            .encoder(modality)
            .map_or(0.0, |e| 2.0 * e.params as f64 * e.tokens_per_item as f64),
        Op::ExpertShard { shards, .. } => {
            let e = m.experts.map_or(0.0, |e| {
                e.expert_params as f64 * e.active as f64 / e.count.max(1) as f64
            });
            2.0 * e / shards.max(1) as f64
        }
        Op::Attention => 2.0 * (m.params - m.experts.map_or(0, |e| e.expert_params)) as f64,
        _ => m.flops_per_token(span.1 - span.0),
    };
    let tp = tp.max(1) as f64;
    StageCost {
        flops_per_token: flops,
        prompt_ms_per_token: flops / (hw.tflops * 1e12 * tp) * 1e3,
        step_ms: if op.step_work() {
            weights as f64 / (hw.memory_gbps * 1e9 * tp) * 1e3
        } else {
            0.0
        },
        weight_bytes_per_replica: weights,
        kv_capacity_tokens: None,
    }
}

fn edges(policy: &Policy, m: &ModelProfile, inv: &Inventory, stages: &[Stage]) -> Vec<Edge> {
    let mut out = Vec::new();
    for to in stages {
        let consumer = policy.get(&to.phase).expect("stage of a phase");
        for name in &consumer.consumes {
            for from in stages {
                let producer = policy.get(&from.phase).expect("stage of a phase");
                let Some(o) = producer.produces.iter().find(|o| &o.name == name) else {
                    continue;
                };
                if from.phase == to.phase {
                    continue;
                }
                let both_colocated =
                    from.colocated_with.contains(name) && to.colocated_with.contains(name);
                let (transport, gbps) = if both_colocated && from.pool == to.pool {
                    (Transport::Local, f64::INFINITY)
                } else {
                    inv.link(&from.pool, &to.pool)
                };
                let span = (from.layers[0], from.layers[1]);
                let bytes = tensor_bytes(m, o.kind, span);
                let ms_per_1k = if transport == Transport::Local {
                    0.0
                } else {
                    bytes as f64 * 1000.0 * 8.0 / (gbps * 1e9) * 1e3
                };
                let every_step =
                    matches!(o.kind, TensorKind::Hidden | TensorKind::ExpertActivations);
                out.push(Edge {
                    from: from.phase.clone(),
                    to: to.phase.clone(),
                    tensor: TensorSpec {
                        name: name.clone(),
                        kind: o.kind,
                        bytes_per_token: bytes,
                        residency: o.kind.residency(),
                    },
                    rate: if every_step {
                        Rate::EveryStep
                    } else {
                        Rate::OncePerRequest
                    },
                    transport,
                    gbps: if gbps.is_finite() { gbps } else { 0.0 },
                    criticality: if every_step {
                        Criticality::EveryToken
                    } else {
                        Criticality::Ttft
                    },
                    ms_per_1k_tokens: ms_per_1k,
                });
            }
        }
    }
    out
}
