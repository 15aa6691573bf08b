//! Worker processes as the gateway sees them: the registry (registration, heartbeats,
//! static workers polled, health), and starting a placed sequence on them — the decode leg
//! (`POST /internal/decode`, KV reserved before the prefill starts) and the prefill leg
//! (`POST /internal/prefill`), whose event streams are merged, in order, into one.

use crate::api_error::ApiError;
use crate::backend::{SeqRequest, StartError};
use futures_util::StreamExt;
use genie_engine::sampling::Sampler;
use genie_protocol::worker::{
    DecodeRequest, PrefillRequest, RegisterRequest, RegisterResponse, SeqEvent, WorkerInfo,
    WorkerRole, WorkerStatus,
};
use genie_protocol::{SeqId, TransferId, WorkerId};
use genie_scheduler::{Placement, Role, WorkerView};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;

/// A worker named in configuration rather than registered.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticWorker {
    pub role: WorkerRole,
    pub address: String,
    #[serde(default)]
    pub kv_endpoint: Option<String>,
    #[serde(default = "default_hardware")]
    pub hardware: String,
}

fn default_hardware() -> String {
    "cpu".into()
}

struct Entry {
    info: RegisterRequest,
    last_seen: Option<Instant>,
    healthy: bool,
    is_static: bool,
}

pub struct RemotePool {
    workers: RwLock<HashMap<WorkerId, Entry>>,
    client: reqwest::Client,
    next_id: AtomicU64,
    pub heartbeat: Duration,
    changed: Arc<Notify>,
}

impl RemotePool {
    pub fn new(heartbeat: Duration, statics: &[StaticWorker]) -> Self {
        let pool = RemotePool {
            workers: RwLock::new(HashMap::new()),
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .build()
                .expect("an HTTP client without TLS builds"),
            next_id: AtomicU64::new(1),
            heartbeat,
            changed: Arc::new(Notify::new()),
        };
        for s in statics {
            let id = WorkerId(pool.next_id.fetch_add(1, Ordering::Relaxed));
            pool.write().insert(
                id,
                Entry {
                    info: RegisterRequest {
                        role: s.role,
                        address: s.address.trim_end_matches('/').to_string(),
                        kv_endpoint: s.kv_endpoint.clone(),
                        hardware: s.hardware.clone(),
                        status: WorkerStatus::default(),
                    },
                    last_seen: None,
                    healthy: false,
                    is_static: true,
                },
            );
        }
        pool
    }

    /// Notified whenever worker load or health changes (requests waiting for room retry).
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<WorkerId, Entry>> {
        self.workers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<WorkerId, Entry>> {
        self.workers.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, mut req: RegisterRequest) -> Result<RegisterResponse, ApiError> {
        if !(req.address.starts_with("http://") || req.address.starts_with("https://")) {
            return Err(ApiError::invalid(
                "address",
                "`address` must be an http:// URL",
            ));
        }
        if req.role == WorkerRole::Decode && req.kv_endpoint.is_none() {
            return Err(ApiError::invalid(
                "kv_endpoint",
                "a decode worker must give its KV endpoint",
            ));
        }
        req.address = req.address.trim_end_matches('/').to_string();
        let id = WorkerId(self.next_id.fetch_add(1, Ordering::Relaxed));
        tracing::info!(%id, role = ?req.role, address = %req.address, "worker registered");
        self.write().insert(
            id,
            Entry {
                info: req,
                last_seen: Some(Instant::now()),
                healthy: true,
                is_static: false,
            },
        );
        self.changed.notify_waiters();
        Ok(RegisterResponse {
            id,
            heartbeat_interval_ms: self.heartbeat.as_millis() as u64,
        })
    }

    /// False when the worker is unknown (removed): it should register again.
    pub fn heartbeat(&self, id: WorkerId, status: WorkerStatus) -> bool {
        let mut w = self.write();
        let Some(e) = w.get_mut(&id) else {
            return false;
        };
        e.info.status = status;
        e.last_seen = Some(Instant::now());
        e.healthy = true;
        drop(w);
        self.changed.notify_waiters();
        true
    }

    fn mark_dead(&self, id: WorkerId) {
        if let Some(e) = self.write().get_mut(&id) {
            if e.healthy {
                tracing::warn!(%id, "worker unreachable; marked unhealthy");
            }
            e.healthy = false;
        }
    }

    /// Marks workers silent for 3 heartbeats unhealthy and forgets registered workers silent
    /// for 10 (a returning worker registers again).
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut w = self.write();
        w.retain(|id, e| {
            let silent = e.last_seen.map_or(Duration::MAX, |t| now - t);
            if silent > self.heartbeat * 3 && e.healthy {
                tracing::warn!(%id, "worker missed its heartbeats; marked unhealthy");
                e.healthy = false;
            }
            e.is_static || silent <= self.heartbeat * 10
        });
    }

