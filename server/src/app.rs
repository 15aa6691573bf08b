//! The HTTP application: routes, the API-key check, request metrics, health, Prometheus
//! metrics and, on a gateway, the worker registry's endpoints. [`serve`] takes a bound
//! listener and a shutdown future, so tests bind port 0.

use crate::api_error::ApiError;
use crate::frontend::Frontend;
use crate::handlers;
use crate::plan_log::PlanLog;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use genie_router::{Dispatcher, Registry};
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub frontend: Arc<Frontend>,
    pub dispatcher: Arc<Dispatcher>,
    /// The worker registry (`genie gateway`); `None` when the workers are in-process.
    pub registry: Option<Arc<Registry>>,
    pub api_keys: Arc<Vec<String>>,
    pub metrics: PrometheusHandle,
    pub plans: Arc<PlanLog>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

/// Constant-time comparison so key checks do not leak how much of a key matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.api_keys.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => ApiError::unauthorized(
            "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.",
        )
        .into_response(),
        Some(k) if st.api_keys.iter().any(|a| same(a.as_bytes(), k.as_bytes())) => {
            next.run(req).await
        }
        Some(_) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
    }
}

async fn count_requests(req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    metrics::counter!(
        "genie_requests_total",
        "endpoint" => endpoint,
        "status" => resp.status().as_u16().to_string()
    )
    .increment(1);
    resp
}

async fn health(State(st): State<AppState>) -> Response {
    if st.dispatcher.is_ready() {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        )
            .into_response()
    } else {
        ApiError::unavailable("a worker is not running").into_response()
    }
}

async fn prometheus(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

fn registry(st: &AppState) -> Result<&Arc<Registry>, ApiError> {
    st.registry.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "this server runs its workers in-process (genie serve); workers register with `genie gateway`",
        )
    })
}

async fn register(
    State(st): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: genie_protocol::worker::RegisterRequest = crate::body::parse(&body)?;
    Ok(axum::Json(registry(&st)?.register(req)?).into_response())
}

async fn heartbeat(
    State(st): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let status: genie_protocol::worker::WorkerStatus = crate::body::parse(&body)?;
    if registry(&st)?.heartbeat(genie_protocol::WorkerId(id), status) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!(
            "worker {id} is not registered; register again"
        )))
    }
}

async fn workers(State(st): State<AppState>) -> Result<Response, ApiError> {
    let list = registry(&st)?.list();
    Ok(axum::Json(serde_json::json!({"object": "list", "data": list})).into_response())
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "No route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// The whole HTTP API over `st`.
pub fn build_app(st: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::models))
        .route("/v1/workers", get(workers))
        .route("/v1/plans", get(crate::plan_api::active))
        .route("/v1/plans/requests", get(crate::plan_api::recent))
        .route("/v1/plans/requests/{id}", get(crate::plan_api::one))
        .route_layer(middleware::from_fn_with_state(st.clone(), auth));
    let max_body = st.max_body_bytes;
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/plan", get(crate::plan_api::page))
        .route("/metrics", get(prometheus))
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/internal/workers", post(register))
        .route("/internal/workers/{id}/heartbeat", post(heartbeat))
        .fallback(not_found)
        .layer(middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(st)
}

/// Serves until `shutdown` resolves, then lets open requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
