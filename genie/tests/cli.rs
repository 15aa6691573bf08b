//! The `genie` binary as a user runs it: real process, real model.

mod support;

use std::process::Command;
use support::genie_ok;

fn genie() -> Command {
    Command::new(env!("CARGO_BIN_EXE_genie"))
}

#[test]
fn generate_json_prints_prompt_ids_tokens_and_text() {
    let out = genie_ok(&[
        "generate",
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
        "--json",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "exactly one JSON line: {stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        v["prompt_token_ids"],
        serde_json::json!([504, 3575, 282, 4649, 314])
    );
    // llama.cpp's greedy continuation of this prompt (tests/data in the engine crate).
    assert_eq!(
        v["token_ids"],
        serde_json::json!([7042, 30, 198, 198, 504, 1797, 1918, 553])
    );
    assert_eq!(v["text"], " Paris.\n\nThe United States has");
}

#[test]
fn generate_chat_stops_at_end_of_turn() {
    let v = support::genie_generate(&[
        "--chat",
        "--prompt",
        "List three primary colors.",
        "--max-tokens",
        "200",
    ]);
    let n = v["token_ids"].as_array().unwrap().len();
    assert!(
        n < 200,
        "the reply should end with <|im_end|> before 200 tokens, got {n}"
    );
    assert!(!v["text"].as_str().unwrap().contains("<|im_end|>"));
    assert_eq!(
        v["prompt_token_ids"][0], 1,
        "rendered template starts with <|im_start|>"
    );
}

#[test]
fn bad_input_fails_with_a_clear_message_not_a_panic() {
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "generate",
                "--model",
                "/nonexistent/m.gguf",
                "--prompt",
                "x",
            ],
            "not found",
        ),
        (
            &["generate", "--prompt", "x", "--temperature", "-1"],
            "temperature",
        ),
        (
            &["generate", "--prompt", "x", "--max-tokens", "9000"],
            "maximum context length is 8192",
        ),
    ];
    for (args, want) in cases {
        let out = genie().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn model_tokenizer_writes_a_hugging_face_tokenizer_directory() {
    let dir = std::env::temp_dir().join(format!("genie-tokenizer-{}", std::process::id()));
    genie_ok(&["model", "tokenizer", "--out", dir.to_str().unwrap()]);
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(f)).unwrap()).unwrap()
    };
    let tok = read("tokenizer.json");
    assert_eq!(tok["model"]["type"], "BPE");
    assert_eq!(tok["model"]["vocab"].as_object().unwrap().len(), 49152);
    assert_eq!(
        tok["model"]["vocab"]["ĠParis"], 7042,
        "the ids genie generates"
    );
    let cfg = read("tokenizer_config.json");
    assert_eq!(cfg["eos_token"], "<|im_end|>");
    assert_eq!(cfg["model_max_length"], 8192);
    assert!(cfg["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_info_says_what_any_gguf_holds_and_whether_it_runs() {
    let text = |args: &[&str]| String::from_utf8(genie_ok(args).stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text(&["model", "info"])).unwrap();
    assert_eq!(v["supported"], true);
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["context_length"], 8192);
    assert!(v["quantization"]["Q4_1"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["kv_bytes_per_token"], 2 * 30 * 3 * 64 * 2);
    // Another family and a K-quant mix: Gemma 3 270M Q4_K_M.
    let gemma = text(&["model", "fetch", "gemma3-270m"]);
    let path = gemma.split(" (sha256").next().unwrap().trim().to_string();
    let v: serde_json::Value =
        serde_json::from_str(&text(&["model", "info", "--model", &path])).unwrap();
    assert_eq!(v["supported"], true, "{v}");
    assert_eq!(v["architecture"], "gemma3");
    assert_eq!(v["quantization"]["Q4K"], 27);
    assert_eq!(v["quantization"]["Q6K"], 9);
    assert_eq!(v["kv_bytes_per_token"], 2 * 18 * 256 * 2);
    assert_eq!(v["context_length"], 32768);
}
