//! Admission in the decode worker, with the real default model: the KV reservation a
//! sequence makes, the refusal when the budget is full, and the release when its client
//! goes away.

use genie_decode_worker::{DecodeConfig, DecodeSeq, DecodeWorker, KvSource};
use genie_engine::kv_budget::KvBudget;
use genie_engine::model::Model;
use genie_engine::sampling::{Sampler, SamplingParams};
use genie_kv_transfer::TransferRegistry;
use genie_protocol::worker::{FinishReason, SeqEvent};
use genie_protocol::{TransferId, WorkerId};
use genie_worker_core::{event_channel, AdmitError};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

fn model() -> Model {
    let path = genie_engine::fetch::resolve_model(None).expect("the default model");
    Model::from_gguf(genie_engine::gguf::load(&path).unwrap(), 1).unwrap()
}

/// A worker with room for `tokens` tokens of KV; `freed` gets a message whenever
/// sequences leave it.
fn worker(tokens: usize, registry: Option<TransferRegistry>) -> (DecodeWorker, mpsc::Receiver<()>) {
    let m = model();
    let budget = KvBudget::new(tokens * m.kv_shape().bytes_per_token());
    let (tx, freed) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let w = DecodeWorker::start(
        DecodeConfig {
            id: WorkerId(1),
            max_batch: 8,
            max_prefill_tokens: 512,
            transfer_timeout: Duration::from_secs(60),
            kv_wait_timeout: Duration::from_secs(600),
            queue: 16,
            prefix_cache_bytes: 0,
        },
        m,
        budget,
        Arc::new(move || {
            let _ = tx.lock().unwrap().send(());
        }),
        registry,
    )
    .unwrap();
    (w, freed)
}

fn seq(source: KvSource, max_tokens: usize) -> DecodeSeq {
    DecodeSeq {
        source,
        max_tokens,
        stop_token_ids: Vec::new(),
        sampler: Sampler::new(SamplingParams::greedy(), 1),
    }
}

#[test]
fn admission_reserves_prompt_plus_max_tokens_refuses_when_full_and_frees_on_cancel() {
    let (w, freed) = worker(100, None);
    let per_token = w.kv_shape().bytes_per_token();
    // Expecting a transfer that never comes: the reservation is held meanwhile.
    let transfer = KvSource::Transfer {
        transfer: TransferId(7),
        prompt_tokens: 30,
    };
    let (tx, rx) = event_channel(40);
    w.admit(seq(transfer, 40), tx).unwrap();
    assert_eq!(w.budget().used_bytes(), 70 * per_token);

    // 31 more tokens do not fit in the 30 left: refused, nothing reserved.
    let (tx2, _rx2) = event_channel(21);
    let e = w
        .admit(seq(KvSource::Prompt(vec![1; 10]), 21), tx2)
        .unwrap_err();
    assert_eq!(
        e,
        AdmitError::NoKvRoom {
            needed_bytes: 31 * per_token,
            free_bytes: 30 * per_token
        }
    );
    assert_eq!(w.budget().used_bytes(), 70 * per_token);

    // The client goes away: the worker drops the sequence at its next turn and frees it.
    drop(rx);
    let (tx3, mut rx3) = event_channel(2);
    w.admit(seq(KvSource::Prompt(vec![1, 2, 3]), 2), tx3)
        .unwrap();
    freed.recv_timeout(Duration::from_secs(60)).unwrap();
    // Sequence 3 runs to its end (2 tokens) and frees its KV too.
    let mut events = Vec::new();
    while let Some(ev) = rx3.blocking_recv() {
        events.push(ev);
    }
    assert_eq!(
        events.last(),
        Some(&SeqEvent::Finished(FinishReason::Length))
    );
    while w.budget().used_bytes() != 0 {
        freed.recv_timeout(Duration::from_secs(60)).unwrap();
    }
}

#[test]
fn an_expected_transfer_is_registered_before_admission_returns_and_bad_input_is_refused() {
    let registry = TransferRegistry::new();
    let (w, _freed) = worker(100, Some(registry.clone()));
    let transfer = KvSource::Transfer {
        transfer: TransferId(9),
        prompt_tokens: 4,
    };
    let (tx, _rx) = event_channel(4);
    w.admit(seq(transfer, 4), tx).unwrap();
    assert!(registry.check(TransferId(9)).is_ok());
    assert!(registry.check(TransferId(10)).is_err());

    let (tx, _rx) = event_channel(4);
    let e = w
        .admit(seq(KvSource::Prompt(Vec::new()), 4), tx)
        .unwrap_err();
    assert!(matches!(e, AdmitError::Invalid(_)), "{e}");
    let (tx, _rx) = event_channel(0);
    let e = w.admit(seq(KvSource::Prompt(vec![1]), 0), tx).unwrap_err();
    assert!(matches!(e, AdmitError::Invalid(_)), "{e}");
}
