//! The OpenAPI 3 document of the public API, served at `GET /openapi.json` without a key.
//! Generated with utoipa from the wire types in `genie_protocol::openai` (their
//! `ToSchema` derives) and the operations declared here, so the schemas cannot drift from
//! what the handlers parse and answer. The CI's schemathesis run checks the live server
//! against it (`scripts/schemathesis.sh`).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use genie_protocol::openai::{
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Completion, CompletionRequest,
    ErrorEnvelope, ModelList,
};
use std::sync::OnceLock;
use utoipa::OpenApi;

/// `GET /health`'s body when the server is ready.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct HealthStatus {
    /// `ok`.
    pub status: String,
}

/// The errors of both generation routes, each in the OpenAI envelope.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum GenerationErrors {
    /// Malformed body or an invalid field (`param` names it); `context_length_exceeded`.
    #[response(status = 400)]
    Invalid(ErrorEnvelope),
    /// Missing or wrong API key.
    #[response(status = 401)]
    Unauthorized(ErrorEnvelope),
    /// Unknown model.
    #[response(status = 404)]
    UnknownModel(ErrorEnvelope),
    /// Body over the size limit.
    #[response(status = 413)]
    TooLarge(ErrorEnvelope),
    /// Over a limit or the waiting queue is full.
    #[response(status = 429)]
    OverLimit(ErrorEnvelope),
    /// Not ready, or no worker to place the request on.
    #[response(status = 503)]
    Unavailable(ErrorEnvelope),
}

/// `POST /v1/chat/completions`.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion; with `stream: true`, SSE `data:` chunks (`ChatCompletionChunk`) ending with `data: [DONE]`",
            content((ChatCompletion = "application/json"), (String = "text/event-stream"))),
        GenerationErrors,
    ),
    security((), ("api_key" = []))
)]
#[allow(dead_code)]
fn chat_completions() {}

/// `POST /v1/completions`.
#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "openai",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion; with `stream: true`, SSE `data:` chunks (`Completion`) ending with `data: [DONE]`",
            content((Completion = "application/json"), (String = "text/event-stream"))),
        GenerationErrors,
    ),
    security((), ("api_key" = []))
)]
#[allow(dead_code)]
fn completions() {}

/// `POST /v1/responses`.
#[utoipa::path(
    post,
    path = "/v1/responses",
    tag = "openai",
    request_body = crate::responses::ResponsesRequest,
    responses(
        (status = 200, description = "A Response object (`status` `completed` or `incomplete`, `output` items, `usage`); with `stream: true`, SSE typed events (`event:` the type, `data:` the event with its `sequence_number`) from `response.created` to `response.completed` or `response.incomplete`",
            content((Object = "application/json"), (String = "text/event-stream"))),
        GenerationErrors,
    ),
    security((), ("api_key" = []))
)]
#[allow(dead_code)]
fn responses() {}

/// `GET /v1/models`.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    responses(
        (status = 200, description = "The served model", body = ModelList),
        (status = 401, description = "Missing or wrong API key", body = ErrorEnvelope),
    ),
    security((), ("api_key" = []))
)]
#[allow(dead_code)]
fn models() {}

/// `GET /health`.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "The model is loaded and every worker runs", body = HealthStatus),
        (status = 503, description = "A worker is not running", body = ErrorEnvelope),
    )
)]
#[allow(dead_code)]
fn health() {}

/// Adds the bearer API key (`--api-key`) as a security scheme.
struct BearerKey;

impl utoipa::Modify for BearerKey {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Genie",
        description = "OpenAI-compatible API of Genie, a disaggregated LLM serving system. Every error is the OpenAI envelope `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`."
    ),
    paths(chat_completions, completions, responses, models, health),
    components(schemas(ErrorEnvelope, HealthStatus, ChatCompletionChunk)),
    modifiers(&BearerKey)
)]
pub struct ApiDoc;

/// The document as JSON (built once).
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serializes")
    })
}

/// `GET /openapi.json`.
pub async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}
