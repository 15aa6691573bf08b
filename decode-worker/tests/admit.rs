//! Admission in the decode worker, with the real default model: the KV blocks a sequence
//! takes, the refusal when the budget is full, the release when its client goes away, and
//! preemption when running sequences outgrow the blocks.

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
    chunking_worker(tokens, registry, 0)
}

/// [`worker`] that prefills prompts in chunks of `chunk` tokens beside a running batch.
fn chunking_worker(
    tokens: usize,
    registry: Option<TransferRegistry>,
    chunk: usize,
) -> (DecodeWorker, mpsc::Receiver<()>) {
    let m = model();
    let budget = KvBudget::new(tokens * m.kv_shape().bytes_per_token());
    let (tx, freed) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let w = DecodeWorker::start(
        DecodeConfig {
            id: WorkerId(1),
            max_batch: 8,
            max_prefill_tokens: 512,
            prefill_chunk_tokens: chunk,
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
fn admission_takes_the_prompts_blocks_refuses_when_full_and_frees_on_cancel() {
    let (w, freed) = worker(100, None);
    let per_token = w.kv_shape().bytes_per_token();
    // Expecting a transfer that never comes: the blocks of its prompt and first generated
    // token (two of 16) are held meanwhile, not prompt + max_tokens.
    let transfer = KvSource::Transfer {
        transfer: TransferId(7),
        prompt: vec![1; 30],
    };
    let (tx, rx) = event_channel(40);
    w.admit(seq(transfer, 40), tx).unwrap();
    assert_eq!(w.budget().used_bytes(), 32 * per_token);

    // A prompt whose first blocks (80 tokens) exceed the 68 left: refused, nothing taken.
    let (tx2, _rx2) = event_channel(2);
    let e = w
        .admit(seq(KvSource::Prompt(vec![1; 70]), 2), tx2)
        .unwrap_err();
    assert_eq!(
        e,
        AdmitError::NoKvRoom {
            needed_bytes: 80 * per_token,
            free_bytes: 68 * per_token
        }
    );
    // A sequence whose whole life could never fit the budget is refused up front.
    let (tx2, _rx2) = event_channel(95);
    let e = w
        .admit(seq(KvSource::Prompt(vec![1; 10]), 95), tx2)
        .unwrap_err();
    assert!(
        matches!(e, AdmitError::NoKvRoom { needed_bytes, .. } if needed_bytes == 105 * per_token),
        "{e:?}"
    );
    assert_eq!(w.budget().used_bytes(), 32 * per_token);

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

/// The tokens of a finished sequence's events.
fn tokens_of(mut rx: tokio::sync::mpsc::Receiver<SeqEvent>) -> Vec<u32> {
    let mut out = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            SeqEvent::Token(t) => out.push(t.token),
            SeqEvent::Finished(FinishReason::Length) => return out,
            SeqEvent::Running => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    panic!("the stream ended without finishing");
}

#[test]
fn sequences_that_outgrow_the_blocks_are_preempted_recomputed_and_answer_the_same() {
    // Room for 64 tokens: each sequence (12 + 44) fits alone, two together do not.
    let (w, freed) = worker(64, None);
    // A finished sequence's blocks go back just after its last event.
    let settle = || {
        while w.budget().used_bytes() != 0 {
            let _ = freed.recv_timeout(Duration::from_millis(100));
        }
    };
    let prompts: [Vec<u32>; 2] = [
        vec![1, 504, 3458, 314, 253, 5248, 30, 2, 198, 1, 9690, 198],
        vec![1, 504, 3458, 314, 253, 2265, 30, 2, 198, 1, 9690, 198],
    ];
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let (tx, rx) = event_channel(44);
            w.admit(seq(KvSource::Prompt(p.clone()), 44), tx).unwrap();
            let t = tokens_of(rx);
            settle();
            t
        })
        .collect();
    assert_eq!(w.stats().preemptions(), 0);
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (tx, rx) = event_channel(44);
            w.admit(seq(KvSource::Prompt(p.clone()), 44), tx).unwrap();
            rx
        })
        .collect();
    let together: Vec<Vec<u32>> = rxs.into_iter().map(tokens_of).collect();
    assert!(
        w.stats().preemptions() > 0,
        "the two cannot run side by side"
    );
    assert_eq!(together, alone);
    assert_eq!(w.stats().preempted(), 0);
}

