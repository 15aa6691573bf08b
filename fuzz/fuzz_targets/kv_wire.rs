//! The KV wire decoder: `parse_header` and `finish_checked` on arbitrary frames, and the
//! TCP receiver's frame loop fed arbitrary bytes as a connection's stream (transfers 0..4
//! expected with a small reservation, as a decode worker would after admitting them).
//! Each input runs as it is and again with its frames' checksums made to match, so that
//! mutated headers reach the checks behind the header checksum.
#![no_main]

use genie_kv_transfer::registry::TransferRegistry;
use genie_kv_transfer::wire::{self, CHECKSUM_LEN, FRAME_HEADER_LEN};
use genie_kv_transfer::{tcp, Deliver};
use genie_protocol::TransferId;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    decode(data);
    decode(&resealed(data));
});

/// `data` with each frame's header checksum (over bytes 0..44) and payload checksum (after
/// the payload its header announces) recomputed, frame after frame while the bytes last:
/// libFuzzer cannot forge a CRC-32, so unsealed almost every mutated header stops there.
fn resealed(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    let mut at = 0;
    while b.len() - at >= FRAME_HEADER_LEN {
        let h = &mut b[at..at + FRAME_HEADER_LEN];
        let crc = crc32fast::hash(&h[..44]);
        h[44..48].copy_from_slice(&crc.to_le_bytes());
        let len = u32::from_le_bytes([h[40], h[41], h[42], h[43]]) as usize;
        let start = at + FRAME_HEADER_LEN;
        let end = start.saturating_add(len);
        if end.saturating_add(CHECKSUM_LEN) > b.len() {
            break;
        }
        let crc = crc32fast::hash(&b[start..end]);
        b[end..end + CHECKSUM_LEN].copy_from_slice(&crc.to_le_bytes());
        at = end + CHECKSUM_LEN;
    }
    b
}

fn decode(data: &[u8]) {
    // One frame, decoded directly.
    if data.len() >= FRAME_HEADER_LEN {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h.copy_from_slice(&data[..FRAME_HEADER_LEN]);
        if let Ok(hdr) = wire::parse_header(&h) {
            let rest = &data[FRAME_HEADER_LEN..];
            if rest.len() >= hdr.rest_len() {
                let payload = rest[..hdr.payload_len].to_vec();
                let mut sent = [0u8; CHECKSUM_LEN];
                sent.copy_from_slice(&rest[hdr.payload_len..hdr.rest_len()]);
                let _ = wire::finish(&hdr, payload, u32::from_le_bytes(sent));
            }
        }
    }

    // The same bytes as a connection's stream.
    let registry = TransferRegistry::new();
    for id in 0..4 {
        registry.expect(TransferId(id), 64 << 10, Duration::from_secs(5));
    }
    let deliver: Deliver = Arc::new(|_| true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let mut stream = data;
    let mut current = None;
    let _ = rt.block_on(tcp::frames(
        &mut stream,
        &registry,
        &deliver,
        Duration::from_secs(5),
        &mut current,
    ));
}
