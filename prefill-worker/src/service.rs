//! The prefill worker's control API for a separate process (`genie prefill-worker`):
//! `POST /internal/prefill` queues one prompt, opens the TCP KV transfer to the decode
//! worker named in the request, and streams the sequence's first events as JSON lines.

use crate::worker::{PrefillJob, PrefillWorker};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use genie_engine::sampling::Sampler;
use genie_kv_transfer::KvTransport;
use genie_protocol::worker::{PrefillRequest, SeqEvent, WorkerStatus};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct PrefillService {
    pub worker: PrefillWorker,
    pub transport: Arc<dyn KvTransport>,
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn event_body(rx: tokio::sync::mpsc::UnboundedReceiver<SeqEvent>) -> Body {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    Body::from_stream(s.boxed())
}

async fn prefill(
    State(svc): State<Arc<PrefillService>>,
    Json(req): Json<PrefillRequest>,
) -> Response {
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
    if req.prompt.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "prompt", "empty prompt".into());
    }
    let transport = Arc::clone(&svc.transport);
    let (endpoint, transfer) = (req.kv_endpoint.clone(), req.transfer);
    let sink = match tokio::task::spawn_blocking(move || transport.open(&endpoint, transfer)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse(StatusCode::BAD_GATEWAY, "kv_connect", e.to_string()),
        Err(_) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "connect task failed".into(),
            )
        }
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let job = PrefillJob {
        id: req.seq,
        prompt: req.prompt,
        max_tokens: req.max_tokens as usize,
        stop_token_ids: req.stop_token_ids,
        sampler,
        events: tx,
        sink,
    };
    if svc.worker.submit(job).is_err() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the prefill loop stopped".into(),
        );
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        event_body(rx),
    )
        .into_response()
}

pub fn status(w: &PrefillWorker) -> WorkerStatus {
    WorkerStatus {
        load: w.stats().load.load(Ordering::Relaxed) as u64,
        queued_tokens: w.stats().queued_tokens.load(Ordering::Relaxed) as u64,
        running: 0,
        kv_capacity_bytes: 0,
        kv_free_bytes: 0,
        max_batch: w.config.max_batch_tokens as u64,
    }
}

async fn status_handler(State(svc): State<Arc<PrefillService>>) -> Json<WorkerStatus> {
    Json(status(&svc.worker))
}

async fn health(State(svc): State<Arc<PrefillService>>) -> StatusCode {
    if svc.worker.is_alive() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

pub fn router(svc: Arc<PrefillService>) -> Router {
    Router::new()
        .route("/internal/prefill", post(prefill))
        .route("/internal/status", get(status_handler))
        .route("/health", get(health))
        .with_state(svc)
}
