//! Tool calls read from an answer as it is generated (pure): the answer's text goes in
//! piece by piece, and out come text, or each call's start (its name) followed by its
//! arguments as they are written, which is how OpenAI streams `tool_calls` deltas.
//!
//! An answer is calls when it opens as `{"tool_calls": [{"name": "<an offered function>"`
//! ([`ToolFormat::Json`], Genie's own form; whitespace allowed between tokens,
//! `arguments` before or after `name`), or, for chat templates that write calls as
//! Hermes-style blocks ([`ToolFormat::Hermes`]: Qwen 2.5 and 3, Hermes, SmolLM3), as
//! `<tool_call>` then `{"name": ..., "arguments": ...}` then `</tool_call>`, blocks
//! repeated for several calls. Either way `parameters` is read as `arguments`. Until the
//! first call's name is read nothing is sent: an answer that turns out otherwise is then
//! sent as text, whole. After it, the answer is calls for good: each call starts when its
//! name is read, its arguments go out as written (the model's own JSON text), and anything
//! malformed later ends the reading there (the calls so far stand), as does the end of
//! the answer (an answer cut at `max_tokens` ends mid-arguments, as OpenAI's do).

/// How the model writes calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolFormat {
    /// `{"tool_calls": [{"name": ..., "arguments": ...}, ...]}`, as Genie's generic
    /// system block asks.
    #[default]
    Json,
    /// `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` blocks, as the chat
    /// templates of Hermes-style models write them.
    Hermes,
}

/// The tags of a Hermes call block.
pub(crate) const OPEN_TAG: &str = "<tool_call>";
pub(crate) const CLOSE_TAG: &str = "</tool_call>";

/// What the reader found in a piece of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Answer text (the answer is not calls).
    Text(String),
    /// Call `index` starts: its function's name.
    Call { index: usize, name: String },
    /// More of call `index`'s arguments (JSON text).
    Args { index: usize, fragment: String },
}

/// Where the reader is in the calls object.
#[derive(Debug, Clone, PartialEq, Eq)]
enum At {
    /// The opening `{"tool_calls": [`: which of its four tokens comes next.
    Lead(u8),
    /// Inside a Hermes tag (`<tool_call>` when `open`), `pos` bytes of it read.
    Tag { open: bool, pos: usize },
    /// A call object's `{`, or (after a call) the list's `]`.
    ItemOpen,
    /// A key in a call object (or its `}` after a value).
    Key,
    /// The `:` after a key.
    Colon(Field),
    /// A value's first character.
    ValueStart(Field),
    /// Inside a string (`name` or a key).
    Str(Field),
    /// Inside the `arguments` value.
    Args,
    /// After a value: `,` or `}`.
    AfterValue,
    /// After a call: `,` or `]`.
    AfterItem,
    /// The closing `}` of the whole object.
    Close,
    /// Read to the end; the rest is ignored.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// The `tool_calls` key of the opening.
    LeadKey,
    /// A key of a call object.
    Key,
    Name,
    Arguments,
}

/// An incremental reader of one answer.
pub struct CallReader {
    names: Vec<String>,
    format: ToolFormat,
    /// Everything pushed before the answer was known to be calls.
    held: String,
    /// The answer is text.
    text: bool,
    at: At,
    /// Calls started (their names sent).
    calls: usize,
    /// The current string token.
    string: String,
    escaped: bool,
    /// The current call's name and its arguments so far (held until the name is read).
    name: Option<String>,
    args: String,
    args_sent: bool,
    /// Nesting of the arguments value: `{`/`[` depth, inside a string, after `\`.
    depth: usize,
    in_str: bool,
    args_escaped: bool,
}

impl CallReader {
    /// A reader for an answer that may call the functions `names`, written in `format`.
    pub fn new(names: Vec<String>, format: ToolFormat) -> Self {
        CallReader {
            names,
            format,
            held: String::new(),
            text: false,
            at: match format {
                ToolFormat::Json => At::Lead(0),
                ToolFormat::Hermes => At::Tag { open: true, pos: 0 },
            },
            calls: 0,
            string: String::new(),
            escaped: false,
            name: None,
            args: String::new(),
            args_sent: false,
            depth: 0,
            in_str: false,
            args_escaped: false,
        }
    }

    /// Calls started so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Reads `piece`, the answer's next text.
    pub fn push(&mut self, piece: &str) -> Vec<Found> {
        let mut out = Vec::new();
        if self.text {
            if !piece.is_empty() {
                out.push(Found::Text(piece.to_string()));
            }
            return out;
        }
        if self.calls == 0 {
            self.held.push_str(piece);
        }
        for c in piece.chars() {
            if !self.step(c, &mut out) {
                if self.calls == 0 {
                    // Not calls after all: the whole answer so far is text.
                    self.text = true;
                    out.clear();
                    out.push(Found::Text(std::mem::take(&mut self.held)));
                    return out;
                }
                // Malformed after a call started: the calls so far stand.
                self.at = At::Done;
                break;
            }
        }
        if self.calls > 0 {
            self.held.clear();
        }
        merge(out)
    }

