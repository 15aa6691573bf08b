//! Pipeline-parallel execution of the llama model: the layers split into stages (as the
//! plan's `llm.pipeline_parallel` pattern splits them), each stage a worker with its own
//! compute pool and the KV cache of its own layers only: threads of this process
//! ([`Pipeline::local`]) or `genie stage-worker` processes ([`Pipeline::remote`]).
//!
//! Every hop is kv-transfer over TCP, one transfer per sequence per hop: each stage sends
//! one checksummed `Hidden` frame per forward step to the next stage, and the last stage
//! sends the logits the same way to the driver, which samples (the engine's own loop,
//! `Engine::generate_with`) and hands the next token to stage 0. A failing stage aborts
//! its transfer; the abort travels down the chain to the driver. The output is the
//! unsplit model's, bit for bit (`Model::forward_stage`).

use anyhow::{anyhow, Context, Result};
use genie_engine::kv_cache::KvCache;
use genie_engine::model::{Model, Segment, StageOutput};
use genie_kv_transfer::{
    tcp, KvMessage, KvSink, KvTransport, LayerMeta, TcpTransport, TransferRegistry, DTYPE_F32,
};
use genie_protocol::TransferId;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A hop that makes no progress for this long fails the sequence.
pub const HOP_TIMEOUT: Duration = Duration::from_secs(60);

enum StageMsg {
    /// A new sequence: its id (the transfer id of every hop), its token capacity and
    /// where this stage sends its output (the next stage, or the driver).
    Begin {
        seq: u64,
        capacity: usize,
        next: String,
        sink: Box<dyn KvSink>,
    },
    /// The next tokens of the sequence (stage 0 only).
    Tokens(Vec<u32>),
    /// What the previous stage sent (later stages only).
    Kv(KvMessage),
    /// The sequence ended (stage 0; later stages learn it from `Complete`).
    End,
}

/// Starts a KV receiver on `listener` that forwards every message to `to`.
fn receive(
    rt: &tokio::runtime::Handle,
    listener: std::net::TcpListener,
    registry: &TransferRegistry,
    to: impl Fn(KvMessage) -> bool + Send + Sync + 'static,
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let _guard = rt.enter();
    let l = tokio::net::TcpListener::from_std(listener)?;
    rt.spawn(tcp::serve(l, registry.clone(), Arc::new(to), HOP_TIMEOUT));
    Ok(())
}

/// One stage: a worker thread running `layers`, and (after the first stage) the KV
/// receiver its hidden states arrive on.
pub struct StageWorker {
    pub layers: Range<usize>,
    pub n_layers: usize,
    /// `host:port` of the KV receiver (stages after the first).
    pub kv_endpoint: Option<String>,
    registry: TransferRegistry,
    width: usize,
    inbox: mpsc::Sender<StageMsg>,
}

impl StageWorker {
    /// Starts the stage; `kv` is the bound KV listener and the endpoint to advertise for
    /// it (required unless the stage starts at layer 0).
    pub fn start(
        index: usize,
        model: Model,
        layers: Range<usize>,
        rt: &tokio::runtime::Handle,
        kv: Option<(std::net::TcpListener, String)>,
    ) -> Result<Self> {
        let n_layers = model.config().n_layers;
        anyhow::ensure!(
            layers.start < layers.end && layers.end <= n_layers,
            "stage layers {layers:?} are not a non-empty range of the model's {n_layers} layers"
        );
        let (tx, rx) = mpsc::channel::<StageMsg>();
        let registry = TransferRegistry::new();
        let kv_endpoint = match kv {
            Some((listener, advertised)) if layers.start > 0 => {
                let inbox = tx.clone();
                receive(rt, listener, &registry, move |m| {
                    inbox.send(StageMsg::Kv(m)).is_ok()
                })?;
                Some(advertised)
            }
            None if layers.start > 0 => {
                anyhow::bail!("stage {index} (layers {layers:?}) needs a KV listener")
            }
            _ => None,
        };
        let width = model.config().hidden;
        let worker = Stage {
            index,
            layers: layers.clone(),
            model,
        };
        // Not joined: the worker ends when every sender of its inbox is gone (the KV
        // receiver holds one until its runtime stops).
        std::thread::Builder::new()
            .name(format!("genie-stage-{index}"))
            .spawn(move || worker.run(rx))
            .context("starting a stage worker")?;
        Ok(StageWorker {
            layers,
            n_layers,
            kv_endpoint,
            registry,
            width,
            inbox: tx,
        })
    }

