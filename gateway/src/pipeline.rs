//! Pipeline-parallel execution of the llama model: the layers split into stages (as the
//! plan's `llm.pipeline_parallel` pattern splits them), each stage a worker with its own
//! compute pool and the KV cache of its own layers only. Hidden states cross every stage
//! boundary through kv-transfer: each hop of a sequence is one transfer over TCP, one
//! checksummed `Hidden` frame per forward step, `Complete` when the sequence ends. The
//! last stage's logits return to the sampler, which feeds the next token to stage 0.
//! The output is the unsplit model's, bit for bit (`Model::forward_stage`).

use anyhow::{anyhow, Context, Result};
use genie_engine::kv_cache::KvCache;
use genie_engine::model::{Model, Segment, StageOutput};
use genie_kv_transfer::{
    tcp, KvMessage, KvSink, KvTransport, LayerMeta, TcpTransport, TransferRegistry, DTYPE_F32,
};
use genie_protocol::TransferId;
use std::ops::Range;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A hop that makes no progress for this long fails the sequence.
const HOP_TIMEOUT: Duration = Duration::from_secs(60);

enum StageMsg {
    /// A new sequence: its id (the transfer id of every hop) and its token capacity.
    Begin { seq: u64, capacity: usize },
    /// The next tokens of the sequence (stage 0 only).
    Tokens(Vec<u32>),
    /// What the previous stage sent (later stages only).
    Kv(KvMessage),
    /// The sequence ended (stage 0; later stages learn it from `Complete`).
    End,
}

struct StageHandle {
    layers: Range<usize>,
    inbox: mpsc::Sender<StageMsg>,
    /// The KV endpoint of stages after the first, and the transfers it expects.
    endpoint: Option<(String, TransferRegistry)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct Pipeline {
    stages: Vec<StageHandle>,
    results: mpsc::Receiver<Result<Vec<f32>, String>>,
    /// Each stage says when it has let a sequence go.
    ended: mpsc::Receiver<usize>,
    width: usize,
    next_seq: u64,
    rt: Option<tokio::runtime::Runtime>,
}

impl Pipeline {
    /// Starts one stage worker per layer range (contiguous, covering every layer), each
    /// with `threads` compute threads over the shared weights.
    pub fn start(model: &Model, ranges: &[Range<usize>], threads: usize) -> Result<Self> {
        let layers = model.config().n_layers;
        let contiguous = ranges.first().is_some_and(|r| r.start == 0)
            && ranges.last().is_some_and(|r| r.end == layers)
            && ranges.windows(2).all(|w| w[0].end == w[1].start)
            && ranges.iter().all(|r| r.start < r.end);
        anyhow::ensure!(
            contiguous,
            "pipeline stages {ranges:?} must split layers 0..{layers} into contiguous, non-empty ranges"
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("genie-stage-kv")
            .enable_all()
            .build()?;
        let (res_tx, results) = mpsc::channel();
        let (end_tx, ended) = mpsc::channel();
        let mut stages: Vec<StageHandle> = Vec::new();
        // Build from the last stage back, so each stage knows where its successor listens.
        let mut next: Option<String> = None;
        for (i, r) in ranges.iter().enumerate().rev() {
            let (tx, rx) = mpsc::channel::<StageMsg>();
            let endpoint = if i > 0 {
                let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
                let addr = listener.local_addr()?.to_string();
                let registry = TransferRegistry::new();
                let inbox = tx.clone();
                let deliver: genie_kv_transfer::Deliver =
                    Arc::new(move |m| inbox.send(StageMsg::Kv(m)).is_ok());
                rt.spawn(tcp::serve(listener, registry.clone(), deliver, HOP_TIMEOUT));
                Some((addr, registry))
            } else {
                None
            };
            let worker = Stage {
                index: i,
                layers: r.clone(),
                model: model.share(threads)?,
                next: next.clone(),
                results: res_tx.clone(),
                ended: end_tx.clone(),
                last: i + 1 == ranges.len(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("genie-stage-{i}"))
                .spawn(move || worker.run(rx))
                .context("starting a stage worker")?;
            next = endpoint.as_ref().map(|(a, _)| a.clone());
            stages.push(StageHandle {
                layers: r.clone(),
                inbox: tx,
                endpoint,
                thread: Some(thread),
            });
        }
        stages.reverse();
        Ok(Pipeline {
            stages,
            results,
            ended,
            width: model.config().hidden,
            next_seq: 1,
            rt: Some(rt),
        })
    }

    /// Layer range and KV endpoint (`host:port`, stages after the first) of each stage.
    pub fn describe(&self) -> Vec<(Range<usize>, Option<String>)> {
        self.stages
            .iter()
            .map(|s| (s.layers.clone(), s.endpoint.as_ref().map(|e| e.0.clone())))
            .collect()
    }

    /// Starts a sequence of at most `capacity` tokens; returns a forward function for
    /// [`Engine::generate_with`](genie_engine::generate::Engine::generate_with).
    pub fn sequence(&mut self, capacity: usize) -> Result<PipelineSeq<'_>> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let max_bytes = capacity * self.width * 4;
        for s in &self.stages {
            if let Some((_, reg)) = &s.endpoint {
                reg.expect(TransferId(seq), max_bytes, HOP_TIMEOUT);
            }
        }
        for s in &self.stages {
            s.inbox
                .send(StageMsg::Begin { seq, capacity })
                .map_err(|_| anyhow!("a pipeline stage stopped"))?;
        }
        Ok(PipelineSeq { pipe: self })
    }
}

/// One running sequence; ends (every hop completes) when dropped.
pub struct PipelineSeq<'a> {
    pipe: &'a mut Pipeline,
}

impl PipelineSeq<'_> {
    /// Runs `tokens` through every stage; the last token's logits.
    pub fn forward(&mut self, tokens: &[u32]) -> genie_engine::Result<Vec<f32>> {
        let stopped = || genie_engine::EngineError::InvalidRequest {
            field: "pipeline",
            reason: "a pipeline stage stopped".into(),
        };
        self.pipe.stages[0]
            .inbox
            .send(StageMsg::Tokens(tokens.to_vec()))
            .map_err(|_| stopped())?;
        match self.pipe.results.recv_timeout(HOP_TIMEOUT) {
            Ok(Ok(logits)) => Ok(logits),
            Ok(Err(reason)) => Err(genie_engine::EngineError::InvalidRequest {
                field: "pipeline",
                reason,
            }),
            Err(_) => Err(stopped()),
        }
    }
}

