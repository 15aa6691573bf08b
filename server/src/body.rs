//! Request bodies: JSON parsed with the failing field's path, so a 400 names the field.
//! Client values are not echoed back (they may be prompt text).

use crate::api_error::ApiError;
use serde::de::DeserializeOwned;

/// Replaces every double-quoted span of a serde message with `"…"`.
fn redact_quotes(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut inside = false;
    for c in msg.chars() {
        if c == '"' {
            if !inside {
                out.push_str("\"…");
            }
            inside = !inside;
            if !inside {
                out.push('"');
            }
        } else if !inside {
            out.push(c);
        }
    }
    out
}

fn strip_position(msg: &str) -> &str {
    msg.find(" at line ").map_or(msg, |i| &msg[..i])
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::malformed(format!(
            "The request body is not valid JSON ({}).",
            redact_quotes(&e.to_string())
        ))
    })?;
    if !value.is_object() {
        return Err(ApiError::malformed(
            "The request body must be a JSON object.",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = strip_position(&inner);
        if let Some(rest) = inner.strip_prefix("missing field `") {
            let field = rest.trim_end_matches('`');
            let param = if path == "." { field.to_string() } else { format!("{path}.{field}") };
            return ApiError::invalid(param.clone(), format!("`{param}` is required"));
        }
        let what = if inner.contains("untagged enum") {
            match path.rsplit('.').next().unwrap_or(&path) {
                p if p.starts_with("prompt") => "must be a string, an array of strings, an array of token ids or an array of token-id arrays".to_string(),
                p if p.starts_with("stop") => "must be a string or an array of strings".to_string(),
                p if p.starts_with("content") => "must be a string or an array of content parts".to_string(),
                _ => "has an unexpected shape".to_string(),
            }
        } else {
            redact_quotes(inner)
        };
        ApiError::invalid(path.clone(), format!("`{path}`: {what}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use genie_protocol::openai::{ChatCompletionRequest, CompletionRequest};

    #[test]
    fn errors_name_the_field_without_echoing_values() {
        let e = parse::<ChatCompletionRequest>(b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"secret\"}],\"temperature\":\"hot secret\"}").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        assert!(!e.message.contains("secret"), "{}", e.message);
        let e = parse::<ChatCompletionRequest>(b"{\"messages\":[]}").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e =
            parse::<ChatCompletionRequest>(b"{\"model\":\"m\",\"messages\":[{\"content\":\"x\"}]}")
                .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].role"),
            "{}",
            e.message
        );
        let e = parse::<CompletionRequest>(b"{\"model\":\"m\",\"prompt\":{\"a\":1}}").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
        assert!(e.message.contains("array of strings"), "{}", e.message);
        let e = parse::<CompletionRequest>(b"{\"model\": \"secret").unwrap_err();
        assert_eq!(e.param, None);
        assert!(e.message.contains("not valid JSON") && !e.message.contains("secret"));
    }
}
