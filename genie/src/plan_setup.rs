//! How a config becomes an ExecutionPlan: the policy (a pattern, phases written out, or
//! derived from `[scheduler]`), the model profile (a preset, dimensions, or the served
//! GGUF's metadata) and the cluster (pools written out, or derived from
//! `[prefill]`/`[decode]`), compiled by the scheduler.

use crate::config::{Mode, ProfileSpec, ServeConfig};
use genie_engine::gguf::ModelConfig;
use genie_engine::kv_cache::KvShape;
use genie_engine::model_text::ModelText;
use genie_scheduler::inventory::{Inventory, Transport};
use genie_scheduler::patterns::llm;
use genie_scheduler::{compile, ExecutionPlan, ModelProfile, PlanError, PlanErrorKind};
use genie_scheduler::{Op, Policy, ResourcePolicy};

/// The plan's model profile from the served GGUF's metadata (its configuration, the
/// loaded weights' bytes, whether it has its own output head): no weights needed.
pub fn profile_of(c: &ModelConfig, weights_bytes: usize, has_output: bool) -> ModelProfile {
    let (h, kv, ffn) = (c.hidden as u64, c.kv_dim() as u64, c.ffn as u64);
    let per_layer = h * (h + 2 * kv) + h * h + 3 * h * ffn + 2 * h;
    let embed = c.vocab_size as u64 * h;
    let head = if has_output { embed } else { 0 };
    ModelProfile {
        name: c.name.clone(),
        architecture: c.architecture.clone(),
        layers: c.n_layers,
        hidden: c.hidden,
        heads: c.n_heads,
        kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        vocab: c.vocab_size,
        context: c.context_length,
        params: embed + c.n_layers as u64 * per_layer + h + head,
        weight_bytes: weights_bytes as u64,
        kv_elem_bytes: KvShape::of(c).bytes_per_token() / (2 * c.n_layers * c.kv_dim()),
        act_elem_bytes: 4,
        experts: None,
        encoders: Vec::new(),
    }
}

fn invalid(field: &str, reason: String) -> PlanError {
    PlanError {
        kind: PlanErrorKind::InvalidValue,
        field: field.into(),
        reason,
    }
}

impl ServeConfig {
    /// The policy this config asks for.
    pub fn plan_policy(&self) -> Policy {
        if let Some(p) = &self.plan.policy {
            return p.policy();
        }
        let decode = ResourcePolicy::scale_to(self.decode.workers as u32, "cpu");
        match self.scheduler.mode {
            Mode::Colocated => llm::colocated(decode),
            Mode::Disaggregated => llm::prefill_decode(
                ResourcePolicy::scale_out(self.prefill.workers as u32, "cpu"),
                decode,
                self.scheduler.min_prompt_tokens,
            ),
        }
    }

    /// The cluster this config describes; `transport` links the derived pools.
    pub fn plan_cluster(&self, transport: Transport) -> Inventory {
        if let Some(c) = &self.plan.cluster {
            return c.clone();
        }
        let prefill = match self.scheduler.mode {
            Mode::Colocated => 0,
            Mode::Disaggregated => self.prefill.workers as u32,
        };
        Inventory {
            default_transport: Some(transport),
            ..Inventory::local(prefill, self.decode.workers as u32)
        }
    }

    /// The model profile: `[plan.model]`, else `served` (the GGUF being served).
    pub fn plan_model(&self, served: Option<ModelProfile>) -> Result<ModelProfile, PlanError> {
        match (&self.plan.model, served) {
            (Some(ProfileSpec::Preset { preset }), _) => {
                ModelProfile::preset(preset).ok_or_else(|| {
                    invalid(
                        "plan.model.preset",
                        format!(
                            "unknown preset `{preset}` (presets: {})",
                            ModelProfile::PRESETS.join(", ")
                        ),
                    )
                })
            }
            (Some(ProfileSpec::Explicit(p)), _) => Ok((**p).clone()),
            (None, Some(p)) => Ok(p),
            (None, None) => Err(invalid(
                "plan.model",
                "no model profile: set plan.model or serve a GGUF".into(),
            )),
        }
    }

    /// Compiles the plan; `served` is the served model's profile when one is loaded.
    pub fn compile_plan(
        &self,
        served: Option<ModelProfile>,
        transport: Transport,
    ) -> Result<ExecutionPlan, PlanError> {
        let model = self.plan_model(served)?;
        compile(
            &self.plan_policy(),
            &model,
            &self.plan_cluster(transport),
            &self.plan.pins,
        )
    }
}

/// Can the gateway run this plan? It executes prefill and decode phases (with or without
/// a KV handoff); pipeline, expert-parallel and fusion plans compile, render and simulate
/// but are not served by `genie serve` / `genie gateway`.
pub fn check_servable(plan: &ExecutionPlan) -> Result<(), PlanError> {
    for (i, s) in plan.stages.iter().enumerate() {
        if !matches!(s.op, Op::Prefill | Op::Decode) {
            return Err(PlanError {
                kind: PlanErrorKind::Conflict,
                field: format!("plan.policy (stage {i}, `{}`)", s.phase),
                reason: format!(
                    "the gateway serves prefill and decode phases; `{}` ({}) can be shown, validated, rendered and simulated with `genie plan`{}",
                    plan.policy,
                    s.op_label,
                    if matches!(s.op, Op::PipelineStage { .. }) {
                        ", and run with `genie generate --pipeline-config FILE`"
                    } else {
                        ""
                    }
                ),
            });
        }
    }
    if !plan.stages.iter().any(|s| s.op == Op::Decode) {
        return Err(invalid(
            "plan.policy",
            "a served plan needs a decode phase".into(),
        ));
    }
    Ok(())
}

