//! The model's own chat template (Jinja, from GGUF `tokenizer.chat_template`), rendered
//! with minijinja. Syntax errors surface when the template is loaded, not per request.
//!
//! Templates see what Hugging Face's `apply_chat_template` gives them: `messages` (each
//! with `role` and `content`, an assistant turn's `tool_calls` in OpenAI's shape with
//! `arguments` as an object, a tool turn's `tool_call_id`), `tools` when the request
//! offers functions, `add_generation_prompt`, `bos_token`, `eos_token`, and a `tojson`
//! that writes JSON as Python's `json.dumps` does (`", "` and `": "`, no HTML escaping,
//! map keys in their given order), which is what tool-trained models saw.

use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, ErrorKind, State, Value};
use serde::Serialize;
use std::collections::BTreeMap;

/// Brackets around each `tojson` output when a render asks for them
/// ([`RenderOptions::mark_json`]), so a caller can tell JSON (client data) from the
/// template's own text. These characters never appear raw inside the bracketed JSON.
pub const JSON_OPEN: char = '\u{E002}';
pub const JSON_CLOSE: char = '\u{E003}';

/// A function call of an earlier assistant turn.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct TemplateCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON (a string when the client's text was not JSON).
    pub arguments: serde_json::Value,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's function calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<TemplateCall>,
    /// A `tool` turn's call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..Default::default()
        }
    }

    /// The message as templates see it.
    fn to_value(&self) -> Value {
        let mut m: Vec<(&str, Value)> = vec![
            ("role", Value::from(self.role.as_str())),
            ("content", Value::from(self.content.as_str())),
        ];
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .iter()
                .map(|c| {
                    Value::from(Serde(serde_json::json!({
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    })))
                })
                .collect();
            m.push(("tool_calls", Value::from(calls)));
        }
        if let Some(id) = &self.tool_call_id {
            m.push(("tool_call_id", Value::from(id.as_str())));
        }
        Value::from_pairs(m)
    }
}

/// What a render is given besides the messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions<'a> {
    /// The functions offered (`[{"type": "function", "function": {...}}]`), for templates
    /// that take `tools`.
    pub tools: Option<&'a serde_json::Value>,
    pub add_generation_prompt: bool,
    /// Bracket each `tojson` output with [`JSON_OPEN`] and [`JSON_CLOSE`].
    pub mark_json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("the chat template does not parse: {0}")]
    Syntax(String),
    #[error("the chat template failed to render: {0}")]
    Render(String),
}

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The context variable that asks `tojson` to bracket its output.
const MARK_JSON_VAR: &str = "__genie_mark_json";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
    takes_tools: bool,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are visible to the template.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_filter("tojson", tojson);
        // Python's string and dict methods (`startswith`, `split`, `strip`, `items`, …),
        // which Qwen's and others' templates call as Hugging Face's Jinja allows.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Llama 3's templates date the system prompt with this, as Hugging Face supplies.
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ChatTemplateError::Syntax(e.to_string()))?;
        let takes_tools = env
            .get_template("chat")
            .map_err(|e| ChatTemplateError::Syntax(e.to_string()))?
            .undeclared_variables(false)
            .contains("tools");
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos: bos_token.into(),
            eos: eos_token.into(),
            takes_tools,
        })
    }

    /// A ChatML template for models that ship none.
    pub fn chatml() -> Self {
        Self::new(CHATML, "", "").expect("the built-in ChatML template parses")
    }

    /// Another template for the same model (same `bos_token` and `eos_token`).
    pub fn with_source(&self, source: &str) -> Result<Self, ChatTemplateError> {
        Self::new(source, &self.bos, &self.eos)
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The template reads a `tools` variable (it describes offered functions itself).
    pub fn takes_tools(&self) -> bool {
        self.takes_tools
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with(
            messages,
            RenderOptions {
                add_generation_prompt,
                ..Default::default()
            },
        )
    }

    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        opts: RenderOptions<'_>,
    ) -> Result<String, ChatTemplateError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ChatTemplateError::Render(e.to_string()))?;
        let messages: Vec<Value> = messages.iter().map(ChatMessage::to_value).collect();
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::from([
            ("messages", Value::from(messages)),
            (
                "add_generation_prompt",
                Value::from(opts.add_generation_prompt),
            ),
            ("bos_token", Value::from(self.bos.as_str())),
            ("eos_token", Value::from(self.eos.as_str())),
            (MARK_JSON_VAR, Value::from(opts.mark_json)),
        ]);
        if let Some(t) = opts.tools {
            ctx.insert("tools", Value::from(Serde(t)));
        }
        tmpl.render(ctx).map_err(|e| {
            // raise_exception's message is the template author's: show it plainly.
            let detail = e
                .detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            ChatTemplateError::Render(detail)
        })
    }
}

/// `json.dumps(value, ensure_ascii=False)` (or with `indent`), as Hugging Face templates
/// get it; bracketed when the render asks.
fn tojson(state: &State, value: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let invalid = |e: serde_json::Error| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON")
            .with_source(e)
    };
    let mut out = Vec::new();
    match indent.filter(|v| !v.is_none()) {
        Some(n) => {
            let n = usize::try_from(n)?;
            let pad = " ".repeat(n);
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(pad.as_bytes()),
            );
            value.serialize(&mut ser).map_err(invalid)?;
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
            value.serialize(&mut ser).map_err(invalid)?;
        }
    }
    let json = String::from_utf8(out).expect("serde_json writes UTF-8");
    let marked = state.lookup(MARK_JSON_VAR).is_some_and(|v| v.is_true());
    if !marked {
        return Ok(Value::from_safe_string(json));
    }
    // The brackets must stay unambiguous: raw ones (only possible inside strings) are
    // written as JSON escapes.
    let json = json
        .replace(JSON_OPEN, "\\ue002")
        .replace(JSON_CLOSE, "\\ue003");
    Ok(Value::from_safe_string(format!(
        "{JSON_OPEN}{json}{JSON_CLOSE}"
    )))
}

