//! The Policy API: declarative intent. A [`Policy`] is a list of [`Phase`]s, each with a
//! selector (which work it takes), a resource policy (how much of which hardware) and data
//! dependencies (which tensor it must sit beside). Written with builders in Rust or as TOML;
//! both are the same serde data, except closure selectors, which exist only in Rust.

use crate::profile::{Modality, TensorKind};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    pub phases: Vec<Phase>,
}

/// One phase of the computation and where it may run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    pub op: Op,
    #[serde(default)]
    pub selector: Selector,
    pub resources: ResourcePolicy,
    /// Tensors this phase creates, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub produces: Vec<Output>,
    /// Tensors this phase reads that another phase produces (or request inputs:
    /// `prompt`, `image`, `audio`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_dependencies: Vec<DataDependency>,
    /// Pin to a pool by name (an override; otherwise the hardware type picks the pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// The work a phase does, which sizes its cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Op {
    /// Every layer over the prompt; writes the KV cache.
    Prefill,
    /// Every layer, one token per sequence per step, over the KV cache.
    Decode,
    /// Pipeline stage `stage` of `stages`: a contiguous, balanced range of the layers
    /// (resolved against the model when the plan compiles), for prompt and decode steps.
    PipelineStage { stage: usize, stages: usize },
    /// The dense part of an MoE model (attention, router, shared weights) on every layer.
    Attention,
    /// Expert shard `shard` of `shards`: a balanced range of every MoE layer's experts.
    ExpertShard { shard: usize, shards: usize },
    /// An input encoder (e.g. the vision tower).
    Encode { modality: Modality },
    /// The language model over the fused embeddings of every branch (the prompt pass).
    Fuse,
}

impl Op {
    /// Does the phase work on prompt tokens (before the first token)?
    pub fn prompt_work(self) -> bool {
        !matches!(self, Op::Decode)
    }

    /// Does the phase run on every decode step?
    pub fn step_work(self) -> bool {
        matches!(
            self,
            Op::Decode | Op::PipelineStage { .. } | Op::Attention | Op::ExpertShard { .. }
        )
    }

    /// Layers `start..end` of a `layers`-layer model the phase computes.
    pub fn layer_span(self, layers: usize) -> (usize, usize) {
        match self {
            Op::PipelineStage { stage, stages } => balanced(layers, stage, stages),
            Op::Encode { .. } => (0, 0),
            _ => (0, layers),
        }
    }

    pub fn label(self) -> String {
        match self {
            Op::Prefill => "prefill".into(),
            Op::Decode => "decode".into(),
            Op::PipelineStage { stage, stages } => format!("pipeline stage {}/{stages}", stage + 1),
            Op::Attention => "attention + router".into(),
            Op::ExpertShard { shard, shards } => format!("expert shard {}/{shards}", shard + 1),
            Op::Encode { modality } => format!("encode {}", modality.as_str()),
            Op::Fuse => "fuse + prefill".into(),
        }
    }
}

/// Part `i` of `n` of `total` items as `start..end`: sizes differ by at most one, the
/// larger parts first.
pub fn balanced(total: usize, i: usize, n: usize) -> (usize, usize) {
    if n == 0 {
        return (0, 0);
    }
    let (base, extra) = (total / n, total % n);
    let start = i * base + i.min(extra);
    (start, start + base + usize::from(i < extra))
}

/// A tensor a phase creates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub name: String,
    pub kind: TensorKind,
}

/// Which requests (or steps) a phase takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// Every request.
    #[default]
    Always,
    /// Requests whose prompt has `min <= tokens < max` (either bound optional).
    PromptTokens {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<usize>,
    },
    /// Decode steps (one new token per sequence).
    DecodeStep,
    /// Requests that carry this input modality.
    Modality(Modality),
    /// A Rust closure over the request's facts (not expressible in TOML).
    Custom(CustomSelector),
}

/// What selectors look at: the facts of one request, known before it runs.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RequestFacts {
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    /// Non-text inputs (e.g. two `image` entries for two images).
    #[serde(default)]
    pub inputs: Vec<Modality>,
}

