//! Tool calling (pure): the request's `tools` and `tool_choice` checked, the functions
//! described to the model, the grammar that forces calls (`required` or a named
//! function), and the answer's text read back as `tool_calls`.
//!
//! Two ways, by the chat template ([`ToolFormat::of`]). A template that takes `tools`
//! and writes calls as `<tool_call>` blocks (Hermes style: Qwen 2.5 and 3, Hermes,
//! SmolLM3) gets the functions as `tools` and renders them, and earlier calls and their
//! results, as the model was trained to see them; calls are read back, and forced, in
//! that form. Any other template gets Genie's generic system block:
//!
//! The model is told to answer a call as one JSON object,
//! `{"tool_calls": [{"name": ..., "arguments": {...}}]}`, and nothing else; the same form
//! carries earlier calls in the history. With `tool_choice` `required` or a named
//! function, that object is enforced token by token (each item's `arguments` by its
//! function's `parameters`); with `auto` the model chooses, and an answer that is such an
//! object naming offered functions becomes `tool_calls`, any other answer is text
//! ([`crate::tool_stream`] reads it, streamed or whole).

use crate::api_error::ApiError;
pub use crate::tool_stream::ToolFormat;
use genie_engine::chat_template::ChatTemplate;
use genie_grammar::GrammarSpec;
use genie_protocol::openai::{FunctionCall, Tool, ToolCall, ToolChoice};
use serde_json::{json, Value};

/// Most calls one forced answer may hold when `parallel_tool_calls` allows several.
pub const MAX_PARALLEL_CALLS: u64 = 8;

impl ToolFormat {
    /// How `template`'s model is given functions and writes calls: Hermes blocks when the
    /// template takes `tools` and writes `<tool_call>`, else Genie's generic form.
    pub fn of(template: &ChatTemplate) -> Self {
        if template.takes_tools() && template.source().contains("<tool_call>") {
            ToolFormat::Hermes
        } else {
            ToolFormat::Json
        }
    }
}

/// How a request's answer is read back.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    /// The functions offered, by name.
    pub names: Vec<String>,
    pub format: ToolFormat,
}

impl ToolUse {
    /// A reader for one answer, streamed or whole.
    pub fn reader(&self) -> crate::tool_stream::CallReader {
        crate::tool_stream::CallReader::new(self.names.clone(), self.format)
    }
}

/// What a request's `tools` and `tool_choice` make of it: how its answer is read (None:
/// as text), the system block describing the functions (generic form), the functions as
/// the template's `tools` (Hermes form), and the grammar forcing a call (None: the model
/// chooses).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prepared {
    pub read_back: Option<ToolUse>,
    pub system_block: Option<String>,
    pub template_tools: Option<Value>,
    pub grammar: Option<GrammarSpec>,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks `tools` and `tool_choice`, naming the failing field.
