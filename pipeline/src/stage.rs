//! One pipeline stage: a worker thread running a range of layers with the KV cache of
//! those layers only, fed tokens (stage 0) or the previous stage's hidden states (on its
//! KV receiver), sending its output to the next hop named per sequence.

use anyhow::{anyhow, Context, Result};
use genie_cluster_auth::ClusterSecret;
use genie_engine::kv_cache::KvCache;
use genie_engine::model::{Model, Segment, StageOutput};
use genie_kv_transfer::{
    tcp, KvMessage, KvSink, KvTransport, LayerShape, TcpTransport, TransferRegistry, DTYPE_F32,
};
use genie_protocol::TransferId;
use std::ops::Range;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A hop that makes no progress for this long fails the sequence.
pub const HOP_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) enum StageMsg {
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

/// A receiver's registry: with the cluster secret, connections must open with its hello.
pub(crate) fn registry_for(secret: Option<&ClusterSecret>) -> TransferRegistry {
    match secret {
        Some(s) => {
            TransferRegistry::with_auth(Arc::new(genie_cluster_auth::Verifier::new(s.clone())))
        }
        None => TransferRegistry::new(),
    }
}

/// Starts a KV receiver on `listener` that forwards every message to `to`, until
/// `shutdown` is cancelled.
pub(crate) fn receive(
    rt: &tokio::runtime::Handle,
    listener: std::net::TcpListener,
    registry: &TransferRegistry,
    to: impl Fn(KvMessage) -> bool + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let _guard = rt.enter();
    let l = tokio::net::TcpListener::from_std(listener)?;
    rt.spawn(tcp::serve(
        l,
        registry.clone(),
        Arc::new(to),
        HOP_TIMEOUT,
        shutdown,
    ));
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
    /// The cluster secret: its hidden states go out with the KV hello.
    secret: Option<ClusterSecret>,
}

impl StageWorker {
    /// Starts the stage; `kv` is the bound KV listener and the endpoint to advertise for
    /// it (required unless the stage starts at layer 0). With `secret`, its KV receiver
    /// takes only connections that open with a hello made with it, and it sends one.
    pub fn start(
        index: usize,
        model: Model,
        layers: Range<usize>,
        rt: &tokio::runtime::Handle,
        kv: Option<(std::net::TcpListener, String)>,
        secret: Option<ClusterSecret>,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let n_layers = model.config().n_layers;
        anyhow::ensure!(
            layers.start < layers.end && layers.end <= n_layers,
            "stage layers {layers:?} are not a non-empty range of the model's {n_layers} layers"
        );
        let (tx, rx) = mpsc::channel::<StageMsg>();
        let registry = registry_for(secret.as_ref());
        let kv_endpoint = match kv {
            Some((listener, advertised)) if layers.start > 0 => {
                let inbox = tx.clone();
                receive(
                    rt,
                    listener,
                    &registry,
                    move |m| inbox.send(StageMsg::Kv(m)).is_ok(),
                    shutdown,
                )?;
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
        // receiver holds one until `shutdown` stops it).
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
            secret,
        })
    }

    fn send(&self, m: StageMsg) -> Result<()> {
        self.inbox
            .send(m)
            .map_err(|_| anyhow!("the stage worker for layers {:?} stopped", self.layers))
    }

    /// Expects sequence `seq` (at most `capacity` tokens) and connects to `next`, where
    /// its output goes; an unreachable next hop fails here, before any work.
    /// The next hop must already expect `seq` (the driver begins the last stage first).
    pub fn begin(&self, seq: u64, capacity: usize, next: &str) -> Result<()> {
        let sink = TcpTransport {
            secret: self.secret.clone(),
            ..TcpTransport::default()
        }
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
                        // Logged before the completion goes on: once the driver has it,
                        // its process may exit.
                        tracing::info!(
                            "pipeline stage {} (layers {:?}) sent {} frames, {} bytes, to {} for sequence {}",
                            self.index,
                            self.layers,
                            r.sent.0,
                            r.sent.1,
                            r.next,
                            r.seq,
                        );
                        if let Err(e) = r.sink.complete(Vec::new()) {
                            tracing::warn!(stage = self.index, error = %e, "pipeline sequence could not complete");
                        }
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
        meta: LayerShape,
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
        let mut segs = [Segment::new(tokens, &mut r.cache)];
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
        let meta = LayerShape {
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
