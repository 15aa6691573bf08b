//! `genie-loadtest` against `MockOpenAi`, a stand-in OpenAI server with known timing
//! (first token after 80 ms, then one every 20 ms) and, under `/flaky`, every second request
//! refused: the figures and the exit status must follow.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TTFT: Duration = Duration::from_millis(80);
const ITL: Duration = Duration::from_millis(20);

#[derive(Clone, Default)]
struct MockOpenAi {
    calls: Arc<AtomicUsize>,
    /// Every request body received, in order.
    bodies: Arc<std::sync::Mutex<Vec<Value>>>,
}

async fn chat(State(m): State<MockOpenAi>, flaky: bool, Json(req): Json<Value>) -> Response {
    let n = m.calls.fetch_add(1, Ordering::SeqCst);
    m.bodies.lock().unwrap().push(req.clone());
    if flaky && n % 2 == 1 {
        let e = json!({"error": {"message": "overloaded", "type": "server_error", "param": null, "code": null}});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(e)).into_response();
    }
    let max = req["max_tokens"].as_u64().unwrap_or(4);
    let prompt_words: usize = req["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            m["content"]
                .as_str()
                .unwrap_or("")
                .split_whitespace()
                .count()
        })
        .sum();
    let stream = async_stream(max, prompt_words as u64);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn async_stream(
    max: u64,
    prompt: u64,
) -> impl futures_util::Stream<Item = Result<String, std::convert::Infallible>> {
    futures_util::stream::unfold(0u64, move |i| async move {
        if i > max + 1 {
            return None;
        }
        let ev = if i < max {
            tokio::time::sleep(if i == 0 { TTFT } else { ITL }).await;
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": "tok"}}]})
            )
        } else if i == max {
            format!(
                "data: {}\n\n",
                json!({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": max}})
            )
        } else {
            "data: [DONE]\n\n".to_string()
        };
        Some((Ok(ev), i + 1))
    })
}

async fn start() -> String {
    start_with(MockOpenAi::default()).await
}

async fn start_with(m: MockOpenAi) -> String {
    let app = Router::new()
        .route(
            "/v1/models",
            get(|| async { Json(json!({"data": [{"id": "mock-model"}]})) }),
        )
        .route("/v1/chat/completions", post(|s, b| chat(s, false, b)))
        .route("/flaky/v1/chat/completions", post(|s, b| chat(s, true, b)))
        .with_state(m);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Runs `genie-loadtest` off the async runtime (the mock server lives on it); returns
/// whether it succeeded, its output, and its JSON report.
async fn loadtest(args: &[&str]) -> (bool, String, Value) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || run_binary(&args))
        .await
        .unwrap()
}

