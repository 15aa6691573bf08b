//! The sending half shared by the network transports: the caller queues messages on a
//! bounded queue, a writer thread (owned by the transport: TCP or RDMA) puts them on the
//! wire, so the prefill compute thread never waits on the network (unless it falls a whole
//! queue behind). One thread per transfer: the two alternatives tried, a task per transfer
//! on a shared runtime and a job on a shared blocking pool, moved 256-token transfers
//! 25-40 % slower in `genie bench kv-transfer` (BENCHMARKS.md).

use crate::{KvMessage, KvSink, TransferError};
use genie_protocol::TransferId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

/// What a transport's writer thread gets: the messages to send and a flag to raise when
/// the connection fails (so later sends fail fast).
pub(crate) struct WriterEnd {
    pub rx: mpsc::Receiver<KvMessage>,
    pub failed: Arc<AtomicBool>,
}

/// Messages a transfer may have queued ahead of the wire (layers are up to megabytes; a
/// model's whole prompt KV for the models served here).
pub const SEND_QUEUE: usize = 64;

pub(crate) struct ThreadedSink {
    endpoint: String,
    transfer: TransferId,
    kind: &'static str,
    tx: Option<mpsc::SyncSender<KvMessage>>,
    writer: Option<std::thread::JoinHandle<Result<(), String>>>,
    failed: Arc<AtomicBool>,
    started: Option<Instant>,
    bytes: u64,
    done: bool,
}

impl ThreadedSink {
    /// Starts `write` on a thread named `thread`; it returns when the queue closes.
    pub(crate) fn start(
        endpoint: &str,
        transfer: TransferId,
        kind: &'static str,
        thread: &str,
        write: impl FnOnce(WriterEnd) -> Result<(), String> + Send + 'static,
    ) -> Result<Self, TransferError> {
        let (tx, rx) = mpsc::sync_channel(SEND_QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let end = WriterEnd {
            rx,
            failed: Arc::clone(&failed),
        };
        let writer = std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || write(end))
            .map_err(|e| TransferError::Connect {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })?;
        Ok(ThreadedSink {
            endpoint: endpoint.to_string(),
            transfer,
            kind,
            tx: Some(tx),
            writer: Some(writer),
            failed,
            started: None,
            bytes: 0,
            done: false,
        })
    }

    fn err(&self, reason: String) -> TransferError {
        TransferError::Connect {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    fn push(&mut self, m: KvMessage) -> Result<(), TransferError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.err("the connection failed".into()));
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| self.err("transfer already ended".into()))?;
        tx.send(m)
            .map_err(|_| self.err("the writer stopped".into()))
    }

    /// Closes the queue and waits until everything queued is written.
    fn drain(&mut self) -> Result<(), TransferError> {
        self.tx = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(self.err(e)),
            Some(Err(_)) => Err(self.err("the writer panicked".into())),
        }
    }
}

impl KvSink for ThreadedSink {
    fn transfer(&self) -> TransferId {
        self.transfer
    }

    fn send_data(&mut self, m: KvMessage) -> Result<(), TransferError> {
        self.started.get_or_insert_with(Instant::now);
        let n = crate::wire::payload(&m).len() as u64;
        self.push(m)?;
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
        metrics::counter!("genie_kv_transfer_bytes_total", "transport" => self.kind)
            .increment(self.bytes);
        if let Some(t) = self.started {
            metrics::histogram!("genie_kv_transfer_seconds", "transport" => self.kind)
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

impl Drop for ThreadedSink {
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