    /// The answer ended: what is still held (an answer that never became calls).
    pub fn finish(&mut self) -> Vec<Found> {
        if self.calls == 0 && !self.text {
            self.text = true;
            let held = std::mem::take(&mut self.held);
            if !held.is_empty() {
                return vec![Found::Text(held)];
            }
        }
        Vec::new()
    }

    /// One character; false when it breaks the form.
    fn step(&mut self, c: char, out: &mut Vec<Found>) -> bool {
        let ws = c.is_ascii_whitespace();
        match self.at.clone() {
            At::Lead(k) => match (k, c) {
                (_, c) if c.is_ascii_whitespace() => true,
                (0, '{') => self.go(At::Lead(1)),
                (1, '"') => self.open_string(Field::LeadKey),
                (2, ':') => self.go(At::Lead(3)),
                (3, '[') => self.go(At::ItemOpen),
                _ => false,
            },
            At::Tag { open, pos } => {
                let tag = if open { OPEN_TAG } else { CLOSE_TAG };
                if pos == 0 && ws {
                    return true;
                }
                if tag[pos..].starts_with(c) {
                    let pos = pos + c.len_utf8();
                    if pos < tag.len() {
                        return self.go(At::Tag { open, pos });
                    }
                    return if open {
                        self.go(At::ItemOpen)
                    } else {
                        self.go(At::Tag { open: true, pos: 0 })
                    };
                }
                false
            }
            At::ItemOpen => match c {
                _ if ws => true,
                '{' => {
                    self.name = None;
                    self.args.clear();
                    self.args_sent = false;
                    self.go(At::Key)
                }
                _ => false,
            },
            At::Key => match c {
                _ if ws => true,
                '"' => self.open_string(Field::Key),
                '}' => self.end_item(out),
                _ => false,
            },
            At::Str(field) => {
                if self.escaped {
                    self.escaped = false;
                    self.string.push(c);
                    return true;
                }
                match c {
                    '\\' => {
                        self.escaped = true;
                        self.string.push(c);
                        true
                    }
                    '"' => self.close_string(field, out),
                    _ => {
                        self.string.push(c);
                        true
                    }
                }
            }
            At::Colon(field) => match c {
                _ if ws => true,
                ':' => self.go(At::ValueStart(field)),
                _ => false,
            },
            At::ValueStart(field) => match (field, c) {
                (_, c) if c.is_ascii_whitespace() => true,
                (Field::Name, '"') => self.open_string(Field::Name),
                (Field::Arguments, _) => {
                    if !self.args.is_empty() || self.args_sent {
                        return false; // `arguments` twice
                    }
                    self.depth = 0;
                    self.in_str = false;
                    self.args_escaped = false;
                    self.at = At::Args;
                    self.args_char(c, out)
                }
                _ => false,
            },
            At::Args => self.args_char(c, out),
            At::AfterValue => match c {
                _ if ws => true,
                ',' => self.go(At::Key),
                '}' => self.end_item(out),
                _ => false,
            },
            At::AfterItem => match c {
                _ if ws => true,
                ',' => self.go(At::ItemOpen),
                ']' => self.go(At::Close),
                _ => false,
            },
            At::Close => match c {
                _ if ws => true,
                '}' => self.go(At::Done),
                _ => false,
            },
            At::Done => true,
        }
    }

    fn go(&mut self, at: At) -> bool {
        self.at = at;
        true
    }

    fn open_string(&mut self, field: Field) -> bool {
        self.string.clear();
        self.escaped = false;
        self.go(At::Str(field))
    }

    fn close_string(&mut self, field: Field, out: &mut Vec<Found>) -> bool {
        let s = std::mem::take(&mut self.string);
        match field {
            Field::LeadKey => s == "tool_calls" && self.go(At::Lead(2)),
            Field::Key => match s.as_str() {
                "name" if self.name.is_none() => self.go(At::Colon(Field::Name)),
                "arguments" | "parameters" => self.go(At::Colon(Field::Arguments)),
                _ => false,
            },
            Field::Name => {
                if !self.names.contains(&s) {
                    return false;
                }
                out.push(Found::Call {
                    index: self.calls,
                    name: s.clone(),
                });
                self.name = Some(s);
                self.calls += 1;
                if !self.args.is_empty() {
                    // `arguments` came first: they go out now, whole.
                    out.push(Found::Args {
                        index: self.calls - 1,
                        fragment: std::mem::take(&mut self.args),
                    });
                    self.args_sent = true;
                }
                self.go(At::AfterValue)
            }
            Field::Arguments => unreachable!("arguments are read by args_char"),
        }
    }