fn run_binary(args: &[String]) -> (bool, String, Value) {
    let dir = std::env::temp_dir().join(format!(
        "genie-loadtest-{}-{}",
        std::process::id(),
        args.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join(format!(
        "{}.json",
        args.join("_").replace(['/', ':', '.'], "-")
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie-loadtest"))
        .args(args)
        .args(["--json", json_path.to_str().unwrap(), "--no-progress"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read(&json_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (out.status.success(), text, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_figures_follow_the_server_timing() {
    let url = start().await;
    let (ok, text, r) = loadtest(&[
        "--url",
        &url,
        "--concurrency",
        "3",
        "--requests",
        "9",
        "--input-tokens",
        "17",
        "--output-tokens",
        "6",
        "--slo-ttft-ms",
        "5000",
    ])
    .await;
    assert!(ok, "{text}");
    let s = &r["summary"];
    assert_eq!(s["completed"], 9, "{text}");
    assert_eq!(
        r["config"]["model"], "mock-model",
        "the model comes from /v1/models"
    );
    assert_eq!(s["mean_output_tokens"], 6.0);
    assert_eq!(
        s["mean_prompt_tokens"], 17.0,
        "17 words asked, the mock counts words"
    );
    let ttft = s["ttft"]["p50_ms"].as_f64().unwrap();
    assert!(
        (80.0..400.0).contains(&ttft),
        "TTFT p50 {ttft} ms for an 80 ms server"
    );
    let itl = s["itl"]["p50_ms"].as_f64().unwrap();
    assert!(
        (20.0..150.0).contains(&itl),
        "ITL p50 {itl} ms for a 20 ms server"
    );
    assert_eq!(s["itl"]["count"], 9 * 5, "five gaps per six-token answer");
    assert_eq!(s["goodput"]["met"], 9);
    assert!(
        text.contains("| TTFT |"),
        "markdown summary on stdout: {text}"
    );
    // Every row of the latency table has as many cells as its header.
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("| latency"))
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert_eq!(table.len(), 6, "{text}");
    let cells = |l: &str| l.matches('|').count();
    assert!(table.iter().all(|l| cells(l) == cells(table[0])), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_and_fail_the_run_past_the_threshold() {
    let url = format!("{}/flaky", start().await);
    let (ok, text, r) = loadtest(&[
        "--url",
        &url,
        "--model",
        "m",
        "--requests",
        "6",
        "--output-tokens",
        "3",
        "--warmup",
        "0",
    ])
    .await;
    assert!(
        !ok,
        "half the requests failed, the default threshold is 0: {text}"
    );
    assert!(text.contains("error rate 50.00 %"), "{text}");
    assert_eq!(r["summary"]["failed"], 3);
    assert!(text.contains("3 x HTTP 503: overloaded"), "{text}");
    let (ok, text, _) = loadtest(&[
        "--url",
        &url,
        "--model",
        "m",
        "--requests",
        "6",
        "--output-tokens",
        "3",
        "--warmup",
        "0",
        "--max-error-rate",
        "0.6",
    ])
    .await;
    assert!(ok, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_at_the_asked_rate_whatever_the_server_pace() {
    let url = start().await;
    let (ok, text, r) = loadtest(&[
        "--url",
        &url,
        "--rate",
        "40",
        "--requests",
        "20",
        "--output-tokens",
        "10",
        "--seed",
        "7",
    ])
    .await;
    assert!(ok, "{text}");
    let s = &r["summary"];
    assert_eq!(s["completed"], 20);
    // Each request takes 80 + 9 x 20 = 260 ms; at 40 req/s about ten are in flight at once,
    // so the run lasts about 0.5 s of arrivals + one request, not 20 x 260 ms.
    let d = s["duration_s"].as_f64().unwrap();
    assert!((0.3..3.0).contains(&d), "open loop took {d} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_is_replayed_with_its_arrivals_and_lengths() {
    let url = start().await;
    let trace = std::env::temp_dir().join(format!("genie-trace-{}.jsonl", std::process::id()));
    std::fs::write(
        &trace,
        "{\"arrival_s\": 0.0, \"input_tokens\": 5, \"output_tokens\": 2}\n\
         {\"arrival_s\": 0.3, \"input_tokens\": 9, \"output_tokens\": 4}\n\
         {\"arrival_s\": 0.6, \"input_tokens\": 7, \"output_tokens\": 6}\n",
    )
    .unwrap();
    let (ok, text, r) = loadtest(&["--url", &url, "--trace", trace.to_str().unwrap()]).await;
    assert!(ok, "{text}");
    let s = &r["summary"];
    assert_eq!(s["completed"], 3);
    assert_eq!(
        s["mean_output_tokens"], 4.0,
        "(2 + 4 + 6) / 3 from the trace"
    );
    assert_eq!(
        s["mean_prompt_tokens"], 7.0,
        "(5 + 9 + 7) / 3 words from the trace"
    );
    assert!(
        s["duration_s"].as_f64().unwrap() >= 0.6,
        "the last arrival is at 0.6 s"
    );
    let _ = std::fs::remove_file(&trace);
}

/// Multi-turn chat with a shared system prompt: each conversation's turns resend the whole
/// history with the mock's answers, and every request starts with the same system prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_conversations_resend_their_history_after_a_shared_system_prompt() {
    let mock = MockOpenAi::default();
    let url = start_with(mock.clone()).await;
    let (ok, text, r) = loadtest(&[
        "--url",
        &url,
        "--concurrency",
        "2",
        "--multi-turn",
        "3",
        "--requests",
        "6",
        "--shared-prefix-tokens",
        "10",
        "--input-tokens",
        "5",
        "--output-tokens",
        "2",
        "--warmup",
        "0",
    ])
    .await;
    assert!(ok, "{text}");
    assert!(text.contains("multi-turn chat, 2 conversations at a time, 3 turns each; a shared 10-token system prompt"), "{text}");
    let bodies = mock.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 6);
    let mut lengths: Vec<usize> = bodies
        .iter()
        .map(|b| b["messages"].as_array().unwrap().len())
        .collect();
    lengths.sort();
    // system + user; + the answer and a new user message per later turn.
    assert_eq!(lengths, [2, 2, 4, 4, 6, 6]);
    let system = &bodies[0]["messages"][0];
    assert_eq!(system["role"], "system");
    assert_eq!(
        system["content"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        10
    );
    for b in &bodies {
        let m = b["messages"].as_array().unwrap();
        assert_eq!(&m[0], system, "the same system prompt on every request");
        for (k, msg) in m.iter().enumerate().skip(1) {
            let role = if k % 2 == 1 { "user" } else { "assistant" };
            assert_eq!(msg["role"], role);
            if role == "assistant" {
                assert_eq!(msg["content"], "toktok", "the mock's answer, sent back");
            } else {
                assert_eq!(
                    msg["content"].as_str().unwrap().split_whitespace().count(),
                    5
                );
            }
        }
    }
    // A later turn starts with an earlier turn of the same conversation, word for word.
    let turn = |n: usize| {
        bodies
            .iter()
            .find(|b| b["messages"].as_array().unwrap().len() == n)
            .unwrap()
    };
    let t3 = turn(6)["messages"].as_array().unwrap();
    assert!(
        bodies
            .iter()
            .any(|b| b["messages"].as_array().unwrap()[..] == t3[..4]),
        "a third turn extends its own second turn"
    );
    // Prompt tokens from the server's usage: 10 + 5, then + 1 ("toktok") + 5 a turn:
    // (15 + 15 + 21 + 21 + 27 + 27) / 6.
    assert_eq!(r["summary"]["mean_prompt_tokens"], 21.0);
}

/// Trace lines with shared hash ids send prompts that share those blocks word for word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_hash_ids_make_shared_prefixes() {
    let mock = MockOpenAi::default();
    let url = start_with(mock.clone()).await;
    let trace = std::env::temp_dir().join(format!("genie-trace-ids-{}.jsonl", std::process::id()));
    std::fs::write(
        &trace,
        "{\"timestamp\": 0, \"input_length\": 12, \"output_length\": 2, \"hash_ids\": [7, 8]}\n\
         {\"timestamp\": 100, \"input_length\": 12, \"output_length\": 2, \"hash_ids\": [7, 9]}\n",
    )
    .unwrap();
    let (ok, text, _) = loadtest(&[
        "--url",
        &url,
        "--trace",
        trace.to_str().unwrap(),
        "--trace-block-tokens",
        "4",
        "--warmup",
        "0",
    ])
    .await;
    assert!(ok, "{text}");
    let bodies = mock.bodies.lock().unwrap().clone();
    let words = |b: &Value| -> Vec<String> {
        b["messages"][0]["content"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let (a, b) = (words(&bodies[0]), words(&bodies[1]));
    assert_eq!((a.len(), b.len()), (12, 12));
    assert_eq!(a[..4], b[..4], "block 7 is shared");
    assert_ne!(a[4..8], b[4..8], "blocks 8 and 9 differ");
    let _ = std::fs::remove_file(&trace);
}
