//! The pipeline driver: the stages (threads of this process or `genie stage-worker`
//! processes), the KV receiver the last stage's logits arrive on, and one sequence at a
//! time run through them. The caller's runtime carries the network; this module builds
//! none of its own.

use crate::service::{BeginBody, StageInfo};
use crate::stage::{receive, StageWorker, HOP_TIMEOUT};
use anyhow::{Context, Result};
use genie_cluster_auth::http::send_signed;
use genie_cluster_auth::ClusterSecret;
use genie_kv_transfer::{KvMessage, TransferRegistry};
use genie_protocol::TransferId;
use std::ops::Range;
use std::sync::mpsc;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

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

/// `genie stage-worker` processes reached over HTTP.
struct RemoteStages {
    urls: Vec<String>,
    client: reqwest::Client,
    secret: Option<ClusterSecret>,
    rt: Handle,
}

impl RemoteStages {
    fn post(&self, i: usize, path: &str, body: serde_json::Value) -> Result<()> {
        let url = format!("{}{path}", self.urls[i]);
        self.rt.block_on(async {
            let r = send_signed(self.client.post(&url).json(&body), self.secret.as_ref())
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
    /// Stops the KV receivers this pipeline started when it drops.
    shutdown: CancellationToken,
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
    /// the shared weights), linked over TCP on loopback; `rt` carries their KV receivers.
    /// Call from outside the runtime (the driver waits on it).
    pub fn local(
        model: &genie_engine::model::Model,
        ranges: &[Range<usize>],
        threads: usize,
        rt: Handle,
    ) -> Result<Self> {
        let c = model.config();
        check_cover(ranges, c.n_layers)?;
        let shutdown = CancellationToken::new();
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
                &rt,
                kv,
                // One process on loopback, as in-process transfers: no secret to prove.
                None,
                shutdown.clone(),
            )?);
        }
        let endpoints = workers.iter().map(|w| w.kv_endpoint.clone()).collect();
        Self::driver(
            Box::new(workers),
            ranges.to_vec(),
            endpoints,
            c.vocab_size,
            rt,
            None,
            shutdown,
        )
    }

    /// `genie stage-worker` processes at `urls`, in pipeline order, reached on `rt` with
    /// `client`, every call and the logits' KV connection authenticated with `secret`
    /// when given. Call from outside the runtime (the driver waits on it).
    pub fn remote(
        urls: &[String],
        vocab: usize,
        n_layers: usize,
        secret: Option<ClusterSecret>,
        client: reqwest::Client,
        rt: Handle,
    ) -> Result<Self> {
        let mut ranges = Vec::new();
        let mut endpoints = Vec::new();
        for u in urls {
            let url = format!("{}/internal/stage", u.trim_end_matches('/'));
            let info: StageInfo = rt.block_on(async {
                send_signed(client.get(&url), secret.as_ref())
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
            secret: secret.clone(),
            rt: rt.clone(),
        };
        Self::driver(
            Box::new(stages),
            ranges,
            endpoints,
            vocab,
            rt,
            secret,
            CancellationToken::new(),
        )
    }

    fn driver(
        stages: Box<dyn Stages>,
        layers: Vec<Range<usize>>,
        endpoints: Vec<Option<String>>,
        vocab: usize,
        rt: Handle,
        secret: Option<ClusterSecret>,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let (listener, collector) = loopback_listener()?;
        let registry = crate::stage::registry_for(secret.as_ref());
        let (tx, logits) = mpsc::channel();
        receive(
            &rt,
            listener,
            &registry,
            move |m| tx.send(m).is_ok(),
            shutdown.clone(),
        )?;
        Ok(Pipeline {
            stages,
            layers,
            endpoints,
            collector,
            registry,
            logits,
            vocab,
            next_seq: 1,
            shutdown,
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
        // Last stage first: a stage's connection to its next hop opens with the KV hello,
        // which the next hop accepts only once it expects the sequence.
        for i in (0..self.layers.len()).rev() {
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
        self.shutdown.cancel();
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
