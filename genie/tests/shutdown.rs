//! Orderly shutdown as an operator sees it: SIGTERM lets streams in flight finish while
//! new requests get 503 + `Retry-After`; past `--drain-timeout`, or at a second signal,
//! the open streams get an error event and `[DONE]`; the process exits 0. A draining
//! worker deregisters and refuses new sequences with its typed `stopped` refusal.

mod support;

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{Server, MODEL};

/// Starts a streamed completion of `max_tokens` tokens and returns a task that reads it
/// to its end (its `data:` payloads), once its first chunk is out.
async fn open_stream(s: &Server, max_tokens: u64) -> tokio::task::JoinHandle<Vec<String>> {
    let r = reqwest::Client::new()
        .post(s.url("/v1/completions"))
        .json(
            &json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": max_tokens,
                      "stream": true, "ignore_eos": true, "temperature": 0}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    tokio::spawn(async move {
        let mut buf = String::from_utf8_lossy(&first).into_owned();
        while let Some(b) = stream.next().await {
            match b {
                Ok(b) => buf.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => break,
            }
        }
        buf.split("\n\n")
            .filter_map(|e| e.trim().strip_prefix("data: ").map(String::from))
            .collect()
    })
}

/// Polls `GET /v1/models` on fresh connections until it answers 503 (the drain began);
/// checks the refusal's `Retry-After` and envelope.
async fn wait_for_refusal(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let r = c.get(s.url("/v1/models")).send().await.unwrap();
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "1");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "unavailable", "{v}");
            return;
        }
        assert!(Instant::now() < deadline, "no 503 while draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn finished_normally(events: &[String]) -> bool {
    events.last().map(String::as_str) == Some("[DONE]")
        && events
            .iter()
            .any(|e| e.contains("\"finish_reason\":\"length\""))
        && !events.iter().any(|e| e.contains("\"error\""))
}

fn cut_with_an_error_event(events: &[String]) -> bool {
    let n = events.len();
    n >= 2
        && events[n - 1] == "[DONE]"
        && serde_json::from_str::<Value>(&events[n - 2])
            .is_ok_and(|v| v["error"]["code"] == "unavailable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_requests_and_lets_open_streams_finish() {
    let mut s = Server::start(&["--threads", "1"], &[]);
    let a = open_stream(&s, 160).await;
    let b = open_stream(&s, 160).await;
    s.signal("TERM");
    wait_for_refusal(&s).await;
    for t in [a, b] {
        let events = t.await.unwrap();
        assert!(finished_normally(&events), "{events:?}");
    }
    let status = s.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|st| st.success()), "{status:?}");
}

/// The regression: 4 streams of 4,000 tokens and SIGTERM. With a 2 s drain
/// deadline every stream gets an error event then `[DONE]`, and the process exits 0
/// soon after the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_drain_deadline_open_streams_get_an_error_event_and_the_process_exits_0() {
    let mut s = Server::start(&["--threads", "1", "--drain-timeout", "2"], &[]);
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(open_stream(&s, 4000).await);
    }
    let t = Instant::now();
    s.signal("TERM");
    for st in streams {
        let events = st.await.unwrap();
        assert!(
            cut_with_an_error_event(&events),
            "{:?}",
            &events[events.len().saturating_sub(3)..]
        );
    }
    let status = s.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|st| st.success()), "{status:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(12),
        "{took:?}"
    );
}

/// A second SIGTERM ends the drain at once, long before its 120 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_drain_at_once() {
    let mut s = Server::start(&["--threads", "1", "--drain-timeout", "120"], &[]);
    let a = open_stream(&s, 4000).await;
    let t = Instant::now();
    s.signal("TERM");
    wait_for_refusal(&s).await;
    s.signal("INT");
    let events = a.await.unwrap();
    assert!(
        cut_with_an_error_event(&events),
        "{:?}",
        &events[events.len().saturating_sub(3)..]
    );
    let status = s.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|st| st.success()), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// A decode worker given SIGTERM with a stream on it: it deregisters (the gateway lists
/// it no more, long before missed heartbeats would drop it), refuses a new sequence with
/// `stopped`, lets the stream finish, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_deregisters_refuses_new_sequences_and_finishes_its_streams() {
    let gateway = Server::gateway(&[], &[("GENIE_WORKERS__HEARTBEAT_MS", "1000")]);
    let args = |role: &'static str| {
        vec![
            role,
            "--gateway",
            gateway.url.as_str(),
            "--threads",
            "1",
            "--drain-timeout",
            "60",
        ]
    };
    let _prefill = Server::spawn(&args("prefill-worker"), &[]);
    let mut decode = Server::spawn(&args("decode-worker"), &[]);
    let http = reqwest::Client::new();
    let listed = |v: &[Value], role: &str| v.iter().filter(|w| w["role"] == role).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = support::workers_via(&http, &gateway).await;
        let h: reqwest::StatusCode = http
            .get(gateway.url("/health"))
            .send()
            .await
            .unwrap()
            .status();
        if listed(&v, "decode") == 1 && listed(&v, "prefill") == 1 && h == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "workers did not register: {v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stream = open_stream(&gateway, 160).await;
    let t = Instant::now();
    decode.signal("TERM");
    loop {
        let v = support::workers_via(&http, &gateway).await;
        if listed(&v, "decode") == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "still listed: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http
        .post(decode.url("/internal/decode"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "stopped", "{v}");
    let events = stream.await.unwrap();
    assert!(finished_normally(&events), "{events:?}");
    let status = decode.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|st| st.success()), "{status:?}");
}
