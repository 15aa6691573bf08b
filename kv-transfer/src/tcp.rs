//! The TCP transport. Sending: one connection per transfer, frames written by a writer
//! thread so the prefill compute thread never waits on the network (layer `l` travels while
//! layer `l + 1` computes). Receiving: [`serve`] accepts connections on the decode worker's
//! KV port, checks every frame (wire format, registry, checksum) and delivers the messages;
//! on any bad frame it aborts the transfer and closes the connection. With the cluster
//! secret the sender's first bytes are its hello ([`genie_cluster_auth::kv`]); the receiver
//! reads nothing more from a connection whose hello does not verify.

use crate::registry::TransferRegistry;
use crate::threaded::ThreadedSink;
use crate::wire::{self, CHECKSUM_LEN, FRAME_HEADER_LEN};
use crate::{Deliver, KvMessage, KvSink, KvTransport, TransferError};
use genie_cluster_auth::kv::HELLO_LEN;
use genie_cluster_auth::ClusterSecret;
use genie_protocol::TransferId;
use std::io::{IoSlice, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// Payload slice checksummed and written at a time (fits in L2 with room to spare).
const SEND_SLICE: usize = 256 << 10;

/// Opens TCP connections to `host:port` KV endpoints.
#[derive(Clone, Debug)]
pub struct TcpTransport {
    pub connect_timeout: Duration,
    /// A write that makes no progress for this long fails the transfer (stalled receiver).
    pub write_timeout: Duration,
    /// The cluster secret: each connection opens with a hello made with it.
    pub secret: Option<ClusterSecret>,
}

impl Default for TcpTransport {
    fn default() -> Self {
        TcpTransport {
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            secret: None,
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
        let mut stream = stream;
        if let Some(secret) = &self.secret {
            stream
                .write_all(&secret.kv_hello(transfer.0))
                .map_err(|e| unreachable(e.to_string()))?;
        }
        // The writer frames each message off the caller's thread, writes the payload from
        // where it lies (never copied) and checksums each slice just before writing it, so
        // the slice is in cache for the socket copy: one pass over the KV, not two.
        let sink = ThreadedSink::start(endpoint, transfer, "tcp", "genie-kv-send", move |end| {
            let mut s = stream;
            for m in end.rx {
                if let Err(e) = write_frame(&mut s, &m) {
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

/// Writes one frame: the header goes out with the first payload slice and the checksum with
/// the last (one `writev` each), so a small layer is one segment on the wire, not three.
fn write_frame(s: &mut TcpStream, m: &KvMessage) -> std::io::Result<()> {
    let header = wire::header(m);
    let payload = wire::payload(m);
    let mut crc = crc32fast::Hasher::new();
    let slices: Vec<&[u8]> = if payload.is_empty() {
        vec![&[][..]]
    } else {
        payload.chunks(SEND_SLICE).collect()
    };
    let last = slices.len() - 1;
    for (i, part) in slices.into_iter().enumerate() {
        crc.update(part);
        let sum = if i == last {
            std::mem::take(&mut crc).finalize().to_le_bytes()
        } else {
            [0; CHECKSUM_LEN]
        };
        let mut bufs = [
            IoSlice::new(if i == 0 { &header } else { &[] }),
            IoSlice::new(part),
            IoSlice::new(if i == last { &sum } else { &[] }),
        ];
        write_all_vectored(s, &mut bufs)?;
    }
    Ok(())
}

fn write_all_vectored(s: &mut TcpStream, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match s.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The receive buffer a KV listener asks for (the kernel books twice this, with its
/// overhead). A connection per transfer never lives long enough for the kernel's receive
/// buffer autotuning to grow its window: on loopback, transfers stayed near 2.2 GB/s where
/// a fixed buffer reaches 4–4.8 GB/s (`genie bench kv-transfer`, BENCHMARKS.md).
pub const RECV_BUFFER: usize = 4 << 20;

/// Gives `listener` (and the connections it accepts) a fixed receive buffer of `bytes`,
/// but only where the kernel grants it in full (`net.core.rmem_max`): a capped fixed
/// buffer would be worse than autotuning on a long link. Returns whether it did.
pub fn fix_receive_buffer(listener: &tokio::net::TcpListener, bytes: usize) -> bool {
    let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok());
    match max {
        Some(m) if m >= bytes => {
            match socket2::SockRef::from(listener).set_recv_buffer_size(bytes) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "KV listener: receive buffer left to the kernel");
                    false
                }
            }
        }
        _ => {
            tracing::info!(
                wanted = bytes,
                rmem_max = ?max,
                "KV listener: net.core.rmem_max is below the receive buffer it wants; \
                 leaving it to the kernel's autotuning (raise rmem_max for faster transfers)"
            );
            false
        }
    }
}

/// Accepts KV connections until `shutdown` is cancelled; each connection is served by
/// its own task, which also ends then (aborting the transfer it carried). `stall` bounds
/// the wait for the next frame of a started transfer. Delivery into a bounded queue (the
/// decode worker's) waits while that queue is full, holding the connection's task until
/// the worker drains it: backpressure on the sender's socket.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: TransferRegistry,
    deliver: Deliver,
    stall: Duration,
    shutdown: CancellationToken,
) {
    fix_receive_buffer(&listener, RECV_BUFFER);
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let (sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "KV accept failed");
                    continue;
                }
            },
        };
        let _ = sock.set_nodelay(true);
        let (reg, del, stop) = (registry.clone(), Arc::clone(&deliver), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = connection(sock, &reg, &del, stall, stop).await {
                tracing::warn!(%peer, error = %e, "KV connection refused");
            }
        });
    }
    tasks.close();
    tasks.wait().await;
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
    #[error("the receiver is shutting down")]
    ShuttingDown,
    #[error("no KV hello within {0:?}")]
    NoHello(Duration),
}

