//! The RDMA transport (cargo feature `rdma`, async-rdma over libibverbs/librdmacm).
//!
//! It carries exactly the frames of the TCP transport ([`crate::wire`]), as RDMA send/receive
//! messages of at most [`RDMA_MESSAGE_BYTES`] (a frame larger than that spans several
//! messages); the receiver reassembles the byte stream and applies the same checks (format,
//! registry of expected transfers, checksum), aborting the transfer on any failure.
//! Endpoints are written `rdma://host:port` (the port of the RDMA connection manager's TCP
//! side-channel). Built and type-checked in CI; run only where an RDMA device (a real NIC or
//! Soft-RoCE) exists — see docs/ARCHITECTURE.md.

use crate::registry::TransferRegistry;
use crate::wire::{self, FRAME_HEADER_LEN};
use crate::{Deliver, KvMessage, KvSink, KvTransport, LayerMeta, TransferError};
use async_rdma::{LocalMrReadAccess, LocalMrWriteAccess, RdmaBuilder, RdmaListener};
use genie_protocol::TransferId;
use std::alloc::Layout;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Largest RDMA message; longer frames are split.
pub const RDMA_MESSAGE_BYTES: usize = 4 << 20;
/// The scheme of RDMA KV endpoints.
pub const SCHEME: &str = "rdma://";

/// Opens RDMA connections to `rdma://host:port` endpoints.
#[derive(Clone, Debug, Default)]
pub struct RdmaTransport;

impl KvTransport for RdmaTransport {
    fn open(&self, endpoint: &str, transfer: TransferId) -> Result<Box<dyn KvSink>, TransferError> {
        let addr = endpoint
            .strip_prefix(SCHEME)
            .unwrap_or(endpoint)
            .to_string();
        let (tx, rx) = mpsc::channel::<KvMessage>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let failed = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&failed);
        let writer = std::thread::Builder::new()
            .name("genie-kv-rdma".into())
            .spawn(move || -> Result<(), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let rdma = match RdmaBuilder::default()
                        .set_max_message_length(RDMA_MESSAGE_BYTES)
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
                    for m in rx {
                        let mut frame = wire::header(&m);
                        frame.extend_from_slice(wire::payload(&m));
                        for part in frame.chunks(RDMA_MESSAGE_BYTES) {
                            let layout = Layout::from_size_align(part.len(), 8)
                                .map_err(|e| e.to_string())?;
                            let mut lmr = rdma.alloc_local_mr(layout).map_err(|e| e.to_string())?;
                            lmr.as_mut_slice().copy_from_slice(part);
                            if let Err(e) = rdma.send(&lmr).await {
                                f.store(true, Ordering::Release);
                                return Err(e.to_string());
                            }
                        }
                    }
                    Ok(())
                })
            })
            .map_err(|e| TransferError::Connect {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                return Err(TransferError::Connect {
                    endpoint: endpoint.to_string(),
                    reason,
                })
            }
            Err(_) => {
                return Err(TransferError::Connect {
                    endpoint: endpoint.to_string(),
                    reason: "the RDMA writer stopped".into(),
                })
            }
        }
        Ok(Box::new(RdmaSink {
            endpoint: endpoint.to_string(),
            transfer,
            tx: Some(tx),
            writer: Some(writer),
            failed,
            started: None,
            bytes: 0,
            done: false,
        }))
    }

    fn kind(&self) -> &'static str {
        "rdma"
    }
}

struct RdmaSink {
    endpoint: String,
    transfer: TransferId,
    tx: Option<mpsc::Sender<KvMessage>>,
    writer: Option<std::thread::JoinHandle<Result<(), String>>>,
    failed: Arc<AtomicBool>,
    started: Option<Instant>,
    bytes: u64,
    done: bool,
}

impl RdmaSink {
    fn err(&self, reason: String) -> TransferError {
        TransferError::Connect {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    fn push(&mut self, m: KvMessage) -> Result<(), TransferError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.err("the RDMA connection failed".into()));
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| self.err("transfer already ended".into()))?;
        tx.send(m)
            .map_err(|_| self.err("the RDMA writer stopped".into()))
    }

    fn drain(&mut self) -> Result<(), TransferError> {
        self.tx = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(self.err(e)),
            Some(Err(_)) => Err(self.err("the RDMA writer panicked".into())),
        }
    }
}

impl KvSink for RdmaSink {
    fn send_layer(&mut self, meta: LayerMeta, bytes: Vec<u8>) -> Result<(), TransferError> {
        self.started.get_or_insert_with(Instant::now);
        let n = bytes.len() as u64;
        self.push(KvMessage::Layer {
            transfer: self.transfer,
            meta,
            bytes,
        })?;
        self.bytes += n;
        Ok(())
    }

    fn complete(mut self: Box<Self>, trailer: Vec<u8>) -> Result<(), TransferError> {
        self.done = true;
        self.push(KvMessage::Complete {
            transfer: self.transfer,
            trailer,
        })?;
        self.drain()?;
        metrics::counter!("genie_kv_transfer_bytes_total", "transport" => "rdma")
            .increment(self.bytes);
        if let Some(t) = self.started {
            metrics::histogram!("genie_kv_transfer_seconds", "transport" => "rdma")
                .record(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn abort(mut self: Box<Self>, reason: &str) {
        self.done = true;
        let _ = self.push(KvMessage::Abort {
            transfer: self.transfer,
            reason: reason.to_string(),
        });
        let _ = self.drain();
    }
}

impl Drop for RdmaSink {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.push(KvMessage::Abort {
                transfer: self.transfer,
                reason: "sender dropped the transfer".into(),
            });
            let _ = self.drain();
        }
    }
}

/// Accepts RDMA connections on `addr` (`host:port`) and delivers their checked frames.
pub async fn serve(
    addr: &str,
    registry: TransferRegistry,
    deliver: Deliver,
    stall: Duration,
) -> std::io::Result<()> {
    let listener = RdmaListener::bind(addr).await?;
    loop {
        let rdma = match listener.accept(1, 1, RDMA_MESSAGE_BYTES).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "RDMA accept failed");
                continue;
            }
        };
        let (reg, del) = (registry.clone(), Arc::clone(&deliver));
        tokio::spawn(async move {
            let mut assembler = Assembler::default();
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
                if let Err(e) = assembler.push(&msg, &reg, &del) {
                    tracing::warn!(error = %e, "RDMA KV connection refused");
                    assembler.fail(&reg, &del, &e);
                    return;
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

    fn push(
        &mut self,
        bytes: &[u8],
        reg: &TransferRegistry,
        deliver: &Deliver,
    ) -> Result<(), String> {
        self.buf.extend_from_slice(bytes);
        loop {
            if self.buf.len() < FRAME_HEADER_LEN {
                return Ok(());
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
            if self.buf.len() < FRAME_HEADER_LEN + hdr.payload_len {
                return Ok(());
            }
            if hdr.kind == 1 {
                reg.account(hdr.transfer, hdr.payload_len)
                    .map_err(|e| e.to_string())?;
            }
            let payload = self.buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + hdr.payload_len].to_vec();
            self.buf.drain(..FRAME_HEADER_LEN + hdr.payload_len);
            let m = wire::finish(&hdr, payload).map_err(|e| e.to_string())?;
            if !matches!(m, KvMessage::Layer { .. }) {
                reg.forget(hdr.transfer);
                self.current = None;
            }
            if !deliver(m) {
                return Ok(());
            }
        }
    }
}
