//! The prefill worker's control API for a separate process (`genie prefill-worker`), a
//! thin adapter over [`PrefillWorker::admit`]: `POST /internal/prefill` admits one prompt
//! (opening the KV transfer to the decode worker named in the request) and streams the
//! sequence's first events as JSON lines; `GET /internal/status` reports load.

use crate::worker::{PrefillSeq, PrefillWorker};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use genie_engine::sampling::Sampler;
use genie_protocol::worker::{PrefillRequest, WorkerStatus, ADMISSION_HEADER};
use genie_worker_core::control::{event_response, health};
use genie_worker_core::{event_channel, AdmitError};
use std::sync::Arc;

async fn prefill(State(w): State<Arc<PrefillWorker>>, Json(req): Json<PrefillRequest>) -> Response {
    let sampler: Sampler = match serde_json::from_value(req.sampler) {
        Ok(s) => s,
        Err(e) => return AdmitError::Invalid(format!("bad sampler state: {e}")).into_response(),
    };
    let max_tokens = req.max_tokens as usize;
    let (tx, rx) = event_channel(max_tokens);
    let seq = PrefillSeq {
        transfer: req.transfer,
        kv_endpoint: req.kv_endpoint,
        prompt: req.prompt,
        skip_tokens: req.skip_tokens as usize,
        max_tokens,
        stop_token_ids: req.stop_token_ids,
        sampler,
    };
    // Opening the transfer connects to the decode worker: off the runtime.
    match tokio::task::spawn_blocking(move || w.admit(seq, tx)).await {
        Ok(Ok(number)) => {
            let mut r = event_response(rx);
            r.headers_mut().insert(ADMISSION_HEADER, number.into());
            r
        }
        Ok(Err(e)) => e.into_response(),
        Err(_) => AdmitError::Stopped.into_response(),
    }
}

async fn status(State(w): State<Arc<PrefillWorker>>) -> Json<WorkerStatus> {
    Json(w.status())
}

async fn alive(State(w): State<Arc<PrefillWorker>>) -> axum::http::StatusCode {
    health(w.is_alive())
}

pub fn router(worker: Arc<PrefillWorker>) -> Router {
    Router::new()
        .route("/internal/prefill", post(prefill))
        .route("/internal/status", get(status))
        .route("/health", get(alive))
        .with_state(worker)
}
