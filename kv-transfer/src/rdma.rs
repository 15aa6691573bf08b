//! The RDMA transport (cargo feature `rdma`, async-rdma over libibverbs/librdmacm).
//!
//! It carries exactly the frames of the TCP transport ([`crate::wire`]), as RDMA send/receive
//! messages of at most [`RDMA_MESSAGE_BYTES`] (a frame larger than that spans several
//! messages); the receiver reassembles the byte stream and applies the same checks (format,
//! registry of expected transfers, checksum), aborting the transfer on any failure.
//! Endpoints are written `rdma://host:port` (the port of the RDMA connection manager's TCP
//! side-channel). Built and type-checked in CI; run only where an RDMA device (a real NIC or
//! Soft-RoCE) exists — see docs/ARCHITECTURE.md. With the cluster secret the connection's
//! first message is the sender's hello ([`genie_cluster_auth::kv`]), checked as on TCP
//! before any frame is read.

use crate::registry::TransferRegistry;
use crate::threaded::ThreadedSink;
use crate::wire::{self, CHECKSUM_LEN, FRAME_HEADER_LEN};
use crate::{Deliver, KvMessage, KvSink, KvTransport, TransferError};
use async_rdma::{LocalMrReadAccess, LocalMrWriteAccess, RdmaBuilder, RdmaListener};
use genie_cluster_auth::kv::HELLO_LEN;
use genie_cluster_auth::ClusterSecret;
use genie_protocol::TransferId;
use std::alloc::Layout;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Largest RDMA message; longer frames are split.
pub const RDMA_MESSAGE_BYTES: usize = 4 << 20;
/// The scheme of RDMA KV endpoints.
pub const SCHEME: &str = "rdma://";

/// Opens RDMA connections to `rdma://host:port` endpoints.
#[derive(Clone, Debug, Default)]
pub struct RdmaTransport {
    /// The cluster secret: each connection's first message is a hello made with it.
    pub secret: Option<ClusterSecret>,
}

impl KvTransport for RdmaTransport {
    fn open(&self, endpoint: &str, transfer: TransferId) -> Result<Box<dyn KvSink>, TransferError> {
        let addr = endpoint
            .strip_prefix(SCHEME)
            .unwrap_or(endpoint)
            .to_string();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let hello = self.secret.as_ref().map(|s| s.kv_hello(transfer.0));
        let sink = ThreadedSink::start(endpoint, transfer, "rdma", "genie-kv-rdma", move |end| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                // rnr_retry 7 = retry without limit while the receiver posts its buffers
                // (connect can return before the listener is ready to receive).
                let rdma = match RdmaBuilder::default()
                    .set_max_message_length(RDMA_MESSAGE_BYTES)
                    .set_rnr_retry(7)
                    .connect(addr.as_str())
                    .await
                {
                    Ok(r) => {
                        let _ = ready_tx.send(Ok(()));
                        r
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Err(e.to_string());
                    }
                };
                if let Some(h) = hello {
                    let layout =
                        Layout::from_size_align(HELLO_LEN, 8).map_err(|e| e.to_string())?;
                    let mut lmr = rdma.alloc_local_mr(layout).map_err(|e| e.to_string())?;
                    lmr.as_mut_slice().copy_from_slice(&h);
                    if let Err(e) = rdma.send(&lmr).await {
                        end.failed.store(true, Ordering::Release);
                        return Err(e.to_string());
                    }
                }
                for m in end.rx {
                    let frame = wire::encode(&m);
                    for part in frame.chunks(RDMA_MESSAGE_BYTES) {
                        let layout =
                            Layout::from_size_align(part.len(), 8).map_err(|e| e.to_string())?;
                        let mut lmr = rdma.alloc_local_mr(layout).map_err(|e| e.to_string())?;
                        lmr.as_mut_slice().copy_from_slice(part);
                        if let Err(e) = rdma.send(&lmr).await {
                            end.failed.store(true, Ordering::Release);
                            return Err(e.to_string());
                        }
                    }
                }
                Ok(())
            })
        })?;
        // Report a failed connection now, not at the first layer.
        let refused = |reason: String| TransferError::Connect {
            endpoint: endpoint.to_string(),
            reason,
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Box::new(sink)),
            Ok(Err(reason)) => Err(refused(reason)),
            Err(_) => Err(refused("the RDMA writer stopped".into())),
        }
    }

    fn kind(&self) -> &'static str {
        "rdma"
    }
}