    /// Polls the static workers' status endpoints.
    pub async fn poll_static(&self) {
        let targets: Vec<(WorkerId, String)> = self
            .read()
            .iter()
            .filter(|(_, e)| e.is_static)
            .map(|(id, e)| (*id, e.info.address.clone()))
            .collect();
        for (id, addr) in targets {
            let r = self
                .client
                .get(format!("{addr}/internal/status"))
                .timeout(self.heartbeat * 2)
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    if let Ok(s) = r.json::<WorkerStatus>().await {
                        self.heartbeat(id, s);
                    }
                }
                _ => self.mark_dead(id),
            }
        }
    }

    pub fn list(&self) -> Vec<WorkerInfo> {
        let now = Instant::now();
        let mut v: Vec<WorkerInfo> = self
            .read()
            .iter()
            .map(|(id, e)| WorkerInfo {
                id: *id,
                role: e.info.role,
                address: e.info.address.clone(),
                kv_endpoint: e.info.kv_endpoint.clone(),
                hardware: e.info.hardware.clone(),
                healthy: e.healthy,
                source: if e.is_static { "static" } else { "registered" }.into(),
                seconds_since_seen: e
                    .last_seen
                    .map_or(f64::INFINITY, |t| (now - t).as_secs_f64()),
                status: e.info.status.clone(),
            })
            .collect();
        v.sort_by_key(|w| w.id);
        v
    }

    pub fn views(&self) -> Vec<WorkerView> {
        self.read()
            .iter()
            .map(|(id, e)| WorkerView {
                id: *id,
                role: match e.info.role {
                    WorkerRole::Prefill => Role::Prefill,
                    WorkerRole::Decode => Role::Decode,
                },
                healthy: e.healthy,
                load: e.info.status.load as usize,
                queued_tokens: e.info.status.queued_tokens as usize,
                kv_capacity_bytes: e.info.status.kv_capacity_bytes,
                kv_free_bytes: e.info.status.kv_free_bytes,
            })
            .collect()
    }

    fn entry(&self, id: WorkerId) -> Option<(String, Option<String>)> {
        self.read()
            .get(&id)
            .map(|e| (e.info.address.clone(), e.info.kv_endpoint.clone()))
    }

    /// Starts both legs of a placed sequence and returns its merged event stream.
    pub async fn start(
        &self,
        placement: Placement,
        req: &SeqRequest,
        id: u64,
    ) -> Result<UnboundedReceiver<SeqEvent>, StartError> {
        let (decode_id, prefill_id) = (placement.decode(), placement.prefill());
        let Some((daddr, kv_endpoint)) = self.entry(decode_id) else {
            return Err(StartError::Retry);
        };
        let sampler = serde_json::to_value(Sampler::new(req.sampling.clone(), req.seed))
            .map_err(|_| StartError::Fatal(ApiError::internal()))?;
        let dreq = DecodeRequest {
            seq: SeqId(id),
            transfer: TransferId(id),
            prompt_tokens: req.prompt.len() as u32,
            prompt: prefill_id.is_none().then(|| req.prompt.clone()),
            max_tokens: req.max_tokens as u32,
            stop_token_ids: req.stop_token_ids.clone(),
            sampler: sampler.clone(),
        };
        let dresp = match self
            .client
            .post(format!("{daddr}/internal/decode"))
            .json(&dreq)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(worker = %decode_id, error = %e, "decode worker unreachable");
                self.mark_dead(decode_id);
                return Err(StartError::Retry);
            }
        };
        if dresp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Err(StartError::Busy);
        }
        if !dresp.status().is_success() {
            tracing::error!(worker = %decode_id, status = %dresp.status(), "decode worker refused a sequence");
            return Err(StartError::Fatal(ApiError::internal()));
        }
        let (tx, rx) = unbounded_channel();
        let Some(prefill_id) = prefill_id else {
            tokio::spawn(forward(None, dresp, tx, Arc::clone(&self.changed)));
            return Ok(rx);
        };
        let Some((paddr, _)) = self.entry(prefill_id) else {
            return Err(StartError::Retry);
        };
        let Some(kv_endpoint) = kv_endpoint else {
            return Err(StartError::Fatal(ApiError::internal()));
        };
        let preq = PrefillRequest {
            seq: SeqId(id),
            transfer: TransferId(id),
            kv_endpoint,
            prompt: req.prompt.clone(),
            max_tokens: req.max_tokens as u32,
            stop_token_ids: req.stop_token_ids.clone(),
            sampler,
        };
        // On any failure below, dropping `dresp` closes the decode leg, which frees its KV.
        let presp = match self
            .client
            .post(format!("{paddr}/internal/prefill"))
            .json(&preq)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(worker = %prefill_id, error = %e, "prefill worker unreachable");
                self.mark_dead(prefill_id);
                return Err(StartError::Retry);
            }
        };
        if presp.status() == reqwest::StatusCode::BAD_GATEWAY {
            // The prefill worker could not reach the decode worker's KV port.
            self.mark_dead(decode_id);
            return Err(StartError::Retry);
        }
        if !presp.status().is_success() {
            tracing::error!(worker = %prefill_id, status = %presp.status(), "prefill worker refused a sequence");
            return Err(StartError::Fatal(ApiError::internal()));
        }
        tokio::spawn(forward(Some(presp), dresp, tx, Arc::clone(&self.changed)));
        Ok(rx)
    }
}

