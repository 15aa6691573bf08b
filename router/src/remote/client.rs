//! Starting a placed sequence on worker processes: the decode leg first
//! (`POST /internal/decode`, KV reserved before the prefill starts), then the prefill leg
//! (`POST /internal/prefill`); their JSON-lines event streams are merged, in order, into
//! the sequence's one bounded channel. A refusal is read by its typed code. Every call is
//! signed with the cluster secret (when the cluster has one).

use super::registry::{Claim, Registry};
use crate::pool::{on_refusal, SeqSpec, StartError};
use futures_util::StreamExt;
use genie_cluster_auth::ClusterSecret;
use genie_protocol::worker::{
    events_capacity, ControlError, DecodeRequest, FailureCode, PrefillRequest, SeqEvent,
    WorkerStatus, ADMISSION_HEADER, CACHED_TOKENS_HEADER,
};
use genie_protocol::{TransferId, WorkerId};
use genie_scheduler::Placement;
use std::sync::Arc;
use tokio::sync::mpsc::{channel, Receiver, Sender};
use tokio::sync::Notify;

/// The gateway's HTTP client for worker control calls and the secret it signs them with.
#[derive(Clone, Debug)]
pub struct Signed {
    pub http: reqwest::Client,
    pub secret: Option<ClusterSecret>,
}

impl Signed {
    async fn send(&self, rb: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
        genie_cluster_auth::http::send_signed(rb, self.secret.as_ref()).await
    }
}

/// Polls the static workers' status endpoints; an unreachable one is marked unhealthy.
pub async fn poll_static(client: &Signed, registry: &Registry) {
    for (id, addr) in registry.statics() {
        let rb = client
            .http
            .get(format!("{addr}/internal/status"))
            .timeout(registry.heartbeat * 2);
        let r = client.send(rb).await;
        match r {
            Ok(r) if r.status().is_success() => {
                if let Ok(s) = r.json::<WorkerStatus>().await {
                    registry.heartbeat(id, s);
                }
            }
            _ => registry.mark_dead(id),
        }
    }
}

/// A worker's refusal: the typed code from its body (`internal` when it has none).
async fn refusal(resp: reqwest::Response) -> (FailureCode, String) {
    let status = resp.status();
    match resp.json::<ControlError>().await {
        Ok(e) => (e.error.code, e.error.message),
        Err(_) => (FailureCode::Internal, format!("status {status}")),
    }
}

/// `leg`'s refusal read by its code ([`on_refusal`]). A worker left out because it is
/// stopping or unreachable is also marked unhealthy; a busy one is not.
async fn refused(
    registry: &Registry,
    resp: reqwest::Response,
    leg: WorkerId,
    decode: WorkerId,
) -> StartError {
    let (code, msg) = refusal(resp).await;
    let e = on_refusal(code, leg, decode, msg);
    match &e {
        StartError::Retry { worker, .. } if code != FailureCode::Busy => {
            registry.mark_dead(*worker)
        }
        StartError::Failed(msg) => {
            tracing::error!(worker = %leg, %code, %msg, "a worker refused a sequence")
        }
        _ => {}
    }
    e
}

/// POSTs a control request; an unreachable worker is marked unhealthy.
async fn post<T: serde::Serialize>(
    client: &Signed,
    registry: &Registry,
    worker: WorkerId,
    url: String,
    body: &T,
) -> Result<reqwest::Response, StartError> {
    client
        .send(client.http.post(url).json(body))
        .await
        .map_err(|e| {
            tracing::warn!(%worker, error = %e, "worker unreachable");
            registry.mark_dead(worker);
            StartError::Retry {
                worker,
                reason: "unreachable".into(),
            }
        })
}