/// How long a new connection may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Fills `buf` within `limit`; `Ok(false)` when the stream ended first (the caller knows
/// whether that truncated a transfer).
async fn fill<S: AsyncRead + Unpin>(
    sock: &mut S,
    buf: &mut [u8],
    limit: Duration,
) -> Result<bool, ReceiveError> {
    match tokio::time::timeout(limit, sock.read_exact(buf)).await {
        Err(_) => Err(ReceiveError::Stalled(limit)),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(_)) => Ok(true),
    }
}

async fn connection(
    mut sock: tokio::net::TcpStream,
    registry: &TransferRegistry,
    deliver: &Deliver,
    stall: Duration,
    shutdown: CancellationToken,
) -> Result<(), ReceiveError> {
    let mut current: Option<TransferId> = None;
    if registry.needs_hello() {
        // Nothing is aborted or delivered for a connection whose hello fails: a forged
        // hello naming an expected transfer must not break it.
        let mut h = [0u8; HELLO_LEN];
        if !fill(&mut sock, &mut h, HELLO_TIMEOUT)
            .await
            .map_err(|_| ReceiveError::NoHello(HELLO_TIMEOUT))?
        {
            return Err(ReceiveError::NoHello(HELLO_TIMEOUT));
        }
        current = Some(registry.claim(&h)?);
    }
    let result = tokio::select! {
        r = frames(&mut sock, registry, deliver, stall, &mut current) => r,
        _ = shutdown.cancelled() => Err(ReceiveError::ShuttingDown),
    };
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

/// Reads frames from one connection's byte stream, checks each (wire format, registry,
/// checksum) and delivers the messages, until the transfer ends, the stream closes between
/// transfers, or a frame is refused (the error says why; `current` holds the transfer that
/// was in flight). Public so that the `kv_wire` fuzz target can feed it arbitrary bytes.
pub async fn frames<S: AsyncRead + Unpin>(
    sock: &mut S,
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
        if !fill(sock, &mut h, wait).await? {
            return match *current {
                Some(t) => Err(ReceiveError::Truncated(t)),
                None => Ok(()),
            };
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
        if wire::carries_data(hdr.kind) {
            registry.account(hdr.transfer, hdr.payload_len)?;
        }
        // Read into uninitialised capacity (no zeroing pass) and checksum each read's
        // bytes while they are still in cache.
        let mut payload = Vec::with_capacity(hdr.payload_len);
        let mut crc = crc32fast::Hasher::new();
        let limit = left.min(stall);
        while payload.len() < hdr.payload_len {
            let at = payload.len();
            let mut rest = (&mut *sock).take((hdr.payload_len - at) as u64);
            let n = match tokio::time::timeout(limit, rest.read_buf(&mut payload)).await {
                Err(_) => return Err(ReceiveError::Stalled(limit)),
                Ok(r) => r?,
            };
            if n == 0 {
                return Err(ReceiveError::Truncated(hdr.transfer));
            }
            crc.update(&payload[at..]);
        }
        let mut sent = [0u8; CHECKSUM_LEN];
        if !fill(sock, &mut sent, limit).await? {
            return Err(ReceiveError::Truncated(hdr.transfer));
        }
        let m = wire::finish_checked(&hdr, payload, crc.finalize(), u32::from_le_bytes(sent))?;
        let ends = m.ends_transfer();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_kv_listener_gets_a_fixed_receive_buffer_only_where_the_kernel_grants_it() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let want = 1 << 20;
        let granted = fix_receive_buffer(&l, want);
        let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok());
        assert_eq!(granted, max.is_some_and(|m| m >= want), "rmem_max {max:?}");
        if granted {
            let got = socket2::SockRef::from(&l).recv_buffer_size().unwrap();
            assert!(got >= want, "asked {want}, the kernel booked {got}");
        }
        // Past the kernel's maximum it is left alone.
        assert!(!fix_receive_buffer(&l, usize::MAX));
    }
}
