use super::*;
use serde_json::json;

/// A small byte-level vocabulary: every byte, some longer pieces, a special end token
/// (the stop token) and a special token that must never appear as text.
fn vocab() -> Vocabulary {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for w in ["{\"", "\":", "\",\"", "true", "null", "ab", "\"}", "12"] {
        tokens.push(w.as_bytes().to_vec());
    }
    let mut special = vec![false; tokens.len()];
    tokens.push(b"<|im_end|>".to_vec());
    special.push(true);
    tokens.push(b"<|im_start|>".to_vec());
    special.push(true);
    let stop = vec![(tokens.len() - 2) as u32];
    Vocabulary {
        tokens,
        special,
        stop,
    }
}

const END: u32 = 264;
const START: u32 = 265;

fn grammars() -> Grammars {
    Grammars::new(vocab(), 300).expect("grammar environment")
}

fn allowed(c: &mut Constraint) -> Vec<bool> {
    let mut logits = vec![0.0f32; 300];
    c.mask(&mut logits).expect("mask");
    logits.iter().map(|l| l.is_finite()).collect()
}

/// Feeds `text` one byte token at a time, checking each was allowed.
fn feed(c: &mut Constraint, text: &str) {
    for &b in text.as_bytes() {
        assert!(allowed(c)[b as usize], "byte {:?} refused", b as char);
        c.commit(b as u32).expect("commit");
    }
}

#[test]
fn a_json_object_is_allowed_byte_by_byte_then_only_the_stop_token() {
    let g = grammars();
    let mut c = g.compile(&GrammarSpec::JsonObject).unwrap();
    let first = allowed(&mut c);
    assert!(first[b'{' as usize]);
    assert!(!first[b'[' as usize] && !first[b'a' as usize] && !first[b' ' as usize]);
    assert!(!first[END as usize], "an empty answer is not an object");
    assert!(
        !first[START as usize] && !first[299],
        "special and padding ids never"
    );
    feed(&mut c, r#"{"a":[1,true,null],"b":{"c":"x"}}"#);
    assert!(c.is_complete());
    let after = allowed(&mut c);
    assert_eq!(
        after
            .iter()
            .enumerate()
            .filter(|(_, a)| **a)
            .map(|(i, _)| i)
            .collect::<Vec<_>>(),
        vec![END as usize]
    );
}

#[test]
fn a_strict_schema_allows_only_its_properties_and_types() {
    let g = grammars();
    let spec = GrammarSpec::JsonSchema {
        schema: json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}, "s": {"type": "string"}},
            "required": ["n", "s"]
        }),
        strict: true,
    };
    let mut c = g.compile(&spec).unwrap();
    feed(&mut c, r#"{"n":"#);
    let a = allowed(&mut c);
    assert!(a[b'1' as usize] && a[b'-' as usize]);
    assert!(!a[b'"' as usize], "a string where the schema says integer");
    feed(&mut c, r#"12,"s":"ab""#);
    let a = allowed(&mut c);
    assert!(a[b'}' as usize]);
    assert!(!a[b',' as usize], "strict: no property beyond the schema's");
    feed(&mut c, "}");
    assert!(c.is_complete());
}

#[test]
fn unsupported_keywords_are_an_error_naming_them_when_strict_and_skipped_otherwise() {
    let g = grammars();
    let schema = json!({"type": "array", "items": {"type": "integer"}, "uniqueItems": true});
    let strict = GrammarSpec::JsonSchema {
        schema: schema.clone(),
        strict: true,
    };
    match g.compile(&strict) {
        Err(GrammarError::Invalid(m)) => assert!(m.contains("uniqueItems"), "{m}"),
        other => panic!("expected an error naming uniqueItems, got {other:?}"),
    }
    let lenient = GrammarSpec::JsonSchema {
        schema,
        strict: false,
    };
    let mut c = g.compile(&lenient).unwrap();
    feed(&mut c, "[1,1]");
    assert!(c.is_complete());
    let not_object = GrammarSpec::JsonSchema {
        schema: json!(["not", "a", "schema"]),
        strict: true,
    };
    assert!(matches!(
        g.compile(&not_object),
        Err(GrammarError::Invalid(_))
    ));
}

#[test]
fn a_resumed_constraint_allows_what_the_original_allows() {
    let g = grammars();
    let spec = GrammarSpec::JsonObject;
    let mut a = g.compile(&spec).unwrap();
    let text = r#"{"k":[tr"#;
    feed(&mut a, text);
    let ids: Vec<u32> = text.bytes().map(u32::from).collect();
    let mut b = g.resume(&spec, &ids).unwrap();
    assert_eq!(allowed(&mut a), allowed(&mut b));
    let mut c = a.clone();
    feed(&mut c, "ue]}");
    assert!(
        c.is_complete() && !a.is_complete(),
        "a clone advances alone"
    );
}

#[test]
fn a_refused_token_is_a_state_error() {
    let g = grammars();
    let mut c = g.compile(&GrammarSpec::JsonObject).unwrap();
    assert!(matches!(c.commit(b'x' as u32), Err(GrammarError::State(_))));
}

#[test]
fn a_lark_grammar_constrains_text() {
    let g = grammars();
    let spec = GrammarSpec::Lark {
        grammar: r#"start: "ab" ("12")*"#.to_string(),
    };
    let mut c = g.compile(&spec).unwrap();
    feed(&mut c, "ab1");
    let a = allowed(&mut c);
    assert!(a[b'2' as usize] && !a[b'1' as usize] && !a[END as usize]);
    feed(&mut c, "2");
    assert!(
        allowed(&mut c)[END as usize],
        "accepting: the stop token may end it"
    );
    assert!(matches!(
        g.compile(&GrammarSpec::Lark {
            grammar: "start: (".to_string()
        }),
        Err(GrammarError::Invalid(_))
    ));
}

#[test]
fn json_rules_embed_a_schema_in_tagged_blocks_repeated_up_to_a_bound() {
    let g = grammars();
    let rule = json_rule(
        &json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}),
        true,
    )
    .unwrap();
    let spec = GrammarSpec::Lark {
        grammar: format!("start: call more{{0,1}}\nmore: \"\\n\" call\ncall: \"<c>\" body \"</c>\"\nbody: {rule}\n"),
    };
    let mut c = g.compile(&spec).unwrap();
    feed(&mut c, "<c>{\"n\":1");
    let a = allowed(&mut c);
    assert!(!a[b' ' as usize] && !a[b',' as usize], "compact, closed");
    feed(&mut c, "}</c>");
    assert!(allowed(&mut c)[END as usize]);
    // It may end here or go on: near the budget, the closing path ends it.
    assert_eq!(c.closing(3), Some(vec![END]));
    assert!(
        !c.closes_after(b'\n' as u32, 3),
        "another block does not fit"
    );
    feed(&mut c, "\n<c>{\"n\":2}</c>");
    let a = allowed(&mut c);
    assert!(a[END as usize] && !a[b'\n' as usize], "at most two blocks");
}