    fn send(&self, m: StageMsg) -> Result<()> {
        self.inbox
            .send(m)
            .map_err(|_| anyhow!("the stage worker for layers {:?} stopped", self.layers))
    }

    /// Expects sequence `seq` (at most `capacity` tokens) and connects to `next`, where
    /// its output goes; an unreachable next hop fails here, before any work.
    pub fn begin(&self, seq: u64, capacity: usize, next: &str) -> Result<()> {
        let sink = TcpTransport::default()
            .open(next, TransferId(seq))
            .with_context(|| format!("stage {:?} cannot reach its next hop", self.layers))?;
        if self.kv_endpoint.is_some() {
            self.registry
                .expect(TransferId(seq), capacity * self.width * 4, HOP_TIMEOUT);
        }
        self.send(StageMsg::Begin {
            seq,
            capacity,
            next: next.to_string(),
            sink,
        })
    }

    pub fn tokens(&self, tokens: Vec<u32>) -> Result<()> {
        self.send(StageMsg::Tokens(tokens))
    }

    pub fn end(&self) -> Result<()> {
        self.send(StageMsg::End)
    }
}

/// What the driver reaches the stages through.
trait Stages {
    fn begin(&self, i: usize, seq: u64, capacity: usize, next: &str) -> Result<()>;
    fn tokens(&self, tokens: &[u32]) -> Result<()>;
    fn end(&self) -> Result<()>;
}

impl Stages for Vec<StageWorker> {
    fn begin(&self, i: usize, seq: u64, capacity: usize, next: &str) -> Result<()> {
        self[i].begin(seq, capacity, next)
    }
    fn tokens(&self, tokens: &[u32]) -> Result<()> {
        self[0].tokens(tokens.to_vec())
    }
    fn end(&self) -> Result<()> {
        self[0].end()
    }
}

/// The stage-worker control API's bodies.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeginBody {
    pub seq: u64,
    pub capacity: usize,
    /// `host:port` where this stage sends its output.
    pub next: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensBody {
    pub tokens: Vec<u32>,
}

/// What `GET /internal/stage` says about a stage worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageInfo {
    pub layers: [usize; 2],
    pub n_layers: usize,
    pub kv_endpoint: Option<String>,
}

/// `genie stage-worker` processes reached over HTTP.
struct RemoteStages {
    urls: Vec<String>,
    client: reqwest::Client,
    rt: tokio::runtime::Handle,
}

impl RemoteStages {
    fn post(&self, i: usize, path: &str, body: serde_json::Value) -> Result<()> {
        let url = format!("{}{path}", self.urls[i]);
        self.rt.block_on(async {
            let r = self
                .client
                .post(&url)
                .json(&body)
                .send()
                .await
                .with_context(|| format!("POST {url}"))?;
            let st = r.status();
            anyhow::ensure!(
                st.is_success(),
                "POST {url}: {st} {}",
                r.text().await.unwrap_or_default()
            );
            Ok(())
        })
    }
}

impl Stages for RemoteStages {
    fn begin(&self, i: usize, seq: u64, capacity: usize, next: &str) -> Result<()> {
        let body = serde_json::to_value(BeginBody {
            seq,
            capacity,
            next: next.to_string(),
        })?;
        self.post(i, "/internal/stage/begin", body)
    }
    fn tokens(&self, tokens: &[u32]) -> Result<()> {
        self.post(
            0,
            "/internal/stage/tokens",
            serde_json::json!({ "tokens": tokens }),
        )
    }
    fn end(&self) -> Result<()> {
        self.post(0, "/internal/stage/end", serde_json::json!({}))
    }
}

/// The driver: the stages, and the KV receiver the last stage's logits arrive on.
pub struct Pipeline {
    stages: Box<dyn Stages>,
    layers: Vec<Range<usize>>,
    endpoints: Vec<Option<String>>,
    collector: String,
    registry: TransferRegistry,
    logits: mpsc::Receiver<KvMessage>,
    vocab: usize,
    next_seq: u64,
    rt: Option<tokio::runtime::Runtime>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("genie-pipeline-kv")
        .enable_all()
        .build()?)
}

