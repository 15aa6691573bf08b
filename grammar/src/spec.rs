//! What a sequence's output must match, in the form requests give it.

use crate::GrammarError;
use llguidance::api::TopLevelGrammar;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A grammar as a request states it. It travels with the sequence (in the sampler's
/// state), so every worker compiles the same thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GrammarSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON schema (`response_format: {"type": "json_schema", ...}`). An object schema
    /// that lists `properties` without saying `additionalProperties` allows no others
    /// (OpenAI's strict mode; vLLM's xgrammar does the same by default), so a model
    /// cannot go on adding properties until its budget. `strict`: every keyword must be
    /// enforced (an unsupported one is an error); otherwise unsupported keywords are
    /// skipped and the rest enforced.
    JsonSchema { schema: Value, strict: bool },
    /// A Lark grammar (llguidance's dialect).
    Lark { grammar: String },
}

impl GrammarSpec {
    pub(crate) fn to_llguidance(&self) -> Result<TopLevelGrammar, GrammarError> {
        match self {
            GrammarSpec::JsonObject => Ok(TopLevelGrammar::from_json_schema(with_options(
                json!({"type": "object"}),
                true,
            )?)),
            GrammarSpec::JsonSchema { schema, strict } => {
                let mut s = schema.clone();
                close_objects(&mut s);
                Ok(TopLevelGrammar::from_json_schema(with_options(s, *strict)?))
            }
            GrammarSpec::Lark { grammar } => Ok(TopLevelGrammar::from_lark(grammar.clone())),
        }
    }
}

/// `%json {schema}`: a Lark rule body matching JSON valid under `schema`, compiled as
/// [`GrammarSpec::JsonSchema`] compiles it (closed objects, compact JSON, unsupported
/// keywords an error when `strict`). For grammars that embed JSON in other text, such as
/// `<tool_call>` blocks.
pub fn json_rule(schema: &Value, strict: bool) -> Result<String, GrammarError> {
    let mut s = schema.clone();
    close_objects(&mut s);
    Ok(format!("%json {}", with_options(s, strict)?))
}

/// The schema with llguidance's compile options: compact JSON (no free whitespace between
/// tokens, which a small model can otherwise fill until `max_tokens`), and unsupported
/// keywords an error when `strict`.
fn with_options(schema: Value, strict: bool) -> Result<Value, GrammarError> {
    let Value::Object(mut m) = schema else {
        return Err(GrammarError::Invalid(
            "the schema must be a JSON object".to_string(),
        ));
    };
    m.insert(
        "x-guidance".to_string(),
        json!({"whitespace_flexible": false, "lenient": !strict}),
    );
    Ok(Value::Object(m))
}

/// An object schema that lists `properties` and says nothing of `additionalProperties`
/// allows no others. Applied to every subschema.
fn close_objects(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".to_string(), Value::Bool(false));
            }
            m.iter_mut()
                .filter(|(k, _)| !is_data_keyword(k))
                .for_each(|(_, x)| close_objects(x));
        }
        Value::Array(a) => a.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Keywords whose values are data, not subschemas.
fn is_data_keyword(k: &str) -> bool {
    matches!(k, "enum" | "const" | "default" | "examples" | "required")
}
