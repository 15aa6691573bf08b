//! The TCP transport. Sending: one connection per transfer, frames written by a writer
//! thread so the prefill compute thread never waits on the network (layer `l` travels while
//! layer `l + 1` computes). Receiving: [`serve`] accepts connections on the decode worker's
//! KV port, checks every frame (wire format, registry, checksum) and delivers the messages;
//! on any bad frame it aborts the transfer and closes the connection.

use crate::registry::TransferRegistry;
use crate::threaded::ThreadedSink;
use crate::wire::{self, FRAME_HEADER_LEN};
use crate::{Deliver, KvMessage, KvSink, KvTransport, TransferError};
use genie_protocol::TransferId;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Opens TCP connections to `host:port` KV endpoints.
#[derive(Clone, Debug)]
pub struct TcpTransport {
    pub connect_timeout: Duration,
    /// A write that makes no progress for this long fails the transfer (stalled receiver).
    pub write_timeout: Duration,
}

impl Default for TcpTransport {
    fn default() -> Self {
        TcpTransport {
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
        }
    }
}

impl KvTransport for TcpTransport {
    fn open(&self, endpoint: &str, transfer: TransferId) -> Result<Box<dyn KvSink>, TransferError> {
        let unreachable = |why: String| TransferError::Connect {
            endpoint: endpoint.to_string(),
            reason: why,
        };
        let addr = endpoint
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("no address".into()))?;
        let stream = TcpStream::connect_timeout(&addr, self.connect_timeout)
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_write_timeout(Some(self.write_timeout))
            .map_err(|e| unreachable(e.to_string()))?;
        // The writer frames each message (checksum included) off the caller's thread and
        // writes header and payload separately, so the payload is never copied.
        let sink = ThreadedSink::start(endpoint, transfer, "tcp", "genie-kv-send", move |end| {
            let mut s = stream;
            for m in end.rx {
                let r = s
                    .write_all(&wire::header(&m))
                    .and_then(|_| s.write_all(wire::payload(&m)));
                if let Err(e) = r {
                    end.failed.store(true, Ordering::Release);
                    return Err(e.to_string());
                }
            }
            s.flush().map_err(|e| e.to_string())
        })?;
        Ok(Box::new(sink))
    }

    fn kind(&self) -> &'static str {
        "tcp"
    }
}

/// Accepts KV connections until the listener fails; each connection is served by its
/// own task. `stall` bounds the wait for the next frame of a started transfer.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: TransferRegistry,
    deliver: Deliver,
    stall: Duration,
) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "KV accept failed");
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let (reg, del) = (registry.clone(), Arc::clone(&deliver));
        tokio::spawn(async move {
            if let Err(e) = connection(sock, &reg, &del, stall).await {
                tracing::warn!(%peer, error = %e, "KV connection refused");
            }
        });
    }
}

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("frame: {0}")]
    Frame(#[from] wire::FrameError),
    #[error("{0}")]
    Registry(#[from] crate::registry::RegistryError),
    #[error("frame for transfer {got} on a connection carrying {want}")]
    Mixed { got: TransferId, want: TransferId },
    #[error("connection closed before transfer {0} completed")]
    Truncated(TransferId),
    #[error("no frame for {0:?}: stalled transfer")]
    Stalled(Duration),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

async fn read_exact_within(
    sock: &mut tokio::net::TcpStream,
    buf: &mut [u8],
    limit: Duration,
) -> Result<(), ReceiveError> {
    match tokio::time::timeout(limit, sock.read_exact(buf)).await {
        Ok(r) => r.map(|_| ()).map_err(ReceiveError::from),
        Err(_) => Err(ReceiveError::Stalled(limit)),
    }
}

async fn connection(
    mut sock: tokio::net::TcpStream,
    registry: &TransferRegistry,
    deliver: &Deliver,
    stall: Duration,
) -> Result<(), ReceiveError> {
    let mut current: Option<TransferId> = None;
    let result = frames(&mut sock, registry, deliver, stall, &mut current).await;
    if let Err(e) = &result {
        // Never leave a partial sequence behind: the receiver drops what it holds.
        if let Some(t) = current {
            registry.forget(t);
            deliver(KvMessage::Abort {
                transfer: t,
                reason: format!("KV transfer broken: {e}"),
            });
        }
    }
    result
}

async fn frames(
    sock: &mut tokio::net::TcpStream,
    registry: &TransferRegistry,
    deliver: &Deliver,
    stall: Duration,
    current: &mut Option<TransferId>,
) -> Result<(), ReceiveError> {
    loop {
        let mut h = [0u8; FRAME_HEADER_LEN];
        // Between transfers an idle connection may simply close.
        let wait = if current.is_some() {
            stall
        } else {
            Duration::from_secs(3600)
        };
        match tokio::time::timeout(wait, sock.read_exact(&mut h)).await {
            Err(_) => return Err(ReceiveError::Stalled(wait)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return match current.take() {
                    Some(t) => {
                        *current = Some(t);
                        Err(ReceiveError::Truncated(t))
                    }
                    None => Ok(()),
                };
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(_)) => {}
        }
        let hdr = wire::parse_header(&h)?;
        if let Some(c) = *current {
            if c != hdr.transfer {
                return Err(ReceiveError::Mixed {
                    got: hdr.transfer,
                    want: c,
                });
            }
        }
        let left = registry.check(hdr.transfer)?;
        *current = Some(hdr.transfer);
        let is_layer = hdr.kind == 1;
        if is_layer {
            registry.account(hdr.transfer, hdr.payload_len)?;
        }
        // Read in slices and checksum each while it is still in cache.
        let mut payload = vec![0u8; hdr.payload_len];
        let mut crc = crc32fast::Hasher::new();
        for part in payload.chunks_mut(256 << 10) {
            read_exact_within(sock, part, left.min(stall)).await?;
            crc.update(part);
        }
        let m = wire::finish_checked(&hdr, payload, crc.finalize())?;
        let ends = !matches!(m, KvMessage::Layer { .. });
        if ends {
            registry.forget(hdr.transfer);
            *current = None;
        }
        if !deliver(m) {
            return Ok(());
        }
        if ends {
            return Ok(());
        }
    }
}
