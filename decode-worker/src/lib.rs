//! # genie-decode-worker
//!
//! The decode service. It owns a compute thread that runs **continuous batching**: every
//! forward step advances all running sequences by one token (one batched
//! [`Model::forward`](genie_engine::model::Model::forward)); sequences join between steps
//! as their KV arrives and leave the moment they finish or their client goes away.
//!
//! A disaggregated sequence arrives in three parts: [`DecodeInput::Expect`] (sent by the
//! gateway, carrying the KV reservation made *before* any bytes move), then one
//! [`KvMessage::Layer`](genie_kv_transfer::KvMessage) per layer from the prefill worker,
//! then `Complete` with the [`Handoff`](genie_protocol::worker::Handoff) (first token and
//! sampler state). A colocated sequence ([`DecodeInput::Prefill`]) is prefilled here, in
//! the same forward step as the running decodes (the baseline that disaggregation beats).
//!
//! [`service`] is the worker's HTTP control API when it runs as its own process
//! (`genie decode-worker`).

mod batch;
pub mod service;
mod worker;

pub use worker::{DecodeConfig, DecodeInput, DecodeStats, DecodeWorker, NewSeq};
