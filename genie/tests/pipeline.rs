//! Pipeline-parallel generation for real: the default model's layers on stage workers,
//! hidden states between them over kv-transfer (TCP), output identical to the unsplit
//! model for greedy and seeded sampling.

mod support;

use support::{genie_generate, Server};

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
    // One frame per forward: the prompt, then each sampled token but the last. Hidden
    // states are 576 f32 per token; the last stage sends one token's 49,152 logits.
    let frames = generated;
    let hidden = (prompt + generated - 1) * 576 * 4;
    for (stage, layers, bytes) in [
        (0, "0..10", hidden),
        (1, "10..20", hidden),
        (2, "20..30", generated * 49_152 * 4),
    ] {
        let line = format!(
            "pipeline stage {stage} (layers {layers}) sent {frames} frames, {bytes} bytes, to 127.0.0.1:"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_worker_processes_run_the_pipeline_over_tcp() {
    let s0 = Server::spawn(
        &["stage-worker", "--layers", "0..15", "--threads", "1"],
        &[],
    );
    let s1 = Server::spawn(
        &["stage-worker", "--layers", "15..30", "--threads", "1"],
        &[],
    );
    assert!(s0.kv_endpoint.is_none() && s1.kv_endpoint.is_some());
    // The control API takes only calls signed with the cluster secret.
    let c = reqwest::Client::new();
    for r in [
        c.get(s1.url("/internal/stage")).send().await.unwrap(),
        c.post(s0.url("/internal/stage/end")).send().await.unwrap(),
    ] {
        assert_eq!(r.status(), 401);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "cluster_auth_missing", "{v}");
    }
    assert_eq!(reqwest::get(s1.url("/health")).await.unwrap().status(), 200);
    let info: serde_json::Value = support::signed(c.get(s1.url("/internal/stage")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["layers"], serde_json::json!([15, 30]));
    let workers = format!("{},{}", s0.url, s1.url);
    for p in [
        &["--prompt", "The capital of France is", "--max-tokens", "16"][..],
        &[
            "--chat",
            "--prompt",
            "Name three colors.",
            "--max-tokens",
            "16",
            "--temperature",
            "0.7",
            "--seed",
            "9",
        ][..],
    ] {
        let want = genie_generate(p);
        let mut args: Vec<String> = p.iter().map(|s| s.to_string()).collect();
        args.extend(["--pipeline-workers".to_string(), workers.clone()]);
        let got = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            genie_generate(&refs)
        })
        .await
        .unwrap();
        assert_eq!(got, want, "{p:?}");
    }
    // The hidden states and the logits crossed TCP between the processes.
    let (h0, h1) = (
        s0.metric("genie_kv_transfer_bytes_total", &["transport=\"tcp\""])
            .await,
        s1.metric("genie_kv_transfer_bytes_total", &["transport=\"tcp\""])
            .await,
    );
    assert!(
        h0 > 0.0 && h0 % (576.0 * 4.0) == 0.0,
        "stage 0 sent {h0} bytes"
    );
    assert!(
        h1 > 0.0 && h1 % (49_152.0 * 4.0) == 0.0,
        "stage 1 sent {h1} bytes"
    );

    // Bad control requests are refused with the field named; a second stage takes no tokens.
    let r = support::signed(
        c.post(s1.url("/internal/stage/tokens"))
            .json(&serde_json::json!({"tokens": [1]})),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = support::signed(
        c.post(s0.url("/internal/stage/begin"))
            .json(&serde_json::json!({"seq": 1})),
    )
    .await;
    assert_eq!(r.status(), 400);
    // An unreachable next hop fails the begin at once (no sequence left waiting).
    let t = std::time::Instant::now();
    let r = support::signed(
        c.post(s0.url("/internal/stage/begin"))
            .json(&serde_json::json!({"seq": 99, "capacity": 8, "next": "127.0.0.1:1"})),
    )
    .await;
    assert_eq!(r.status(), 503);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("cannot reach its next hop"));
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    // Stages that do not cover the model are refused before any work.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(["generate", "--prompt", "Hi", "--pipeline-workers", &s1.url])
        .env(support::SECRET_ENV, support::CLUSTER_SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("contiguous"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