    /// One character of the arguments value; the value ends at its closing bracket (or,
    /// for a string or a scalar, where it ends), which hands on to `AfterValue`.
    fn args_char(&mut self, c: char, out: &mut Vec<Found>) -> bool {
        let mut ended = false;
        let mut keep = true;
        if self.in_str {
            if self.args_escaped {
                self.args_escaped = false;
            } else if c == '\\' {
                self.args_escaped = true;
            } else if c == '"' {
                self.in_str = false;
                ended = self.depth == 0;
            }
        } else {
            match c {
                '"' => self.in_str = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' if self.depth > 0 => {
                    self.depth -= 1;
                    ended = self.depth == 0;
                }
                // A scalar's end: the character belongs to what follows.
                ',' | '}' | ']' if self.depth == 0 => {
                    keep = false;
                    ended = true;
                }
                c if c.is_ascii_whitespace() && self.depth == 0 => {
                    keep = false;
                    ended = true;
                }
                _ => {}
            }
        }
        if keep {
            match &self.name {
                Some(_) => {
                    out.push(Found::Args {
                        index: self.calls - 1,
                        fragment: c.to_string(),
                    });
                    self.args_sent = true;
                }
                None => self.args.push(c),
            }
        }
        if ended {
            self.at = At::AfterValue;
            if !keep {
                return self.step(c, out);
            }
        }
        true
    }

    /// A call object's `}`: it needs its name; arguments default to `{}`.
    fn end_item(&mut self, out: &mut Vec<Found>) -> bool {
        if self.name.is_none() {
            return false;
        }
        if !self.args_sent {
            out.push(Found::Args {
                index: self.calls - 1,
                fragment: "{}".into(),
            });
            self.args_sent = true;
        }
        match self.format {
            ToolFormat::Json => self.go(At::AfterItem),
            ToolFormat::Hermes => self.go(At::Tag {
                open: false,
                pos: 0,
            }),
        }
    }
}

/// Neighbouring pieces of the same kind joined.
fn merge(found: Vec<Found>) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::with_capacity(found.len());
    for f in found {
        match (out.last_mut(), f) {
            (
                Some(Found::Args { index, fragment }),
                Found::Args {
                    index: i,
                    fragment: g,
                },
            ) if *index == i => fragment.push_str(&g),
            (Some(Found::Text(t)), Found::Text(u)) => t.push_str(&u),
            (_, f) => out.push(f),
        }
    }
    out
}

