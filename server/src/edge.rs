//! The HTTP edge every listener of Genie is served with: a connection cap, header and
//! body read timeouts, every error in the OpenAI envelope (whatever layer made it), a
//! `Retry-After` on every 429 and 503, and the drain of an orderly shutdown ([`Drain`]).
//!
//! [`serve`] runs hyper's HTTP/1 connections itself rather than through `axum::serve`,
//! which sets neither a header read timeout nor a connection cap; with a TLS
//! configuration each connection first completes its handshake (within the header read
//! timeout, holding a connection slot).

use crate::api_error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Seconds a client is told to wait (`Retry-After`) after a 429 or a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// How a listener treats its connections.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// A connection that has not sent a request's whole header block this long after it
    /// started sending it (or after its previous request) is closed.
    pub header_read_timeout: Duration,
    /// A request whose body has not fully arrived this long after its headers gets a 408.
    pub body_read_timeout: Duration,
    /// Most connections open at once; past it a new connection gets a 503 and is closed
    /// (with TLS it is closed at once).
    pub max_connections: usize,
    /// Serve HTTPS with this configuration (`None`: plain HTTP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            tls: None,
        }
    }
}

/// The state of an orderly shutdown, shared by the listener's middleware and whoever
/// handles the signals: [`Drain::begin`] makes new requests get the refusal while the
/// requests in flight go on; [`Drain::stop_streams`] ends the streams still open, an SSE
/// stream with an error event and `[DONE]`.
#[derive(Clone, Default)]
pub struct Drain {
    inner: Arc<DrainInner>,
}

#[derive(Default)]
struct DrainInner {
    draining: AtomicBool,
    stop_streams: CancellationToken,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// One request in flight; its drop (the response sent, or its stream ended or dropped)
/// is what [`Drain::idle`] waits for.
struct InFlight(Arc<DrainInner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops taking new work.
    pub fn begin(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Requests being answered (streams included).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Resolves once no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Ends every stream still open (past the drain deadline).
    pub fn stop_streams(&self) {
        self.inner.stop_streams.cancel();
    }

    fn enter(&self) -> InFlight {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(&self.inner))
    }
}

/// What a draining listener answers a new request with.
pub type Refusal = fn() -> Response;

/// The gateway's refusal while draining: 503, `Retry-After`, the envelope.
pub fn shutting_down() -> Response {
    ApiError::unavailable("The server is shutting down; retry on another replica.").into_response()
}

/// Wraps `app` with the edge's layers: the drain (new requests get `refuse` while
/// draining; `GET /metrics` still answers), the body read timeout, and the envelope for
/// every error any layer below made.
pub fn layer(app: Router, cfg: &EdgeConfig, drain: Drain, refuse: Refusal) -> Router {
    let body_timeout = cfg.body_read_timeout;
    app.layer(middleware::from_fn(move |req: Request, next: Next| {
        let drain = drain.clone();
        async move { guard(req, next, drain, refuse, body_timeout).await }
    }))
}

async fn guard(
    req: Request,
    next: Next,
    drain: Drain,
    refuse: Refusal,
    body_timeout: Duration,
) -> Response {
    let metrics = req.method() == Method::GET && req.uri().path() == "/metrics";
    if drain.is_draining() && !metrics {
        return with_retry_after(refuse());
    }
    let in_flight = drain.enter();
    let timed_out = Arc::new(AtomicBool::new(false));
    let req = req.map(|b| deadline_body(b, body_timeout, Arc::clone(&timed_out)));
    let resp = next.run(req).await;
    let resp = if timed_out.load(Ordering::Acquire) {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            code: Some("timeout"),
            ..ApiError::malformed(format!(
                "The request body did not arrive within {} s.",
                body_timeout.as_secs_f64()
            ))
        }
        .into_response()
    } else {
        with_retry_after(in_envelope(resp).await)
    };
    if is_stream(&resp) {
        let stop = drain.inner.stop_streams.clone();
        let sse = is_sse(resp.headers().get(header::CONTENT_TYPE));
        resp.map(|b| stoppable_body(b, sse, stop, in_flight))
    } else {
        resp
    }
}

fn is_stream(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.starts_with("text/event-stream") || t.starts_with("application/x-ndjson")
        })
}

fn is_sse(resp_content_type: Option<&HeaderValue>) -> bool {
    resp_content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"))
}

/// A request body that fails (and flags `timed_out`) when it is not complete by `limit`.
fn deadline_body(body: Body, limit: Duration, timed_out: Arc<AtomicBool>) -> Body {
    let deadline = tokio::time::Instant::now() + limit;
    let s = futures_util::stream::unfold(Some(body.into_data_stream()), move |s| {
        let timed_out = Arc::clone(&timed_out);
        async move {
            let mut s = s?;
            match tokio::time::timeout_at(deadline, s.next()).await {
                Ok(Some(item)) => Some((item, Some(s))),
                Ok(None) => None,
                Err(_) => {
                    timed_out.store(true, Ordering::Release);
                    Some((
                        Err(axum::Error::new(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request body read timed out",
                        ))),
                        None,
                    ))
                }
            }
        }
    });
    Body::from_stream(s)
}

