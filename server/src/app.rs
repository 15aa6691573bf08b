//! The HTTP application: routes, the API-key check, request metrics, health, Prometheus
//! metrics and, on a gateway, the worker registry's endpoints. [`serve`] takes a bound
//! listener and a shutdown future, so tests bind port 0. [`build_apps`] splits the public
//! API from the control plane (`/internal/*`, verified with the cluster secret) so a
//! gateway can serve the two on separate listeners.

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
    /// A streaming client that reads nothing for this long has its sequences cancelled.
    pub stall_timeout: std::time::Duration,
    /// Per-key limits and priorities (empty without keys).
    pub tenants: Arc<crate::tenant::Tenants>,
    /// Stored `/v1/responses` conversations, for `previous_response_id`.
    pub responses: Arc<crate::responses::Store>,
    /// Curves to predict with until a worker reports its own (`plan.cost_profile`).
    pub cost_profile: Option<Arc<genie_scheduler::cost_profile::CostProfile>>,
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

/// A draining worker leaves: the gateway stops placing on it at once.
async fn deregister(
    State(st): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<u64>,
) -> Result<Response, ApiError> {
    if registry(&st)?.deregister(genie_protocol::WorkerId(id)) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!(
            "worker {id} is not registered"
        )))
    }
}

async fn workers(State(st): State<AppState>) -> Result<Response, ApiError> {
    let list = registry(&st)?.list();
    Ok(axum::Json(serde_json::json!({"object": "list", "data": list})).into_response())
}

/// The 404 for a path no route serves, in the OpenAI envelope.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "No route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// Which of the routes outside `/v1/*` need the API key, and the control plane's guard.
#[derive(Clone, Debug, Default)]
pub struct AppOptions {
    /// Verifies the cluster signature on `/internal/*`; `None` on an insecure cluster (and
    /// in `genie serve`, which has no control plane).
    pub cluster: Option<genie_cluster_auth::http::Guard>,
    /// `GET /metrics` needs the API key (when keys are configured). Metrics carry no
    /// prompt text, so it is open by default for scrapers.
    pub metrics_need_key: bool,
    /// `GET /plan` (the page; the data it draws comes from `/v1/plans*`, which always need
    /// the key) needs the API key.
    pub plan_needs_key: bool,
}

/// The whole HTTP API over `st` on one listener: the public routes and, authenticated by
/// the cluster secret when `opts.cluster` is set, the control plane.
pub fn build_app_with(st: AppState, opts: AppOptions) -> Router {
    let (public, internal) = build_apps(st, opts);
    public.merge(internal)
}

/// The whole HTTP API over `st` with the default options (no cluster secret).
pub fn build_app(st: AppState) -> Router {
    build_app_with(st, AppOptions::default())
}

/// The public API (`/v1/*`, `/health`, `/metrics`, `/plan`; anything else 404) and the
/// control plane (`/internal/*`: worker registration and heartbeats, every request
/// verified by `opts.cluster` when set), to serve on one listener or two.
pub fn build_apps(st: AppState, opts: AppOptions) -> (Router, Router) {
    let key = || middleware::from_fn_with_state(st.clone(), auth);
    let v1 = Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/responses", post(crate::responses::create))
        .route("/v1/models", get(handlers::models))
        .route("/v1/workers", get(workers))
        .route("/v1/plans", get(crate::plan_api::active))
        .route("/v1/plans/requests", get(crate::plan_api::recent))
        .route("/v1/plans/requests/{id}", get(crate::plan_api::one))
        .route_layer(key());
    let mut metrics = Router::new().route("/metrics", get(prometheus));
    if opts.metrics_need_key {
        metrics = metrics.route_layer(key());
    }
    let mut plan = Router::new().route("/plan", get(crate::plan_api::page));
    if opts.plan_needs_key {
        plan = plan.route_layer(key());
    }
    let max_body = st.max_body_bytes;
    let public = Router::new()
        .merge(v1)
        .merge(metrics)
        .merge(plan)
        .route("/health", get(health))
        .route("/openapi.json", get(crate::openapi::serve))
        .fallback(not_found)
        .layer(middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(st.clone());
    let mut internal = Router::new()
        .route("/internal/workers", post(register))
        .route("/internal/workers/{id}/heartbeat", post(heartbeat))
        .route("/internal/workers/{id}/deregister", post(deregister));
    if let Some(g) = opts.cluster {
        // On the whole router: routes added here later are covered too.
        internal = internal.layer(middleware::from_fn_with_state(
            g,
            genie_cluster_auth::http::verify_internal,
        ));
    }
    // No fallback here (two merged routers cannot both have one): a separate internal
    // listener adds [`not_found`] itself.
    let internal = internal
        .layer(middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(st);
    (public, internal)
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
