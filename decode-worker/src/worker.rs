//! The decode worker's handle and its input messages.

use crate::batch::BatchLoop;
use genie_engine::kv_budget::{KvBudget, KvReservation};
use genie_engine::kv_cache::{KvCache, KvShape};
use genie_engine::model::Model;
use genie_engine::sampling::Sampler;
use genie_kv_transfer::KvMessage;
use genie_protocol::worker::SeqEvent;
use genie_protocol::{SeqId, TransferId, WorkerId};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Clone, Debug)]
pub struct DecodeConfig {
    pub id: WorkerId,
    /// Most sequences in one decode step.
    pub max_batch: usize,
    /// Most prompt tokens prefilled in one step (colocated sequences).
    pub max_prefill_tokens: usize,
    /// A transfer whose KV has not all arrived by then is dropped.
    pub transfer_timeout: Duration,
}

/// One sequence as the decode worker is given it.
pub struct NewSeq {
    pub id: SeqId,
    /// Tokens to generate in all (including a first token sampled by a prefill worker).
    pub max_tokens: usize,
    /// Token ids that end the sequence (end of turn, eos, request `stop` ids).
    pub stop_token_ids: Vec<u32>,
    /// Replaced by the hand-off's sampler for disaggregated sequences.
    pub sampler: Sampler,
    pub events: UnboundedSender<SeqEvent>,
    /// The sequence's KV bytes, held until it leaves this worker.
    pub reservation: KvReservation,
    pub cache: KvCache,
}

pub enum DecodeInput {
    /// Reserve a slot for a sequence whose KV will arrive as `transfer`.
    Expect {
        transfer: TransferId,
        seq: NewSeq,
    },
    /// Prefill `prompt` here, then decode (colocated).
    Prefill {
        seq: NewSeq,
        prompt: Vec<u32>,
    },
    /// KV transfer traffic for an expected sequence.
    Kv(KvMessage),
    Shutdown,
}

/// Live counters the gateway reads for placement and metrics.
#[derive(Debug, Default)]
pub struct DecodeStats {
    /// Sequences expected, queued or running here.
    pub load: AtomicUsize,
    /// Sequences in the running batch.
    pub running: AtomicUsize,
}

impl DecodeStats {
    pub fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
}

/// A decode worker: its input queue, its KV budget and its compute thread.
pub struct DecodeWorker {
    pub config: DecodeConfig,
    tx: mpsc::Sender<DecodeInput>,
    budget: KvBudget,
    kv_shape: KvShape,
    stats: Arc<DecodeStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DecodeWorker {
    /// Starts the worker's thread. `on_free` is called whenever sequences leave (their KV
    /// is released), so a gateway waiting for room can retry.
    pub fn start(
        config: DecodeConfig,
        model: Model,
        budget: KvBudget,
        on_free: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(DecodeStats::default());
        let kv_shape = model.kv_shape();
        let mut batch = BatchLoop::new(
            config.clone(),
            model,
            budget.clone(),
            Arc::clone(&stats),
            on_free,
        );
        let thread = std::thread::Builder::new()
            .name(format!("genie-decode-{}", config.id.0))
            .spawn(move || batch.run(rx))?;
        Ok(DecodeWorker {
            config,
            tx,
            budget,
            kv_shape,
            stats,
            thread: Some(thread),
        })
    }

    /// Queues an input; false if the worker has stopped.
    pub fn send(&self, input: DecodeInput) -> bool {
        self.tx.send(input).is_ok()
    }

    /// A sender for the KV transport to deliver into this worker's queue.
    pub fn kv_deliverer(&self) -> Arc<dyn Fn(KvMessage) -> bool + Send + Sync> {
        let tx = std::sync::Mutex::new(self.tx.clone());
        Arc::new(move |m| {
            tx.lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(DecodeInput::Kv(m))
                .is_ok()
        })
    }

    /// The KV shape of this worker's model (for sizing caches it will receive).
    pub fn kv_shape(&self) -> KvShape {
        self.kv_shape
    }

    pub fn budget(&self) -> &KvBudget {
        &self.budget
    }

    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for DecodeWorker {
    fn drop(&mut self) {
        let _ = self.tx.send(DecodeInput::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
