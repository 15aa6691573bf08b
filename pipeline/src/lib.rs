//! # genie-pipeline
//!
//! Pipeline-parallel execution of the llama model: the layers split into stages (as the
//! plan's `llm.pipeline_parallel` pattern splits them), each stage a [`StageWorker`] with
//! its own compute pool and the KV cache of its own layers only: threads of one process
//! ([`Pipeline::local`]) or `genie stage-worker` processes ([`Pipeline::remote`], their
//! control API in [`service`]).
//!
//! Every hop is kv-transfer over TCP, one transfer per sequence per hop: each stage sends
//! one checksummed `Hidden` frame per forward step to the next stage, and the last stage
//! sends the logits the same way to the driver, which samples (the engine's own loop,
//! `Engine::generate_with`) and hands the next token to stage 0. A failing stage aborts
//! its transfer; the abort travels down the chain to the driver. The output is the
//! unsplit model's, bit for bit (`Model::forward_stage`).

pub mod driver;
pub mod service;
pub mod stage;

pub use driver::{Pipeline, PipelineSeq};
pub use stage::{StageWorker, HOP_TIMEOUT};
