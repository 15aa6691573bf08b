//! The roles as separate processes on 127.0.0.1: a gateway, two prefill workers and two
//! decode workers, the KV cache crossing real TCP connections.

mod support;

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{genie_generate, healthy, wait_for, worker_standalone, workers, Server, MODEL};

struct Cluster {
    gateway: Server,
    prefill: Vec<Server>,
    decode: Vec<Server>,
}

/// A worker process of `role` registering with the gateway at `url`, one compute thread.
fn worker(role: &str, url: &str, env: &[(&str, &str)]) -> Server {
    Server::spawn(
        &[
            role,
            "--gateway",
            url,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--threads",
            "1",
        ],
        env,
    )
}

async fn cluster(env: &[(&str, &str)]) -> Cluster {
    let gateway = Server::gateway(&[], env);
    let url = gateway.url.clone();
    let start = |role: &str| worker(role, &url, env);
    let prefill = vec![start("prefill-worker"), start("prefill-worker")];
    let decode = vec![start("decode-worker"), start("decode-worker")];
    wait_for("4 healthy workers", async || healthy(&gateway).await == 4).await;
    let h = reqwest::get(gateway.url("/health")).await.unwrap();
    assert_eq!(h.status(), 200);
    Cluster {
        gateway,
        prefill,
        decode,
    }
}

