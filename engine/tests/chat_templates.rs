//! Each family's chat template, as its GGUFs carry it (Hugging Face `tokenizer_config.json`
//! templates of Llama 3.1, Qwen 2.5, Qwen 3 and Mistral 7B Instruct v0.3, in
//! `fixtures/chat-templates/`; Gemma 3's built into the engine for files without one),
//! rendered by the engine's minijinja environment exactly as Hugging Face's
//! `apply_chat_template` renders them: Python string methods (`startswith`, `split`,
//! `lstrip`), `namespace`, reversed slices, `strftime_now`, `raise_exception`, `tojson`
//! with and without `indent`.

use genie_engine::chat_template::{ChatMessage, ChatTemplate, RenderOptions, TemplateCall};

fn template(name: &str, bos: &str, eos: &str) -> ChatTemplate {
    let path = format!(
        "{}/tests/fixtures/chat-templates/{name}.jinja",
        env!("CARGO_MANIFEST_DIR")
    );
    let src = std::fs::read_to_string(&path).unwrap();
    ChatTemplate::new(&src, bos, eos).unwrap()
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Weather in Paris?"),
    ]
}

fn weather_tool() -> serde_json::Value {
    serde_json::json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather now", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

#[test]
fn llama3_dates_its_system_turn_and_heads_each_message() {
    let t = template("llama3", "<|begin_of_text|>", "<|eot_id|>");
    let out = t.render(&conversation(), true).unwrap();
    // Today's date, as `strftime_now("%d %b %Y")` writes it.
    let at = out.find("Today Date: ").unwrap() + "Today Date: ".len();
    let date = &out[at..at + 11];
    let b = date.as_bytes();
    assert!(
        b[..2].iter().all(u8::is_ascii_digit)
            && b[2] == b' '
            && b[3..6].iter().all(u8::is_ascii_alphabetic)
            && b[7..].iter().all(u8::is_ascii_digit),
        "{date:?}"
    );
    assert_eq!(
        out,
        format!(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: {date}\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    );
    // With tools, they go in the first user turn, indented JSON.
    let tools = weather_tool();
    let out = t
        .render_with(
            &conversation()[..2],
            RenderOptions {
                tools: Some(&tools),
                add_generation_prompt: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(out.contains("Environment: ipython\n"), "{out}");
    assert!(
        out.contains(
            "\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\""
        ),
        "{out}"
    );
    assert!(out.ends_with("\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"));
}

#[test]
fn qwen25_writes_chatml_with_its_default_system_and_hermes_tools() {
    let t = template("qwen2.5", "", "<|im_end|>");
    assert!(t.takes_tools());
    assert_eq!(
        t.render(&conversation()[1..], true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    );
    let tools = weather_tool();
    let out = t
        .render_with(
            &[
                ChatMessage::new("system", "You are terse."),
                ChatMessage::new("user", "Weather in Paris?"),
            ],
            RenderOptions {
                tools: Some(&tools),
                add_generation_prompt: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are terse.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather now\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn qwen3_drops_past_reasoning_and_writes_tool_turns() {
    let t = template("qwen3", "", "<|im_end|>");
    let history = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "<think>\nGreet back.\n</think>\n\nHello!"),
        ChatMessage::new("user", "2+2?"),
    ];
    assert_eq!(
        t.render(&history, true).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let mut call = ChatMessage::new("assistant", "");
    call.tool_calls = vec![TemplateCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: serde_json::json!({"city": "Paris"}),
    }];
    let mut result = ChatMessage::new("tool", "18 C");
    result.tool_call_id = Some("call_1".into());
    let tools = weather_tool();
    let out = t
        .render_with(
            &[ChatMessage::new("user", "Weather in Paris?"), call, result],
            RenderOptions {
                tools: Some(&tools),
                add_generation_prompt: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(out.starts_with("<|im_start|>system\n# Tools\n"), "{out}");
    assert!(
        out.ends_with("</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n"),
        "{out}"
    );
}

#[test]
fn mistral_folds_the_system_prompt_into_the_last_instruction_and_checks_turns() {
    let t = template("mistral", "<s>", "</s>");
    assert_eq!(
        t.render(&conversation(), true).unwrap(),
        "<s>[INST] Hi[/INST] Hello!</s>[INST] You are terse.\n\nWeather in Paris?[/INST]"
    );
    let err = t
        .render(
            &[ChatMessage::new("user", "a"), ChatMessage::new("user", "b")],
            true,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("roles must alternate"), "{err}");
}

#[test]
fn gemma3_built_in_template_puts_the_system_prompt_in_the_first_user_turn() {
    let t = ChatTemplate::new(genie_engine::gguf::GEMMA3_CHAT_TEMPLATE, "<bos>", "<eos>").unwrap();
    assert_eq!(
        t.render(&conversation(), true).unwrap(),
        "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nWeather in Paris?<end_of_turn>\n<start_of_turn>model\n"
    );
}
