//! `genie serve`'s pool: prefill and decode workers as threads of this process, KV over
//! the in-process transport. Sequences enter through the same admission the workers'
//! HTTP services call ([`DecodeWorker::admit`], [`PrefillWorker::admit`]).

use crate::kv_index::KvIndex;
use crate::pool::{on_refusal, view, SeqSpec, StartError, WorkerPool};
use futures_util::future::BoxFuture;
use genie_decode_worker::{DecodeSeq, DecodeWorker, KvSource};
use genie_kv_transfer::InProcessTransport;
use genie_prefill_worker::{PrefillSeq, PrefillWorker};
use genie_protocol::worker::WorkerStatus;
use genie_protocol::worker::{SeqEvent, WorkerRole};
use genie_protocol::{TransferId, WorkerId};
use genie_scheduler::{Placement, WorkerView};
use genie_worker_core::{event_channel, AdmitError};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc::Receiver;
use tokio::sync::Notify;

/// Worker threads in this process.
pub struct LocalPool {
    prefill: Vec<PrefillWorker>,
    decode: Vec<DecodeWorker>,
    changed: Arc<Notify>,
    /// The workers' prefix-cache blocks, from the KV events in their status.
    kv: KvIndex,
}

/// The in-process KV endpoint name of decode worker `id`.
pub fn endpoint(id: WorkerId) -> String {
    format!("decode-{}", id.0)
}

impl LocalPool {
    /// A pool over started workers; registers each decode worker with `transport` under
    /// [`endpoint`] (its id), which the prefill workers' transport must be. Each decode
    /// worker must call `changed` when KV frees.
    pub fn new(
        prefill: Vec<PrefillWorker>,
        decode: Vec<DecodeWorker>,
        transport: &InProcessTransport,
        changed: Arc<Notify>,
    ) -> Self {
        for w in &decode {
            transport.register(&endpoint(w.config.id), w.kv_deliverer());
        }
        LocalPool {
            prefill,
            decode,
            kv: KvIndex::new(),
            changed,
        }
    }

    fn start_now(
        &self,
        placement: Placement,
        seq: &SeqSpec,
    ) -> Result<Receiver<SeqEvent>, StartError> {
        let decode = self
            .decode
            .iter()
            .find(|w| w.config.id == placement.decode())
            .ok_or_else(|| {
                StartError::Failed(format!("no decode worker {}", placement.decode()))
            })?;
        let (tx, rx) = event_channel(seq.max_tokens);
        let sampler = seq.sampler();
        let transfer = TransferId(seq.id.0);
        let source = match placement {
            Placement::Colocated { .. } => KvSource::Prompt(seq.prompt.clone()),
            Placement::Disaggregated { .. } => KvSource::Transfer {
                transfer,
                prompt: seq.prompt.clone(),
            },
        };
        // The decode worker may already hold the prompt's first blocks: they are not sent.
        let skip_tokens = decode
            .admit(
                DecodeSeq {
                    source,
                    max_tokens: seq.max_tokens,
                    stop_token_ids: seq.stop_token_ids.clone(),
                    sampler: sampler.clone(),
                },
                tx.clone(),
            )
            .map_err(|e| refused(e, decode.config.id, decode.config.id))?
            .cached;
        if let Placement::Disaggregated { prefill, .. } = placement {
            let p = self
                .prefill
                .iter()
                .find(|w| w.config.id == prefill)
                .ok_or_else(|| StartError::Failed(format!("no prefill worker {prefill}")))?;
            // On a refusal `rx` drops here, which cancels the decode leg and frees its KV.
            p.admit(
                PrefillSeq {
                    transfer,
                    kv_endpoint: endpoint(decode.config.id),
                    prompt: seq.prompt.clone(),
                    skip_tokens,
                    max_tokens: seq.max_tokens,
                    stop_token_ids: seq.stop_token_ids.clone(),
                    sampler,
                },
                tx,
            )
            .map_err(|e| refused(e, prefill, decode.config.id))?;
        }
        Ok(rx)
    }
}

/// A worker's admission refusal as the dispatcher acts on it.
fn refused(e: AdmitError, leg: WorkerId, decode: WorkerId) -> StartError {
    on_refusal(e.code(), leg, decode, e.to_string())
}

impl WorkerPool for LocalPool {
    fn views(&self) -> Vec<WorkerView> {
        let seen = |id: WorkerId, s: &WorkerStatus| {
            if let Some(ev) = &s.kv_events {
                self.kv.apply(id, ev);
            }
        };
        let p = self.prefill.iter().map(|w| {
            let s = w.status();
            seen(w.config.id, &s);
            view(w.config.id, WorkerRole::Prefill, w.is_alive(), &s)
        });
        let d = self.decode.iter().map(|w| {
            let s = w.status();
            seen(w.config.id, &s);
            view(w.config.id, WorkerRole::Decode, w.is_alive(), &s)
        });
        p.chain(d).collect()
    }

    fn cached_tokens(&self, prompt: &[u32]) -> HashMap<WorkerId, usize> {
        self.kv.cached_tokens(prompt)
    }

    fn routed(&self, worker: WorkerId, prompt: &[u32]) {
        self.kv.assume(worker, prompt)
    }

    fn all_alive(&self) -> bool {
        self.decode.iter().all(|w| w.is_alive()) && self.prefill.iter().all(|w| w.is_alive())
    }

    fn alive(&self, id: WorkerId) -> bool {
        let decode = self
            .decode
            .iter()
            .find(|w| w.config.id == id)
            .map(|w| w.is_alive());
        let prefill = || {
            self.prefill
                .iter()
                .find(|w| w.config.id == id)
                .map(|w| w.is_alive())
        };
        decode.or_else(prefill).unwrap_or(false)
    }

    fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    fn start<'a>(
        &'a self,
        placement: Placement,
        seq: &'a SeqSpec,
    ) -> BoxFuture<'a, Result<Receiver<SeqEvent>, StartError>> {
        // In-process admission never blocks: the transport only looks up an endpoint.
        Box::pin(std::future::ready(self.start_now(placement, seq)))
    }
}
