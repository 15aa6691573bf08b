//! The worker control API's shared pieces: a sequence's events as a JSON-lines body,
//! typed refusals and the health answer.

use crate::AdmitError;
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use genie_protocol::worker::{ControlError, Failure, FailureCode, SeqEvent};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

/// The content type of a sequence's event stream.
pub const NDJSON: &str = "application/x-ndjson";

/// After this long without an event the body carries an empty line: a write is how the
/// server learns that the gateway's connection is gone.
pub const KEEPALIVE: Duration = Duration::from_secs(1);

/// A sequence's events as a JSON-lines response; the client closing it drops `rx`, which
/// the worker sees as a cancelled sequence. While no event comes (a sequence waiting for
/// its KV), an empty line goes out every [`KEEPALIVE`] so that a vanished client is
/// noticed and its reservation freed within seconds, not when the sequence would have
/// produced its next event. Readers skip empty lines.
pub fn event_response(rx: Receiver<SeqEvent>) -> Response {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(ev) => {
                let mut line = serde_json::to_vec(&ev?).unwrap_or_default();
                line.push(b'\n');
                line
            }
            Err(_) => b"\n".to_vec(),
        };
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    (
        [(axum::http::header::CONTENT_TYPE, NDJSON)],
        Body::from_stream(s.boxed()),
    )
        .into_response()
}

/// The HTTP status a failure code is refused with (the code, not the status, is what the
/// gateway decides by).
pub fn status_of(code: FailureCode) -> StatusCode {
    match code {
        FailureCode::Busy | FailureCode::NoKvRoom | FailureCode::Stopped => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        FailureCode::InvalidRequest => StatusCode::BAD_REQUEST,
        FailureCode::KvUnreachable | FailureCode::TransferFailed | FailureCode::WorkerLost => {
            StatusCode::BAD_GATEWAY
        }
        FailureCode::Cancelled | FailureCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A refusal: `{"error": {"code", "message"}}` with the code's status.
pub fn refuse(f: Failure) -> Response {
    (status_of(f.code), Json(ControlError { error: f })).into_response()
}

impl IntoResponse for AdmitError {
    fn into_response(self) -> Response {
        refuse(self.failure())
    }
}

/// `GET /health`: 200 while the worker's compute thread runs, else 503.
pub fn health(alive: bool) -> StatusCode {
    if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
