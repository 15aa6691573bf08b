//! What the plan compiler knows of a model: its shape (from GGUF metadata or a preset) and
//! the tensors that flow between phases, with their sizes per token.

use serde::{Deserialize, Serialize};

/// A model's dimensions and costs, enough to size tensors and estimate compute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelProfile {
    pub name: String,
    /// `llama`, `mixtral`, `vit`, `llava`…
    pub architecture: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context: usize,
    /// Parameters of the whole model (all experts).
    pub params: u64,
    /// Bytes of weights as stored (quantised size for GGUF).
    pub weight_bytes: u64,
    /// Bytes of one KV element as the serving engine keeps it (2 for f16).
    #[serde(default = "default_kv_elem")]
    pub kv_elem_bytes: usize,
    /// Bytes of one activation element shipped between stages.
    #[serde(default = "default_elem")]
    pub act_elem_bytes: usize,
    /// Mixture of experts: experts per MoE layer and how many each token uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts: Option<ExpertShape>,
    /// Input branches besides text (e.g. `image`), each with its encoder's size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encoders: Vec<EncoderShape>,
}

fn default_elem() -> usize {
    4
}

fn default_kv_elem() -> usize {
    2
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertShape {
    pub count: usize,
    pub active: usize,
    /// Parameters in all experts of all layers (the rest is attention, router, embeddings).
    pub expert_params: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderShape {
    pub modality: Modality,
    pub params: u64,
    pub weight_bytes: u64,
    /// Embedding tokens the encoder emits per input item (e.g. 576 patches per image).
    pub tokens_per_item: usize,
}

/// What a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Text,
    Image,
    Audio,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
            Modality::Audio => "audio",
        }
    }
}

/// The kinds of tensor a phase can produce; each knows its size per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorKind {
    /// K and V of every layer the producer ran: stateful, grows with the sequence.
    KvCache,
    /// The residual stream after a layer range: shipped between pipeline stages.
    Hidden,
    /// Token ids (sampled tokens, prompts).
    Tokens,
    /// Encoder output embeddings (vision or audio tokens) fed to the language model.
    Embeddings,
    /// Routed token activations to and from expert shards.
    ExpertActivations,
}

/// Where a tensor lives and how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Residency {
    /// Loaded once, kept for the worker's life (weights).
    PersistentWeights,
    /// Lives for one forward step (activations in flight).
    EphemeralActivations,
    /// Lives for the sequence and grows with it (KV cache).
    StatefulKvCache,
}

impl TensorKind {
    pub fn residency(self) -> Residency {
        match self {
            TensorKind::KvCache => Residency::StatefulKvCache,
            _ => Residency::EphemeralActivations,
        }
    }
}

impl ModelProfile {
    /// K and V bytes one token occupies in `layers` layers.
    pub fn kv_bytes_per_token(&self, layers: usize) -> u64 {
        (2 * layers * self.kv_heads * self.head_dim * self.kv_elem_bytes) as u64
    }

    /// Bytes per token of a tensor kind that spans `layers` layers (KV only).
    pub fn bytes_per_token(&self, kind: TensorKind, layers: usize) -> u64 {
        match kind {
            TensorKind::KvCache => self.kv_bytes_per_token(layers),
            TensorKind::Hidden | TensorKind::Embeddings => {
                (self.hidden * self.act_elem_bytes) as u64
            }
            TensorKind::Tokens => 4,
            // Each token goes to `active` experts and comes back, per MoE layer.
            TensorKind::ExpertActivations => {
                let active = self.experts.map_or(1, |e| e.active);
                (2 * active * self.hidden * self.act_elem_bytes) as u64
            }
        }
    }

    /// Weight bytes of `layers` of the model's layers (embeddings and head counted once,
    /// in proportion, which is close enough for placement).
    pub fn weight_bytes_for(&self, layers: usize) -> u64 {
        let l = self.layers.max(1) as u64;
        self.weight_bytes * layers.min(self.layers) as u64 / l
    }

    /// Share of the weights held by experts (0 for dense models).
    pub fn expert_fraction(&self) -> f64 {
        match self.experts {
            Some(e) if self.params > 0 => e.expert_params as f64 / self.params as f64,
            _ => 0.0,
        }
    }

    /// Floating-point operations per token for `layers` layers (2 x active parameters).
    pub fn flops_per_token(&self, layers: usize) -> f64 {
        let active = match self.experts {
            Some(e) if e.count > 0 => {
                let dense = (self.params - e.expert_params) as f64;
                dense + e.expert_params as f64 * e.active as f64 / e.count as f64
            }
            _ => self.params as f64,
        };
        2.0 * active * layers.min(self.layers) as f64 / self.layers.max(1) as f64
    }