/// Accepts RDMA connections on `addr` (`host:port`) and delivers their checked frames.
pub async fn serve(
    addr: &str,
    registry: TransferRegistry,
    deliver: Deliver,
    stall: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let listener = RdmaListener::bind(addr).await?;
    loop {
        let rdma = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            a = listener.accept(1, 1, RDMA_MESSAGE_BYTES) => match a {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "RDMA accept failed");
                    continue;
                }
            },
        };
        let (reg, del) = (registry.clone(), Arc::clone(&deliver));
        tokio::spawn(async move {
            let mut assembler = Assembler::default();
            if reg.needs_hello() {
                // A connection whose hello fails is dropped with nothing aborted.
                let wait = crate::tcp::HELLO_TIMEOUT;
                let claimed = match tokio::time::timeout(wait, rdma.receive()).await {
                    Ok(Ok(lmr)) => <[u8; HELLO_LEN]>::try_from(&lmr.as_slice()[..])
                        .map_err(|_| "the first message is not a KV hello".to_string())
                        .and_then(|h| reg.claim(&h).map_err(|e| e.to_string())),
                    Ok(Err(e)) => Err(format!("RDMA receive failed: {e}")),
                    Err(_) => Err(format!("no KV hello within {wait:?}")),
                };
                match claimed {
                    Ok(t) => assembler.current = Some(t),
                    Err(e) => {
                        tracing::warn!(error = %e, "RDMA KV connection refused");
                        return;
                    }
                }
            }
            loop {
                let wait = if assembler.current.is_some() {
                    stall
                } else {
                    Duration::from_secs(3600)
                };
                let msg = match tokio::time::timeout(wait, rdma.receive()).await {
                    Ok(Ok(lmr)) => lmr.as_slice().to_vec(),
                    Ok(Err(e)) => {
                        assembler.fail(&reg, &del, &format!("RDMA receive failed: {e}"));
                        return;
                    }
                    Err(_) => {
                        assembler.fail(&reg, &del, "stalled transfer");
                        return;
                    }
                };
                match assembler.push(&msg, &reg, &del) {
                    // One transfer per connection: it ended, so does the connection.
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "RDMA KV connection refused");
                        assembler.fail(&reg, &del, &e);
                        return;
                    }
                }
            }
        });
    }
}

/// Reassembles frames from RDMA messages and checks them as the TCP receiver does.
#[derive(Default)]
struct Assembler {
    buf: Vec<u8>,
    current: Option<TransferId>,
}

impl Assembler {
    fn fail(&mut self, reg: &TransferRegistry, deliver: &Deliver, why: &str) {
        if let Some(t) = self.current.take() {
            reg.forget(t);
            deliver(KvMessage::Abort {
                transfer: t,
                reason: format!("KV transfer broken: {why}"),
            });
        }
    }

    /// Adds received bytes and delivers every complete frame; true once the transfer ended.
    fn push(
        &mut self,
        bytes: &[u8],
        reg: &TransferRegistry,
        deliver: &Deliver,
    ) -> Result<bool, String> {
        self.buf.extend_from_slice(bytes);
        loop {
            if self.buf.len() < FRAME_HEADER_LEN {
                return Ok(false);
            }
            let mut h = [0u8; FRAME_HEADER_LEN];
            h.copy_from_slice(&self.buf[..FRAME_HEADER_LEN]);
            let hdr = wire::parse_header(&h).map_err(|e| e.to_string())?;
            if let Some(c) = self.current {
                if c != hdr.transfer {
                    return Err(format!(
                        "frame for transfer {} on a connection carrying {c}",
                        hdr.transfer
                    ));
                }
            }
            reg.check(hdr.transfer).map_err(|e| e.to_string())?;
            self.current = Some(hdr.transfer);
            let end = FRAME_HEADER_LEN + hdr.payload_len;
            if self.buf.len() < end + CHECKSUM_LEN {
                return Ok(false);
            }
            if wire::carries_data(hdr.kind) {
                reg.account(hdr.transfer, hdr.payload_len)
                    .map_err(|e| e.to_string())?;
            }
            let payload = self.buf[FRAME_HEADER_LEN..end].to_vec();
            let mut sent = [0u8; CHECKSUM_LEN];
            sent.copy_from_slice(&self.buf[end..end + CHECKSUM_LEN]);
            self.buf.drain(..end + CHECKSUM_LEN);
            let m =
                wire::finish(&hdr, payload, u32::from_le_bytes(sent)).map_err(|e| e.to_string())?;
            let ends = m.ends_transfer();
            if ends {
                reg.forget(hdr.transfer);
                self.current = None;
            }
            if !deliver(m) || ends {
                return Ok(true);
            }
        }
    }
}
