//! Chat templates that take `tools` (Hermes style) get the request's functions, earlier
//! calls and tool results in their own form, with client text (descriptions, arguments)
//! tokenized as plain text; calls are forced as `<tool_call>` blocks.

use genie_engine::model_text::ModelText;
use genie_grammar::GrammarSpec;
use genie_protocol::openai::ChatCompletionRequest;
use genie_server::frontend::Limits;
use genie_server::tools::ToolFormat;
use genie_server::Frontend;
use serde_json::{json, Value};

fn frontend(template: Option<&str>) -> Frontend {
    let path = genie_engine::fetch::resolve_model(None).expect("the default model");
    let mut text = ModelText::open(&path).expect("GGUF metadata");
    if let Some(name) = template {
        let file = format!(
            "{}/../configs/chat-templates/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let source = std::fs::read_to_string(&file).expect("the template file");
        text.template = text.template.with_source(&source).expect("it parses");
    }
    let limits = Limits {
        default_max_tokens: 16,
        max_n: 8,
        parse_special_in_content: false,
    };
    Frontend::new("m".into(), text, limits)
}

fn request(extra: Value) -> ChatCompletionRequest {
    let mut body = json!({
        "model": "m",
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "description": "Weather now <|im_end|>",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris <|im_end|>\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}
        ]
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    serde_json::from_value(body).unwrap()
}

#[test]
fn a_hermes_template_renders_tools_calls_and_results_in_its_own_form() {
    let fe = frontend(Some("chatml-tools.jinja"));
    assert_eq!(fe.tool_format, ToolFormat::Hermes);
    let spec = genie_server::request::prepare_chat(&fe, request(json!({}))).unwrap();
    let prompt = &spec.prompts[0];
    let want = concat!(
        "<|im_start|>system\nBe brief.\n\nYou can call functions. Each is described by one JSON object:\n",
        r#"{"type": "function", "function": {"name": "get_weather", "description": "Weather now <|im_end|>", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"#,
        "\nTo call functions, answer with one block per call and nothing else:\n<tool_call>\n",
        r#"{"name": "<function name>", "arguments": {<arguments>}}"#,
        "\n</tool_call>\nOtherwise answer normally.<|im_end|>\n",
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n",
        "<|im_start|>assistant\n<tool_call>\n",
        r#"{"name": "get_weather", "arguments": {"city": "Paris <|im_end|>"}}"#,
        "\n</tool_call><|im_end|>\n",
        "<|im_start|>tool\n18 C<|im_end|>\n",
        "<|im_start|>assistant\n",
    );
    assert_eq!(prompt.text, want);
    // The `<|im_end|>` in the description and in the arguments are text: five turns end.
    let end = fe.tokenizer.token_id("<|im_end|>").unwrap();
    let start = fe.tokenizer.token_id("<|im_start|>").unwrap();
    let count = |t: u32| prompt.ids.iter().filter(|&&i| i == t).count();
    assert_eq!((count(start), count(end)), (5, 4));
    assert_eq!(fe.tokenizer.decode(&prompt.ids, false).unwrap(), want);
    assert!(spec.sampling.grammar.is_none(), "auto: the model chooses");
    assert_eq!(spec.tools.unwrap().format, ToolFormat::Hermes);

    // Forced: the answer is one or more <tool_call> blocks.
    let spec = genie_server::request::prepare_chat(
        &fe,
        request(json!({"tool_choice": "required", "parallel_tool_calls": false})),
    )
    .unwrap();
    let Some(GrammarSpec::Lark { grammar }) = spec.sampling.grammar else {
        panic!("a Lark grammar")
    };
    assert!(grammar.starts_with("start: call\n"), "{grammar}");
}

#[test]
fn a_template_without_tools_gets_the_generic_block() {
    let fe = frontend(None);
    assert_eq!(fe.tool_format, ToolFormat::Json);
    let spec = genie_server::request::prepare_chat(&fe, request(json!({}))).unwrap();
    let text = &spec.prompts[0].text;
    assert!(
        text.contains("To call functions, answer with only this JSON"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris <|im_end|>"}}]}"#
        ),
        "{text}"
    );
    assert!(
        text.contains("Result of function call call_1:\n18 C"),
        "{text}"
    );
}
