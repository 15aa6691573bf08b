//! # genie-decode-worker
//!
//! The decode service. It owns a compute thread that runs **continuous batching**: every
//! forward step advances all running sequences by one token (one batched
//! [`Model::forward`](genie_engine::model::Model::forward)); sequences join between steps
//! as their KV arrives and leave the moment they finish or their client goes away.
//!
//! [`DecodeWorker::admit`] is the one way in, for the gateway's in-process pool and for
//! this crate's HTTP [`service`] alike: it reserves the sequence's KV before anything
//! moves. A disaggregated sequence ([`KvSource::Transfer`]) then receives one
//! [`KvMessage::Layer`](genie_kv_transfer::KvMessage) per layer from the prefill worker and
//! `Complete` with the [`Handoff`](genie_protocol::worker::Handoff) (first token and
//! sampler state); a colocated one ([`KvSource::Prompt`]) is prefilled here, in the same
//! forward step as the running decodes (the baseline that disaggregation beats).

mod batch;
pub mod service;
mod types;
mod worker;

pub use types::{Admission, DecodeConfig, DecodeSeq, DecodeStats, KvSource, DEFAULT_QUEUE};
pub use worker::DecodeWorker;
