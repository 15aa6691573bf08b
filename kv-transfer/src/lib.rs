//! # genie-kv-transfer
//!
//! Moves a sequence's KV cache from the prefill worker that computed it to the decode
//! worker that continues it. The payload of each message is opaque to this crate (the
//! engine's self-describing per-layer chunks); this crate owns how those bytes travel.
//!
//! - [`KvMessage`]: what a receiver sees for one transfer id: one `Layer` per model layer
//!   (sent as soon as the layer is computed, so transfer overlaps compute), then either
//!   `Complete` (with a small trailer: the first sampled token and sampler state) or `Abort`.
//! - [`KvTransport`]: opens a [`KvSink`] towards a named endpoint for one transfer id.
//! - [`InProcessTransport`]: endpoints are receivers in the same process (`genie serve`).
//!   TCP and RDMA transports arrive with the multi-process workers.
//!
//! Every sink records `genie_kv_transfer_bytes_total` and `genie_kv_transfer_seconds`
//! (first layer handed over → trailer delivered). A sink dropped without `complete`
//! sends `Abort`, so a failing prefill never leaves a decode reservation waiting.

mod in_process;
mod message;

pub use in_process::InProcessTransport;
pub use message::KvMessage;

use genie_protocol::TransferId;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TransferError {
    #[error("no KV endpoint named `{0}` is registered")]
    UnknownEndpoint(String),
    #[error("KV endpoint `{endpoint}` is gone (transfer {transfer})")]
    EndpointClosed {
        endpoint: String,
        transfer: TransferId,
    },
}

/// The sending half of one transfer.
pub trait KvSink: Send {
    /// Hands one layer's bytes to the transport.
    fn send_layer(&mut self, layer: usize, bytes: Vec<u8>) -> Result<(), TransferError>;
    /// Ends the transfer successfully with `trailer`.
    fn complete(self: Box<Self>, trailer: Vec<u8>) -> Result<(), TransferError>;
    /// Ends the transfer unsuccessfully; the receiver drops what it holds for it.
    fn abort(self: Box<Self>, reason: &str);
}

/// A way to reach KV endpoints.
pub trait KvTransport: Send + Sync {
    /// Opens a sink for `transfer` towards `endpoint`.
    fn open(&self, endpoint: &str, transfer: TransferId) -> Result<Box<dyn KvSink>, TransferError>;
    /// Short name for plans and metrics (`in_process`, `tcp`, `rdma`).
    fn kind(&self) -> &'static str;
}
