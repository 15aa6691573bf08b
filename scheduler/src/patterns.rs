//! The pattern library: functions that return [`Policy`]s for the common shapes, so most
//! users name a pattern instead of writing phases. [`PatternSpec`] is the same in TOML
//! (`pattern = "llm.prefill_decode"` and its arguments).

use crate::policy::{Op, Phase, Policy, ResourcePolicy, Selector};
use crate::profile::{Modality, TensorKind};
use serde::{Deserialize, Serialize};

pub mod llm {
    use super::*;

    /// Prefill and decode on separate pools, the KV cache shipped between them.
    /// Conditional disaggregation: prompts shorter than `min_prompt_tokens` prefill on the
    /// decode worker (`prefill_local`), where a transfer would cost more than it saves.
    pub fn prefill_decode(
        prefill: ResourcePolicy,
        decode: ResourcePolicy,
        min_prompt_tokens: usize,
    ) -> Policy {
        let mut p = Policy::new("llm.prefill_decode").phase(
            Phase::new("prefill", Op::Prefill)
                .selector(if min_prompt_tokens == 0 {
                    Selector::Always
                } else {
                    Selector::prompt_tokens(min_prompt_tokens..)
                })
                .resources(prefill)
                .consumes("prompt")
                .produces("kv_cache", TensorKind::KvCache),
        );
        if min_prompt_tokens > 0 {
            p = p.phase(
                Phase::new("prefill_local", Op::Prefill)
                    .selector(Selector::prompt_tokens(..min_prompt_tokens))
                    .resources(decode.clone())
                    .consumes("prompt")
                    .produces("kv_cache", TensorKind::KvCache)
                    .colocate_with("kv_cache"),
            );
        }
        p.phase(decode_phase(decode))
    }

    /// Prefill and decode on the same workers: the baseline, nothing moves.
    pub fn colocated(workers: ResourcePolicy) -> Policy {
        Policy::new("llm.colocated")
            .phase(
                Phase::new("prefill", Op::Prefill)
                    .resources(workers.clone())
                    .consumes("prompt")
                    .produces("kv_cache", TensorKind::KvCache)
                    .colocate_with("kv_cache"),
            )
            .phase(decode_phase(workers))
    }

    /// The model's layers split into `num_stages` stages, each keeping its own layers'
    /// KV cache; hidden states flow from stage to stage for prompt and decode steps.
    pub fn pipeline_parallel(num_stages: usize, per_stage: ResourcePolicy) -> Policy {
        super::stages("llm.pipeline_parallel", num_stages, per_stage, true)
    }

    /// The decode phase every LLM pattern ends with: decode steps over the KV cache, on
    /// the workers that hold it. For policies written out in Rust.
    pub fn decode_phase(decode: ResourcePolicy) -> Phase {
        Phase::new("decode", Op::Decode)
            .selector(Selector::DecodeStep)
            .resources(decode)
            .consumes("kv_cache")
            .colocate_with("kv_cache")
    }
}

pub mod vision {
    use super::*;

    /// A sequential model (ViT, ConvNeXt) split into `num_stages` stages, activations
    /// handed from stage to stage; no state is kept between requests.
    pub fn pipeline_parallel(num_stages: usize, per_stage: ResourcePolicy) -> Policy {
        super::stages("vision.pipeline_parallel", num_stages, per_stage, false)
    }
}

pub mod moe {
    use super::*;

    /// Attention and routers (with the KV cache) on one pool; the experts of every MoE
    /// layer split into `shards` shards on another, tokens routed to them and back.
    pub fn expert_parallel(
        shards: usize,
        attention: ResourcePolicy,
        experts: ResourcePolicy,
    ) -> Policy {
        let mut p = Policy::new("moe.expert_parallel").phase(
            Phase::new("attention", Op::Attention)
                .resources(attention)
                .consumes("prompt")
                .produces("kv_cache", TensorKind::KvCache)
                .produces("routed_tokens", TensorKind::ExpertActivations)
                .colocate_with("kv_cache"),
        );
        for shard in 0..shards {
            p = p.phase(
                Phase::new(
                    format!("experts_{shard}"),
                    Op::ExpertShard { shard, shards },
                )
                .resources(experts.clone())
                .consumes("routed_tokens"),
            );
        }
        p
    }
}

pub mod multimodal {
    use super::*;

