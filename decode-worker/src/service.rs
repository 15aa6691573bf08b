//! The decode worker's control API for a separate process (`genie decode-worker`), a thin
//! adapter over [`DecodeWorker::admit`]: `POST /internal/decode` admits one sequence and
//! streams its events as JSON lines (the stream ending early is the cancellation signal,
//! as in-process); `GET /internal/status` reports load and KV room. KV bytes arrive on the
//! network receiver, which accepts only transfer ids admitted here.

use crate::types::{DecodeSeq, KvSource};
use crate::worker::DecodeWorker;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use genie_engine::sampling::Sampler;
use genie_protocol::worker::{DecodeRequest, WorkerStatus, ADMISSION_HEADER, CACHED_TOKENS_HEADER};
use genie_worker_core::control::{event_response, health};
use genie_worker_core::{event_channel, AdmitError};
use std::sync::Arc;

async fn decode(State(w): State<Arc<DecodeWorker>>, Json(req): Json<DecodeRequest>) -> Response {
    let sampler: Sampler = match serde_json::from_value(req.sampler) {
        Ok(s) => s,
        Err(e) => return AdmitError::Invalid(format!("bad sampler state: {e}")).into_response(),
    };
    let source = match req.prompt {
        Some(p) => KvSource::Prompt(p),
        None if req.prompt_ids.len() != req.prompt_tokens as usize => {
            let why = format!(
                "prompt_ids holds {} ids but prompt_tokens is {}",
                req.prompt_ids.len(),
                req.prompt_tokens
            );
            return AdmitError::Invalid(why).into_response();
        }
        None => KvSource::Transfer {
            transfer: req.transfer,
            prompt: req.prompt_ids,
        },
    };
    let max_tokens = req.max_tokens as usize;
    let (tx, rx) = event_channel(max_tokens);
    let seq = DecodeSeq {
        source,
        max_tokens,
        stop_token_ids: req.stop_token_ids,
        sampler,
    };
    match w.admit(seq, tx) {
        Ok(a) => {
            let mut r = event_response(rx);
            r.headers_mut()
                .insert(CACHED_TOKENS_HEADER, a.cached.into());
            r.headers_mut().insert(ADMISSION_HEADER, a.number.into());
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn status(State(w): State<Arc<DecodeWorker>>) -> Json<WorkerStatus> {
    Json(w.status())
}

async fn alive(State(w): State<Arc<DecodeWorker>>) -> axum::http::StatusCode {
    health(w.is_alive())
}

pub fn router(worker: Arc<DecodeWorker>) -> Router {
    Router::new()
        .route("/internal/decode", post(decode))
        .route("/internal/status", get(status))
        .route("/health", get(alive))
        .with_state(worker)
}