fn loopback_listener() -> Result<(std::net::TcpListener, String)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    Ok((l, addr))
}

fn check_cover(ranges: &[Range<usize>], layers: usize) -> Result<()> {
    let contiguous = ranges.first().is_some_and(|r| r.start == 0)
        && ranges.last().is_some_and(|r| r.end == layers)
        && ranges.windows(2).all(|w| w[0].end == w[1].start)
        && ranges.iter().all(|r| r.start < r.end);
    anyhow::ensure!(
        contiguous,
        "pipeline stages {ranges:?} must split layers 0..{layers} into contiguous, non-empty ranges"
    );
    Ok(())
}

impl Pipeline {
    /// Stage workers as threads of this process (each with `threads` compute threads over
    /// the shared weights), linked over TCP on loopback.
    pub fn local(model: &Model, ranges: &[Range<usize>], threads: usize) -> Result<Self> {
        let c = model.config();
        check_cover(ranges, c.n_layers)?;
        let rt = runtime()?;
        let mut workers = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            let kv = if r.start > 0 {
                Some(loopback_listener()?)
            } else {
                None
            };
            workers.push(StageWorker::start(
                i,
                model.share(threads)?,
                r.clone(),
                rt.handle(),
                kv,
            )?);
        }
        let endpoints = workers.iter().map(|w| w.kv_endpoint.clone()).collect();
        Self::driver(
            Box::new(workers),
            ranges.to_vec(),
            endpoints,
            c.vocab_size,
            rt,
        )
    }

    /// `genie stage-worker` processes at `urls`, in pipeline order.
    pub fn remote(urls: &[String], vocab: usize, n_layers: usize) -> Result<Self> {
        let rt = runtime()?;
        let client = reqwest::Client::new();
        let mut ranges = Vec::new();
        let mut endpoints = Vec::new();
        for u in urls {
            let url = format!("{}/internal/stage", u.trim_end_matches('/'));
            let info: StageInfo = rt.block_on(async {
                client
                    .get(&url)
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?
                    .error_for_status()?
                    .json()
                    .await
                    .with_context(|| format!("GET {url}: not a stage worker"))
            })?;
            anyhow::ensure!(
                info.n_layers == n_layers,
                "{u} runs a model of {} layers, this one has {n_layers}",
                info.n_layers
            );
            ranges.push(info.layers[0]..info.layers[1]);
            endpoints.push(info.kv_endpoint);
        }
        check_cover(&ranges, n_layers)?;
        let stages = RemoteStages {
            urls: urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            client,
            rt: rt.handle().clone(),
        };
        Self::driver(Box::new(stages), ranges, endpoints, vocab, rt)
    }

    fn driver(
        stages: Box<dyn Stages>,
        layers: Vec<Range<usize>>,
        endpoints: Vec<Option<String>>,
        vocab: usize,
        rt: tokio::runtime::Runtime,
    ) -> Result<Self> {
        let (listener, collector) = loopback_listener()?;
        let registry = TransferRegistry::new();
        let (tx, logits) = mpsc::channel();
        receive(rt.handle(), listener, &registry, move |m| {
            tx.send(m).is_ok()
        })?;
        Ok(Pipeline {
            stages,
            layers,
            endpoints,
            collector,
            registry,
            logits,
            vocab,
            next_seq: 1,
            rt: Some(rt),
        })
    }

    /// Layer range and KV endpoint of each stage.
    pub fn describe(&self) -> Vec<(Range<usize>, Option<String>)> {
        self.layers
            .iter()
            .cloned()
            .zip(self.endpoints.iter().cloned())
            .collect()
    }

    /// Starts a sequence of at most `capacity` tokens on every stage.
    pub fn sequence(&mut self, capacity: usize) -> Result<PipelineSeq<'_>> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.registry
            .expect(TransferId(seq), capacity * self.vocab * 4, HOP_TIMEOUT);
        for i in 0..self.layers.len() {
            let next = match self.endpoints.get(i + 1) {
                Some(Some(ep)) => ep.clone(),
                Some(None) => anyhow::bail!("stage {} has no KV endpoint", i + 1),
                None => self.collector.clone(),
            };
            self.stages.begin(i, seq, capacity, &next)?;
        }
        Ok(PipelineSeq { pipe: self })
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// One running sequence; ends on every stage (each hop's transfer completes) when dropped.
pub struct PipelineSeq<'a> {
    pipe: &'a mut Pipeline,
}