    /// Vision and text branches encode in parallel on their own hardware (the text
    /// embedder sits on the language model's workers); the language model fuses them (the
    /// prompt pass) and a decode pool generates.
    pub fn parallel_fusion(
        vision: ResourcePolicy,
        fusion: ResourcePolicy,
        decode: ResourcePolicy,
    ) -> Policy {
        Policy::new("multimodal.parallel_fusion")
            .phase(
                Phase::new(
                    "vision_encoder",
                    Op::Encode {
                        modality: Modality::Image,
                    },
                )
                .selector(Selector::Modality(Modality::Image))
                .resources(vision)
                .consumes("image")
                .produces("image_embeddings", TensorKind::Embeddings),
            )
            .phase(
                Phase::new(
                    "text_embedder",
                    Op::Encode {
                        modality: Modality::Text,
                    },
                )
                .resources(fusion.clone())
                .consumes("prompt")
                .produces("text_embeddings", TensorKind::Embeddings)
                .colocate_with("text_embeddings"),
            )
            .phase(
                Phase::new("fusion", Op::Fuse)
                    .resources(fusion)
                    .consumes("image_embeddings")
                    .consumes("text_embeddings")
                    .colocate_with("text_embeddings")
                    .produces("kv_cache", TensorKind::KvCache),
            )
            .phase(
                Phase::new("decode", Op::Decode)
                    .selector(Selector::DecodeStep)
                    .resources(decode)
                    .consumes("kv_cache")
                    .colocate_with("kv_cache"),
            )
    }
}

fn stages(name: &str, num_stages: usize, per_stage: ResourcePolicy, stateful: bool) -> Policy {
    let mut p = Policy::new(name);
    for stage in 0..num_stages {
        let mut ph = Phase::new(
            format!("stage_{stage}"),
            Op::PipelineStage {
                stage,
                stages: num_stages,
            },
        )
        .resources(per_stage.clone())
        .consumes(if stage == 0 {
            "prompt".to_string()
        } else {
            format!("hidden_{}", stage - 1)
        });
        if stage + 1 < num_stages {
            ph = ph.produces(format!("hidden_{stage}"), TensorKind::Hidden);
        }
        if stateful {
            let kv = format!("kv_cache_{stage}");
            ph = ph
                .produces(kv.clone(), TensorKind::KvCache)
                .colocate_with(kv);
        }
        p = p.phase(ph);
    }
    p
}

/// A pattern and its arguments, as written in a config (`[plan.policy]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "pattern", deny_unknown_fields)]
pub enum PatternSpec {
    #[serde(rename = "llm.prefill_decode")]
    PrefillDecode {
        prefill: ResourcePolicy,
        decode: ResourcePolicy,
        #[serde(default)]
        min_prompt_tokens: usize,
    },
    #[serde(rename = "llm.colocated")]
    Colocated { workers: ResourcePolicy },
    #[serde(rename = "llm.pipeline_parallel")]
    LlmPipeline {
        num_stages: usize,
        per_stage: ResourcePolicy,
    },
    #[serde(rename = "vision.pipeline_parallel")]
    VisionPipeline {
        num_stages: usize,
        per_stage: ResourcePolicy,
    },
    #[serde(rename = "moe.expert_parallel")]
    ExpertParallel {
        shards: usize,
        attention: ResourcePolicy,
        experts: ResourcePolicy,
    },
    #[serde(rename = "multimodal.parallel_fusion")]
    ParallelFusion {
        vision: ResourcePolicy,
        fusion: ResourcePolicy,
        decode: ResourcePolicy,
    },
}

impl PatternSpec {
    pub fn policy(&self) -> Policy {
        match self.clone() {
            PatternSpec::PrefillDecode {
                prefill,
                decode,
                min_prompt_tokens,
            } => llm::prefill_decode(prefill, decode, min_prompt_tokens),
            PatternSpec::Colocated { workers } => llm::colocated(workers),
            PatternSpec::LlmPipeline {
                num_stages,
                per_stage,
            } => llm::pipeline_parallel(num_stages, per_stage),
            PatternSpec::VisionPipeline {
                num_stages,
                per_stage,
            } => vision::pipeline_parallel(num_stages, per_stage),
            PatternSpec::ExpertParallel {
                shards,
                attention,
                experts,
            } => moe::expert_parallel(shards, attention, experts),
            PatternSpec::ParallelFusion {
                vision,
                fusion,
                decode,
            } => multimodal::parallel_fusion(vision, fusion, decode),
        }
    }
}

/// A policy in a config: a pattern with arguments (a `pattern` key), or phases written out.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PolicySpec {
    Pattern(PatternSpec),
    Explicit(Policy),
}

impl<'de> Deserialize<'de> for PolicySpec {
    /// Picks the form by the `pattern` key so errors speak of the form that was meant.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        if v.get("pattern").is_some() {
            PatternSpec::deserialize(v)
                .map(PolicySpec::Pattern)
                .map_err(D::Error::custom)
        } else {
            Policy::deserialize(v)
                .map(PolicySpec::Explicit)
                .map_err(D::Error::custom)
        }
    }
}

