//! The shape of one layer of KV (or one step's hidden states) as it moves between
//! workers: the one description the engine's export/import and the kv-transfer frames
//! share.

/// Element type code of a layer payload: f16 (the KV cache's type).
pub const DTYPE_F16: u8 = 1;
/// Element type code of hidden-state and logit payloads: f32.
pub const DTYPE_F32: u8 = 2;

/// Which layer a payload holds and its shape: the payload is K then V, each
/// `[token_count][kv_heads][head_dim]` elements of `dtype`, little-endian. For hidden
/// states handed from one pipeline stage to the next, `layer` is the first layer of the
/// receiving stage and the payload is `[token_count][kv_heads x head_dim]` (kv_heads = 1,
/// head_dim = the model's width), once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerShape {
    pub layer: u32,
    pub n_layers: u32,
    pub dtype: u8,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub token_start: u32,
    pub token_count: u32,
}

impl LayerShape {
    /// Bytes of one element of `dtype`, if known.
    pub fn elem_bytes(&self) -> Option<usize> {
        match self.dtype {
            DTYPE_F16 => Some(2),
            DTYPE_F32 => Some(4),
            _ => None,
        }
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

    /// Payload bytes of a hidden-state frame of this shape (one tensor, not two).
    pub fn hidden_len(&self) -> Option<usize> {
        self.payload_len().map(|kv| kv / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_lengths_follow_the_shape_and_unknown_dtypes_have_none() {
        let s = LayerShape {
            layer: 0,
            n_layers: 2,
            dtype: DTYPE_F16,
            kv_heads: 3,
            head_dim: 64,
            token_start: 0,
            token_count: 5,
        };
        assert_eq!(s.payload_len(), Some(2 * 5 * 3 * 64 * 2));
        assert_eq!(s.hidden_len(), Some(5 * 3 * 64 * 2));
        assert_eq!(LayerShape { dtype: 9, ..s }.payload_len(), None);
        let huge = LayerShape {
            token_count: u32::MAX,
            kv_heads: u32::MAX,
            head_dim: u32::MAX,
            ..s
        };
        assert_eq!(huge.payload_len(), None);
    }
}