#[test]
fn a_vocabulary_without_stop_tokens_is_refused() {
    let mut v = vocab();
    v.stop.clear();
    assert!(matches!(
        Grammars::new(v, 300),
        Err(GrammarError::Unavailable(_))
    ));
}

fn text_of(ids: &[u32]) -> String {
    let v = vocab();
    ids.iter()
        .map(|&t| String::from_utf8(v.tokens[t as usize].clone()).unwrap())
        .collect()
}

#[test]
fn a_closing_path_completes_an_open_value_into_json_that_parses() {
    let g = grammars();
    for (spec, prefix) in [
        (GrammarSpec::JsonObject, r#"{"a":[1,{"b":"xy"#),
        (GrammarSpec::JsonObject, r#"{"a":tr"#),
        (GrammarSpec::JsonObject, r#"{"a":-"#),
        (
            GrammarSpec::JsonSchema {
                schema: json!({
                    "type": "object",
                    "properties": {
                        "n": {"type": "integer"},
                        "e": {"enum": ["abc", "d"]},
                        "s": {"type": "array", "items": {"type": "string"}}
                    },
                    "required": ["n", "e", "s"]
                }),
                strict: true,
            },
            r#"{"n":"#,
        ),
    ] {
        let mut c = g.compile(&spec).unwrap();
        feed(&mut c, prefix);
        let path = c
            .closing(40)
            .unwrap_or_else(|| panic!("no path after {prefix}"));
        assert!(!path.is_empty());
        let mut whole = c.clone();
        for &t in &path {
            whole.commit(t).unwrap();
        }
        assert!(whole.is_complete(), "{prefix}{}", text_of(&path));
        let text = format!("{prefix}{}", text_of(&path));
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(c.closing(path.len() - 1).is_none(), "the limit is kept");
        assert!(
            !c.is_complete(),
            "finding a path leaves the constraint as it was"
        );
    }
}

#[test]
fn closes_after_says_whether_a_token_still_fits_the_budget() {
    let g = grammars();
    let mut c = g.compile(&GrammarSpec::JsonObject).unwrap();
    feed(&mut c, r#"{"a":"#);
    // After `[` the path tries `"` before `]` (it cannot tell a string from an array
    // here), so it closes with `""]}`: four tokens, not the shortest two.
    assert!(c.closes_after(b'[' as u32, 4));
    assert!(!c.closes_after(b'[' as u32, 3));
    assert!(c.closes_after(b'0' as u32, 1), "0 then }}");
    assert!(
        !c.closes_after(b'x' as u32, 10),
        "a refused token never fits"
    );
    let done = g.compile(&GrammarSpec::JsonObject).unwrap();
    assert_eq!(done.closing(0), None, "an empty answer is not an object");
}
