//! The prefill worker's handle and its compute loop.

use genie_engine::kv_cache::{LayerHeader, LAYER_HEADER_LEN};
use genie_engine::model::{Model, Segment};
use genie_engine::sampling::{Sampled, Sampler};
use genie_engine::EngineError;
use genie_kv_transfer::{KvSink, LayerMeta, DTYPE_F16};
use genie_protocol::worker::{Finish, Handoff, SeqEvent, TokenOut};
use genie_protocol::{SeqId, WorkerId};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Clone, Debug)]
pub struct PrefillConfig {
    pub id: WorkerId,
    /// Most prompt tokens in one forward (a longer single prompt still runs alone).
    pub max_batch_tokens: usize,
}

/// One prompt to prefill.
pub struct PrefillJob {
    pub id: SeqId,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    pub sampler: Sampler,
    pub events: UnboundedSender<SeqEvent>,
    /// Towards the decode worker that reserved the sequence's KV.
    pub sink: Box<dyn KvSink>,
}

#[derive(Debug, Default)]
pub struct PrefillStats {
    /// Prompts queued or running here.
    pub load: AtomicUsize,
    /// Prompt tokens queued or running here.
    pub queued_tokens: AtomicUsize,
}

enum Input {
    Job(Box<PrefillJob>),
    Shutdown,
}

pub struct PrefillWorker {
    pub config: PrefillConfig,
    tx: mpsc::Sender<Input>,
    stats: Arc<PrefillStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PrefillWorker {
    pub fn start(config: PrefillConfig, model: Model) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(PrefillStats::default());
        let st = Arc::clone(&stats);
        let cfg = config.clone();
        let thread = std::thread::Builder::new()
            .name(format!("genie-prefill-{}", config.id.0))
            .spawn(move || run(cfg, model, st, rx))?;
        Ok(PrefillWorker {
            config,
            tx,
            stats,
            thread: Some(thread),
        })
    }

    /// Queues a job; gives it back if the worker has stopped.
    pub fn submit(&self, job: PrefillJob) -> Result<(), Box<PrefillJob>> {
        self.stats.load.fetch_add(1, Ordering::Relaxed);
        self.stats
            .queued_tokens
            .fetch_add(job.prompt.len(), Ordering::Relaxed);
        self.tx
            .send(Input::Job(Box::new(job)))
            .map_err(|e| match e.0 {
                Input::Job(j) => j,
                Input::Shutdown => unreachable!("only jobs are submitted"),
            })
    }

    pub fn stats(&self) -> &PrefillStats {
        &self.stats
    }

    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for PrefillWorker {
    fn drop(&mut self) {
        let _ = self.tx.send(Input::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn token_out(s: &Sampled) -> TokenOut {
    TokenOut {
        token: s.token,
        logprob: s.logprob,
        top_logprobs: s
            .top_logprobs
            .iter()
            .map(|t| (t.token, t.logprob))
            .collect(),
    }
}

fn run(config: PrefillConfig, model: Model, stats: Arc<PrefillStats>, rx: Receiver<Input>) {
    let label = config.id.0.to_string();
    let mut carry: Option<PrefillJob> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(Input::Job(j)) => *j,
                Ok(Input::Shutdown) | Err(_) => return,
            },
        };
        let mut jobs = vec![first];
        let mut tokens = jobs[0].prompt.len();
        loop {
            match rx.try_recv() {
                Ok(Input::Job(j)) => {
                    if tokens + j.prompt.len() > config.max_batch_tokens {
                        carry = Some(*j);
                        break;
                    }
                    tokens += j.prompt.len();
                    jobs.push(*j);
                }
                Ok(Input::Shutdown) => return,
                Err(_) => break,
            }
        }
        let (n, t) = (jobs.len(), tokens);
        // Clients that left while queued: dropping the job aborts its transfer.
        jobs.retain(|j| !j.events.is_closed());
        if !jobs.is_empty() {
            metrics::histogram!("genie_prefill_batch_tokens", "worker" => label.clone())
                .record(jobs.iter().map(|j| j.prompt.len()).sum::<usize>() as f64);
            // A fault in one batch fails that batch's requests (their senders drop), not
            // the worker.
            let run = std::panic::AssertUnwindSafe(|| prefill(&model, jobs, &label));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!("prefill batch panicked; its requests failed");
            }
            // The batch's caches are gone, whichever way it ended.
            metrics::gauge!("genie_kv_cache_used_bytes", "worker" => label.clone()).set(0.0);
        }
        stats.load.fetch_sub(n, Ordering::Relaxed);
        stats.queued_tokens.fetch_sub(t, Ordering::Relaxed);
    }
}