impl Drop for PipelineSeq<'_> {
    /// Ends the sequence on every stage (each hop's transfer completes) before returning.
    fn drop(&mut self) {
        let _ = self.pipe.stages[0].inbox.send(StageMsg::End);
        for _ in 0..self.pipe.stages.len() {
            if self.pipe.ended.recv_timeout(HOP_TIMEOUT).is_err() {
                break;
            }
        }
    }
}

impl Drop for Pipeline {
    /// Stops every stage: closing the inboxes ends stage 0, stopping the KV receivers
    /// drops the last senders of the others; then waits for them.
    fn drop(&mut self) {
        let threads: Vec<_> = self
            .stages
            .iter_mut()
            .filter_map(|s| s.thread.take())
            .collect();
        self.stages.clear();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

/// One stage worker's state.
struct Stage {
    index: usize,
    layers: Range<usize>,
    model: Model,
    /// Where the next stage listens (none for the last).
    next: Option<String>,
    results: mpsc::Sender<Result<Vec<f32>, String>>,
    ended: mpsc::Sender<usize>,
    last: bool,
}

struct Running {
    seq: u64,
    cache: KvCache,
    sink: Option<Box<dyn KvSink>>,
    /// Hidden-state frames and bytes handed to the next stage.
    sent: (usize, usize),
}

impl Stage {
    fn run(self, inbox: mpsc::Receiver<StageMsg>) {
        let mut cur: Option<Running> = None;
        for msg in inbox {
            let step = match msg {
                StageMsg::Begin { seq, capacity } => {
                    let sink = match &self.next {
                        Some(ep) => match TcpTransport::default().open(ep, TransferId(seq)) {
                            Ok(s) => Some(s),
                            Err(e) => {
                                let _ = self.results.send(Err(format!(
                                    "stage {} cannot reach the next stage: {e}",
                                    self.index
                                )));
                                continue;
                            }
                        },
                        None => None,
                    };
                    cur = Some(Running {
                        seq,
                        cache: KvCache::new(self.model.stage_shape(self.layers.len()), capacity),
                        sink,
                        sent: (0, 0),
                    });
                    continue;
                }
                StageMsg::Tokens(t) => Ok((t, None)),
                StageMsg::Kv(KvMessage::Hidden { meta, bytes, .. }) => self
                    .hidden_in(cur.as_ref(), meta, &bytes)
                    .map(|h| (vec![0; meta.token_count as usize], Some(h))),
                StageMsg::End | StageMsg::Kv(KvMessage::Complete { .. }) => {
                    if let Some(r) = cur.take() {
                        if let Some(s) = r.sink {
                            let done = s.complete(Vec::new());
                            tracing::info!(
                                "pipeline stage {} (layers {:?}) sent {} hidden-state frames, {} bytes, to {} for sequence {}: {}",
                                self.index,
                                self.layers,
                                r.sent.0,
                                r.sent.1,
                                self.next.as_deref().unwrap_or("-"),
                                r.seq,
                                if done.is_ok() { "complete" } else { "failed" }
                            );
                        }
                        let _ = self.ended.send(self.index);
                    }
                    continue;
                }
                StageMsg::Kv(KvMessage::Abort { reason, .. }) => Err(reason),
                StageMsg::Kv(KvMessage::Layer { .. }) => {
                    Err("a KV layer frame reached a pipeline stage".into())
                }
            };
            let result = step.and_then(|(tokens, hidden)| {
                let r = cur
                    .as_mut()
                    .ok_or_else(|| "no sequence is running".to_string())?;
                self.step(r, &tokens, hidden)
            });
            if let Err(e) = result {
                // The sequence is over for every stage: drop it, tell the sampler.
                if let Some(r) = cur.take() {
                    let _ = self.ended.send(self.index);
                    if let Some(s) = r.sink {
                        s.abort(&e);
                    }
                }
                let _ = self.results.send(Err(format!("stage {}: {e}", self.index)));
            }
        }
    }

    /// Checks an incoming frame against the running sequence and decodes it.
    fn hidden_in(
        &self,
        cur: Option<&Running>,
        meta: LayerMeta,
        bytes: &[u8],
    ) -> Result<Vec<f32>, String> {
        let r = cur.ok_or("hidden states for no running sequence")?;
        let width = self.model.config().hidden as u32;
        if meta.layer as usize != self.layers.start || meta.head_dim * meta.kv_heads != width {
            return Err(format!(
                "hidden states for layer {} of width {} reached the stage of layers {:?} (width {width})",
                meta.layer,
                meta.head_dim * meta.kv_heads,
                self.layers
            ));
        }
        if meta.token_start as usize != r.cache.len() {
            return Err(format!(
                "hidden states for positions from {} but this stage holds {} (sequence {})",
                meta.token_start,
                r.cache.len(),
                r.seq
            ));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Runs this stage's layers and hands the result on.
    fn step(
        &self,
        r: &mut Running,
        tokens: &[u32],
        hidden: Option<Vec<f32>>,
    ) -> Result<(), String> {
        let start = r.cache.len();
        let mut segs = [Segment {
            tokens,
            cache: &mut r.cache,
        }];
        let out = self
            .model
            .forward_stage(self.layers.clone(), &mut segs, hidden)
            .map_err(|e| e.to_string())?;
        match out {
            StageOutput::Logits(mut l) if self.last => {
                let _ = self.results.send(Ok(l.pop().unwrap_or_default()));
                Ok(())
            }
            StageOutput::Hidden(h) => {
                let c = self.model.config();
                let meta = LayerMeta {
                    layer: self.layers.end as u32,
                    n_layers: c.n_layers as u32,
                    dtype: DTYPE_F32,
                    kv_heads: 1,
                    head_dim: c.hidden as u32,
                    token_start: start as u32,
                    token_count: tokens.len() as u32,
                };
                let bytes: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
                let n = bytes.len();
                r.sink
                    .as_mut()
                    .ok_or("no next stage to hand hidden states to")?
                    .send_hidden(meta, bytes)
                    .map_err(|e| e.to_string())?;
                r.sent = (r.sent.0 + 1, r.sent.1 + n);
                Ok(())
            }
            StageOutput::Logits(_) => Err("a middle stage produced logits".into()),
        }
    }
}