/// The plan `genie serve` / `genie gateway` runs: compiled for the served model, checked
/// to be servable; errors say which config field to fix.
pub fn served_plan(
    cfg: &ServeConfig,
    text: &ModelText,
    transport: Transport,
) -> anyhow::Result<ExecutionPlan> {
    let plan = cfg
        .compile_plan(
            Some(profile_of(
                &text.config,
                text.weights_bytes,
                text.has_output,
            )),
            transport,
        )
        .map_err(|e| anyhow::anyhow!("invalid plan: {e}"))?;
    check_servable(&plan).map_err(|e| anyhow::anyhow!("invalid plan: {e}"))?;
    for w in &plan.warnings {
        tracing::warn!(warning = %w, "plan");
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use genie_scheduler::patterns::moe;
    use genie_scheduler::{Modality, Phase, Selector, TensorKind};

    fn load(name: &str, text: &str) -> ServeConfig {
        let dir = std::env::temp_dir().join(format!("genie-plan-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(name);
        std::fs::write(&f, text).unwrap();
        let c = ServeConfig::load(Some(&f), Default::default());
        std::fs::remove_file(&f).unwrap();
        c.unwrap()
    }

    /// Phases written out under `[[plan.policy.phases]]` read through the config loader
    /// (figment) are the policy the builders make.
    #[test]
    fn a_config_policy_written_out_equals_its_builders() {
        let cfg = load(
            "explicit.toml",
            r#"
[plan.model]
preset = "llava-1.5-7b"

[plan.policy]
name = "hand-written"

[[plan.policy.phases]]
name = "vision"
op = { kind = "encode", modality = "image" }
selector = { modality = "image" }
resources = { scale_out = { gpus = 2, hardware = "L40S" } }
consumes = ["image"]
produces = [{ name = "image_embeddings", kind = "embeddings" }]

[[plan.policy.phases]]
name = "prefill"
op = { kind = "prefill" }
selector = { prompt_tokens = { min = 128 } }
resources = { scale_out = { gpus = 4, hardware = "H100" } }
consumes = ["prompt", "image_embeddings"]
produces = [{ name = "kv_cache", kind = "kv_cache" }]
pool = "h100-east"

[[plan.policy.phases]]
name = "prefill_short"
op = { kind = "prefill" }
selector = { prompt_tokens = { max = 128 } }
resources = { scale_to = { gpus = 1, hardware = "A100" } }
consumes = ["prompt"]
produces = [{ name = "kv_cache", kind = "kv_cache" }]
data_dependencies = [{ colocate_with = "kv_cache" }]

[[plan.policy.phases]]
name = "decode"
op = { kind = "decode" }
selector = "decode_step"
resources = { scale_to = { gpus = 1, hardware = "A100" } }
consumes = ["kv_cache"]
data_dependencies = [{ colocate_with = "kv_cache" }]

[plan.cluster]
pools = [
  { name = "l40s", hardware = "L40S", count = 2 },
  { name = "h100", hardware = "H100", count = 4 },
  { name = "h100-east", hardware = "H100", count = 4 },
  { name = "a100", hardware = "A100", count = 2 },
]
"#,
        );
        let built = Policy::new("hand-written")
            .phase(
                Phase::new(
                    "vision",
                    Op::Encode {
                        modality: Modality::Image,
                    },
                )
                .selector(Selector::Modality(Modality::Image))
                .resources(ResourcePolicy::scale_out(2, "L40S"))
                .consumes("image")
                .produces("image_embeddings", TensorKind::Embeddings),
            )
            .phase(
                Phase::new("prefill", Op::Prefill)
                    .selector(Selector::prompt_tokens(128..))
                    .resources(ResourcePolicy::scale_out(4, "H100"))
                    .consumes("prompt")
                    .consumes("image_embeddings")
                    .produces("kv_cache", TensorKind::KvCache)
                    .pin_pool("h100-east"),
            )
            .phase(
                Phase::new("prefill_short", Op::Prefill)
                    .selector(Selector::prompt_tokens(..128))
                    .resources(ResourcePolicy::scale_to(1, "A100"))
                    .consumes("prompt")
                    .produces("kv_cache", TensorKind::KvCache)
                    .colocate_with("kv_cache"),
            )
            .phase(llm::decode_phase(ResourcePolicy::scale_to(1, "A100")));
        assert_eq!(cfg.plan_policy(), built);
        let plan = cfg.compile_plan(None, Transport::Tcp).unwrap();
        let prefill = plan.stage("prefill").unwrap();
        assert!(
            prefill.pinned_pool && prefill.pool == "h100-east",
            "{prefill:?}"
        );
        assert_eq!(plan.stage("prefill_short").unwrap().pool, "a100");
    }

    /// A shipped pattern config read through the loader is the pattern function's policy.
    #[test]
    fn a_shipped_pattern_config_equals_the_pattern_function() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs/moe-expert-parallel.toml");
        let cfg = ServeConfig::load(Some(&path), Default::default()).unwrap();
        assert_eq!(
            cfg.plan_policy(),
            moe::expert_parallel(
                4,
                ResourcePolicy::scale_to(2, "H100"),
                ResourcePolicy::scale_to(1, "A100")
            )
        );
    }
}
