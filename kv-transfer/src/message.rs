//! What a KV receiver is handed for one transfer.

use genie_protocol::TransferId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvMessage {
    /// One layer's exported K/V (the engine's self-describing chunk).
    Layer {
        transfer: TransferId,
        layer: u32,
        bytes: Vec<u8>,
    },
    /// Every layer was sent; `trailer` carries what the decode side needs to continue.
    Complete {
        transfer: TransferId,
        trailer: Vec<u8>,
    },
    /// The sender gave up; drop everything held for this transfer.
    Abort {
        transfer: TransferId,
        reason: String,
    },
}

impl KvMessage {
    pub fn transfer(&self) -> TransferId {
        match self {
            KvMessage::Layer { transfer, .. }
            | KvMessage::Complete { transfer, .. }
            | KvMessage::Abort { transfer, .. } => *transfer,
        }
    }
}
