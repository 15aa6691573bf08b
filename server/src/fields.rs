//! No request field is silently ignored: each top-level field of a chat or completions
//! body is one Genie honours, one it accepts and ignores (listed in the README: metadata
//! and hints that change nothing here), or a 400 naming it — an unknown field included,
//! as OpenAI answers `Unrecognized request argument supplied`.

use crate::api_error::ApiError;
use genie_protocol::openai::{ChatCompletionRequest, CompletionRequest};
use serde_json::{Map, Value};
use std::sync::OnceLock;
use utoipa::openapi::{RefOr, Schema};

/// The fields Genie acts on: those its request type declares (the OpenAI ones and its
/// extensions), read from the type's schema so the two cannot drift apart.
fn declared<T: utoipa::PartialSchema>() -> Vec<String> {
    match T::schema() {
        RefOr::T(Schema::Object(o)) => o.properties.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn declared_by(endpoint: Endpoint) -> &'static [String] {
    static CHAT: OnceLock<Vec<String>> = OnceLock::new();
    static COMPLETION: OnceLock<Vec<String>> = OnceLock::new();
    match endpoint {
        Endpoint::Chat => CHAT.get_or_init(declared::<ChatCompletionRequest>),
        Endpoint::Completion => COMPLETION.get_or_init(declared::<CompletionRequest>),
    }
}

/// Accepted and ignored: who is asking, metadata, and hints about OpenAI's own service
/// (tiers, its stored completions, its prompt cache, reasoning effort and verbosity of
/// reasoning models) that have no meaning here. Prefixes are cached automatically.
pub const IGNORED_CHAT: &[&str] = &[
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "reasoning_effort",
    "verbosity",
];

pub const IGNORED_COMPLETION: &[&str] = &["user"];

/// Refused with a reason, unless the value asks for nothing beyond what Genie does.
fn refused(field: &str, v: &Value) -> Option<&'static str> {
    match field {
        "audio" => Some("audio output is not supported: this is a text-only model"),
        "modalities" if *v != serde_json::json!(["text"]) && !v.is_null() => {
            Some("only `[\"text\"]` is supported: this is a text-only model")
        }
        "prediction" => Some("predicted outputs are not supported"),
        "web_search_options" => Some("web search is not supported"),
        "moderation" => Some("moderation is not supported; nothing here would check the output"),
        "functions" | "function_call" => Some(
            "the legacy function-calling fields are not supported; use `tools` and `tool_choice`",
        ),
        "best_of" if !matches!(v.as_u64(), Some(1)) && !v.is_null() => {
            Some("`best_of` above 1 is not supported; use `n`")
        }
        "suffix" if !(v.is_null() || v.as_str() == Some("")) => {
            Some("`suffix` (insertion) is not supported")
        }
        _ => None,
    }
}

/// Which endpoint a body is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// Checks every top-level field of `body` (a JSON object; anything else is left to the
/// typed parse, which names what is wrong).
pub fn check(body: &[u8], endpoint: Endpoint) -> Result<(), ApiError> {
    let Ok(map) = serde_json::from_slice::<Map<String, Value>>(body) else {
        return Ok(());
    };
    let (ignored, value_checked): (&[&str], &[&str]) = match endpoint {
        Endpoint::Chat => (IGNORED_CHAT, &["modalities"]),
        Endpoint::Completion => (IGNORED_COMPLETION, &["best_of", "suffix"]),
    };
    let declared = declared_by(endpoint);
    for (k, v) in &map {
        if declared.contains(k) {
            continue;
        }
        let k = k.as_str();
        if ignored.contains(&k) {
            continue;
        }
        if let Some(why) = refused(k, v) {
            return Err(ApiError::invalid(k, format!("`{k}`: {why}")));
        }
        if value_checked.contains(&k) {
            // A value that asks for nothing more (`modalities: ["text"]`, `best_of: 1`).
            continue;
        }
        return Err(ApiError::invalid(
            k,
            format!("Unrecognized request argument supplied: {k}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(body: &str, e: Endpoint) -> Option<String> {
        check(body.as_bytes(), e)
            .err()
            .map(|e| e.param.unwrap_or_default())
    }

    #[test]
    fn honoured_and_ignored_fields_pass_and_the_rest_are_named() {
        let chat = Endpoint::Chat;
        assert_eq!(
            param(
                r#"{"model":"m","messages":[],"tools":[],"user":"u","metadata":{"a":"b"}}"#,
                chat
            ),
            None
        );
        assert_eq!(param(r#"{"model":"m","modalities":["text"]}"#, chat), None);
        assert_eq!(
            param(r#"{"model":"m","modalities":["text","audio"]}"#, chat).as_deref(),
            Some("modalities")
        );
        assert_eq!(
            param(r#"{"model":"m","audio":{"voice":"x"}}"#, chat).as_deref(),
            Some("audio")
        );
        assert_eq!(
            param(r#"{"model":"m","functions":[]}"#, chat).as_deref(),
            Some("functions")
        );
        assert_eq!(
            param(r#"{"model":"m","frobnicate":1}"#, chat).as_deref(),
            Some("frobnicate")
        );
        assert_eq!(
            param(r#"{"model":"m","prompt":"x"}"#, chat).as_deref(),
            Some("prompt")
        );
        let comp = Endpoint::Completion;
        assert_eq!(
            param(
                r#"{"model":"m","prompt":"x","echo":true,"best_of":1,"suffix":""}"#,
                comp
            ),
            None
        );
        assert_eq!(
            param(r#"{"model":"m","best_of":3}"#, comp).as_deref(),
            Some("best_of")
        );
        assert_eq!(
            param(r#"{"model":"m","suffix":"end"}"#, comp).as_deref(),
            Some("suffix")
        );
        assert_eq!(
            param(r#"{"model":"m","messages":[]}"#, comp).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param("[1,2]", comp),
            None,
            "not an object: the typed parse says so"
        );
        // The extensions are declared by the request types themselves.
        for f in [
            "genie",
            "priority",
            "ignore_eos",
            "top_k",
            "max_completion_tokens",
            "response_format",
        ] {
            assert!(declared_by(chat).iter().any(|d| d == f), "{f}");
        }
    }
}