impl PipelineSeq<'_> {
    /// Runs `tokens` through every stage; the last token's logits.
    pub fn forward(&mut self, tokens: &[u32]) -> genie_engine::Result<Vec<f32>> {
        let fail = |reason: String| genie_engine::EngineError::InvalidRequest {
            field: "pipeline",
            reason,
        };
        self.pipe
            .stages
            .tokens(tokens)
            .map_err(|e| fail(e.to_string()))?;
        match self.pipe.logits.recv_timeout(HOP_TIMEOUT) {
            Ok(KvMessage::Hidden { meta, bytes, .. })
                if meta.head_dim as usize == self.pipe.vocab =>
            {
                Ok(bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect())
            }
            Ok(KvMessage::Abort { reason, .. }) => Err(fail(reason)),
            Ok(_) => Err(fail(
                "the last stage sent something other than logits".into(),
            )),
            Err(_) => Err(fail(format!(
                "no logits from the last stage within {HOP_TIMEOUT:?}"
            ))),
        }
    }
}

impl Drop for PipelineSeq<'_> {
    fn drop(&mut self) {
        if self.pipe.stages.end().is_ok() {
            // The chain has ended when the last stage completes its transfer to us.
            while let Ok(m) = self.pipe.logits.recv_timeout(HOP_TIMEOUT) {
                if m.ends_transfer() {
                    break;
                }
            }
        }
    }
}

/// One stage worker's state.
struct Stage {
    index: usize,
    layers: Range<usize>,
    model: Model,
}

struct Running {
    seq: u64,
    cache: KvCache,
    sink: Box<dyn KvSink>,
    next: String,
    /// Frames and bytes handed on.
    sent: (usize, usize),
}

impl Stage {
    fn run(self, inbox: mpsc::Receiver<StageMsg>) {
        let mut cur: Option<Running> = None;
        for msg in inbox {
            let step = match msg {
                StageMsg::Begin {
                    seq,
                    capacity,
                    next,
                    sink,
                } => {
                    if let Some(old) = cur.take() {
                        old.sink.abort("a new sequence replaced it");
                    }
                    cur = Some(Running {
                        seq,
                        cache: KvCache::new(self.model.stage_shape(self.layers.len()), capacity),
                        sink,
                        next,
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
                        let done = r.sink.complete(Vec::new());
                        tracing::info!(
                            "pipeline stage {} (layers {:?}) sent {} frames, {} bytes, to {} for sequence {}: {}",
                            self.index,
                            self.layers,
                            r.sent.0,
                            r.sent.1,
                            r.next,
                            r.seq,
                            if done.is_ok() { "complete" } else { "failed" }
                        );
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
                    .ok_or_else(|| "no sequence is running on this stage".to_string())?;
                self.step(r, &tokens, hidden)
            });
            if let Err(e) = result {
                // The sequence is over: the abort travels on to the driver.
                tracing::warn!(stage = self.index, error = %e, "pipeline sequence failed");
                if let Some(r) = cur.take() {
                    r.sink.abort(&format!("stage {}: {e}", self.index));
                }
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

    /// Runs this stage's layers and hands the result on: hidden states to the next
    /// stage, or the last token's logits to the driver.
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
        let c = self.model.config();
        let (values, width, first, count) = match out {
            StageOutput::Hidden(h) => (h, c.hidden, start, tokens.len()),
            StageOutput::Logits(mut l) => (
                l.pop().unwrap_or_default(),
                c.vocab_size,
                start + tokens.len() - 1,
                1,
            ),
        };
        let meta = LayerMeta {
            layer: self.layers.end as u32,
            n_layers: c.n_layers as u32,
            dtype: DTYPE_F32,
            kv_heads: 1,
            head_dim: width as u32,
            token_start: first as u32,
            token_count: count as u32,
        };
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let n = bytes.len();
        r.sink.send_hidden(meta, bytes).map_err(|e| e.to_string())?;
        r.sent = (r.sent.0 + 1, r.sent.1 + n);
        Ok(())
    }
}
