//! The HTTP edge of `genie serve` probed as an attacker or a careless client would: every
//! error in the OpenAI envelope, `Retry-After` on 429 and 503, idle connections with
//! partial headers closed, a connection cap with a clear refusal, a stalled body timed out.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{Server, MODEL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(s: &Server) -> String {
    s.url.trim_start_matches("http://").to_string()
}

/// Reads what the server sends until it closes the connection (at most `limit`); `None`
/// if it was still open then.
async fn read_until_closed(c: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let r = tokio::time::timeout(limit, c.read_to_end(&mut buf)).await;
    match r {
        Ok(_) => Some(String::from_utf8_lossy(&buf).into_owned()),
        Err(_) => None,
    }
}

fn envelope_of(v: &Value) -> &Value {
    let e = &v["error"];
    assert!(e["message"].is_string(), "not the envelope: {v}");
    assert!(e["type"].is_string(), "not the envelope: {v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_edge_error_is_an_envelope_and_stalled_connections_are_closed() {
    let s = Server::start(
        &["--threads", "1"],
        &[
            ("GENIE_SERVER__HEADER_READ_TIMEOUT_SECS", "1"),
            ("GENIE_SERVER__BODY_READ_TIMEOUT_SECS", "1"),
            ("GENIE_LIMITS__MAX_WAITING", "2"),
            ("GENIE_LIMITS__MAX_BODY_BYTES", "65536"),
        ],
    );
    let http = reqwest::Client::new();

    // A body over the limit: a JSON 413, not axum's plain text.
    let big = "x".repeat(100_000);
    let r = http
        .post(s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"{big}\"}}]}}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(envelope_of(&v)["code"], "request_too_large", "{v}");

    // A wrong method: a JSON 405 with `Allow` naming what is allowed, not an empty body.
    let r = http
        .get(s.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let v: Value = r.json().await.unwrap();
    assert_eq!(envelope_of(&v)["code"], "method_not_allowed", "{v}");
    let m = envelope_of(&v)["message"].as_str().unwrap().to_string();
    assert!(!m.contains("allowed: )"), "an empty list in {m}");

    // 10,000 nested arrays: a 400 in the envelope, no stack overflow, no 5xx.
    let nested = format!(
        "{{\"model\":\"{MODEL}\",\"messages\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let r = http
        .post(s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(nested)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    envelope_of(&v);

    // A 429 carries Retry-After.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 4, "n": 3});
    let r = http
        .post(s.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    envelope_of(&r.json().await.unwrap());

    // A body that stops arriving: 408 in the envelope once the body timeout passes.
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let t = Instant::now();
    let answer = read_until_closed(&mut c, Duration::from_secs(10))
        .await
        .expect("the stalled body is answered and the connection closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // Connections that send part of their headers and stall are closed after the
    // header timeout (1 s here).
    let mut partial = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        partial.push(c);
    }
    let t = Instant::now();
    for c in &mut partial {
        assert!(
            read_until_closed(c, Duration::from_secs(10))
                .await
                .is_some(),
            "a connection with partial headers stayed open"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    drop(partial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_one_503_envelope_and_are_closed() {
    let s = Server::start(
        &["--threads", "1"],
        &[("GENIE_SERVER__MAX_CONNECTIONS", "3")],
    );
    // Three open connections take every slot (they send nothing: the 10 s header timeout
    // has not passed); the fourth gets one 503 in the envelope with Retry-After and is
    // closed. The slots free again when they go.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr(&s)).await.unwrap());
    }
    let mut over = TcpStream::connect(addr(&s)).await.unwrap();
    let answer = read_until_closed(&mut over, Duration::from_secs(5))
        .await
        .expect("a connection past the cap is answered and closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(envelope_of(&v)["code"], "too_many_connections");
    drop(held);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match http.get(s.url("/v1/models")).send().await {
            Ok(r) if r.status() == 200 => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("slots were not freed: {other:?}"),
        }
    }
}
