//! What the Gemma 3 tests share: the cases of a fixture `scripts/llama_cpp_logprobs.py`
//! wrote in generate mode.

use genie_reference::accuracy::Scored;
use genie_reference::cases::Case;
use serde_json::Value;

/// llama.cpp's greedy continuations recorded in `fixtures/gemma3-270m-llama-cpp.json`:
/// per prompt the tokens (prompt, then continuation), where scoring starts, and
/// `[top, chosen, logprob of chosen]` per scored position.
pub fn gemma3_fixture_cases() -> Vec<Case> {
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/gemma3-270m-llama-cpp.json"))
            .expect("the fixture");
    fixture["generated"]
        .as_array()
        .unwrap()
        .iter()
        .zip(fixture["prompts"].as_array().unwrap())
        .map(|(g, p)| Case {
            prompt: p.as_str().unwrap().to_string(),
            tokens: serde_json::from_value(g["tokens"].clone()).unwrap(),
            prompt_len: g["from"].as_u64().unwrap() as usize + 1,
            scored: g["scored"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Scored {
                    top: s[0].as_u64().unwrap() as u32,
                    chosen: s[1].as_u64().unwrap() as u32,
                    chosen_logprob: s[2].as_f64().unwrap(),
                })
                .collect(),
        })
        .collect()
}