/// One layer of a segment's new tokens as wire metadata and K/V payload.
fn export(seg: &Segment, layer: usize) -> (LayerMeta, Vec<u8>) {
    let start = seg.cache.layer_len(layer) - seg.tokens.len();
    let mut chunk = seg
        .cache
        .export_layer(layer, start..start + seg.tokens.len());
    let h = LayerHeader::parse(&chunk).expect("the engine parses its own chunks");
    let meta = LayerMeta {
        layer: h.layer as u32,
        n_layers: h.n_layers as u32,
        dtype: DTYPE_F16,
        kv_heads: h.kv_heads as u32,
        head_dim: h.head_dim as u32,
        token_start: h.token_start as u32,
        token_count: h.token_count as u32,
    };
    (meta, chunk.split_off(LAYER_HEADER_LEN))
}

/// Prefills `jobs` in one forward, shipping each layer as it completes. A sequence whose
/// client leaves mid-prefill has its transfer aborted at the next layer, so the decode
/// worker frees its reservation without waiting for the batch to end.
fn prefill(model: &Model, jobs: Vec<PrefillJob>, label: &str) {
    let mut caches: Vec<_> = jobs
        .iter()
        .map(|j| model.new_cache(j.prompt.len()))
        .collect();
    let reserved: usize = caches.iter().map(|c| c.reserved_bytes()).sum();
    metrics::gauge!("genie_kv_cache_used_bytes", "worker" => label.to_string())
        .set(reserved as f64);
    let mut sinks: Vec<Option<Box<dyn KvSink>>> = Vec::with_capacity(jobs.len());
    let mut rest = Vec::with_capacity(jobs.len());
    for j in jobs {
        let PrefillJob {
            id,
            prompt,
            max_tokens,
            stop_token_ids,
            sampler,
            events,
            sink,
        } = j;
        sinks.push(Some(sink));
        rest.push((id, prompt, max_tokens, stop_token_ids, sampler, events));
    }
    let result = {
        let mut segs: Vec<Segment> = rest
            .iter()
            .zip(caches.iter_mut())
            .map(|(r, c)| Segment {
                tokens: &r.1,
                cache: c,
            })
            .collect();
        let mut ship = |layer: usize, segs: &[Segment]| {
            for ((seg, slot), r) in segs.iter().zip(sinks.iter_mut()).zip(&rest) {
                if r.5.is_closed() {
                    if let Some(sink) = slot.take() {
                        sink.abort("client went away");
                        metrics::counter!("genie_prefill_cancelled_total", "worker" => label.to_string())
                            .increment(1);
                    }
                }
                if let Some(sink) = slot {
                    let (meta, bytes) = export(seg, layer);
                    if let Err(e) = sink.send_layer(meta, bytes) {
                        tracing::warn!(error = %e, "KV send failed; dropping the sequence");
                        *slot = None;
                    }
                }
            }
            // Nobody left to prefill for: stop computing.
            if sinks.iter().all(Option::is_none) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        model.forward_observed(&mut segs, &mut ship)
    };
    let logits = match result {
        Ok(l) => l,
        Err(EngineError::Cancelled) => {
            // Every sequence's client left or its transfer failed; tell any still listening.
            for r in &rest {
                let _ = r.5.send(SeqEvent::Failed("KV transfer failed".into()));
            }
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "prefill failed");
            for (r, sink) in rest.iter().zip(sinks) {
                if let Some(s) = sink {
                    s.abort("prefill failed");
                }
                let _ = r.5.send(SeqEvent::Failed("internal error".into()));
            }
            return;
        }
    };
    for ((r, sink), mut l) in rest.into_iter().zip(sinks).zip(logits) {
        let (_id, prompt, max_tokens, stop_ids, mut sampler, events) = r;
        let Some(sink) = sink else {
            let _ = events.send(SeqEvent::Failed("KV transfer failed".into()));
            continue;
        };
        let s = sampler.sample(&mut l);
        if stop_ids.contains(&s.token) {
            sink.abort("finished at the first token");
            let _ = events.send(SeqEvent::Finished(Finish::Stop));
            continue;
        }
        sampler.record(s.token);
        if events.send(SeqEvent::Token(token_out(&s))).is_err() {
            sink.abort("client went away");
            continue;
        }
        if max_tokens <= 1 {
            sink.abort("finished at the first token");
            let _ = events.send(SeqEvent::Finished(Finish::Length));
            continue;
        }
        let handoff = Handoff {
            prompt_tokens: prompt.len() as u32,
            first_token: s.token,
            sampler: serde_json::to_value(&sampler).unwrap_or_default(),
        };
        let trailer = serde_json::to_vec(&handoff).unwrap_or_default();
        if let Err(e) = sink.complete(trailer) {
            tracing::warn!(error = %e, "KV hand-off failed");
            let _ = events.send(SeqEvent::Failed("KV transfer failed".into()));
        }
    }
}
