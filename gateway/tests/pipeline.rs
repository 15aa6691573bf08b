//! Pipeline-parallel generation for real: the default model's layers on stage workers,
//! hidden states between them over kv-transfer (TCP), output identical to the unsplit
//! model for greedy and seeded sampling.

mod support;

use support::genie_generate;

fn config(name: &str) -> String {
    format!("{}/../configs/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn stages_over_tcp_generate_exactly_what_the_whole_model_does() {
    let prompts: [&[&str]; 3] = [
        &["--prompt", "The capital of France is", "--max-tokens", "24"],
        &[
            "--chat",
            "--prompt",
            "Name three colors.",
            "--max-tokens",
            "24",
        ],
        &[
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "24",
            "--temperature",
            "0.8",
            "--top-p",
            "0.9",
            "--seed",
            "42",
        ],
    ];
    for p in prompts {
        let want = genie_generate(p);
        assert!(!want["token_ids"].as_array().unwrap().is_empty());
        for stages in [
            &["--pipeline-stages", "2"][..],
            &["--pipeline-stages", "3"][..],
            &["--pipeline-config", &config("pipeline-2stage.toml")][..],
        ] {
            let mut args = p.to_vec();
            args.extend_from_slice(stages);
            assert_eq!(genie_generate(&args), want, "{args:?}");
        }
    }
}

#[test]
fn hidden_states_cross_each_stage_boundary_over_tcp() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args([
            "generate",
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "8",
            "--json",
            "--threads",
            "1",
            "--pipeline-stages",
            "3",
        ])
        .env("GENIE_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let generated = v["token_ids"].as_array().unwrap().len();
    let prompt = v["prompt_token_ids"].as_array().unwrap().len();
    let log = String::from_utf8_lossy(&out.stderr);
    // Every token but the last sampled one crosses both boundaries: the prompt in one
    // frame, then one frame per step; 576 f32 values per token.
    let frames = 1 + generated - 1;
    let bytes = (prompt + generated - 1) * 576 * 4;
    for (stage, layers) in [(0, "0..10"), (1, "10..20")] {
        let line = format!(
            "pipeline stage {stage} (layers {layers}) sent {frames} hidden-state frames, {bytes} bytes, to 127.0.0.1:"
        );
        assert!(log.contains(&line), "{line} missing from:\n{log}");
    }
}

#[test]
fn a_config_that_plans_no_pipeline_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args([
            "generate",
            "--prompt",
            "Hi",
            "--pipeline-config",
            &config("1p1d.toml"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not plan a pipeline"), "{err}");
}