#[test]
fn an_expected_transfer_is_registered_before_admission_returns_and_bad_input_is_refused() {
    let registry = TransferRegistry::new();
    let (w, _freed) = worker(100, Some(registry.clone()));
    let transfer = KvSource::Transfer {
        transfer: TransferId(9),
        prompt: vec![1, 2, 3, 4],
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

#[test]
fn a_sequence_counts_in_the_status_from_its_admission_until_it_ends() {
    let (w, freed) = worker(4000, Some(TransferRegistry::new()));
    // A long colocated prompt: the worker's loop is busy prefilling it (hundreds of ms).
    let (tx, rx_a) = event_channel(8);
    let a = w.admit(seq(KvSource::Prompt(vec![1; 400]), 8), tx).unwrap();
    // Admitted while that step runs: a second prompt (too long to join the first's step
    // under `max_prefill_tokens` 512) and a sequence expecting its KV. Placement must see
    // both at once, not only after the running step ends.
    let (tx, rx_b) = event_channel(8);
    let b = w.admit(seq(KvSource::Prompt(vec![2; 300]), 8), tx).unwrap();
    let transfer = KvSource::Transfer {
        transfer: TransferId(9),
        prompt: vec![3; 20],
    };
    let (tx, rx_c) = event_channel(8);
    let c = w.admit(seq(transfer, 8), tx).unwrap();
    // Admissions are numbered in order, and the status says it includes all three.
    assert_eq!((a.number, b.number, c.number), (1, 2, 3));
    let s = w.status();
    assert_eq!((s.load, s.admitted), (3, 3), "{s:?}");
    // The second prompt is queued until its own step ends (the first's may be counted
    // too, until its step ends).
    assert!(s.queued_tokens == 300 || s.queued_tokens == 700, "{s:?}");
    // Every count goes back to nothing: the prompts run to their ends, the transfer that
    // never comes is dropped with its client.
    for rx in [rx_a, rx_b] {
        let events = tokens_of(rx);
        assert_eq!(events.len(), 8);
    }
    drop(rx_c);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while w.status().load != 0 && std::time::Instant::now() < deadline {
        let _ = freed.recv_timeout(Duration::from_millis(100));
    }
    let s = w.status();
    assert_eq!((s.load, s.queued_tokens), (0, 0), "{s:?}");
}

#[test]
fn a_long_prompt_joins_a_running_batch_in_chunks_and_answers_the_same() {
    let prompt: Vec<u32> = (0..150u32).map(|i| 100 + (i * 37) % 3000).collect();
    let run = |chunk: usize| {
        let (w, _freed) = chunking_worker(2000, None, chunk);
        // A decodes long enough to run beside every chunk of B.
        let (tx, mut rx_a) = event_channel(200);
        w.admit(seq(KvSource::Prompt(vec![5; 20]), 200), tx)
            .unwrap();
        loop {
            match rx_a.blocking_recv() {
                Some(SeqEvent::Token(_)) => break,
                Some(_) => {}
                None => panic!("A ended before its first token"),
            }
        }
        let (tx, rx_b) = event_channel(8);
        w.admit(seq(KvSource::Prompt(prompt.clone()), 8), tx)
            .unwrap();
        let b = tokens_of(rx_b);
        drop(rx_a);
        let chunks = w
            .stats()
            .prefill_chunks
            .load(std::sync::atomic::Ordering::Relaxed);
        (b, chunks)
    };
    let (whole, none) = run(0);
    let (chunked, chunks) = run(32);
    assert_eq!(none, 0);
    // 150 tokens beside a running sequence, 32 a step: four steps end mid-prompt.
    assert_eq!(chunks, 4);
    assert_eq!(chunked, whole, "chunked prefill changed the answer");
}