pub fn prepare(
    tools: Option<&[Tool]>,
    choice: Option<&ToolChoice>,
    parallel: Option<bool>,
    format: ToolFormat,
) -> Result<Prepared, ApiError> {
    let tools = tools.unwrap_or_default();
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(ApiError::invalid(
                format!("tools[{i}].type"),
                format!("tool type `{}` is not supported; use `function`", t.kind),
            ));
        }
        if !valid_name(&t.function.name) {
            return Err(ApiError::invalid(
                format!("tools[{i}].function.name"),
                "a function name must be 1 to 64 characters of a-z, A-Z, 0-9, `_` and `-`",
            ));
        }
        if tools[..i]
            .iter()
            .any(|o| o.function.name == t.function.name)
        {
            return Err(ApiError::invalid(
                format!("tools[{i}].function.name"),
                format!("function `{}` is defined twice", t.function.name),
            ));
        }
        if let Some(p) = &t.function.parameters {
            if !p.is_object() {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.parameters"),
                    "`parameters` must be a JSON schema object",
                ));
            }
        }
    }
    if tools.is_empty() {
        if choice.is_some_and(|c| *c != ToolChoice::Mode("none".into())) {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` needs `tools`",
            ));
        }
        return Ok(Prepared::default());
    }
    // Which functions a forced answer may call: None = the model chooses.
    let forced: Option<Vec<&Tool>> = match choice {
        None => None,
        Some(ToolChoice::Mode(m)) => match m.as_str() {
            "auto" => None,
            "none" => return Ok(Prepared::default()),
            "required" => Some(tools.iter().collect()),
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!(
                    "`{other}` is not a tool choice; use none, auto, required or a named function"
                ),
                ))
            }
        },
        Some(ToolChoice::Named(n)) => {
            if n.kind != "function" {
                return Err(ApiError::invalid(
                    "tool_choice.type",
                    "the only tool type is `function`",
                ));
            }
            match tools.iter().find(|t| t.function.name == n.function.name) {
                Some(t) => Some(vec![t]),
                None => {
                    return Err(ApiError::invalid(
                        "tool_choice.function.name",
                        format!("no tool named `{}` is in `tools`", n.function.name),
                    ))
                }
            }
        }
    };
    let most = if parallel.unwrap_or(true) {
        MAX_PARALLEL_CALLS
    } else {
        1
    };
    let read_back = Some(ToolUse {
        names: tools.iter().map(|t| t.function.name.clone()).collect(),
        format,
    });
    Ok(match format {
        ToolFormat::Json => Prepared {
            read_back,
            system_block: Some(system_block(tools, forced.as_deref(), most)),
            template_tools: None,
            grammar: forced.as_ref().map(|f| calls_grammar(f, most)),
        },
        ToolFormat::Hermes => Prepared {
            read_back,
            system_block: None,
            template_tools: Some(template_tools(tools)),
            grammar: match &forced {
                Some(f) => Some(hermes_grammar(f, most)?),
                None => None,
            },
        },
    })
}

/// The functions as templates take them: `[{"type": "function", "function": {name,
/// description, parameters}}]`, keys in that order.
fn template_tools(tools: &[Tool]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                let mut f = serde_json::Map::new();
                f.insert("name".into(), json!(t.function.name));
                if let Some(d) = &t.function.description {
                    f.insert("description".into(), json!(d));
                }
                f.insert("parameters".into(), parameters(t));
                json!({"type": "function", "function": f})
            })
            .collect(),
    )
}

/// One call's schema: `{"name": <one of tools>, "arguments": <its parameters>}`.
fn call_schema(tools: &[&Tool]) -> Value {
    let calls: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {"name": {"const": t.function.name}, "arguments": parameters(t)},
                "required": ["name", "arguments"],
                "additionalProperties": false
            })
        })
        .collect();
    if calls.len() == 1 {
        calls.into_iter().next().expect("one call")
    } else {
        json!({ "anyOf": calls })
    }
}

/// Forced calls in Hermes form: one to `most` `<tool_call>` blocks, each holding a call
/// valid under its function's parameters, separated by newlines.
fn hermes_grammar(tools: &[&Tool], most: u64) -> Result<GrammarSpec, ApiError> {
    let strict = tools.iter().all(|t| t.function.strict == Some(true));
    let body = genie_grammar::json_rule(&call_schema(tools), strict)
        .map_err(|e| ApiError::invalid("tools", e.to_string()))?;
    let start = if most > 1 {
        format!("start: call more{{0,{}}}\nmore: \"\\n\" call\n", most - 1)
    } else {
        "start: call\n".to_string()
    };
    Ok(GrammarSpec::Lark {
        grammar: format!(
            "{start}call: \"{open}\\n\" body \"\\n{close}\"\nbody: {body}\n",
            open = crate::tool_stream::OPEN_TAG,
            close = crate::tool_stream::CLOSE_TAG,
        ),
    })
}

fn parameters(t: &Tool) -> Value {
    t.function
        .parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}))
}

/// The answer's schema when calls are forced: `{"tool_calls": [call, ...]}`, each call
/// one of `tools` with its `parameters`. Strict when every function asks for it.
fn calls_grammar(tools: &[&Tool], most: u64) -> GrammarSpec {
    GrammarSpec::JsonSchema {
        schema: json!({
            "type": "object",
            "properties": {"tool_calls": {
                "type": "array", "minItems": 1, "maxItems": most,
                "items": call_schema(tools)
            }},
            "required": ["tool_calls"],
            "additionalProperties": false
        }),
        strict: tools.iter().all(|t| t.function.strict == Some(true)),
    }
}