/// The current UTC time formatted by the `strftime` directives chat templates use
/// (`%d %b %Y`, `%Y-%m-%d`, `%B`, `%H:%M:%S`, `%-d`, `%%`); others are written as given.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(fmt, secs)
}

/// [`strftime_now`] at `secs` since the Unix epoch (UTC).
fn strftime(fmt: &str, secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('-') if chars.clone().next() == Some('d') => {
                chars.next();
                out.push_str(&day.to_string())
            }
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{m:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Python's default JSON separators: `", "` between items, `": "` after keys.
struct Spaced;

/// `", "` before every item but the first.
fn separate<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        separate(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        separate(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_writes_the_dates_templates_ask_for() {
        // 2024-07-26 13:05:09 UTC; 2000-02-29 (a leap day).
        assert_eq!(strftime("%d %b %Y", 1_721_999_109), "26 Jul 2024");
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S", 1_721_999_109),
            "2024-07-26 13:05:09"
        );
        assert_eq!(
            strftime("%B %-d, %y %% %q", 951_782_400),
            "February 29, 00 % %q"
        );
    }

    fn user(c: &str) -> ChatMessage {
        ChatMessage::new("user", c)
    }

    #[test]
    fn chatml_renders_turns_and_generation_prompt() {
        let t = ChatTemplate::chatml();
        let s = t.render(&[user("hi")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        assert!(!t
            .render(&[user("hi")], false)
            .unwrap()
            .ends_with("assistant\n"));
    }

    #[test]
    fn syntax_errors_are_reported_at_load_and_raise_exception_at_render() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(ChatTemplateError::Syntax(_))
        ));
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'system' %}{{ raise_exception('first message must be system') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let err = t.render(&[user("x")], true).unwrap_err().to_string();
        assert!(err.contains("first message must be system"), "{err}");
    }

    #[test]
    fn bos_and_eos_are_visible() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(t.render(&[user("x")], false).unwrap(), "<s>x</s>");
    }

    /// A template in the Hermes style: functions described in the system turn, calls
    /// written as `<tool_call>` blocks, results as tool turns.
    const TOOLS: &str = "{%- if tools %}<|im_start|>system\nFunctions:\n{%- for t in tools %}\n{{ t | tojson }}{%- endfor %}<|im_end|>\n{%- endif %}{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{%- for c in m.tool_calls or [] %}<tool_call>\n{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}\n</tool_call>{%- endfor %}{%- if m.tool_call_id %} ({{ m.tool_call_id }}){%- endif %}<|im_end|>\n{%- endfor %}";

    #[test]
    fn templates_that_read_tools_get_them_and_calls_render_as_python_writes_json() {
        assert!(!ChatTemplate::chatml().takes_tools());
        let t = ChatTemplate::new(TOOLS, "", "").unwrap();
        assert!(t.takes_tools());
        let tools = serde_json::json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "a <city> & 'more'"}}}}}]);
        let mut asked = ChatMessage::new("assistant", "");
        asked.tool_calls = vec![TemplateCall {
            id: "call-1".into(),
            name: "weather".into(),
            arguments: serde_json::json!({"city": "Oslo", "days": [1, 2]}),
        }];
        let mut answer = ChatMessage::new("tool", "12 C");
        answer.tool_call_id = Some("call-1".into());
        let msgs = [user("hi"), asked, answer];
        let s = t
            .render_with(
                &msgs,
                RenderOptions {
                    tools: Some(&tools),
                    ..Default::default()
                },
            )
            .unwrap();
        // Keys in their given order, Python's separators, nothing HTML-escaped.
        assert!(s.contains(r#"{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "a <city> & 'more'"}}}}}"#), "{s}");
        assert!(s.contains("<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": [1, 2]}}\n</tool_call>"), "{s}");
        assert!(
            s.contains("<|im_start|>tool\n12 C (call-1)<|im_end|>"),
            "{s}"
        );
        // Without tools the block is left out.
        assert!(!t
            .render(&[user("hi")], false)
            .unwrap()
            .contains("Functions"));
    }

    #[test]
    fn marked_json_is_bracketed_and_its_raw_brackets_escaped() {
        let t = ChatTemplate::new(
            "{{ tools | tojson }}|{{ tools | tojson(indent=2) }}",
            "",
            "",
        )
        .unwrap();
        let tools = serde_json::json!(["a\u{E003}b"]);
        let s = t
            .render_with(
                &[],
                RenderOptions {
                    tools: Some(&tools),
                    mark_json: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            s,
            format!("{JSON_OPEN}[\"a\\ue003b\"]{JSON_CLOSE}|{JSON_OPEN}[\n  \"a\\ue003b\"\n]{JSON_CLOSE}")
        );
        let plain = t
            .render_with(
                &[],
                RenderOptions {
                    tools: Some(&tools),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(plain, "[\"a\u{E003}b\"]|[\n  \"a\u{E003}b\"\n]");
    }
}