impl Selector {
    pub fn prompt_tokens(range: impl std::ops::RangeBounds<usize>) -> Selector {
        use std::ops::Bound::*;
        let min = match range.start_bound() {
            Included(&n) => Some(n),
            Excluded(&n) => Some(n + 1),
            Unbounded => None,
        };
        let max = match range.end_bound() {
            Included(&n) => Some(n + 1),
            Excluded(&n) => Some(n),
            Unbounded => None,
        };
        Selector::PromptTokens { min, max }
    }

    /// A selector written in Rust; `name` is what plans and renderings show.
    pub fn closure(
        name: impl Into<String>,
        f: impl Fn(&RequestFacts) -> bool + Send + Sync + 'static,
    ) -> Selector {
        Selector::Custom(CustomSelector {
            name: name.into(),
            f: Arc::new(f),
        })
    }

    /// Does the request take this phase? (Decode-step phases take every request that
    /// generates at least one token.)
    pub fn matches(&self, facts: &RequestFacts) -> bool {
        match self {
            Selector::Always => true,
            Selector::PromptTokens { min, max } => {
                min.is_none_or(|m| facts.prompt_tokens >= m)
                    && max.is_none_or(|m| facts.prompt_tokens < m)
            }
            Selector::DecodeStep => facts.max_tokens > 0,
            Selector::Modality(m) => *m == Modality::Text || facts.inputs.contains(m),
            Selector::Custom(c) => (c.f)(facts),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Selector::Always => "every request".into(),
            Selector::PromptTokens { min, max } => match (min, max) {
                (Some(a), Some(b)) => format!("{a} <= prompt tokens < {b}"),
                (Some(a), None) => format!("prompt tokens >= {a}"),
                (None, Some(b)) => format!("prompt tokens < {b}"),
                (None, None) => "any prompt".into(),
            },
            Selector::DecodeStep => "decode steps".into(),
            Selector::Modality(m) => format!("{} input", m.as_str()),
            Selector::Custom(c) => format!("custom: {}", c.name),
        }
    }
}

/// A closure selector. Serialises as its name; cannot be read back from TOML or JSON.
#[derive(Clone)]
pub struct CustomSelector {
    pub name: String,
    pub f: Arc<dyn Fn(&RequestFacts) -> bool + Send + Sync>,
}

impl fmt::Debug for CustomSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomSelector({:?})", self.name)
    }
}

impl PartialEq for CustomSelector {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.f, &other.f)
    }
}

impl Serialize for CustomSelector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for CustomSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Err(serde::de::Error::custom(format!(
            "selector `custom: {name}` is a Rust closure and cannot be written in a config; \
             use always, decode_step, prompt_tokens or modality"
        )))
    }
}

/// How much hardware a phase gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourcePolicy {
    /// Spread over up to `gpus` accelerators of this type (replicas share the load); fewer
    /// is allowed, with a warning.
    ScaleOut { gpus: u32, hardware: String },
    /// Exactly `gpus` accelerators of this type, or the plan is invalid.
    ScaleTo { gpus: u32, hardware: String },
}

impl ResourcePolicy {
    pub fn scale_out(gpus: u32, hardware: impl Into<String>) -> Self {
        ResourcePolicy::ScaleOut {
            gpus,
            hardware: hardware.into(),
        }
    }

    pub fn scale_to(gpus: u32, hardware: impl Into<String>) -> Self {
        ResourcePolicy::ScaleTo {
            gpus,
            hardware: hardware.into(),
        }
    }

    pub fn gpus(&self) -> u32 {
        match self {
            ResourcePolicy::ScaleOut { gpus, .. } | ResourcePolicy::ScaleTo { gpus, .. } => *gpus,
        }
    }

    pub fn hardware(&self) -> &str {
        match self {
            ResourcePolicy::ScaleOut { hardware, .. }
            | ResourcePolicy::ScaleTo { hardware, .. } => hardware,
        }
    }
}

/// A placement constraint tied to data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataDependency {
    /// Run where this tensor lives: its producers ship it here, and it stays resident.
    ColocateWith(String),
}

