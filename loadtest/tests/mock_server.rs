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
}

async fn chat(State(m): State<MockOpenAi>, flaky: bool, Json(req): Json<Value>) -> Response {
    let n = m.calls.fetch_add(1, Ordering::SeqCst);
    if flaky && n % 2 == 1 {
        let e = json!({"error": {"message": "overloaded", "type": "server_error", "param": null, "code": null}});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(e)).into_response();
    }
    let max = req["max_tokens"].as_u64().unwrap_or(4);
    let prompt_words = req["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .count();
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
    let m = MockOpenAi::default();
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