impl PolicySpec {
    pub fn policy(&self) -> Policy {
        match self {
            PolicySpec::Pattern(p) => p.policy(),
            PolicySpec::Explicit(p) => p.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RequestFacts;

    #[test]
    fn conditional_disaggregation_sends_short_prompts_to_the_decode_pool() {
        let p = llm::prefill_decode(
            ResourcePolicy::scale_out(8, "H100"),
            ResourcePolicy::scale_to(2, "A100"),
            64,
        );
        let names: Vec<&str> = p.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["prefill", "prefill_local", "decode"]);
        let facts = |n| RequestFacts {
            prompt_tokens: n,
            max_tokens: 1,
            inputs: vec![],
        };
        let local = p.get("prefill_local").unwrap();
        assert!(local.selector.matches(&facts(10)) && !local.selector.matches(&facts(64)));
        assert_eq!(local.resources, ResourcePolicy::scale_to(2, "A100"));
        let no_threshold = llm::prefill_decode(
            ResourcePolicy::scale_out(1, "cpu"),
            ResourcePolicy::scale_to(1, "cpu"),
            0,
        );
        assert_eq!(no_threshold.phases.len(), 2);
    }

    #[test]
    fn toml_patterns_equal_the_rust_functions() {
        let (h100, a100, l40s) = (
            ResourcePolicy::scale_to(2, "H100"),
            ResourcePolicy::scale_to(1, "A100"),
            ResourcePolicy::scale_out(2, "L40S"),
        );
        let cases = [
            (
                r#"
                pattern = "llm.prefill_decode"
                prefill = { scale_to = { gpus = 2, hardware = "H100" } }
                decode = { scale_to = { gpus = 1, hardware = "A100" } }
                min_prompt_tokens = 64
                "#,
                llm::prefill_decode(h100.clone(), a100.clone(), 64),
            ),
            (
                // min_prompt_tokens defaults to 0: no prefill_local phase.
                r#"
                pattern = "llm.prefill_decode"
                prefill = { scale_to = { gpus = 2, hardware = "H100" } }
                decode = { scale_to = { gpus = 1, hardware = "A100" } }
                "#,
                llm::prefill_decode(h100.clone(), a100.clone(), 0),
            ),
            (
                r#"
                pattern = "llm.colocated"
                workers = { scale_to = { gpus = 1, hardware = "A100" } }
                "#,
                llm::colocated(a100.clone()),
            ),
            (
                r#"
                pattern = "llm.pipeline_parallel"
                num_stages = 3
                per_stage = { scale_to = { gpus = 1, hardware = "A100" } }
                "#,
                llm::pipeline_parallel(3, a100.clone()),
            ),
            (
                r#"
                pattern = "vision.pipeline_parallel"
                num_stages = 2
                per_stage = { scale_out = { gpus = 2, hardware = "L40S" } }
                "#,
                vision::pipeline_parallel(2, l40s.clone()),
            ),
            (
                r#"
                pattern = "moe.expert_parallel"
                shards = 4
                attention = { scale_to = { gpus = 2, hardware = "H100" } }
                experts = { scale_to = { gpus = 1, hardware = "A100" } }
                "#,
                moe::expert_parallel(4, h100.clone(), a100.clone()),
            ),
            (
                r#"
                pattern = "multimodal.parallel_fusion"
                vision = { scale_out = { gpus = 2, hardware = "L40S" } }
                fusion = { scale_to = { gpus = 2, hardware = "H100" } }
                decode = { scale_to = { gpus = 1, hardware = "A100" } }
                "#,
                multimodal::parallel_fusion(l40s.clone(), h100.clone(), a100.clone()),
            ),
        ];
        for (text, built) in cases {
            let spec: PolicySpec = toml::from_str(text).unwrap();
            assert_eq!(spec.policy(), built, "{text}");
            // The spec writes back to the same TOML.
            let back: PolicySpec = toml::from_str(&toml::to_string(&spec).unwrap()).unwrap();
            assert_eq!(back, spec, "{text}");
        }
        let bad = "pattern = \"llm.teleport\"\n";
        let e = toml::from_str::<PolicySpec>(bad).unwrap_err().to_string();
        assert!(e.contains("llm.teleport"), "{e}");
        let bad = "pattern = \"llm.colocated\"\n";
        let e = toml::from_str::<PolicySpec>(bad).unwrap_err().to_string();
        assert!(e.contains("workers"), "{e}");
        let e = toml::from_str::<PolicySpec>("name = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("phases"), "{e}");
    }

    #[test]
    fn pipeline_stages_chain_hidden_states() {
        let p = llm::pipeline_parallel(3, ResourcePolicy::scale_to(1, "cpu"));
        assert_eq!(p.phases[1].consumes, ["hidden_0"]);
        assert_eq!(p.phases[2].consumes, ["hidden_1"]);
        assert!(p.phases[2]
            .produces
            .iter()
            .all(|o| o.kind == TensorKind::KvCache));
        let v = vision::pipeline_parallel(2, ResourcePolicy::scale_to(1, "cpu"));
        assert!(v.phases.iter().all(|ph| ph.data_dependencies.is_empty()));
    }
}
