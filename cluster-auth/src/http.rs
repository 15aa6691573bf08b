//! The cluster secret over HTTP: [`verify_internal`], an axum middleware that verifies
//! every `/internal/*` request before routing reaches its handler (other paths pass), and
//! [`send_signed`], which signs a `reqwest` request on its way out.

use crate::{AuthError, ClusterSecret, Verifier, SIGNATURE_HEADER};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// What [`verify_internal`] needs: the verifier and the largest body it buffers.
#[derive(Clone, Debug)]
pub struct Guard {
    pub verifier: Arc<Verifier>,
    /// Bodies past this many bytes are refused with 413 before they are verified.
    pub max_body: usize,
}

impl Guard {
    pub fn new(verifier: Arc<Verifier>, max_body: usize) -> Self {
        Guard { verifier, max_body }
    }
}

/// Is `path` part of the control plane?
pub fn is_internal(path: &str) -> bool {
    path == "/internal" || path.starts_with("/internal/")
}

/// A refusal in the OpenAI error envelope.
pub fn refusal(status: u16, kind: &str, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {
        "message": message, "type": kind, "param": null, "code": code,
    }});
    let status = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let kind = if self.status() == 503 {
            "server_error"
        } else {
            "authentication_error"
        };
        refusal(self.status(), kind, self.code(), &self.to_string())
    }
}

/// Verifies the cluster signature of every `/internal/*` request (its body buffered up
/// to the guard's limit); a refused request never reaches its handler.
pub async fn verify_internal(State(g): State<Guard>, req: Request, next: Next) -> Response {
    if !is_internal(req.uri().path()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, g.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return refusal(
                413,
                "invalid_request_error",
                "body_too_large",
                &format!("the request body is over {} bytes", g.max_body),
            )
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let header = parts
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    if let Err(e) = g
        .verifier
        .verify_http(parts.method.as_str(), path, header, &bytes)
    {
        tracing::warn!(method = %parts.method, path = parts.uri.path(), code = e.code(), "control-plane request refused");
        return e.into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Sends `rb`, signed with `secret` when there is one (an insecure cluster sends it as is).
pub async fn send_signed(
    rb: reqwest::RequestBuilder,
    secret: Option<&ClusterSecret>,
) -> reqwest::Result<reqwest::Response> {
    let (client, req) = rb.build_split();
    let mut req = req?;
    if let Some(s) = secret {
        let body = req.body().and_then(|b| b.as_bytes()).unwrap_or(&[]);
        let url = req.url();
        let pq = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let sig = s.sign_http(req.method().as_str(), &pq, body);
        req.headers_mut().insert(
            SIGNATURE_HEADER,
            reqwest::header::HeaderValue::from_str(&sig).expect("a signature is ASCII"),
        );
    }
    client.execute(req).await
}