impl Policy {
    pub fn new(name: impl Into<String>) -> Self {
        Policy {
            name: name.into(),
            phases: Vec::new(),
        }
    }

    pub fn phase(mut self, p: Phase) -> Self {
        self.phases.push(p);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }
}

impl Phase {
    /// A phase on one accelerator of the `cpu` type until told otherwise.
    pub fn new(name: impl Into<String>, op: Op) -> Self {
        Phase {
            name: name.into(),
            op,
            selector: Selector::Always,
            resources: ResourcePolicy::scale_to(1, "cpu"),
            produces: Vec::new(),
            consumes: Vec::new(),
            data_dependencies: Vec::new(),
            pool: None,
        }
    }

    pub fn selector(mut self, s: Selector) -> Self {
        self.selector = s;
        self
    }

    pub fn resources(mut self, r: ResourcePolicy) -> Self {
        self.resources = r;
        self
    }

    pub fn produces(mut self, name: impl Into<String>, kind: TensorKind) -> Self {
        self.produces.push(Output {
            name: name.into(),
            kind,
        });
        self
    }

    pub fn consumes(mut self, name: impl Into<String>) -> Self {
        self.consumes.push(name.into());
        self
    }

    pub fn colocate_with(mut self, tensor: impl Into<String>) -> Self {
        self.data_dependencies
            .push(DataDependency::ColocateWith(tensor.into()));
        self
    }

    pub fn pin_pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }

    /// Tensors this phase must sit beside.
    pub fn colocated_tensors(&self) -> impl Iterator<Item = &str> {
        self.data_dependencies.iter().map(|d| match d {
            DataDependency::ColocateWith(t) => t.as_str(),
        })
    }
}

/// Request inputs phases may consume without a producer.
pub const REQUEST_INPUTS: [&str; 3] = ["prompt", "image", "audio"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_the_facts() {
        let f = |n| RequestFacts {
            prompt_tokens: n,
            max_tokens: 8,
            inputs: vec![],
        };
        let s = Selector::prompt_tokens(64..);
        assert!(!s.matches(&f(63)) && s.matches(&f(64)));
        let s = Selector::prompt_tokens(..64);
        assert!(s.matches(&f(63)) && !s.matches(&f(64)));
        let s = Selector::prompt_tokens(10..=20);
        assert_eq!(
            s,
            Selector::PromptTokens {
                min: Some(10),
                max: Some(21)
            }
        );
        assert!(!Selector::Modality(Modality::Image).matches(&f(5)));
        let img = RequestFacts {
            inputs: vec![Modality::Image],
            ..f(5)
        };
        assert!(Selector::Modality(Modality::Image).matches(&img));
        let odd = Selector::closure("odd prompts", |f| f.prompt_tokens % 2 == 1);
        assert!(odd.matches(&f(3)) && !odd.matches(&f(4)));
        assert_eq!(odd.label(), "custom: odd prompts");
    }

    #[test]
    fn toml_and_builders_are_the_same_policy() {
        let built = Policy::new("pd").phase(
            Phase::new("decode", Op::Decode)
                .selector(Selector::DecodeStep)
                .resources(ResourcePolicy::scale_to(1, "A100"))
                .consumes("kv_cache")
                .colocate_with("kv_cache"),
        );
        let text = r#"
            name = "pd"
            [[phases]]
            name = "decode"
            op = { kind = "decode" }
            selector = "decode_step"
            resources = { scale_to = { gpus = 1, hardware = "A100" } }
            consumes = ["kv_cache"]
            data_dependencies = [{ colocate_with = "kv_cache" }]
        "#;
        let parsed: Policy = toml::from_str(text).unwrap();
        assert_eq!(parsed, built);
        let back: Policy = toml::from_str(&toml::to_string(&built).unwrap()).unwrap();
        assert_eq!(back, built);
    }

    #[test]
    fn closures_do_not_pretend_to_round_trip() {
        let p = Policy::new("c")
            .phase(Phase::new("x", Op::Prefill).selector(Selector::closure("mine", |_| true)));
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""custom":"mine""#), "{json}");
        let e = serde_json::from_str::<Policy>(&json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Rust closure"), "{e}");
    }
}
