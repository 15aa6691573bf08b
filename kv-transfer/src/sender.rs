//! The sending half shared by the network transports: the caller queues messages on a
//! bounded queue, and a task on the process's one KV-sending runtime puts them on the
//! wire, so the prefill compute thread never waits on the network (unless the network
//! falls a whole queue behind: then it waits, which is the backpressure). Transfers are
//! tasks, not OS threads.

use crate::{KvMessage, KvSink, TransferError};
use genie_protocol::TransferId;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Messages a transfer may have queued ahead of the wire (layers are up to megabytes).
pub const SEND_QUEUE: usize = 8;

/// The runtime every outgoing transfer of this process is written on: one thread,
/// started on first use. Its tasks end with their transfers.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("genie-kv-send")
            .enable_all()
            .build()
            .expect("the KV sending runtime starts")
    })
}

/// What a transport's writer task gets: the messages to send and a flag to raise when
/// the connection fails (so later sends fail fast).
pub(crate) struct WriterEnd {
    pub rx: mpsc::Receiver<KvMessage>,
    pub failed: Arc<AtomicBool>,
}

pub(crate) struct TaskSink {
    endpoint: String,
    transfer: TransferId,
    kind: &'static str,
    tx: Option<mpsc::Sender<KvMessage>>,
    written: Option<oneshot::Receiver<Result<(), String>>>,
    failed: Arc<AtomicBool>,
    started: Option<Instant>,
    bytes: u64,
    done: bool,
}

impl TaskSink {
    /// Spawns `write` on the sending runtime; it returns when the queue closes. Use the
    /// sink from threads outside any async runtime (it waits for room and for the end).
    pub(crate) fn start<F, Fut>(
        endpoint: &str,
        transfer: TransferId,
        kind: &'static str,
        write: F,
    ) -> Self
    where
        F: FnOnce(WriterEnd) -> Fut,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let end = WriterEnd {
            rx,
            failed: Arc::clone(&failed),
        };
        let (done_tx, written) = oneshot::channel();
        let task = write(end);
        runtime().spawn(async move {
            let _ = done_tx.send(task.await);
        });
        TaskSink {
            endpoint: endpoint.to_string(),
            transfer,
            kind,
            tx: Some(tx),
            written: Some(written),
            failed,
            started: None,
            bytes: 0,
            done: false,
        }
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
        tx.blocking_send(m)
            .map_err(|_| self.err("the writer stopped".into()))
    }

    /// Closes the queue and waits until everything queued is written.
    fn drain(&mut self) -> Result<(), TransferError> {
        self.tx = None;
        match self.written.take().map(|w| w.blocking_recv()) {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(self.err(e)),
            Some(Err(_)) => Err(self.err("the writer task stopped".into())),
        }
    }
}

impl KvSink for TaskSink {
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

impl Drop for TaskSink {
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