    pub fn encoder(&self, m: Modality) -> Option<&EncoderShape> {
        self.encoders.iter().find(|e| e.modality == m)
    }

    /// A named preset: `smollm2-135m` (the default model; equal to what its GGUF says),
    /// `llama-3-8b`, `llama-3-70b`, `mixtral-8x7b`, `llava-1.5-7b`, `vit-huge`.
    pub fn preset(name: &str) -> Option<ModelProfile> {
        let llama = |name: &str, layers, hidden, heads, kv_heads, vocab, context, params: u64| {
            ModelProfile {
                name: name.into(),
                architecture: "llama".into(),
                layers,
                hidden,
                heads,
                kv_heads,
                head_dim: hidden / heads,
                vocab,
                context,
                params,
                weight_bytes: params * 2,
                kv_elem_bytes: 2,
                act_elem_bytes: 2,
                experts: None,
                encoders: Vec::new(),
            }
        };
        Some(match name {
            "smollm2-135m" => ModelProfile {
                weight_bytes: SMOLLM2_Q4_1_WEIGHT_BYTES,
                kv_elem_bytes: 2,
                act_elem_bytes: 4,
                ..llama(
                    "SmolLM2-135M-Instruct",
                    30,
                    576,
                    9,
                    3,
                    49152,
                    8192,
                    134_515_008,
                )
            },
            "llama-3-8b" => llama("Llama-3-8B", 32, 4096, 32, 8, 128_256, 8192, 8_030_000_000),
            "llama-3-70b" => llama(
                "Llama-3-70B",
                80,
                8192,
                64,
                8,
                128_256,
                8192,
                70_550_000_000,
            ),
            "mixtral-8x7b" => ModelProfile {
                architecture: "mixtral".into(),
                experts: Some(ExpertShape {
                    count: 8,
                    active: 2,
                    expert_params: 45_100_000_000,
                }),
                ..llama(
                    "Mixtral-8x7B",
                    32,
                    4096,
                    32,
                    8,
                    32_000,
                    32_768,
                    46_700_000_000,
                )
            },
            "llava-1.5-7b" => ModelProfile {
                architecture: "llava".into(),
                encoders: vec![EncoderShape {
                    modality: Modality::Image,
                    params: 304_000_000,
                    weight_bytes: 608_000_000,
                    tokens_per_item: 576,
                }],
                ..llama(
                    "LLaVA-1.5-7B",
                    32,
                    4096,
                    32,
                    32,
                    32_000,
                    4096,
                    7_060_000_000,
                )
            },
            "vit-huge" => ModelProfile {
                architecture: "vit".into(),
                ..llama("ViT-H/14", 32, 1280, 16, 16, 1000, 257, 632_000_000)
            },
            _ => return None,
        })
    }

    pub const PRESETS: [&'static str; 6] = [
        "smollm2-135m",
        "llama-3-8b",
        "llama-3-70b",
        "mixtral-8x7b",
        "llava-1.5-7b",
        "vit-huge",
    ];
}

/// Bytes of the default model's tensors as stored in its Q4_1 GGUF (measured by
/// `genie model info`; a test checks the preset against the file).
pub const SMOLLM2_Q4_1_WEIGHT_BYTES: u64 = 96_576_768;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_bytes_match_the_engine_for_the_default_model() {
        let p = ModelProfile::preset("smollm2-135m").unwrap();
        // 2 (K,V) x 30 layers x 3 kv heads x 64 x 2 bytes (f16): what the engine keeps.
        assert_eq!(p.kv_bytes_per_token(30), 23_040);
        assert_eq!(p.bytes_per_token(TensorKind::Hidden, 30), 576 * 4);
        assert_eq!(p.weight_bytes_for(15) * 2, p.weight_bytes);
    }

    #[test]
    fn every_preset_is_consistent() {
        for name in ModelProfile::PRESETS {
            let p = ModelProfile::preset(name).unwrap();
            assert_eq!(p.head_dim * p.heads, p.hidden, "{name}");
            assert_eq!(p.heads % p.kv_heads, 0, "{name}");
            assert!(p.flops_per_token(p.layers) > 0.0);
        }
        assert!(ModelProfile::preset("gpt-9").is_none());
        // Mixtral: 2 of 8 experts per token, ~12.9B active parameters.
        let m = ModelProfile::preset("mixtral-8x7b").unwrap();
        let active = m.flops_per_token(32) / 2.0;
        assert!((12.5e9..13.5e9).contains(&active), "{active}");
    }
}
