//! # genie-prefill-worker
//!
//! The prefill service. Its compute thread takes queued prompts (several at once, up to a
//! token budget, in one batched forward), and as soon as each layer's K/V is computed it
//! exports that layer and hands it to the sequence's KV sink, so the transfer to the
//! decode worker overlaps the rest of the prefill. It then samples the first token, sends
//! it straight to the client's stream (time to first token does not wait for the
//! transfer) and completes the transfer with the [`Handoff`](genie_protocol::worker::Handoff).
//! A sequence that ends at its first token aborts its transfer, freeing the decode slot.
//!
//! [`PrefillWorker::admit`] is the one way in, for the gateway's in-process pool and for
//! this crate's HTTP [`service`] (`genie prefill-worker`) alike.

pub mod service;
mod worker;

pub use worker::{PrefillConfig, PrefillSeq, PrefillStats, PrefillWorker, DEFAULT_QUEUE};