/// A streamed response that ends when `stop` is cancelled: an SSE stream gets an error
/// event in the envelope and `[DONE]` first (as every other mid-stream failure does); a
/// worker's NDJSON stream just ends, which its gateway reads as the worker stopping.
/// `in_flight` lives as long as the stream.
fn stoppable_body(body: Body, sse: bool, stop: CancellationToken, in_flight: InFlight) -> Body {
    struct St {
        inner: Option<axum::body::BodyDataStream>,
        stop: CancellationToken,
        sse: bool,
        _in_flight: InFlight,
    }
    let st = St {
        inner: Some(body.into_data_stream()),
        stop,
        sse,
        _in_flight: in_flight,
    };
    let s = futures_util::stream::unfold(st, |mut st| async move {
        let mut inner = st.inner.take()?;
        let stop = st.stop.clone();
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            item = inner.next() => Some(item),
        };
        match next {
            None => {
                drop(inner);
                st.sse.then(|| (Ok(Bytes::from(stopped_sse_tail())), st))
            }
            Some(item) => {
                let item = item?;
                st.inner = Some(inner);
                Some((item, st))
            }
        }
    });
    Body::from_stream(s)
}

/// The last events of an SSE stream cut by the drain deadline.
fn stopped_sse_tail() -> String {
    let e = ApiError::unavailable(
        "The server is shutting down and its drain deadline passed before this stream finished.",
    );
    let json = serde_json::to_string(&e.envelope()).unwrap_or_default();
    format!("data: {json}\n\ndata: [DONE]\n\n")
}

/// Adds `Retry-After` to a 429 or 503 that has none.
fn with_retry_after(mut resp: Response) -> Response {
    let s = resp.status();
    if (s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::SERVICE_UNAVAILABLE)
        && !resp.headers().contains_key(header::RETRY_AFTER)
    {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    resp
}

/// An error response not already JSON (axum's plain-text 413 and 400 rejections, its
/// empty 405, …) rewritten as the envelope with the same status.
async fn in_envelope(resp: Response) -> Response {
    let s = resp.status();
    if !(s.is_client_error() || s.is_server_error()) {
        return resp;
    }
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // Rejection texts are short and written by axum, never client data; read at most 4 KiB.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let e = match s {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError {
            status: s,
            code: Some("request_too_large"),
            ..ApiError::malformed("The request body is larger than this server accepts.")
        },
        // The router adds `Allow` outside this layer, so the message cannot list it; the
        // header carries it.
        StatusCode::METHOD_NOT_ALLOWED => ApiError {
            status: s,
            code: Some("method_not_allowed"),
            ..ApiError::malformed(
                "Method not allowed on this route; the `Allow` header lists those that are.",
            )
        },
        _ => ApiError {
            status: s,
            kind: if s.is_server_error() {
                "server_error"
            } else {
                "invalid_request_error"
            },
            ..ApiError::malformed(if text.is_empty() {
                s.canonical_reason().unwrap_or("error").to_string()
            } else {
                text
            })
        },
    };
    let mut out = e.into_response();
    for (k, v) in parts.headers.iter() {
        if k == header::ALLOW || k == header::RETRY_AFTER {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// The answer to a connection past the cap: one 503 in the envelope, then close.
fn over_cap_response() -> Vec<u8> {
    let e = ApiError {
        code: Some("too_many_connections"),
        ..ApiError::unavailable("Too many open connections; retry later.")
    };
    let body = serde_json::to_string(&e.envelope()).unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves one connection (plain or TLS) until it ends or `stop` asks it to close after
/// its current response.
async fn connection<I>(
    io: I,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    stop: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _permit = permit;
    let svc = hyper_util::service::TowerToHyperService::new(app);
    let conn = http
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled: HTTP/1 connections with the
/// header read timeout, at most `max_connections` at once. On `stop` it accepts nothing
/// more, asks every connection to close after its current response, and waits for them
/// (at most `grace`, then they are dropped).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    cfg: &EdgeConfig,
    stop: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioTimer;
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let conns = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .keep_alive(true);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            metrics::counter!("genie_connections_refused_total").increment(1);
            if cfg.tls.is_some() {
                // No handshake spent on a refused connection: it is closed.
                drop(stream);
                continue;
            }
            conns.spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(&over_cap_response()),
                )
                .await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, http, stop) = (app.clone(), http.clone(), stop.clone());
        match &cfg.tls {
            None => {
                conns.spawn(connection(stream, app, http, stop, permit));
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(tls));
                let limit = cfg.header_read_timeout;
                conns.spawn(async move {
                    // A handshake is bounded like a header block: a peer that opens a
                    // connection and stalls cannot hold its slot.
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => connection(s, app, http, stop, permit).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    conns.close();
    if tokio::time::timeout(grace, conns.wait()).await.is_err() {
        tracing::warn!("connections still open after {grace:?}; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_added_to_429_and_503_only() {
        let r = with_retry_after(StatusCode::TOO_MANY_REQUESTS.into_response());
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = with_retry_after(StatusCode::SERVICE_UNAVAILABLE.into_response());
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = with_retry_after(StatusCode::BAD_REQUEST.into_response());
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn the_stopped_tail_is_an_envelope_then_done() {
        let t = stopped_sse_tail();
        let first = t.lines().next().unwrap().strip_prefix("data: ").unwrap();
        let v: serde_json::Value = serde_json::from_str(first).unwrap();
        assert_eq!(v["error"]["code"], "unavailable");
        assert!(t.ends_with("data: [DONE]\n\n"));
        assert!(is_sse(Some(&HeaderValue::from_static("text/event-stream"))));
    }
}
