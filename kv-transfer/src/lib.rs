//! # genie-kv-transfer
//!
//! Moves a sequence's KV cache from the prefill worker that computed it to the decode
//! worker that continues it.
//!
//! - [`KvMessage`]: what a receiver sees for one transfer id: one `Layer` per model layer
//!   (sent as soon as the layer is computed, so transfer overlaps compute) with its
//!   [`LayerShape`] (layer, dtype, shape, token range), then either `Complete` (with a small
//!   trailer: the first sampled token and sampler state) or `Abort`. Pipeline-parallel
//!   stages use the same transfers for `Hidden` frames: one step's hidden states at a
//!   stage boundary.
//! - [`KvTransport`]: opens a [`KvSink`] towards an endpoint for one transfer id.
//! - [`InProcessTransport`]: endpoints are receivers in the same process (`genie serve`).
//! - [`tcp`]: the TCP transport ([`TcpTransport`] to send, [`tcp::serve`] to receive) over
//!   the versioned, checksummed frame format in [`wire`]; [`TransferRegistry`] is how a
//!   receiver knows which transfer ids it expects (reserved before bytes arrive).
//!
//! - `rdma` (cargo feature `rdma`): the same frames over RDMA send/receive (async-rdma).
//!
//! Every sink records `genie_kv_transfer_bytes_total` (layer payload bytes) and
//! `genie_kv_transfer_seconds` (first layer handed over → trailer delivered), labelled by
//! transport. A sink dropped without `complete` sends `Abort`, so a failing prefill never
//! leaves a decode reservation waiting.

mod in_process;
mod message;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod registry;
pub mod tcp;
mod threaded;
pub mod wire;

pub use genie_protocol::kv::{LayerShape, DTYPE_F16, DTYPE_F32};
pub use in_process::{Deliver, InProcessTransport};
pub use message::KvMessage;
pub use registry::TransferRegistry;
pub use tcp::TcpTransport;
pub use threaded::SEND_QUEUE;

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
    #[error("KV endpoint `{endpoint}`: {reason}")]
    Connect { endpoint: String, reason: String },
}

/// The sending half of one transfer.
pub trait KvSink: Send {
    /// The transfer this sink carries.
    fn transfer(&self) -> TransferId;
    /// Hands one data message (`Layer` or `Hidden`) to the transport, counting its bytes.
    fn send_data(&mut self, m: KvMessage) -> Result<(), TransferError>;
    /// Hands one layer's K/V bytes (K then V, shaped as `meta` says) to the transport.
    fn send_layer(&mut self, meta: LayerShape, bytes: Vec<u8>) -> Result<(), TransferError> {
        let transfer = self.transfer();
        self.send_data(KvMessage::Layer {
            transfer,
            meta,
            bytes,
        })
    }
    /// Hands one step's hidden states (`[token_count][width]` f32, shaped as `meta` says)
    /// to the next pipeline stage.
    fn send_hidden(&mut self, meta: LayerShape, bytes: Vec<u8>) -> Result<(), TransferError> {
        let transfer = self.transfer();
        self.send_data(KvMessage::Hidden {
            transfer,
            meta,
            bytes,
        })
    }
    /// Ends the transfer successfully with `trailer`; returns once it is handed over.
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

/// Picks the transport by the endpoint: `rdma://host:port` (needs the `rdma` feature) or
/// `host:port` / `tcp://host:port`.
#[derive(Clone, Debug, Default)]
pub struct NetTransport {
    pub tcp: TcpTransport,
}

impl KvTransport for NetTransport {
    fn open(&self, endpoint: &str, transfer: TransferId) -> Result<Box<dyn KvSink>, TransferError> {
        if endpoint.starts_with("rdma://") {
            #[cfg(feature = "rdma")]
            return rdma::RdmaTransport {
                secret: self.tcp.secret.clone(),
            }
            .open(endpoint, transfer);
            #[cfg(not(feature = "rdma"))]
            return Err(TransferError::Connect {
                endpoint: endpoint.to_string(),
                reason: "this build has no RDMA transport (build with `--features rdma`)".into(),
            });
        }
        self.tcp.open(
            endpoint.strip_prefix("tcp://").unwrap_or(endpoint),
            transfer,
        )
    }

    fn kind(&self) -> &'static str {
        "net"
    }
}