/// The functions described to the model, and how to call them.
fn system_block(tools: &[Tool], forced: Option<&[&Tool]>, most: u64) -> String {
    let mut s = String::from("You can call functions. Each is described by one JSON object:\n");
    for t in tools {
        let mut d = json!({"name": t.function.name, "parameters": parameters(t)});
        if let Some(desc) = &t.function.description {
            d["description"] = json!(desc);
        }
        s.push_str(&d.to_string());
        s.push('\n');
    }
    let form = r#"{"tool_calls": [{"name": "<function name>", "arguments": {<arguments>}}]}"#;
    match forced {
        Some(f) if f.len() == 1 && tools.len() > 1 => s.push_str(&format!(
            "Call the function {} now: answer with only this JSON and nothing else:\n{form}\n",
            f[0].function.name
        )),
        Some(_) => s.push_str(&format!(
            "Call a function now: answer with only this JSON and nothing else:\n{form}\n"
        )),
        None => s.push_str(&format!(
            "To call functions, answer with only this JSON and nothing else:\n{form}\nOtherwise answer normally.\n"
        )),
    }
    if most == 1 {
        s.push_str("Make one call at a time.\n");
    }
    s
}

/// An earlier answer's calls as the model is told to write them (the history's form):
/// `name` before `arguments`, whatever the JSON map's order.
pub fn history_text(calls: &[ToolCall]) -> String {
    let items: Vec<String> = calls
        .iter()
        .map(|c| {
            let args = serde_json::from_str::<Value>(&c.function.arguments)
                .unwrap_or_else(|_| Value::String(c.function.arguments.clone()));
            format!(
                r#"{{"name":{},"arguments":{args}}}"#,
                Value::String(c.function.name.clone())
            )
        })
        .collect();
    format!(r#"{{"tool_calls":[{}]}}"#, items.join(","))
}

/// `text` read as calls of offered functions, or None (it is a text answer): the same
/// reading a streamed answer gets ([`crate::tool_stream`]). `id` makes each call's id.
pub fn read_calls(
    text: &str,
    tools: &ToolUse,
    mut id: impl FnMut() -> String,
) -> Option<Vec<ToolCall>> {
    let calls = crate::tool_stream::read_whole(text, &tools.names, tools.format)?;
    Some(
        calls
            .into_iter()
            .map(|(name, arguments)| ToolCall {
                id: id(),
                kind: "function".into(),
                function: FunctionCall { name, arguments },
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use genie_protocol::openai::{FunctionDef, NamedFunction, NamedToolChoice};

    fn tool(name: &str) -> Tool {
        Tool {
            kind: "function".into(),
            function: FunctionDef {
                name: name.into(),
                description: Some("d".into()),
                parameters: Some(
                    json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
                ),
                strict: None,
            },
        }
    }

    fn named(n: &str) -> ToolChoice {
        ToolChoice::Named(NamedToolChoice {
            kind: "function".into(),
            function: NamedFunction { name: n.into() },
        })
    }

    #[test]
    fn auto_describes_the_tools_and_reads_calls_back_without_a_grammar() {
        let tools = [tool("weather"), tool("time")];
        let p = prepare(Some(&tools), None, None, ToolFormat::Json).unwrap();
        assert!(p.grammar.is_none());
        let block = p.system_block.unwrap();
        assert!(
            block.contains(r#""name":"weather""#) && block.contains("Otherwise answer normally")
        );
        let use_ = p.read_back.unwrap();
        let mut n = 0;
        let calls = read_calls(
            r#" {"tool_calls":[{"name":"time","arguments":{"city":"Oslo"}}]} "#,
            &use_,
            || {
                n += 1;
                format!("call_{n}")
            },
        )
        .unwrap();
        assert_eq!(calls[0].id, "call_1");
        assert_eq!(calls[0].function.name, "time");
        assert_eq!(calls[0].function.arguments, r#"{"city":"Oslo"}"#);
        assert!(read_calls("Hello there", &use_, String::new).is_none());
        assert!(read_calls(
            r#"{"tool_calls":[{"name":"other","arguments":{}}]}"#,
            &use_,
            String::new
        )
        .is_none());
        assert!(read_calls(r#"{"tool_calls":[]}"#, &use_, String::new).is_none());
    }

    #[test]
    fn required_and_named_force_calls_through_a_schema() {
        let tools = [tool("weather"), tool("time")];
        let p = prepare(
            Some(&tools),
            Some(&ToolChoice::Mode("required".into())),
            Some(false),
            ToolFormat::Json,
        )
        .unwrap();
        let GrammarSpec::JsonSchema { schema, strict } = p.grammar.unwrap() else {
            panic!("a schema")
        };
        assert!(!strict);
        assert_eq!(schema["properties"]["tool_calls"]["maxItems"], 1);
        assert_eq!(
            schema["properties"]["tool_calls"]["items"]["anyOf"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let p = prepare(Some(&tools), Some(&named("time")), None, ToolFormat::Json).unwrap();
        let GrammarSpec::JsonSchema { schema, .. } = p.grammar.unwrap() else {
            panic!("a schema")
        };
        let item = &schema["properties"]["tool_calls"]["items"];
        assert_eq!(item["properties"]["name"]["const"], "time");
        assert_eq!(
            schema["properties"]["tool_calls"]["maxItems"],
            MAX_PARALLEL_CALLS
        );
        assert!(p
            .system_block
            .unwrap()
            .contains("Call the function time now"));
        let none = prepare(
            Some(&tools),
            Some(&ToolChoice::Mode("none".into())),
            None,
            ToolFormat::Json,
        )
        .unwrap();
        assert_eq!(none, Prepared::default());
    }

    #[test]
    fn bad_tools_and_choices_name_their_field() {
        let param = |r: Result<Prepared, ApiError>| r.unwrap_err().param.unwrap_or_default();
        fn prep(
            t: Option<&[Tool]>,
            c: Option<&ToolChoice>,
            p: Option<bool>,
        ) -> Result<Prepared, ApiError> {
            prepare(t, c, p, ToolFormat::Json)
        }
        let tools = [tool("weather")];
        assert_eq!(
            param(prep(Some(&tools), Some(&named("nope")), None)),
            "tool_choice.function.name"
        );
        assert_eq!(
            param(prep(
                Some(&tools),
                Some(&ToolChoice::Mode("always".into())),
                None
            )),
            "tool_choice"
        );
        assert_eq!(
            param(prep(None, Some(&ToolChoice::Mode("required".into())), None)),
            "tool_choice"
        );
        let mut bad = tool("has space");
        assert_eq!(
            param(prep(Some(&[bad.clone()]), None, None)),
            "tools[0].function.name"
        );
        bad = tool("x");
        bad.kind = "retrieval".into();
        assert_eq!(param(prep(Some(&[bad]), None, None)), "tools[0].type");
        assert_eq!(
            param(prep(Some(&[tool("a"), tool("a")]), None, None)),
            "tools[1].function.name"
        );
    }

    #[test]
    fn history_calls_are_written_as_the_model_is_told_to_write_them() {
        let c = ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "time".into(),
                arguments: r#"{"city":"Oslo"}"#.into(),
            },
        };
        assert_eq!(
            history_text(&[c]),
            r#"{"tool_calls":[{"name":"time","arguments":{"city":"Oslo"}}]}"#
        );
    }

    #[test]
    fn hermes_templates_get_the_tools_and_forced_calls_are_tagged_blocks() {
        let tools = [tool("weather"), tool("time")];
        let p = prepare(Some(&tools), None, None, ToolFormat::Hermes).unwrap();
        assert!(p.system_block.is_none() && p.grammar.is_none());
        assert_eq!(
            p.template_tools.unwrap()[0],
            json!({"type": "function", "function": {"name": "weather", "description": "d", "parameters": tools[0].function.parameters}})
        );
        assert_eq!(p.read_back.unwrap().format, ToolFormat::Hermes);
        let p = prepare(
            Some(&tools),
            Some(&ToolChoice::Mode("required".into())),
            Some(false),
            ToolFormat::Hermes,
        )
        .unwrap();
        let Some(GrammarSpec::Lark { grammar }) = p.grammar else {
            panic!("a Lark grammar")
        };
        assert!(
            grammar.starts_with("start: call\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\""),
            "{grammar}"
        );
        assert!(
            grammar.contains("%json {") && grammar.contains("anyOf"),
            "{grammar}"
        );
        let p = prepare(Some(&tools), Some(&named("time")), None, ToolFormat::Hermes).unwrap();
        let Some(GrammarSpec::Lark { grammar }) = p.grammar else {
            panic!("a Lark grammar")
        };
        assert!(
            grammar.contains(&format!("more{{0,{}}}", MAX_PARALLEL_CALLS - 1)),
            "{grammar}"
        );
        assert!(!grammar.contains("anyOf"), "{grammar}");
    }
}
