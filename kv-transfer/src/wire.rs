//! The versioned binary frame format of the TCP transport (little-endian):
//!
//! | offset | field | type |
//! |---:|---|---|
//! | 0 | magic `GKVT` | `[u8; 4]` |
//! | 4 | version ([`WIRE_VERSION`]) | u16 |
//! | 6 | kind: 1 layer, 2 complete, 3 abort, 4 hidden states | u8 |
//! | 7 | dtype (1 = f16, 2 = f32; 0 for complete and abort) | u8 |
//! | 8 | transfer id | u64 |
//! | 16 | layer, n_layers, kv_heads, head_dim, token_start, token_count | 6 × u32 |
//! | 40 | payload length | u32 |
//! | 44 | CRC-32 of bytes 0..44 (the header) | u32 |
//!
//! then the payload (a layer's K then V; a complete frame's trailer; an abort's reason), then
//! the CRC-32 of the payload (u32). The payload checksum follows the payload so a sender can
//! checksum each slice just before writing it (one pass over memory, not two) and a receiver
//! while it reads; the header has its own so a bad header is refused before any payload.

use crate::message::KvMessage;
use crate::LayerShape;
use genie_protocol::TransferId;

pub const WIRE_MAGIC: [u8; 4] = *b"GKVT";
pub const WIRE_VERSION: u16 = 2;
pub const FRAME_HEADER_LEN: usize = 48;
/// The payload checksum after each payload.
pub const CHECKSUM_LEN: usize = 4;
/// Largest payload accepted in one frame.
pub const MAX_PAYLOAD: usize = 1 << 30;
/// Largest payload of a frame that carries no KV (a complete frame's trailer, an abort's
/// reason). Those are not counted against the transfer's reservation, so the bound keeps a
/// peer from making the receiver allocate [`MAX_PAYLOAD`] for a header alone.
pub const MAX_CONTROL_PAYLOAD: usize = 16 << 20;

const KIND_LAYER: u8 = 1;
const KIND_COMPLETE: u8 = 2;
const KIND_ABORT: u8 = 3;
const KIND_HIDDEN: u8 = 4;

/// Does a frame of this kind carry data counted against the transfer's reservation?
pub fn carries_data(kind: u8) -> bool {
    kind == KIND_LAYER || kind == KIND_HIDDEN
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad magic: not a Genie KV frame")]
    Magic,
    #[error("wire version {0}, this build speaks {WIRE_VERSION}")]
    Version(u16),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    Oversize(u64),
    #[error("layer payload is {got} bytes, its shape needs {want}")]
    Length { got: usize, want: usize },
    #[error("unsupported dtype code {0}")]
    Dtype(u8),
    #[error("header checksum mismatch (corrupted frame header)")]
    HeaderChecksum,
    #[error("payload checksum mismatch (corrupted frame)")]
    Checksum,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub transfer: TransferId,
    pub meta: LayerShape,
    pub payload_len: usize,
}

