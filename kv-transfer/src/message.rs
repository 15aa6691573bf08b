//! What a KV receiver is handed for one transfer.

use genie_protocol::TransferId;

/// Element type of a layer payload.
pub const DTYPE_F16: u8 = 1;
/// Element type of hidden-state payloads.
pub const DTYPE_F32: u8 = 2;

/// Which layer a payload holds and its shape: the payload is K then V, each
/// `[token_count][kv_heads][head_dim]` elements of `dtype`. For hidden states handed from
/// one pipeline stage to the next, `layer` is the first layer of the receiving stage and
/// the payload is `[token_count][kv_heads x head_dim]` (kv_heads = 1, head_dim = the
/// model's width), once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerMeta {
    pub layer: u32,
    pub n_layers: u32,
    pub dtype: u8,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub token_start: u32,
    pub token_count: u32,
}

impl LayerMeta {
    /// Bytes of one element of `dtype`, if known.
    pub fn elem_bytes(&self) -> Option<usize> {
        match self.dtype {
            DTYPE_F16 => Some(2),
            DTYPE_F32 => Some(4),
            _ => None,
        }
    }

    /// Payload bytes of a hidden-state frame of this shape.
    pub fn hidden_len(&self) -> Option<usize> {
        self.payload_len().map(|kv| kv / 2)
    }

    /// Payload bytes this shape implies (K and V).
    pub fn payload_len(&self) -> Option<usize> {
        let e = self.elem_bytes()?;
        2usize
            .checked_mul(self.token_count as usize)?
            .checked_mul(self.kv_heads as usize)?
            .checked_mul(self.head_dim as usize)?
            .checked_mul(e)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvMessage {
    /// One layer's K/V.
    Layer {
        transfer: TransferId,
        meta: LayerMeta,
        bytes: Vec<u8>,
    },
    /// Hidden states at a pipeline stage boundary (one frame per forward step).
    Hidden {
        transfer: TransferId,
        meta: LayerMeta,
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
