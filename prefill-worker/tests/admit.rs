//! Admission in the prefill worker, with the real default model: a prompt's KV is
//! streamed to the endpoint it names, an unreachable endpoint is refused as such, and a
//! client gone before its turn aborts its transfer (freeing the decode side).

use genie_engine::model::Model;
use genie_engine::sampling::{Sampler, SamplingParams};
use genie_kv_transfer::{InProcessTransport, KvMessage};
use genie_prefill_worker::{PrefillConfig, PrefillSeq, PrefillWorker};
use genie_protocol::worker::SeqEvent;
use genie_protocol::{TransferId, WorkerId};
use genie_worker_core::{event_channel, AdmitError};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

fn worker() -> (PrefillWorker, mpsc::Receiver<KvMessage>, usize) {
    let path = genie_engine::fetch::resolve_model(None).expect("the default model");
    let m = Model::from_gguf(genie_engine::gguf::load(&path).unwrap(), 1).unwrap();
    let layers = m.config().n_layers;
    let transport = InProcessTransport::new();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    transport.register(
        "decode-1",
        Arc::new(move |m| tx.lock().unwrap().send(m).is_ok()),
    );
    let w = PrefillWorker::start(
        PrefillConfig {
            id: WorkerId(0),
            max_batch_tokens: 512,
            prefix_cache_bytes: 0,
            queue: 4,
        },
        m,
        Arc::new(transport),
    )
    .unwrap();
    (w, rx, layers)
}

fn seq(id: u64, endpoint: &str, prompt: Vec<u32>) -> PrefillSeq {
    PrefillSeq {
        transfer: TransferId(id),
        kv_endpoint: endpoint.into(),
        prompt,
        skip_tokens: 0,
        max_tokens: 8,
        stop_token_ids: Vec::new(),
        sampler: Sampler::new(SamplingParams::greedy(), 1),
    }
}

#[test]
fn a_prompt_streams_every_layer_then_hands_off_and_its_first_token_goes_to_the_client() {
    let (w, kv, layers) = worker();
    let (tx, mut rx) = event_channel(8);
    w.admit(seq(1, "decode-1", vec![1, 2, 3, 4]), tx).unwrap();
    let first = rx.blocking_recv().unwrap();
    assert!(matches!(first, SeqEvent::Token(_)), "{first:?}");
    let msgs: Vec<KvMessage> = (0..=layers)
        .map(|_| kv.recv_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    for (l, m) in msgs[..layers].iter().enumerate() {
        match m {
            KvMessage::Layer { meta, bytes, .. } => {
                assert_eq!((meta.layer as usize, meta.token_count), (l, 4));
                assert_eq!(Some(bytes.len()), meta.payload_len());
            }
            other => panic!("layer {l}: {other:?}"),
        }
    }
    assert!(matches!(msgs[layers], KvMessage::Complete { .. }));
    // Load is counted while queued and released after the batch.
    while w.stats().load.load(Ordering::Relaxed) != 0 {
        std::thread::yield_now();
    }
    assert_eq!(w.stats().queued_tokens.load(Ordering::Relaxed), 0);
}

#[test]
fn an_unreachable_endpoint_and_an_empty_prompt_are_refused_with_their_codes() {
    let (w, _kv, _) = worker();
    let (tx, _rx) = event_channel(8);
    let e = w.admit(seq(1, "decode-9", vec![1]), tx).unwrap_err();
    assert!(matches!(e, AdmitError::KvUnreachable(_)), "{e}");
    assert_eq!(e.code(), genie_protocol::worker::FailureCode::KvUnreachable);
    let (tx, _rx) = event_channel(8);
    let e = w.admit(seq(2, "decode-1", Vec::new()), tx).unwrap_err();
    assert!(matches!(e, AdmitError::Invalid(_)), "{e}");
    assert_eq!(w.stats().load.load(Ordering::Relaxed), 0);
    // Refusals take no admission number; the first admission is number 1.
    assert_eq!(w.status().admitted, 0);
    let (tx, _rx) = event_channel(8);
    assert_eq!(w.admit(seq(3, "decode-1", vec![1]), tx).unwrap(), 1);
    assert_eq!(w.status().admitted, 1);
}

#[test]
fn a_client_gone_before_its_turn_aborts_its_transfer() {
    let (w, kv, _) = worker();
    let (tx, rx) = event_channel(8);
    drop(rx);
    w.admit(seq(5, "decode-1", vec![1, 2, 3]), tx).unwrap();
    match kv.recv_timeout(Duration::from_secs(60)).unwrap() {
        KvMessage::Abort { transfer, .. } => assert_eq!(transfer, TransferId(5)),
        other => panic!("{other:?}"),
    }
}
