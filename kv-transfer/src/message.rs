//! What a KV receiver is handed for one transfer.

use genie_protocol::kv::LayerShape;
use genie_protocol::TransferId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvMessage {
    /// One layer's K/V.
    Layer {
        transfer: TransferId,
        meta: LayerShape,
        bytes: Vec<u8>,
    },
    /// Hidden states at a pipeline stage boundary (one frame per forward step).
    Hidden {
        transfer: TransferId,
        meta: LayerShape,
        bytes: Vec<u8>,
    },
    /// Every layer was sent; `trailer` carries what the decode side needs to continue.
    Complete {
        transfer: TransferId,
        trailer: Vec<u8>,
    },
    /// The sender gave up (or the transfer broke); drop everything held for it.
    Abort {
        transfer: TransferId,
        reason: String,
    },
}

impl KvMessage {
    /// Layers and hidden states carry data; complete and abort end the transfer.
    pub fn ends_transfer(&self) -> bool {
        matches!(self, KvMessage::Complete { .. } | KvMessage::Abort { .. })
    }

    pub fn transfer(&self) -> TransferId {
        match self {
            KvMessage::Layer { transfer, .. }
            | KvMessage::Hidden { transfer, .. }
            | KvMessage::Complete { transfer, .. }
            | KvMessage::Abort { transfer, .. } => *transfer,
        }
    }
}
