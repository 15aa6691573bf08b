//! The ExecutionPlan as users see it: `genie plan` on the shipped configs, `GET /v1/plans`,
//! one plan per request behind `x-genie-request-id`, placement hints, and the plan page
//! drawn by a real browser (headless Chromium).

mod support;

use serde_json::{json, Value};
use support::{genie_ok, Server};

fn config(name: &str) -> String {
    format!("{}/../configs/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn post(s: &Server, body: Value) -> (u16, Option<String>, Value) {
    post_to(s, "/v1/completions", body).await
}

/// POSTs `body` to `path`: the status, the `x-genie-request-id` header and the body.
async fn post_to(s: &Server, path: &str, body: Value) -> (u16, Option<String>, Value) {
    let r = reqwest::Client::new()
        .post(s.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let id = r
        .headers()
        .get("x-genie-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    (status, id, r.json().await.unwrap_or(Value::Null))
}

async fn get(s: &Server, path: &str) -> (u16, Value) {
    let r = reqwest::get(s.url(path)).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The `phase` of every entry of `v["stages"]` (a plan, a simulation report).
fn phases(v: &Value) -> Vec<&str> {
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["phase"].as_str().unwrap())
        .collect()
}

fn completion(prompt: &str, extra: Value) -> Value {
    let mut b =
        json!({"model": support::MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0});
    if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    b
}

const LONG: &str = "The history of the printing press begins in the fifteenth century, when \
    Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press \
    into a system that could produce books faster than any scribe. Within fifty years";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_plan_the_client_can_read_and_steer() {
    let s = Server::start(&["--config", &config("1p1d.toml"), "--threads", "1"], &[]);
    let (st, plan) = get(&s, "/v1/plans").await;
    assert_eq!(st, 200, "{plan}");
    assert_eq!(plan["object"], "plan");
    assert_eq!(plan["policy"], "llm.prefill_decode");
    assert_eq!(phases(&plan), ["prefill", "prefill_local", "decode"]);
    assert_eq!(plan["edges"][0]["tensor"]["name"], "kv_cache");
    let workers = plan["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    assert!(workers
        .iter()
        .any(|w| w["role"] == "prefill" && w["pool"] == "prefill"));

    // A short prompt prefills on the decode worker; a long one is disaggregated.
    let (st, id, body) = post(&s, completion("Hi", json!({}))).await;
    assert_eq!(st, 200, "{body}");
    let id = id.expect("x-genie-request-id header");
    assert_eq!(body["id"], id.as_str());
    let (st, rp) = get(&s, &format!("/v1/plans/requests/{id}")).await;
    assert_eq!(st, 200, "{rp}");
    assert_eq!(rp["stages"], json!(["prefill_local", "decode"]));
    let seq = &rp["sequences"][0];
    assert_eq!(seq["placement"]["kind"], "colocated", "{rp}");
    assert!(
        seq["reason"].as_str().unwrap().contains("prefill_local"),
        "{rp}"
    );
    assert_eq!(
        seq["measured"]["completion_tokens"],
        body["usage"]["completion_tokens"]
    );
    assert!(seq["measured"]["e2e_ms"].as_f64().unwrap() > 0.0);

    let (st, id, long) = post(&s, completion(LONG, json!({}))).await;
    assert_eq!(st, 200, "{long}");
    let id = id.unwrap();
    let (_, rp) = get(&s, &format!("/v1/plans/requests/{id}")).await;
    assert_eq!(rp["stages"], json!(["prefill", "decode"]));
    let seq = &rp["sequences"][0];
    assert_eq!(seq["placement"]["kind"], "disaggregated", "{rp}");
    assert!(seq["transfer_id"].is_u64(), "{rp}");
    assert!(rp["predicted"]["ttft_ms"].as_f64().unwrap() > 0.0);
    assert!(rp["predicted"]["transfer_bytes"].as_u64().unwrap() > 0);
    assert!(seq["measured"]["ttft_ms"].as_f64().unwrap() > 0.0, "{rp}");
    let (_, plan) = get(&s, "/v1/plans").await;
    assert_eq!(plan["calibration"]["sequences"], 2, "{plan}");
    assert!(
        plan["calibration"]["ttft_ratio"]["p50"].as_f64().unwrap() > 0.0,
        "{plan}"
    );

    // The client's hint overrides the plan, and the answer does not change.
    let (st, id, hinted) = post(
        &s,
        completion(LONG, json!({"genie": {"disaggregate": false}})),
    )
    .await;
    assert_eq!(st, 200, "{hinted}");
    assert_eq!(hinted["choices"][0]["text"], long["choices"][0]["text"]);
    let (_, rp) = get(&s, &format!("/v1/plans/requests/{}", id.unwrap())).await;
    assert_eq!(rp["sequences"][0]["placement"]["kind"], "colocated");
    assert!(rp["sequences"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("client hint"));
    assert_eq!(rp["hint"]["disaggregate"], false);
    // The plan reports the path the request took: the KV stayed on the decode worker.
    assert_eq!(rp["stages"], json!(["prefill_local", "decode"]), "{rp}");
    assert_eq!(rp["predicted"]["transfer_bytes"], 0, "{rp}");
    assert_eq!(rp["predicted"]["transfer_ms"], 0.0, "{rp}");
    assert!(rp["predicted"]["ttft_ms"].as_f64().unwrap() > 0.0, "{rp}");

    // A short prompt the plan keeps local, sent to the prefill worker by the client.
    let (st, id, forced) = post(
        &s,
        completion("Hi", json!({"genie": {"disaggregate": true}})),
    )
    .await;
    assert_eq!(st, 200, "{forced}");
    let (_, rp) = get(&s, &format!("/v1/plans/requests/{}", id.unwrap())).await;
    let seq = &rp["sequences"][0];
    assert_eq!(seq["placement"]["kind"], "disaggregated", "{rp}");
    assert!(seq["transfer_id"].is_u64(), "{rp}");
    assert!(seq["reason"]
        .as_str()
        .unwrap()
        .contains("client hint (disaggregate = true)"));
    assert_eq!(rp["stages"], json!(["prefill", "decode"]), "{rp}");
    assert!(
        rp["predicted"]["transfer_bytes"].as_u64().unwrap() > 0,
        "{rp}"
    );

    // The hint and the request-id header work the same on chat completions.
    let (st, id, chat) = post_to(
        &s,
        "/v1/chat/completions",
        json!({
            "model": support::MODEL,
            "messages": [{"role": "user", "content": LONG}],
            "max_tokens": 4,
            "temperature": 0,
            "genie": {"disaggregate": false},
        }),
    )
    .await;
    assert_eq!(st, 200, "{chat}");
    let id = id.expect("x-genie-request-id on chat completions");
    assert!(id.starts_with("chatcmpl-"), "{id}");
    assert_eq!(chat["id"], id.as_str());
    let (st, rp) = get(&s, &format!("/v1/plans/requests/{id}")).await;
    assert_eq!(st, 200, "{rp}");
    assert_eq!(rp["sequences"][0]["placement"]["kind"], "colocated", "{rp}");
    assert_eq!(rp["hint"]["disaggregate"], false, "{rp}");
    assert_eq!(rp["stages"], json!(["prefill_local", "decode"]), "{rp}");
    assert!(rp["prompt_tokens"].as_u64().unwrap() >= 32, "{rp}");
    let decode_id = workers.iter().find(|w| w["role"] == "decode").unwrap()["id"].clone();
    let (st, id, _) = post(
        &s,
        completion("Hi", json!({"genie": {"decode_worker": decode_id}})),
    )
    .await;
    assert_eq!(st, 200);
    let (_, rp) = get(&s, &format!("/v1/plans/requests/{}", id.unwrap())).await;
    assert_eq!(rp["sequences"][0]["placement"]["decode"], decode_id);

    // Bad hints are refused with the field named.
    let (st, _, e) = post(
        &s,
        completion("Hi", json!({"genie": {"decode_worker": 999}})),
    )
    .await;
    assert_eq!(
        (st, e["error"]["param"].as_str()),
        (400, Some("genie.decode_worker")),
        "{e}"
    );
    let (st, _, e) = post(
        &s,
        completion(
            "Hi",
            json!({"genie": {"prefill_worker": 0, "disaggregate": false}}),
        ),
    )
    .await;
    assert_eq!(
        (st, e["error"]["param"].as_str()),
        (400, Some("genie.prefill_worker")),
        "{e}"
    );
    let (st, _, e) = post(&s, completion("Hi", json!({"genie": {"teleport": true}}))).await;
    assert_eq!(st, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("teleport"),
        "{e}"
    );

    // Streams carry the header too; unknown ids are a 404 envelope; the list is newest first.
    let r = reqwest::Client::new()
        .post(s.url("/v1/completions"))
        .json(&completion("Hi", json!({"stream": true})))
        .send()
        .await
        .unwrap();
    let sid = r.headers()["x-genie-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let _ = r.text().await.unwrap();
    let (st, e) = get(&s, "/v1/plans/requests/cmpl-nope").await;
    assert_eq!(st, 404);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cmpl-nope"));
    let (_, list) = get(&s, "/v1/plans/requests?limit=2").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["data"][0]["id"], sid.as_str());
}

/// Debian's `chromium`; None where it is not installed (CI installs it and must not skip).
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium for the plan page test"
        );
        eprintln!("SKIPPED: no chromium here (apt-get install chromium)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_page_draws_the_plan_and_live_placements_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let s = Server::start(&["--threads", "1"], &[]);
    let (st, id, _) = post(&s, completion(LONG, json!({}))).await;
    assert_eq!(st, 200);
    let id = id.unwrap();
    let url = s.url("/plan");
    let profile = std::env::temp_dir().join(format!("genie-chromium-{}", std::process::id()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--virtual-time-budget=8000",
                &format!("--user-data-dir={}", profile.display()),
                "--dump-dom",
                &url,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(r#"data-state="ready""#),
        "page did not render: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        r#"class="stage active" data-phase="prefill""#,
        r#"class="stage active" data-phase="decode""#,
        r#"data-from="prefill" data-to="decode" data-tensor="kv_cache""#,
        r#"class="worker""#,
        &format!(r#"class="request" data-id="{id}" data-placement="disaggregated""#),
        "llm.prefill_decode",
    ] {
        assert!(
            dom.contains(needle),
            "{needle} missing from the page: {dom}"
        );
    }
}

#[test]
fn genie_plan_shows_validates_explains_and_renders() {
    // The default plan is read from the model's GGUF; the preset for it says the same.
    let out = genie_ok(&["plan", "show"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["stages"].is_array() && v["edges"].is_array(), "{v}");
    assert_eq!(v["version"], 1);
    assert_eq!(v["model"]["params"], 134_515_008u64);
    assert_eq!(v["model"]["weight_bytes"], 96_576_768u64);
    assert_eq!(v["model"]["kv_bytes_per_token"], 23_040);

    // Every shipped config compiles to a valid plan; a new one cannot be missed.
    let shipped = support::shipped_configs();
    assert!(shipped.len() >= 8, "{shipped:?}");
    for f in &shipped {
        let out = genie_ok(&["plan", "validate", "--config", f.to_str().unwrap()]);
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("valid:"),
            "{}",
            f.display()
        );
    }
    let out = genie_ok(&[
        "plan",
        "explain",
        "--config",
        &config("hetero-h100-a100.toml"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("as 4 replica(s) of 2 device(s)"), "{text}");
    let out = genie_ok(&[
        "plan",
        "render",
        "--config",
        &config("pipeline-2stage.toml"),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("stage_0 -> stage_1"));
    let out = genie_ok(&[
        "plan",
        "show",
        "--config",
        &config("multimodal-fusion.toml"),
        "--format",
        "mermaid",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("flowchart LR"));

    // An invalid config: exit 1, the field and the reason.
    let dir = std::env::temp_dir().join(format!("genie-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[plan.model]\npreset = \"llama-3-8b\"\n[plan.policy]\npattern = \"llm.prefill_decode\"\nprefill = { scale_out = { gpus = 2, hardware = \"B200\" } }\ndecode = { scale_to = { gpus = 1, hardware = \"cpu\" } }\n",
    )
    .unwrap();
    let validate = |path: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
            .args(["plan", "validate", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = validate(&bad);
    assert!(
        err.contains("phases[0].resources.hardware") && err.contains("B200"),
        "{err}"
    );
    // A pin to a pool the cluster lacks is named by the pin's own field.
    std::fs::write(
        &bad,
        "[plan.model]\npreset = \"smollm2-135m\"\n[[plan.pins]]\nphase = \"decode\"\nworker = 100\n[[plan.pins]]\nphase = \"decode\"\npool = \"gpu-east\"\n",
    )
    .unwrap();
    let err = validate(&bad);
    assert!(
        err.contains("`plan.pins[1].pool`") && err.contains("gpu-east"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_pin_sends_every_request_to_the_pinned_worker() {
    let dir = std::env::temp_dir().join(format!("genie-pin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("pinned.toml");
    // Two decode workers (ids 100 and 101 in one process); the decode phase is pinned to
    // the second, which least-loaded routing alone would not always pick.
    std::fs::write(
        &cfg,
        "[decode]\nworkers = 2\nthreads = 1\n[prefill]\nthreads = 1\n[[plan.pins]]\nphase = \"decode\"\nworker = 101\n",
    )
    .unwrap();
    let s = Server::start(&["--config", cfg.to_str().unwrap()], &[]);
    let (_, plan) = get(&s, "/v1/plans").await;
    let decode = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["phase"] == "decode")
        .unwrap()
        .clone();
    assert_eq!(decode["pinned_worker"], 101, "{plan}");
    for _ in 0..4 {
        let (st, id, body) = post(&s, completion(LONG, json!({}))).await;
        assert_eq!(st, 200, "{body}");
        let (_, rp) = get(&s, &format!("/v1/plans/requests/{}", id.unwrap())).await;
        let seq = &rp["sequences"][0];
        assert_eq!(seq["placement"]["decode"], 101, "{rp}");
        assert!(
            seq["reason"]
                .as_str()
                .unwrap()
                .contains("pinned by the plan"),
            "{rp}"
        );
    }
    drop(s);

    // A pin to a worker that does not exist: requests fail with a 503 that says so.
    std::fs::write(
        &cfg,
        "[decode]\nthreads = 1\n[prefill]\nthreads = 1\n[[plan.pins]]\nphase = \"decode\"\nworker = 7\n",
    )
    .unwrap();
    let s = Server::start(&["--config", cfg.to_str().unwrap()], &[]);
    let (st, _, e) = post(&s, completion("Hi", json!({}))).await;
    assert_eq!(st, 503, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the plan pins a worker (plan.pins[0].worker)"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The prefill worker a request's first sequence ran on.
async fn prefill_worker_of(s: &Server, prompt: &str, extra: Value) -> u64 {
    let mut body = completion(prompt, extra);
    body["max_tokens"] = json!(2);
    let (st, id, b) = post(s, body).await;
    assert_eq!(st, 200, "{b}");
    let (_, rp) = get(s, &format!("/v1/plans/requests/{}", id.unwrap())).await;
    let p = &rp["sequences"][0]["placement"];
    assert_eq!(p["kind"], "disaggregated", "{rp}");
    p["prefill"].as_u64().unwrap()
}

/// `genie serve` with two prefill workers and the given `[scheduler]` routing.
fn two_prefill_workers(dir: &std::path::Path, routing: &str) -> Server {
    let cfg = dir.join(format!("{routing}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[scheduler]\nrouting = \"{routing}\"\nprefix_tokens = 16\n\
             [prefill]\nworkers = 2\nthreads = 1\n[decode]\nthreads = 1\n"
        ),
    )
    .unwrap();
    Server::start(&["--config", cfg.to_str().unwrap()], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_routing_policy_picks_the_prefill_worker() {
    let dir = std::env::temp_dir().join(format!("genie-routing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let s = two_prefill_workers(&dir, "prefix_affinity");
    let (_, plan) = get(&s, "/v1/plans").await;
    assert_eq!(plan["routing"], "prefix_affinity", "{plan}");
    assert_eq!(plan["prefix_tokens"], 16, "{plan}");
    let prefill: Vec<u64> = plan["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["role"] == "prefill")
        .map(|w| w["id"].as_u64().unwrap())
        .collect();
    assert_eq!(prefill, [0, 1], "{plan}");
    // Prompts that share their first 16 tokens go to one prefill worker, every time.
    let home = prefill_worker_of(&s, LONG, json!({})).await;
    for tail in [" the", " printers of Venice", " books were cheap"] {
        let got = prefill_worker_of(&s, &format!("{LONG}{tail}"), json!({})).await;
        assert_eq!(got, home, "{tail:?}");
    }
    // Different prefixes spread over both workers.
    let mut seen = std::collections::BTreeSet::new();
    for topic in [
        "rivers",
        "volcanoes",
        "bees",
        "glaciers",
        "comets",
        "deserts",
    ] {
        let prompt = format!("Write one sentence about {topic}.");
        seen.insert(prefill_worker_of(&s, &prompt, json!({})).await);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // A client pin to the other worker wins over affinity.
    let other = 1 - home;
    let (st, id, b) = post(
        &s,
        completion(LONG, json!({"genie": {"prefill_worker": other}})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (_, rp) = get(&s, &format!("/v1/plans/requests/{}", id.unwrap())).await;
    let seq = &rp["sequences"][0];
    assert_eq!(seq["placement"]["prefill"], other, "{rp}");
    assert!(
        seq["reason"]
            .as_str()
            .unwrap()
            .contains("worker chosen by the client"),
        "{rp}"
    );
    drop(s);

    // Round robin: the same prompt alternates between the workers.
    let s = two_prefill_workers(&dir, "round_robin");
    let (_, plan) = get(&s, "/v1/plans").await;
    assert_eq!(plan["routing"], "round_robin", "{plan}");
    assert!(plan.get("prefix_tokens").is_none(), "{plan}");
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(prefill_worker_of(&s, LONG, json!({})).await);
    }
    assert_ne!(got[0], got[1], "{got:?}");
    assert_eq!((got[2], got[3]), (got[0], got[1]), "{got:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn genie_plan_simulate_reports_a_shipped_plan_under_load() {
    let cfg = config("multimodal-fusion.toml");
    let args = |extra: &[&'static str]| {
        let mut a = vec!["plan", "simulate", "--config", cfg.as_str()];
        a.extend_from_slice(&["--images", "1", "--rate", "20", "--requests", "50"]);
        a.extend_from_slice(extra);
        a
    };
    let out = genie_ok(&args(&[]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(
            "50 requests of 1024 prompt + 128 output tokens at 20/s through `multimodal.parallel_fusion` (simulated):"
        ),
        "{text}"
    );
    for needle in [
        "  TTFT: p50 ",
        "  e2e:  p50 ",
        "output throughput",
        "stage vision_encoder",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    let out = genie_ok(&args(&["--json"]));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["requests"], 50, "{r}");
    assert_eq!(
        phases(&r),
        ["vision_encoder", "text_embedder", "fusion", "decode"],
        "{r}"
    );
    let ttft = &r["ttft_ms"];
    assert!(ttft["p50"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        ttft["p99"].as_f64().unwrap() >= ttft["p50"].as_f64().unwrap(),
        "{r}"
    );
    // Seeded: the same run gives the same report.
    assert_eq!(genie_ok(&args(&["--json"])).stdout, out.stdout);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(["plan", "simulate", "--config", &cfg, "--rate", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
}

/// A worker's `--hardware` label places it in the plan's pools: under
/// configs/hetero-h100-a100.toml (prefill on H100, decode on A100) the gateway takes an
/// `a100` decode worker and refuses a `cpu` one with 400, `param` `hardware` and the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_checks_the_hardware_label_against_the_plans_pools() {
    let gw = Server::gateway(&["--config", &config("hetero-h100-a100.toml")], &[]);
    use genie_protocol::worker::{RegisterRequest, WorkerRole, WorkerStatus};
    let reg = |hardware: &str| RegisterRequest {
        role: WorkerRole::Decode,
        address: "http://127.0.0.1:9".into(),
        kv_endpoint: Some("127.0.0.1:9".into()),
        hardware: hardware.into(),
        status: WorkerStatus::default(),
    };
    let c = reqwest::Client::new();
    let r = support::signed(c.post(gw.url("/internal/workers")).json(&reg("cpu"))).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "hardware", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("decode on pool `a100` (A100)") && msg.contains("--hardware A100"),
        "{msg}"
    );
    assert!(support::workers(&gw).await.is_empty());

    let r = support::signed(c.post(gw.url("/internal/workers")).json(&reg("a100"))).await;
    assert_eq!(r.status(), 200);
    let listed = support::workers(&gw).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["hardware"], "a100");
}

/// Online calibration: each worker fits cost curves to its own forward passes and reports
/// them; `/v1/plans` shows them with their drift from the compiled costs, and the
/// gateway predicts a later request with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_report_live_cost_curves_and_the_gateway_predicts_with_them() {
    let s = Server::start(&["--config", &config("1p1d.toml"), "--threads", "1"], &[]);
    let (_, plan) = get(&s, "/v1/plans").await;
    assert!(
        plan["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["costs"].is_null()),
        "no curve before any work: {plan}"
    );
    // Disaggregated prompts of varied lengths: prefill forwards for the prefill worker,
    // decode steps for the decode worker.
    let mut last = None;
    for i in 0..10 {
        // A different start each time: the prefix cache serves nothing.
        let prompt = format!(
            "Note {i}, {}: {}",
            "again ".repeat(i),
            LONG.repeat(1 + i % 3)
        );
        let (st, id, body) = post(&s, completion(&prompt, json!({}))).await;
        assert_eq!(st, 200, "{body}");
        last = id;
    }
    let (_, plan) = get(&s, "/v1/plans").await;
    let workers = plan["workers"].as_array().unwrap();
    let costs = |role: &str| {
        workers
            .iter()
            .find(|w| w["role"] == role)
            .map(|w| w["costs"].clone())
            .unwrap()
    };
    let (p, d) = (costs("prefill"), costs("decode"));
    assert!(p["prefill"]["points"].as_u64().unwrap() >= 8, "{p}");
    assert!(p["prefill"]["drift"].as_f64().unwrap() > 0.0, "{p}");
    assert!(d["decode"]["points"].as_u64().unwrap() >= 8, "{d}");
    assert!(d["decode"]["drift"].as_f64().unwrap() > 0.0, "{d}");
    assert_eq!(d["decode"]["coef"].as_array().unwrap().len(), 3, "{d}");

    // A request placed now is predicted from those curves, and the prediction is of the
    // order of what it measured (loosely: other tests share this host's cores).
    let fresh = format!("A last note, unlike the others: {}", LONG.repeat(2));
    let (st, id, body) = post(&s, completion(&fresh, json!({}))).await;
    assert_eq!(st, 200, "{body}");
    let (_, rp) = get(&s, &format!("/v1/plans/requests/{}", id.unwrap())).await;
    assert_eq!(rp["predicted"]["live"], true, "{rp}");
    let ratio = rp["sequences"][0]["measured"]["ttft_ms"].as_f64().unwrap()
        / rp["predicted"]["ttft_ms"].as_f64().unwrap();
    assert!(
        (0.2..5.0).contains(&ratio),
        "measured / predicted {ratio}: {rp}"
    );
    let (_, plan) = get(&s, "/v1/plans").await;
    assert!(
        plan["calibration"]["live"]["sequences"].as_u64().unwrap() >= 1,
        "{plan}"
    );
    assert!(last.is_some());

    // `genie profile --from URL` saves those live curves as a cost profile.
    let out = std::env::temp_dir().join(format!("genie-live-profile-{}.json", std::process::id()));
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(["profile", "--from", &s.url("")])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).ok();
    let p = genie_scheduler::cost_profile::CostProfile::from_json(&text).unwrap();
    assert!(p.source.contains("live curves"), "{text}");
    assert!(
        p.prefill.fit.points >= 8 && p.decode.fit.points >= 8,
        "{text}"
    );
    assert!(
        p.decode.ms(&[64]) > 0.0 && p.prefill.ms(&[64]) > 0.0,
        "{text}"
    );
}

/// `plan.cost_profile`: before the workers have fitted curves of their own, the gateway
/// predicts with the profile's; a profile that cannot be read stops the server at start,
/// naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_cost_profile_predicts_until_the_workers_fit_their_own() {
    use genie_scheduler::cost_profile::CostProfile;
    let dir = std::env::temp_dir().join(format!("genie-cost-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut p = CostProfile::preset("h100").unwrap();
    (
        p.prefill.fixed_ms,
        p.prefill.per_token_ms,
        p.prefill.per_token2_ms,
    ) = (100.0, 1.0, 0.0);
    (
        p.decode.fixed_ms,
        p.decode.per_seq_ms,
        p.decode.per_context_ms,
    ) = (7.0, 0.0, 0.0);
    let path = dir.join("profile.json");
    std::fs::write(&path, p.to_json()).unwrap();
    let path_s = path.to_str().unwrap();
    let s = Server::start(
        &["--config", &config("1p1d.toml"), "--threads", "1"],
        &[("GENIE_PLAN__COST_PROFILE", path_s)],
    );
    let (st, id, body) = post(&s, completion(LONG, json!({}))).await;
    assert_eq!(st, 200, "{body}");
    let (_, rp) = get(&s, &format!("/v1/plans/requests/{}", id.unwrap())).await;
    assert_eq!(rp["stages"], json!(["prefill", "decode"]), "{rp}");
    assert_eq!(rp["predicted"]["live"], true, "{rp}");
    let n = rp["prompt_tokens"].as_f64().unwrap();
    let ttft = rp["predicted"]["ttft_ms"].as_f64().unwrap();
    // The prompt by the profile's curve, plus the first layer's share of the KV transfer.
    assert!(ttft >= 100.0 + n && ttft < 100.0 + n + 5.0, "{rp}");
    let itl = rp["predicted"]["itl_ms"].as_f64().unwrap();
    assert!((7.0..7.5).contains(&itl), "{rp}");

    std::fs::write(
        &path,
        p.to_json().replacen("\"version\": 1", "\"version\": 9", 1),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--threads",
            "1",
        ])
        .env("GENIE_PLAN__COST_PROFILE", path_s)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plan.cost_profile") && err.contains("version 9"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A cost profile of this shape of host at `threads` compute threads (curves near the
/// ones `genie profile` measured on a 2-core host, BENCHMARKS.md; one thread half as fast).
fn cpu_profile(dir: &std::path::Path, threads: usize) -> String {
    let slow = 2.0 / threads as f64;
    let fit = json!({"points": 10, "rms_rel_error": 0.05, "max_rel_error": 0.1});
    let p = json!({
        "version": 1,
        "hardware": "test host",
        "model": "SmolLM2-135M",
        "threads": threads,
        "source": "test",
        "prefill": {"fixed_ms": 5.45, "per_token_ms": 1.605 * slow, "per_token2_ms": 7.81e-4 * slow, "fit": fit},
        "decode": {"fixed_ms": 3.24 * slow, "per_seq_ms": 2.094 * slow, "per_context_ms": 4.64e-3 * slow, "fit": fit},
        "links": [{"transport": "tcp", "latency_ms": 0.75, "gbytes_per_s": 3.37, "fit": fit}]
    });
    let path = dir.join(format!("cpu{threads}.json"));
    std::fs::write(&path, p.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn genie_plan_tune_explains_its_choice_and_writes_a_config_that_serves() {
    let dir = std::env::temp_dir().join(format!("genie-tune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (p1, p2) = (cpu_profile(&dir, 1), cpu_profile(&dir, 2));
    let out_cfg = dir.join("tuned.toml");
    let out_cfg_s = out_cfg.to_string_lossy().into_owned();
    // Chat with some long prompts at a rate the default (1P1D, every prompt to the
    // prefill worker, two threads each on two cores) does not keep up with.
    let workload = "poisson:rate=1.5,requests=300,prompt=32-1500,output=16-64,seed=3";
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "plan",
            "tune",
            "--profile",
            &p1,
            "--profile",
            &p2,
            "--cores",
            "2",
            "--workload",
            workload,
            "--slo",
            "ttft=2000,itl=400",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        genie_ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = run(&["--out", &out_cfg_s]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "300 requests over",
        "round 1, placement:",
        "round 1, decode.max_batch:",
        "round 1, routing:",
        "\nstart:     1P:1D, 2 thread(s) each, min_prompt_tokens 0 (all to prefill workers), decode.max_batch 64",
        "\nchosen:    ",
        "\nrunner-up: ",
        "tuned config written to",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
    // The tuned config is a config `genie serve` reads.
    let cfg = std::fs::read_to_string(&out_cfg).unwrap();
    assert!(cfg.starts_with("# Tuned by `genie plan tune`: "), "{cfg}");
    genie_ok(&["plan", "validate", "--config", &out_cfg_s]);
    // JSON: the chosen candidate predicts at least the start's goodput, the runner-up at
    // most the chosen's; the same inputs give the same search.
    let out = run(&["--json"]);
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    let goodput = |v: &Value| v["report"]["goodput_per_s"].as_f64().unwrap();
    assert!(goodput(&t["chosen"]) >= goodput(&t["start"]), "{t}");
    assert!(goodput(&t["runner_up"]) <= goodput(&t["chosen"]), "{t}");
    assert!(goodput(&t["chosen"]) > 0.0, "{t}");
    assert_eq!(run(&["--json"]).stdout, out.stdout);
    // Bad input names the flag.
    for (flag, bad) in [
        ("--slo", "ttft=abc,itl=5"),
        ("--workload", "poisson:rate=0,requests=5,prompt=1,output=1"),
    ] {
        let mut a = args(&[]);
        let at = a.iter().position(|s| s == flag).unwrap();
        a[at + 1] = bad.to_string();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
            .args(&a)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{flag}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
