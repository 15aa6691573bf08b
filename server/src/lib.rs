//! # genie-server
//!
//! The OpenAI-compatible HTTP API. [`build_app`] turns an [`AppState`] (the model's text
//! side, a router [`Dispatcher`](genie_router::Dispatcher), the worker registry of a
//! gateway, API keys, metrics, the plan log) into an axum `Router`; [`serve`] runs it on a
//! bound listener until a shutdown future resolves, so tests use it in-process on port 0.
//!
//! - [`handlers`] and [`sse`]: chat completions, completions, models; bodies and SSE;
//! - [`request`] and [`body`]: parse, don't validate — every refusal names its field;
//! - [`api_error`]: the one mapping from typed errors to a status and the OpenAI envelope;
//! - [`app`]: routes, the API-key check, request metrics, health, the worker registry's
//!   endpoints;
//! - [`sequence`]: one running sequence as the client sees it (detokenization, stop
//!   strings, latency metrics);
//! - [`plan_api`] and [`plan_log`]: `/v1/plans…` and the `/plan` page;
//! - [`tenant`]: per-key request rate, sequence cap and priority;
//! - [`metrics_setup`]: the process's Prometheus recorder;
//! - [`edge`]: how a listener is served: connection cap, read timeouts, errors in the
//!   envelope, `Retry-After`, the drain of an orderly shutdown.
//! - [`openapi`]: the OpenAPI 3 document of the public API (`GET /openapi.json`).

pub mod api_error;
pub mod app;
pub mod body;
pub mod edge;
pub mod fields;
pub mod frontend;
pub mod handlers;
pub mod metrics_setup;
pub mod openapi;
pub mod plan_api;
pub mod plan_log;
pub mod request;
pub mod responses;
pub mod sequence;
pub mod sse;
pub mod tenant;
pub mod tool_stream;
pub mod tools;

pub use api_error::ApiError;
pub use app::{build_app, build_app_with, build_apps, serve, AppOptions, AppState};
pub use frontend::Frontend;
pub use plan_log::PlanLog;