async fn post(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(s.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// KV bytes per prompt token: 2 (K, V) x layers x kv heads x head dim x 2 bytes (f16).
const KV_BYTES_PER_TOKEN: f64 = (2 * 30 * 3 * 64 * 2) as f64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prefill_two_decode_processes_answer_like_generate_and_move_exact_kv_bytes() {
    let c = cluster(&[]).await;
    let prompts = [
        "Name a planet of the solar system.",
        "What is the opposite of hot?",
        "Write one sentence about the sea.",
        "List two fruits.",
    ];
    let mut prompt_tokens = 0u64;
    for p in prompts {
        let want = genie_generate(&["--chat", "--prompt", p, "--max-tokens", "20"]);
        let (st, v) = post(
            &c.gateway,
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": p}], "max_tokens": 20, "temperature": 0}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], want["text"], "{p}");
        prompt_tokens += v["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    // Least-loaded routing with rotating ties spreads the work over both pairs.
    let mut moved = 0.0;
    let mut used_prefill = 0;
    for p in &c.prefill {
        let b = p
            .metric("genie_kv_transfer_bytes_total", &["transport=\"tcp\""])
            .await;
        used_prefill += (b > 0.0) as usize;
        moved += b;
    }
    // A decode worker that kept an earlier prompt (its prefix cache) is sent only the
    // rest: the chat template's opening block is common to all four.
    let mut held = 0.0;
    for d in &c.decode {
        held += d.metric("genie_prefix_cache_hit_tokens_total", &[]).await;
    }
    assert!(held % 16.0 == 0.0, "whole blocks: {held}");
    assert_eq!(
        moved,
        KV_BYTES_PER_TOKEN * (prompt_tokens as f64 - held),
        "KV bytes moved over TCP"
    );
    assert_eq!(used_prefill, 2, "both prefill workers took requests");
    // The gateway's plan shows the registered processes in its pools, and a request's
    // plan names the worker processes and the transfer that ran it.
    let plan: Value = reqwest::get(c.gateway.url("/v1/plans"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let edge = &plan["edges"][0];
    assert_eq!(
        (edge["tensor"]["name"].as_str(), edge["transport"].as_str()),
        (Some("kv_cache"), Some("tcp")),
        "{plan}"
    );
    let pools: Vec<(String, String)> = plan["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["role"].as_str().unwrap().to_string(),
                w["pool"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        pools
            .iter()
            .filter(|(r, p)| r == "prefill" && p == "prefill")
            .count(),
        2,
        "{plan}"
    );
    assert_eq!(
        pools
            .iter()
            .filter(|(r, p)| r == "decode" && p == "decode")
            .count(),
        2,
        "{plan}"
    );
    let recent: Value = reqwest::get(c.gateway.url("/v1/plans/requests?limit=1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seq = &recent["data"][0]["sequences"][0];
    assert_eq!(seq["placement"]["kind"], "disaggregated", "{recent}");
    assert!(seq["transfer_id"].is_u64(), "{recent}");
    // An echoed prompt's logprobs come from the prefill process, across the gateway: the
    // first token has none, and " Paris" scored in the prompt is what generating it after
    // the shorter prompt gives.
    let (st, v) = post(
        &c.gateway,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "The capital of France is Paris", "echo": true,
               "logprobs": 1, "max_tokens": 1, "temperature": 0}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        tokens[..6],
        ["The", " capital", " of", " France", " is", " Paris"]
    );
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
    let (st, w) = post(
        &c.gateway,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "The capital of France is", "logprobs": 1,
               "max_tokens": 1, "temperature": 0}),
    )
    .await;
    assert_eq!(st, 200, "{w}");
    assert_eq!(w["choices"][0]["text"], " Paris");
    let (scored, generated) = (
        lp["token_logprobs"][5].as_f64().unwrap(),
        w["choices"][0]["logprobs"]["token_logprobs"][0]
            .as_f64()
            .unwrap(),
    );
    assert!((scored - generated).abs() < 2e-3, "{scored} vs {generated}");
    // A sequence's KV is freed at the end of the step that sent its last token, which can
    // be just after the client has its answer.
    wait_for("decode KV back to 0", async || {
        total(&c.decode, "genie_kv_cache_used_bytes").await == 0.0
    })
    .await;
}

/// Streams one request; returns Ok(completion text) or Err(error message), never hangs.
async fn stream_one(url: String, i: usize) -> Result<String, String> {
    let body = json!({"model": MODEL, "stream": true, "max_tokens": 400, "temperature": 0.8, "seed": i,
                      "logit_bias": {"2": -100},
                      "messages": [{"role": "user", "content": format!("Tell me a long story number {i}.")}]});
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await;
    let r = r.map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let mut s = r.bytes_stream();
    let mut all = String::new();
    while let Some(b) = s.next().await {
        all.push_str(&String::from_utf8_lossy(&b.map_err(|e| e.to_string())?));
    }
    if all.contains("\"error\"") {
        return Err("error event".into());
    }
    assert!(
        all.trim_end().ends_with("data: [DONE]"),
        "stream ended without [DONE]"
    );
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_migration_off_killing_workers_mid_batch_fails_requests_cleanly_and_leaks_no_kv() {
    let mut c = cluster(&[("GENIE_SCHEDULER__MIGRATION_LIMIT", "0")]).await;
    let url = c.gateway.url.clone();
    let tasks: Vec<_> = (0..8)
        .map(|i| tokio::spawn(stream_one(url.clone(), i)))
        .collect();
    // Let the batch get going on both decode workers, then kill one worker of each role.
    wait_for("sequences running", async || {
        let mut running = 0.0;
        for d in &c.decode {
            running += d.metric("genie_num_requests_running", &[]).await;
        }
        running >= 2.0
    })
    .await;
    c.prefill[0].kill();
    c.decode[0].kill();
    let t0 = Instant::now();
    let mut ok = 0;
    let mut failed = 0;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(120), t).await {
            Ok(Ok(Ok(_))) => ok += 1,
            Ok(Ok(Err(_))) => failed += 1,
            Ok(Err(e)) => panic!("request task panicked: {e}"),
            Err(_) => panic!("a request hung after workers were killed"),
        }
    }
    println!(
        "after the kills: {ok} completed, {failed} failed cleanly, in {:?}",
        t0.elapsed()
    );
    assert_eq!(ok + failed, 8);
    // The dead workers are noticed; the survivors hold no KV; new requests still work.
    wait_for("dead workers marked unhealthy", async || {
        healthy(&c.gateway).await == 2
    })
    .await;
    wait_for("KV freed on the surviving decode worker", async || {
        c.decode[1].metric("genie_kv_cache_used_bytes", &[]).await == 0.0
    })
    .await;
    let (st, v) = post(
        &c.gateway,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    // The worker frees the sequence's KV just after its last token reaches the gateway, so
    // the response can arrive first: wait for the release rather than race it.
    wait_for("KV freed after a new request", async || {
        c.decode[1].metric("genie_kv_cache_used_bytes", &[]).await == 0.0
    })
    .await;
}

/// One streamed chat completion's text and the number of chunks it came in.
async fn stream_text(url: &str, body: &Value) -> Result<String, String> {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let mut s = r.bytes_stream();
    let mut raw = String::new();
    while let Some(b) = s.next().await {
        raw.push_str(&String::from_utf8_lossy(&b.map_err(|e| e.to_string())?));
    }
    let mut text = String::new();
    for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            return Ok(text);
        }
        let v: Value = serde_json::from_str(data).map_err(|e| format!("{e}: {data}"))?;
        if v.get("error").is_some() {
            return Err(format!("error event: {v}"));
        }
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    Err("stream ended without [DONE]".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_on_killed_workers_move_and_continue_token_for_token() {
    let mut c = cluster(&[]).await;
    let url = c.gateway.url.clone();
    // Two greedy and two seeded sampled requests, long enough to be cut mid-stream.
    let bodies: Vec<Value> = (0..4)
        .map(|i| {
            let sampling = if i % 2 == 0 {
                json!({"temperature": 0})
            } else {
                json!({"temperature": 0.8, "seed": 100 + i})
            };
            let mut b = json!({"model": MODEL, "stream": true, "max_tokens": 160,
                "logit_bias": {"2": -100},
                "messages": [{"role": "user", "content": format!("Tell me a long story about the number {i}.")}]});
            b.as_object_mut()
                .unwrap()
                .extend(sampling.as_object().unwrap().clone());
            b
        })
        .collect();
    let run_all = || {
        bodies
            .iter()
            .map(|b| {
                let (url, b) = (url.clone(), b.clone());
                tokio::spawn(async move { stream_text(&url, &b).await })
            })
            .collect::<Vec<_>>()
    };
    let mut want = Vec::new();
    for t in run_all() {
        want.push(t.await.unwrap().expect("the uninterrupted run"));
    }
    // Again, and kill -9 one worker of each role once every stream has its first token
    // and both decode workers run sequences.
    let ttft = "genie_time_to_first_token_seconds_count";
    let before = c.gateway.metric(ttft, &[]).await;
    let tasks = run_all();
    wait_for("every stream under way", async || {
        c.gateway.metric(ttft, &[]).await >= before + 4.0
    })
    .await;
    // The decode worker running the most of them dies, and a prefill worker with it.
    let mut running = Vec::new();
    for d in &c.decode {
        running.push(d.metric("genie_num_requests_running", &[]).await);
    }
    let (victim, survivor) = if running[0] >= running[1] {
        (0, 1)
    } else {
        (1, 0)
    };
    assert!(running[victim] >= 1.0, "nothing runs: {running:?}");
    c.prefill[0].kill();
    c.decode[victim].kill();
    for (i, t) in tasks.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(180), t)
            .await
            .expect("a moved request hung")
            .unwrap();
        assert_eq!(got.as_deref(), Ok(want[i].as_str()), "request {i}");
    }
    let moved = c
        .gateway
        .metric("genie_request_migrations_total", &["outcome=\"migrated\""])
        .await;
    assert!(moved >= 1.0, "no sequence was moved ({moved})");
    println!("{moved} sequence(s) moved after kill -9, every stream token for token");
    wait_for("KV freed on the surviving decode worker", async || {
        c.decode[survivor]
            .metric("genie_kv_cache_used_bytes", &[])
            .await
            == 0.0
    })
    .await;
}

/// Requests sent to a prefill worker that froze (SIGSTOP: its connections stay open,
/// nothing answers) are placed again once it misses its heartbeats, not left hanging
/// until a transfer timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_a_frozen_prefill_worker_move_within_the_heartbeat_timeout() {
    // Heartbeats every 200 ms: unhealthy after 3 missed.
    let c = cluster(&[("GENIE_WORKERS__HEARTBEAT_MS", "200")]).await;
    c.prefill[0].signal("STOP");
    let url = c.gateway.url.clone();
    let t0 = Instant::now();
    // Four at once: placement still counts the frozen worker healthy, so some go to it.
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let body = json!({"model": MODEL, "stream": true, "max_tokens": 8, "temperature": 0,
                    "messages": [{"role": "user", "content": format!("Say hello to friend {i}.")}]});
                stream_text(&url, &body).await
            })
        })
        .collect();
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a request on the frozen worker hung")
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    let took = t0.elapsed();
    println!("4 requests with one prefill worker frozen: {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    c.prefill[0].signal("CONT");
}

/// A caller that reserves KV on a decode worker (`POST /internal/decode`) and goes away
/// before any KV arrives gets its reservation released within seconds (the keep-alive
/// line is how the worker notices), not at the transfer's first-layer deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_reservation_whose_caller_left_is_released_within_seconds() {
    use genie_engine::sampling::{Sampler, SamplingParams};
    use genie_protocol::worker::DecodeRequest;
    let d = worker_standalone("decode-worker");
    let req = DecodeRequest {
        seq: genie_protocol::SeqId(1),
        transfer: genie_protocol::TransferId(1),
        prompt_tokens: 4000,
        prompt: None,
        prompt_ids: vec![1; 4000],
        max_tokens: 4000,
        stop_token_ids: Vec::new(),
        sampler: serde_json::to_value(Sampler::new(SamplingParams::greedy(), 1)).unwrap(),
    };
    let r = support::signed(
        reqwest::Client::new()
            .post(d.url("/internal/decode"))
            .json(&req),
    )
    .await;
    assert_eq!(r.status(), 200);
    let held = d.metric("genie_kv_cache_used_bytes", &[]).await;
    // Paged: the prompt's blocks and the first generated token's, not prompt + max_tokens.
    assert_eq!(
        held,
        4016.0 * KV_BYTES_PER_TOKEN,
        "the blocks of prompt + 1 taken"
    );
    drop(r);
    let t0 = Instant::now();
    wait_for("the reservation released", async || {
        d.metric("genie_kv_cache_used_bytes", &[]).await == 0.0
    })
    .await;
    let took = t0.elapsed();
    println!("reservation of a departed caller released after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statically_listed_workers_are_polled_and_serve() {
    let (p, d) = (
        worker_standalone("prefill-worker"),
        worker_standalone("decode-worker"),
    );
    let d_status: Value = support::signed(reqwest::Client::new().get(d.url("/internal/status")))
        .await
        .json()
        .await
        .unwrap();
    assert!(d_status["kv_capacity_bytes"].as_u64().unwrap() > 0);
    let dir = std::env::temp_dir().join(format!("genie-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("static.toml");
    std::fs::write(
        &cfg,
        format!(
            "[workers]\nheartbeat_ms = 200\nstatic = [\n  {{ role = \"prefill\", address = \"{}\" }},\n  {{ role = \"decode\", address = \"{}\", kv_endpoint = \"{}\" }},\n]\n",
            p.url,
            d.url,
            d.kv_endpoint.clone().expect("decode workers print their KV endpoint")
        ),
    )
    .unwrap();
    let gw = Server::gateway(&["--config", cfg.to_str().unwrap()], &[]);
    wait_for("2 healthy static workers", async || healthy(&gw).await == 2).await;
    assert!(workers(&gw).await.iter().all(|w| w["source"] == "static"));
    let (st, v) = post(
        &gw,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], " Paris.\n\nThe United States has");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sum of a metric over a set of processes.
async fn total(servers: &[Server], name: &str) -> f64 {
    let mut sum = 0.0;
    for s in servers {
        sum += s.metric(name, &[]).await;
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_both_legs_and_frees_kv_on_both() {
    let c = cluster(&[]).await;
    let client = reqwest::Client::new();

    // Mid-decode: read a few chunks of a long stream, then hang up.
    let body = json!({"model": MODEL, "stream": true, "max_tokens": 4000, "logit_bias": {"2": -100},
                      "messages": [{"role": "user", "content": "Tell me a very long story."}]});
    let r = client
        .post(c.gateway.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut s = r.bytes_stream();
    for _ in 0..4 {
        s.next().await.unwrap().unwrap();
    }
    assert!(total(&c.decode, "genie_kv_cache_used_bytes").await > 0.0);
    drop(s);
    let t0 = Instant::now();
    wait_for(
        "decode KV and running back to 0 after the hang-up",
        async || {
            total(&c.decode, "genie_kv_cache_used_bytes").await == 0.0
                && total(&c.decode, "genie_num_requests_running").await == 0.0
        },
    )
    .await;
    println!(
        "mid-decode hang-up: decode KV freed {:?} after it",
        t0.elapsed()
    );

    // Mid-prefill: a long prompt; hang up once both legs hold KV for it. The prefill
    // worker notices at its next layer: it aborts the transfer (the decode worker drops
    // the reservation) and, nobody else being in its batch, stops computing.
    let prompt: Vec<u32> = (0..1500u32).map(|i| 100 + (i * 37) % 40000).collect();
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 50, "stream": true});
    let r = client
        .post(c.gateway.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for("both legs holding KV", async || {
        total(&c.prefill, "genie_kv_cache_used_bytes").await > 0.0
            && total(&c.decode, "genie_kv_cache_used_bytes").await > 0.0
    })
    .await;
    drop(r);
    let t0 = Instant::now();
    wait_for("decode reservation dropped", async || {
        total(&c.decode, "genie_kv_cache_used_bytes").await == 0.0
    })
    .await;
    let decode_freed = t0.elapsed();
    wait_for("prefill KV freed", async || {
        total(&c.prefill, "genie_kv_cache_used_bytes").await == 0.0
    })
    .await;
    println!(
        "mid-prefill hang-up: decode KV freed after {decode_freed:?}, prefill KV after {:?}",
        t0.elapsed()
    );
    assert_eq!(
        total(&c.prefill, "genie_prefill_cancelled_total").await,
        1.0,
        "the prefill should have been cancelled between layers, not run to its end"
    );
    // The same without streaming: the hang-up is noticed while the handler still waits.
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 50});
    let url = c.gateway.url("/v1/completions");
    let pending =
        tokio::spawn(async move { reqwest::Client::new().post(url).json(&body).send().await });
    wait_for("both legs holding KV (non-streaming)", async || {
        total(&c.prefill, "genie_kv_cache_used_bytes").await > 0.0
            && total(&c.decode, "genie_kv_cache_used_bytes").await > 0.0
    })
    .await;
    pending.abort();
    let t0 = Instant::now();
    wait_for("both legs free after a non-streaming hang-up", async || {
        total(&c.prefill, "genie_kv_cache_used_bytes").await == 0.0
            && total(&c.decode, "genie_kv_cache_used_bytes").await == 0.0
    })
    .await;
    println!(
        "non-streaming hang-up: KV freed on both after {:?}",
        t0.elapsed()
    );
    assert_eq!(
        total(&c.prefill, "genie_prefill_cancelled_total").await,
        2.0
    );

    // Nothing is left behind: the next request is served.
    let (st, v) = post(
        &c.gateway,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_marked_unhealthy_forgotten_and_readmitted_when_it_returns() {
    // Heartbeats every 100 ms: unhealthy after 3 missed, forgotten after 10.
    let c = cluster(&[("GENIE_WORKERS__HEARTBEAT_MS", "100")]).await;
    c.decode[0].signal("STOP");
    wait_for("the frozen worker marked unhealthy", async || {
        healthy(&c.gateway).await == 3
    })
    .await;
    wait_for("the frozen worker forgotten", async || {
        workers(&c.gateway).await.len() == 3
    })
    .await;
    // Requests meanwhile go to the healthy pair.
    let ask = json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4});
    let (st, v) = post(&c.gateway, "/v1/chat/completions", ask.clone()).await;
    assert_eq!(st, 200, "{v}");
    c.decode[0].signal("CONT");
    wait_for("the returning worker re-admitted", async || {
        healthy(&c.gateway).await == 4
    })
    .await;
    assert_eq!(workers(&c.gateway).await.len(), 4);
    let (st, v) = post(&c.gateway, "/v1/chat/completions", ask).await;
    assert_eq!(st, 200, "{v}");
}

/// SIGTERM is an orderly shutdown for every role: the HTTP server drains, the spawned
/// loops (heartbeats, KV receiver, registry upkeep, metrics upkeep) stop, the worker
/// threads are joined, and the process exits 0 on its own.
#[tokio::test]
async fn sigterm_stops_each_role_in_order() {
    let mut gateway = Server::gateway(&["--colocated"], &[]);
    let mut decode = worker("decode-worker", &gateway.url, &[]);
    wait_for("a healthy decode worker", async || {
        healthy(&gateway).await == 1
    })
    .await;
    let (status, body) = post(
        &gateway,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "Hello", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    decode.signal("TERM");
    let s = decode.wait_exit(Duration::from_secs(30));
    assert!(s.is_some_and(|s| s.success()), "decode worker: {s:?}");
    gateway.signal("TERM");
    let s = gateway.wait_exit(Duration::from_secs(30));
    assert!(s.is_some_and(|s| s.success()), "gateway: {s:?}");
}

/// `kv_aware` routing across processes: once the workers' KV events (carried by their
/// heartbeats) tell the gateway where a prompt's blocks are, prompts that start the same
/// way go to those workers: the prefill worker computes only the rest, and the decode
/// worker, which kept the prompt it received, is sent only the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_aware_routing_sends_a_shared_prefix_where_its_blocks_are() {
    let c = cluster(&[("GENIE_SCHEDULER__ROUTING", "kv_aware")]).await;
    let base: Vec<u32> = (0..300u32).map(|i| 100 + (i * 37) % 40000).collect();
    let ask = async |tail: u32| {
        let mut prompt = base.clone();
        prompt.push(tail);
        let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0});
        let (st, v) = post(&c.gateway, "/v1/completions", body).await;
        assert_eq!(st, 200, "{v}");
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(ask(7).await, 0);
    wait_for("the gateway learning where the blocks are", async || {
        // 18 blocks on the prefill worker, 18 on the decode worker, stored or in a snapshot.
        c.gateway.metric("genie_kv_events_total", &[]).await >= 36.0
    })
    .await;
    for tail in [8, 9, 10, 11] {
        // 301 tokens: 18 whole blocks reusable, the 301st computed for its logits.
        assert_eq!(ask(tail).await, 288, "tail {tail}");
    }
    let mut hits = Vec::new();
    let mut moved = 0.0;
    for p in &c.prefill {
        hits.push(p.metric("genie_prefix_cache_hit_tokens_total", &[]).await);
        moved += p
            .metric("genie_kv_transfer_bytes_total", &["transport=\"tcp\""])
            .await;
    }
    hits.sort_by(f64::total_cmp);
    assert_eq!(
        hits,
        vec![0.0, 4.0 * 288.0],
        "one prefill worker took them all"
    );
    assert_eq!(
        moved,
        KV_BYTES_PER_TOKEN * (301.0 + 4.0 * 13.0),
        "after the first, only the 13 tokens past the decode worker's blocks cross"
    );
}

/// Between two heartbeats a worker's status is as old as the beat. The gateway counts the
/// sequences it placed since, until a status includes them or they end, so a decode worker
/// still running a long sequence is not taken for idle by the requests that follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_counts_its_own_sequences_between_heartbeats() {
    // No beat in the test's span after the registrations: every status is the first one.
    let c = cluster(&[("GENIE_WORKERS__HEARTBEAT_MS", "30000")]).await;
    let http = reqwest::Client::new();
    let decode_of = async |id: &str| {
        let p: Value = reqwest::get(c.gateway.url(&format!("/v1/plans/requests/{id}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        p["sequences"][0]["placement"]["decode"].as_u64().unwrap()
    };
    // A completion's response (checked 200) and its request id.
    let complete = async |body: Value| {
        let r = http
            .post(c.gateway.url("/v1/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-genie-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        (r, id)
    };
    // A long sequence, streamed: placed once its response starts.
    let (long, long_id) = complete(json!({"model": MODEL, "prompt": "Count slowly:",
        "max_tokens": 400, "ignore_eos": true, "temperature": 0, "stream": true}))
    .await;
    let busy = decode_of(&long_id).await;
    // Short requests one after another while it runs: each goes to the other decode
    // worker (least loaded; ties would rotate, putting every other one beside it).
    for i in 0..3 {
        let (r, id) = complete(json!({"model": MODEL, "prompt": format!("Say {i}."),
            "max_tokens": 2, "temperature": 0}))
        .await;
        let _ = r.bytes().await.unwrap();
        assert_ne!(decode_of(&id).await, busy, "short request {i}");
    }
    let body = long.text().await.unwrap();
    assert!(body.contains("[DONE]"), "{body}");
}
