//! Every error the HTTP API returns: an HTTP status and the OpenAI error envelope
//! `{"error":{"message","type","param","code"}}`. Messages never carry prompt text or
//! internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use genie_protocol::openai::{ErrorBody, ErrorEnvelope};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for the `Retry-After` header; every 429 carries one (1 when unset).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400 about one request field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
            retry_after: None,
        }
    }

    /// 400 about the body as a whole (not JSON, wrong shape).
    pub fn malformed(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 `context_length_exceeded`, naming the field that holds the prompt (`messages`
    /// or `prompt`) or the completion length.
    pub fn context_overflow(param: &str, message: String) -> Self {
        ApiError {
            code: Some("context_length_exceeded"),
            ..Self::invalid(param, message)
        }
    }

    pub fn unknown_model(model: &str, served: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist. This server serves `{served}`."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }

    pub fn unauthorized(message: &str) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("overloaded"),
            retry_after: None,
        }
    }

    /// 429 from a per-key limit (OpenAI's `rate_limit_exceeded`), retried after `secs`.
    pub fn rate_limited(message: impl Into<String>, secs: u64) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
            retry_after: Some(secs),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("unavailable"),
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 500; the cause goes to the log, not to the client.
    pub fn internal() -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "The server had an error while processing your request.".into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            error: ErrorBody {
                message: self.message.clone(),
                kind: self.kind.into(),
                param: self.param.clone(),
                code: self.code.map(String::from),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.envelope())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(self.retry_after.unwrap_or(1)),
            );
        }
        r
    }
}

impl From<genie_router::DispatchError> for ApiError {
    /// The one mapping of dispatch refusals to HTTP: the client's fault is 400 naming the
    /// field, overload is 429, missing workers 503, a worker's failure 500.
    fn from(e: genie_router::DispatchError) -> Self {
        use genie_router::DispatchError as D;
        let message = e.to_string();
        match e {
            D::Overloaded { .. } | D::QueueTimeout => ApiError::overloaded(message),
            D::InvalidHint { field, .. } | D::UnknownWorker { field, .. } => {
                ApiError::invalid(field, message)
            }
            D::NeverFits { .. } => ApiError::invalid("max_tokens", message),
            D::RequestNeverFits { .. } => ApiError::invalid("n", message),
            D::PinnedWorkerMissing { .. } | D::NoWorker(_) | D::Unreachable => {
                ApiError::unavailable(message)
            }
            D::Failed(_) => ApiError::internal(),
        }
    }
}

impl From<genie_router::RegistryError> for ApiError {
    fn from(e: genie_router::RegistryError) -> Self {
        ApiError::invalid(e.field, e.reason)
    }
}