/// The admission number a worker's answer gives ([`ADMISSION_HEADER`]), if any.
fn admission(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(ADMISSION_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// Starts both legs of a placed sequence and returns its merged event stream. Each leg is
/// counted in its worker's view from now on ([`Claim`]), before either worker answers.
pub async fn start(
    client: &Signed,
    registry: &Arc<Registry>,
    placement: Placement,
    seq: &SeqSpec,
) -> Result<Receiver<SeqEvent>, StartError> {
    let (decode_id, prefill_id) = (placement.decode(), placement.prefill());
    let gone = |worker: WorkerId| StartError::Retry {
        worker,
        reason: "no longer registered".into(),
    };
    // A colocated prompt queues its tokens on the decode worker, a disaggregated one on
    // the prefill worker (all of them, as the worker counts them).
    let prompt = seq.prompt.len();
    let decode_claim = registry.claim(decode_id, if prefill_id.is_some() { 0 } else { prompt });
    let prefill_claim = prefill_id.and_then(|p| registry.claim(p, prompt));
    let (daddr, kv_endpoint) = registry
        .addresses(decode_id)
        .ok_or_else(|| gone(decode_id))?;
    let sampler = serde_json::to_value(seq.sampler())
        .map_err(|e| StartError::Failed(format!("sampler state: {e}")))?;
    let transfer = TransferId(seq.id.0);
    let dreq = DecodeRequest {
        seq: seq.id,
        transfer,
        prompt_tokens: seq.prompt.len() as u32,
        prompt: prefill_id.is_none().then(|| seq.prompt.clone()),
        prompt_ids: if prefill_id.is_some() {
            seq.prompt.clone()
        } else {
            Vec::new()
        },
        max_tokens: seq.max_tokens as u32,
        stop_token_ids: seq.stop_token_ids.clone(),
        sampler: sampler.clone(),
    };
    let url = format!("{daddr}/internal/decode");
    let dresp = post(client, registry, decode_id, url, &dreq).await?;
    if !dresp.status().is_success() {
        return Err(refused(registry, dresp, decode_id, decode_id).await);
    }
    if let Some(c) = &decode_claim {
        c.admitted(admission(&dresp));
    }
    let (tx, rx) = channel(events_capacity(seq.max_tokens));
    let changed = registry.changed();
    let Some(prefill_id) = prefill_id else {
        let decode = Leg {
            resp: dresp,
            claim: decode_claim,
        };
        tokio::spawn(forward(None, decode, tx, changed));
        return Ok(rx);
    };
    // The decode worker may already hold the prompt's first blocks: they are not sent. A
    // header that does not parse, or claims the whole prompt, counts as none.
    let skip_tokens = dresp
        .headers()
        .get(CACHED_TOKENS_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
        .filter(|&n| (n as usize) < seq.prompt.len())
        .unwrap_or(0);
    let (paddr, _) = registry
        .addresses(prefill_id)
        .ok_or_else(|| gone(prefill_id))?;
    let kv_endpoint = kv_endpoint.ok_or_else(|| {
        StartError::Failed(format!("decode worker {decode_id} has no KV endpoint"))
    })?;
    let preq = PrefillRequest {
        seq: seq.id,
        transfer,
        kv_endpoint,
        prompt: seq.prompt.clone(),
        skip_tokens,
        max_tokens: seq.max_tokens as u32,
        stop_token_ids: seq.stop_token_ids.clone(),
        sampler,
    };
    // On any failure below, dropping `dresp` closes the decode leg, which frees its KV.
    let url = format!("{paddr}/internal/prefill");
    let presp = post(client, registry, prefill_id, url, &preq).await?;
    if !presp.status().is_success() {
        return Err(refused(registry, presp, prefill_id, decode_id).await);
    }
    if let Some(c) = &prefill_claim {
        c.admitted(admission(&presp));
    }
    let prefill = Leg {
        resp: presp,
        claim: prefill_claim,
    };
    let decode = Leg {
        resp: dresp,
        claim: decode_claim,
    };
    tokio::spawn(forward(Some(prefill), decode, tx, changed));
    Ok(rx)
}

/// One leg's event stream and its count in its worker's view.
struct Leg {
    resp: reqwest::Response,
    claim: Option<Claim>,
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
                    if line.len() == 1 {
                        continue; // the worker's keep-alive
                    }
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

fn lost(which: &str) -> SeqEvent {
    SeqEvent::failed(
        FailureCode::WorkerLost,
        format!("the {which} worker was lost"),
    )
}

/// Forwards the prefill leg's events (the first token), then the decode leg's, into the
/// sequence's stream, waiting for room (backpressure reaches the workers' streams). A leg
/// that ends without a final event is a lost worker: the client gets an error, never a
/// hang. When the client goes away both legs are dropped, which closes their connections
/// and cancels the sequence on both workers. A leg's claim ends before the event that
/// ends it goes on, so the next placement after a finished request sees it ended.
async fn forward(prefill: Option<Leg>, decode: Leg, tx: Sender<SeqEvent>, changed: Arc<Notify>) {
    let run = async {
        if let Some(Leg { resp, mut claim }) = prefill {
            let mut got_token = false;
            let mut s = std::pin::pin!(events(resp));
            while let Some(ev) = s.next().await {
                let Ok(ev) = ev else {
                    drop(claim.take());
                    let _ = tx.send(lost("prefill")).await;
                    return;
                };
                got_token |= matches!(ev, SeqEvent::Token(_));
                let end = ev.is_terminal();
                if got_token || end {
                    // Its work there is done with the first token.
                    drop(claim.take());
                }
                if tx.send(ev).await.is_err() || end {
                    return;
                }
            }
            drop(claim);
            if !got_token {
                let _ = tx.send(lost("prefill")).await;
                return;
            }
        }
        let Leg { resp, mut claim } = decode;
        let mut prefilled = false;
        let mut s = std::pin::pin!(events(resp));
        while let Some(ev) = s.next().await {
            let Ok(ev) = ev else { break };
            let end = ev.is_terminal();
            if end {
                drop(claim.take());
            } else if let (SeqEvent::Token(_), Some(c), false) = (&ev, &claim, prefilled) {
                // A colocated prompt has been prefilled once its first token comes.
                c.prefilled();
                prefilled = true;
            }
            if tx.send(ev).await.is_err() || end {
                return;
            }
        }
        drop(claim);
        let _ = tx.send(lost("decode")).await;
    };
    tokio::select! {
        _ = run => {}
        _ = tx.closed() => {}
    }
    changed.notify_waiters();
}
