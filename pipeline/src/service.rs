//! A stage worker's control API (`genie stage-worker`): `GET /internal/stage`,
//! `POST /internal/stage/begin {seq, capacity, next}`, `POST /internal/stage/tokens
//! {tokens}` and `POST /internal/stage/end` (stage 0), `/health`. Refusals use the
//! workers' typed error body.

use crate::stage::StageWorker;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use genie_protocol::worker::{Failure, FailureCode};
use genie_worker_core::control::{health, refuse};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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

fn invalid(message: impl Into<String>) -> Response {
    refuse(Failure::new(FailureCode::InvalidRequest, message))
}

fn done(r: anyhow::Result<()>) -> Response {
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refuse(Failure::new(FailureCode::Stopped, e.to_string())),
    }
}

/// Parses a JSON body; the error says what is wrong with it.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad body: {e}"))
}

async fn info(State(w): State<Arc<StageWorker>>) -> Json<StageInfo> {
    Json(StageInfo {
        layers: [w.layers.start, w.layers.end],
        n_layers: w.n_layers,
        kv_endpoint: w.kv_endpoint.clone(),
    })
}

async fn begin(State(w): State<Arc<StageWorker>>, body: axum::body::Bytes) -> Response {
    let b: BeginBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return invalid(e),
    };
    if b.capacity == 0 {
        return invalid("`capacity` must be at least 1");
    }
    // Connecting to the next hop blocks (up to its connect timeout): off the runtime.
    match tokio::task::spawn_blocking(move || w.begin(b.seq, b.capacity, &b.next)).await {
        Ok(r) => done(r),
        Err(_) => refuse(Failure::new(FailureCode::Internal, "the begin task failed")),
    }
}

async fn tokens(State(w): State<Arc<StageWorker>>, body: axum::body::Bytes) -> Response {
    if w.layers.start != 0 {
        return invalid(
            "only the first stage takes tokens; this one takes hidden states on its KV port",
        );
    }
    let b: TokensBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return invalid(e),
    };
    if b.tokens.is_empty() {
        return invalid("`tokens` must not be empty");
    }
    done(w.tokens(b.tokens))
}

async fn end(State(w): State<Arc<StageWorker>>) -> Response {
    done(w.end())
}

async fn alive() -> StatusCode {
    health(true)
}

pub fn router(worker: Arc<StageWorker>) -> Router {
    Router::new()
        .route("/internal/stage", get(info))
        .route("/internal/stage/begin", post(begin))
        .route("/internal/stage/tokens", post(tokens))
        .route("/internal/stage/end", post(end))
        .route("/health", get(alive))
        .with_state(worker)
}