/// The calls in a whole answer, `(name, arguments)` each; None when it is text.
pub fn read_whole(
    text: &str,
    names: &[String],
    format: ToolFormat,
) -> Option<Vec<(String, String)>> {
    let mut r = CallReader::new(names.to_vec(), format);
    let mut found = r.push(text);
    found.extend(r.finish());
    let mut calls: Vec<(String, String)> = Vec::new();
    for f in found {
        match f {
            Found::Text(_) => return None,
            Found::Call { name, .. } => calls.push((name, String::new())),
            Found::Args { index, fragment } => calls[index].1.push_str(&fragment),
        }
    }
    (!calls.is_empty()).then_some(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["weather".into(), "time".into()]
    }

    /// A call of `weather` with `args`, then one of `time` with none.
    fn weather_then_time(args: &str) -> Vec<Found> {
        vec![
            Found::Call {
                index: 0,
                name: "weather".into(),
            },
            Found::Args {
                index: 0,
                fragment: args.into(),
            },
            Found::Call {
                index: 1,
                name: "time".into(),
            },
            Found::Args {
                index: 1,
                fragment: "{}".into(),
            },
        ]
    }

    /// `text` pushed in pieces of `k` chars, the findings joined.
    fn pushed(text: &str, k: usize) -> Vec<Found> {
        pushed_as(text, k, ToolFormat::Json)
    }

    fn pushed_as(text: &str, k: usize, format: ToolFormat) -> Vec<Found> {
        let mut r = CallReader::new(names(), format);
        let mut out = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(k) {
            out.extend(r.push(&piece.iter().collect::<String>()));
        }
        out.extend(r.finish());
        merge(out)
    }

    #[test]
    fn calls_stream_as_a_start_then_their_arguments_in_any_piece_size() {
        let text = r#"{"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo, \"N\"", "days": [1, 2]}}, {"name":"time","arguments":{}}]}"#;
        for k in [1, 2, 3, 7, 1000] {
            assert_eq!(
                pushed(text, k),
                weather_then_time(r#"{"city": "Oslo, \"N\"", "days": [1, 2]}"#),
                "pieces of {k}"
            );
        }
    }

    #[test]
    fn a_call_starts_as_soon_as_its_name_is_read_and_arguments_follow_as_written() {
        let mut r = CallReader::new(names(), ToolFormat::Json);
        assert!(r.push(r#"{"tool_calls":[{"name":"wea"#).is_empty());
        assert_eq!(
            r.push(r#"ther","argu"#),
            vec![Found::Call {
                index: 0,
                name: "weather".into()
            }]
        );
        assert_eq!(
            r.push(r#"ments":{"ci"#),
            vec![Found::Args {
                index: 0,
                fragment: r#"{"ci"#.into()
            }]
        );
        // Cut here (max_tokens): the call stands with what was written.
        assert!(r.finish().is_empty());
        assert_eq!(r.calls(), 1);
    }

    #[test]
    fn text_answers_come_back_whole_once_they_differ_from_calls() {
        for text in [
            "Hello there",
            "{\"answer\": 1}",
            r#"{"tool_calls": []}"#,
            r#"{"tool_calls": [{"name": "other", "arguments": {}}]}"#,
            r#"{"tool_calls": [{"city": "Oslo"}]}"#,
            "{\"tool_calls\"",
            "",
        ] {
            let want = if text.is_empty() {
                vec![]
            } else {
                vec![Found::Text(text.into())]
            };
            assert_eq!(pushed(text, 1), want, "{text}");
            assert_eq!(pushed(text, 100), want, "{text}");
            assert!(read_whole(text, &names(), ToolFormat::Json).is_none());
        }
        // Once text, the rest streams as it comes.
        let mut r = CallReader::new(names(), ToolFormat::Json);
        assert_eq!(r.push("Sure"), vec![Found::Text("Sure".into())]);
        assert_eq!(r.push(", here"), vec![Found::Text(", here".into())]);
    }

    #[test]
    fn arguments_before_the_name_go_out_with_it_and_missing_ones_are_empty() {
        assert_eq!(
            read_whole(
                r#"{"tool_calls":[{"arguments":{"city":"Lima"},"name":"weather"},{"name":"time"}]}"#,
                &names(),
                ToolFormat::Json
            )
            .unwrap(),
            vec![
                ("weather".to_string(), r#"{"city":"Lima"}"#.to_string()),
                ("time".to_string(), "{}".to_string())
            ]
        );
    }

    #[test]
    fn malformed_text_after_a_call_ends_the_reading_and_keeps_the_calls() {
        let calls = read_whole(
            r#"{"tool_calls":[{"name":"time","arguments":{"tz":"UTC"}}, oops {"name":"weather"}]}"#,
            &names(),
            ToolFormat::Json,
        )
        .unwrap();
        assert_eq!(calls, vec![("time".into(), r#"{"tz":"UTC"}"#.into())]);
        // Scalars and strings as arguments end where they end.
        assert_eq!(
            read_whole(
                r#"{"tool_calls":[{"name":"time","arguments":"now" }]}"#,
                &names(),
                ToolFormat::Json
            )
            .unwrap(),
            vec![("time".into(), r#""now""#.into())]
        );
        assert_eq!(
            read_whole(
                r#"{"tool_calls":[{"name":"time","arguments":12}]}"#,
                &names(),
                ToolFormat::Json
            )
            .unwrap(),
            vec![("time".into(), "12".into())]
        );
    }

    #[test]
    fn hermes_blocks_stream_the_same_way_and_repeat_for_several_calls() {
        let text = "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"parameters\": {}}\n</tool_call>";
        for k in [1, 2, 5, 1000] {
            assert_eq!(
                pushed_as(text, k, ToolFormat::Hermes),
                weather_then_time(r#"{"city": "Oslo"}"#),
                "pieces of {k}"
            );
        }
        // Text, a Genie-form object, or an unknown function: a text answer.
        for t in [
            "Hello",
            "<tool",
            "<tool_call>\n{\"name\": \"nope\"}",
            r#"{"tool_calls": [{"name": "time"}]}"#,
        ] {
            assert!(read_whole(t, &names(), ToolFormat::Hermes).is_none(), "{t}");
        }
        // Cut inside the block: the call stands with what was written; text after the
        // blocks ends the reading.
        assert_eq!(
            read_whole(
                "<tool_call>{\"name\":\"time\",\"arguments\":{\"tz\"",
                &names(),
                ToolFormat::Hermes
            )
            .unwrap(),
            vec![("time".into(), r#"{"tz""#.into())]
        );
        assert_eq!(
            read_whole(
                "<tool_call>{\"name\":\"time\"}</tool_call> and more",
                &names(),
                ToolFormat::Hermes
            )
            .unwrap(),
            vec![("time".into(), "{}".into())]
        );
    }
}