/// Events of one JSON-lines body; an `Err` item means the body broke off.
fn events(resp: reqwest::Response) -> impl futures_util::Stream<Item = Result<SeqEvent, ()>> {
    futures_util::stream::unfold(
        (resp.bytes_stream(), Vec::<u8>::new(), false),
        |(mut body, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let ev =
                        serde_json::from_slice::<SeqEvent>(&line[..line.len() - 1]).map_err(|_| ());
                    return Some((ev, (body, buf, false)));
                }
                match body.next().await {
                    Some(Ok(b)) => buf.extend_from_slice(&b),
                    Some(Err(_)) => return Some((Err(()), (body, buf, true))),
                    None => return None,
                }
            }
        },
    )
}

fn terminal(ev: &SeqEvent) -> bool {
    matches!(ev, SeqEvent::Finished(_) | SeqEvent::Failed(_))
}

/// Forwards the prefill leg's events (the first token), then the decode leg's, into the
/// sequence's stream. A leg that ends without a final event is a lost worker: the client
/// gets an error, never a hang. When the client goes away both legs are dropped, which
/// closes their connections and cancels the sequence on both workers.
async fn forward(
    prefill: Option<reqwest::Response>,
    decode: reqwest::Response,
    tx: UnboundedSender<SeqEvent>,
    changed: Arc<Notify>,
) {
    let run = async {
        if let Some(p) = prefill {
            let mut got_token = false;
            let mut s = std::pin::pin!(events(p));
            while let Some(ev) = s.next().await {
                let Ok(ev) = ev else {
                    let _ = tx.send(SeqEvent::Failed("the prefill worker was lost".into()));
                    return;
                };
                got_token |= matches!(ev, SeqEvent::Token(_));
                let end = terminal(&ev);
                let _ = tx.send(ev);
                if end {
                    return;
                }
            }
            if !got_token {
                let _ = tx.send(SeqEvent::Failed("the prefill worker was lost".into()));
                return;
            }
        }
        let mut s = std::pin::pin!(events(decode));
        while let Some(ev) = s.next().await {
            let Ok(ev) = ev else { break };
            let end = terminal(&ev);
            let _ = tx.send(ev);
            if end {
                return;
            }
        }
        let _ = tx.send(SeqEvent::Failed("the decode worker was lost".into()));
    };
    tokio::select! {
        _ = run => {}
        _ = tx.closed() => {}
    }
    changed.notify_waiters();
}
