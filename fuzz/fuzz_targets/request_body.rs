//! The request-body parser: arbitrary bytes parsed as a chat-completions and as a
//! completions body, as the handlers do, then validated against the default model's
//! tokenizer, template and limits when that model is cached (`genie model fetch`;
//! `GENIE_MODEL` names another), with control tokens in content read both as plain text
//! and as control tokens. Every outcome must be a `GenSpec` or an `ApiError`.
#![no_main]

use genie_protocol::openai::{ChatCompletionRequest, CompletionRequest};
use genie_server::frontend::{Frontend, Limits};
use genie_server::{body, request};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The default model's frontend, with control-token strings in content read as plain text
/// (the server's default) or, with `special`, as control tokens
/// (`server.parse_special_in_content`).
fn frontend(special: bool) -> Option<&'static Frontend> {
    static FE: OnceLock<[Option<Frontend>; 2]> = OnceLock::new();
    FE.get_or_init(|| {
        [false, true].map(|parse_special_in_content| {
            let path = std::env::var_os("GENIE_MODEL")
                .map(PathBuf::from)
                .unwrap_or_else(genie_engine::fetch::default_model_path);
            let text = genie_engine::model_text::ModelText::open(&path).ok()?;
            let name = Frontend::default_name(&path, &text.config.name);
            let limits = Limits {
                default_max_tokens: 256,
                max_n: 8,
                parse_special_in_content,
            };
            Some(Frontend::new(name, text, limits))
        })
    })[usize::from(special)]
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = body::parse::<ChatCompletionRequest>(data) {
        for special in [false, true] {
            if let Some(fe) = frontend(special) {
                let _ = request::prepare_chat(fe, r.clone());
            }
        }
    }
    if let Ok(r) = body::parse::<CompletionRequest>(data) {
        for special in [false, true] {
            if let Some(fe) = frontend(special) {
                let _ = request::prepare_completion(fe, r.clone());
            }
        }
    }
});
