//! The decode worker's control API for a separate process (`genie decode-worker`):
//! `POST /internal/decode` runs one sequence and streams its events as JSON lines (the
//! stream ending early is the cancellation signal, as in-process); `GET /internal/status`
//! reports load and KV room. KV bytes arrive on the TCP receiver, which only accepts
//! transfer ids registered here when their KV was reserved.

use crate::worker::{DecodeInput, DecodeWorker, NewSeq};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use genie_engine::kv_cache::KvCache;
use genie_engine::sampling::Sampler;
use genie_kv_transfer::TransferRegistry;
use genie_protocol::worker::{DecodeRequest, SeqEvent, WorkerStatus};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

pub struct DecodeService {
    pub worker: DecodeWorker,
    pub registry: TransferRegistry,
    pub transfer_timeout: Duration,
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Turns a sequence's event receiver into a JSON-lines body.
pub fn event_body(rx: tokio::sync::mpsc::UnboundedReceiver<SeqEvent>) -> Body {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    Body::from_stream(s.boxed())
}

async fn decode(State(svc): State<Arc<DecodeService>>, Json(req): Json<DecodeRequest>) -> Response {
    let w = &svc.worker;
    let shape = w.kv_shape();
    let tokens = req.prompt_tokens as usize + req.max_tokens as usize;
    let reservation = match w.budget().reserve(tokens * shape.bytes_per_token()) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "kv_full", e.to_string()),
    };
    let sampler: Sampler = match serde_json::from_value(req.sampler) {
        Ok(s) => s,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "sampler",
                format!("bad sampler state: {e}"),
            )
        }
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let seq = NewSeq {
        id: req.seq,
        max_tokens: req.max_tokens as usize,
        stop_token_ids: req.stop_token_ids,
        sampler,
        events: tx,
        reservation,
        cache: KvCache::new(shape, tokens),
    };
    let sent = match req.prompt {
        Some(prompt) => w.send(DecodeInput::Prefill { seq, prompt }),
        None => {
            // Registered before any byte can arrive: the prefill leg starts only after
            // this response's headers reach the gateway.
            svc.registry.expect(
                req.transfer,
                req.prompt_tokens as usize * shape.bytes_per_token(),
                svc.transfer_timeout,
            );
            w.send(DecodeInput::Expect {
                transfer: req.transfer,
                seq,
            })
        }
    };
    if !sent {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the decode loop stopped".into(),
        );
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        event_body(rx),
    )
        .into_response()
}

pub fn status(w: &DecodeWorker) -> WorkerStatus {
    let b = w.budget();
    WorkerStatus {
        load: w.stats().load() as u64,
        queued_tokens: 0,
        running: w.stats().running() as u64,
        kv_capacity_bytes: b.capacity_bytes() as u64,
        kv_free_bytes: (b.capacity_bytes() - b.used_bytes()) as u64,
        max_batch: w.config.max_batch as u64,
    }
}

async fn status_handler(State(svc): State<Arc<DecodeService>>) -> Json<WorkerStatus> {
    Json(status(&svc.worker))
}

async fn health(State(svc): State<Arc<DecodeService>>) -> StatusCode {
    if svc.worker.is_alive() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

pub fn router(svc: Arc<DecodeService>) -> Router {
    Router::new()
        .route("/internal/decode", post(decode))
        .route("/internal/status", get(status_handler))
        .route("/health", get(health))
        .with_state(svc)
}