impl FrameHeader {
    /// Bytes of this frame after its header: payload and checksum.
    pub fn rest_len(&self) -> usize {
        self.payload_len + CHECKSUM_LEN
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Encodes one message as a whole frame: header, payload, payload checksum.
pub fn encode(m: &KvMessage) -> Vec<u8> {
    let mut out = header(m);
    let p = payload(m);
    out.extend_from_slice(p);
    out.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
    out
}

/// The payload bytes of a message.
pub fn payload(m: &KvMessage) -> &[u8] {
    match m {
        KvMessage::Layer { bytes, .. } | KvMessage::Hidden { bytes, .. } => bytes,
        KvMessage::Complete { trailer, .. } => trailer,
        KvMessage::Abort { reason, .. } => reason.as_bytes(),
    }
}

/// The frame header of a message (the payload follows it on the wire, unchanged, then the
/// payload's CRC-32).
pub fn header(m: &KvMessage) -> Vec<u8> {
    let zero = LayerShape {
        layer: 0,
        n_layers: 0,
        dtype: 0,
        kv_heads: 0,
        head_dim: 0,
        token_start: 0,
        token_count: 0,
    };
    let (kind, transfer, meta, payload): (u8, TransferId, LayerShape, &[u8]) = match m {
        KvMessage::Layer {
            transfer,
            meta,
            bytes,
        } => (KIND_LAYER, *transfer, *meta, bytes),
        KvMessage::Hidden {
            transfer,
            meta,
            bytes,
        } => (KIND_HIDDEN, *transfer, *meta, bytes),
        KvMessage::Complete { transfer, trailer } => (KIND_COMPLETE, *transfer, zero, trailer),
        KvMessage::Abort { transfer, reason } => (KIND_ABORT, *transfer, zero, reason.as_bytes()),
    };
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN);
    out.extend_from_slice(&WIRE_MAGIC);
    out.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    out.push(kind);
    out.push(meta.dtype);
    out.extend_from_slice(&transfer.0.to_le_bytes());
    for v in [
        meta.layer,
        meta.n_layers,
        meta.kv_heads,
        meta.head_dim,
        meta.token_start,
        meta.token_count,
    ] {
        put_u32(&mut out, v);
    }
    put_u32(&mut out, payload.len() as u32);
    let crc = crc32fast::hash(&out);
    put_u32(&mut out, crc);
    out
}

/// Parses and checks a header (everything that can be checked before the payload).
pub fn parse_header(h: &[u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, FrameError> {
    if h[0..4] != WIRE_MAGIC {
        return Err(FrameError::Magic);
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != WIRE_VERSION {
        return Err(FrameError::Version(version));
    }
    if crc32fast::hash(&h[..44]).to_le_bytes() != h[44..48] {
        return Err(FrameError::HeaderChecksum);
    }
    let kind = h[6];
    if !(KIND_LAYER..=KIND_HIDDEN).contains(&kind) {
        return Err(FrameError::Kind(kind));
    }
    let u = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let mut t = [0u8; 8];
    t.copy_from_slice(&h[8..16]);
    let meta = LayerShape {
        layer: u(16),
        n_layers: u(20),
        dtype: h[7],
        kv_heads: u(24),
        head_dim: u(28),
        token_start: u(32),
        token_count: u(36),
    };
    let payload_len = u(40) as usize;
    if payload_len > MAX_PAYLOAD {
        return Err(FrameError::Oversize(payload_len as u64));
    }
    if !carries_data(kind) && payload_len > MAX_CONTROL_PAYLOAD {
        return Err(FrameError::Oversize(payload_len as u64));
    }
    if carries_data(kind) {
        let want = if kind == KIND_LAYER {
            meta.payload_len()
        } else {
            meta.hidden_len()
        }
        .ok_or(FrameError::Dtype(meta.dtype))?;
        if want != payload_len {
            return Err(FrameError::Length {
                got: payload_len,
                want,
            });
        }
    }
    Ok(FrameHeader {
        kind,
        transfer: TransferId(u64::from_le_bytes(t)),
        meta,
        payload_len,
    })
}

/// Checks a payload against the checksum that followed it and builds the message.
pub fn finish(h: &FrameHeader, payload: Vec<u8>, sent_crc: u32) -> Result<KvMessage, FrameError> {
    let crc = crc32fast::hash(&payload);
    finish_checked(h, payload, crc, sent_crc)
}

/// Like [`finish`], with the payload's CRC-32 already computed (`crc`) while it was read.
pub fn finish_checked(
    h: &FrameHeader,
    payload: Vec<u8>,
    crc: u32,
    sent_crc: u32,
) -> Result<KvMessage, FrameError> {
    if crc != sent_crc {
        return Err(FrameError::Checksum);
    }
    Ok(match h.kind {
        KIND_LAYER => KvMessage::Layer {
            transfer: h.transfer,
            meta: h.meta,
            bytes: payload,
        },
        KIND_HIDDEN => KvMessage::Hidden {
            transfer: h.transfer,
            meta: h.meta,
            bytes: payload,
        },
        KIND_COMPLETE => KvMessage::Complete {
            transfer: h.transfer,
            trailer: payload,
        },
        _ => KvMessage::Abort {
            transfer: h.transfer,
            reason: String::from_utf8_lossy(&payload).into_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DTYPE_F16;

    fn layer() -> KvMessage {
        KvMessage::Layer {
            transfer: TransferId(9),
            meta: LayerShape {
                layer: 3,
                n_layers: 30,
                dtype: DTYPE_F16,
                kv_heads: 3,
                head_dim: 4,
                token_start: 0,
                token_count: 2,
            },
            bytes: (0..96u8).collect(),
        }
    }

    fn roundtrip(bytes: &[u8]) -> Result<KvMessage, FrameError> {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h.copy_from_slice(&bytes[..FRAME_HEADER_LEN]);
        let hdr = parse_header(&h)?;
        let end = FRAME_HEADER_LEN + hdr.payload_len;
        let mut crc = [0u8; CHECKSUM_LEN];
        crc.copy_from_slice(&bytes[end..end + CHECKSUM_LEN]);
        finish(
            &hdr,
            bytes[FRAME_HEADER_LEN..end].to_vec(),
            u32::from_le_bytes(crc),
        )
    }

    #[test]
    fn frames_round_trip() {
        for m in [
            layer(),
            KvMessage::Complete {
                transfer: TransferId(1),
                trailer: b"{}".to_vec(),
            },
            KvMessage::Abort {
                transfer: TransferId(2),
                reason: "gone".into(),
            },
            hidden(),
        ] {
            assert_eq!(roundtrip(&encode(&m)).unwrap(), m);
        }
    }

    /// Two tokens of a width-6 residual stream entering layer 15 of 30.
    fn hidden() -> KvMessage {
        KvMessage::Hidden {
            transfer: TransferId(5),
            meta: LayerShape {
                layer: 15,
                n_layers: 30,
                dtype: crate::DTYPE_F32,
                kv_heads: 1,
                head_dim: 6,
                token_start: 7,
                token_count: 2,
            },
            bytes: (0..48).collect(),
        }
    }

    #[test]
    fn hidden_state_frames_check_their_shape() {
        // 2 tokens x 6 x f32 = 48 bytes; a K/V-sized (96) or f16-typed frame is refused.
        let good = encode(&hidden());
        assert_eq!(good.len(), FRAME_HEADER_LEN + 48 + CHECKSUM_LEN);
        let b = resealed(good.clone(), |b| {
            b[36..40].copy_from_slice(&4u32.to_le_bytes())
        });
        assert_eq!(roundtrip(&b), Err(FrameError::Length { got: 48, want: 96 }));
        let b = resealed(good, |b| b[7] = 9);
        assert_eq!(roundtrip(&b), Err(FrameError::Dtype(9)));
    }

    /// A header edited in place, its checksum made to match again (a well-formed lie).
    fn resealed(mut b: Vec<u8>, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
        edit(&mut b);
        let crc = crc32fast::hash(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn bad_frames_are_refused_with_the_reason() {
        let good = encode(&layer());
        let b = resealed(good.clone(), |b| b[0] = b'X');
        assert_eq!(roundtrip(&b), Err(FrameError::Magic));
        let b = resealed(good.clone(), |b| b[4] = 9);
        assert_eq!(roundtrip(&b), Err(FrameError::Version(9)));
        let b = resealed(good.clone(), |b| b[6] = 7);
        assert_eq!(roundtrip(&b), Err(FrameError::Kind(7)));
        let b = resealed(good.clone(), |b| b[7] = 5);
        assert_eq!(roundtrip(&b), Err(FrameError::Dtype(5)));
        // token_count 3: the shape now wants 144 bytes
        let b = resealed(good.clone(), |b| b[36] = 3);
        assert_eq!(
            roundtrip(&b),
            Err(FrameError::Length { got: 96, want: 144 })
        );
        let b = resealed(good.clone(), |b| {
            b[40..44].copy_from_slice(&(u32::MAX).to_le_bytes())
        });
        assert!(matches!(roundtrip(&b), Err(FrameError::Oversize(_))));
        // A complete or abort frame may not announce more than a control payload (its
        // header alone used to make the receiver reserve up to 1 GiB).
        let abort = encode(&KvMessage::Abort {
            transfer: TransferId(2),
            reason: "gone".into(),
        });
        let big = (MAX_CONTROL_PAYLOAD + 1) as u32;
        let b = resealed(abort.clone(), |b| {
            b[40..44].copy_from_slice(&big.to_le_bytes())
        });
        let mut h = [0u8; FRAME_HEADER_LEN];
        h.copy_from_slice(&b[..FRAME_HEADER_LEN]);
        assert_eq!(parse_header(&h), Err(FrameError::Oversize(u64::from(big))));
        // A header corrupted in flight: refused before its payload is read.
        let mut b = good.clone();
        b[20] ^= 1;
        assert_eq!(roundtrip(&b), Err(FrameError::HeaderChecksum));
        // A payload byte or the payload checksum corrupted.
        let mut b = good.clone();
        b[FRAME_HEADER_LEN + 5] ^= 1;
        assert_eq!(roundtrip(&b), Err(FrameError::Checksum));
        let mut b = good;
        let last = b.len() - 1;
        b[last] ^= 1;
        assert_eq!(roundtrip(&b), Err(FrameError::Checksum));
    }
}
