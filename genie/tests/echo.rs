//! Completions' `echo` with `logprobs`, as evaluation harnesses use it: the prompt comes
//! back with each of its tokens' logprobs given the tokens before it (the first `null`),
//! on every path (prefill and decode on separate workers, colocated, a prompt already in
//! the prefix caches, streaming), and they are the model's own: the logprobs a shorter
//! prompt's next token gets are the longer prompt's at that position.

mod support;

use serde_json::{json, Value};
use support::{post_json, post_stream, Server, MODEL};

const PROMPT: &str =
    "The capital of France is Paris. The capital of Spain is Madrid. The capital of Italy is";

/// One echoed prompt's logprobs entry: token text, logprob (None: the first) and its top
/// alternatives.
#[derive(Debug, Clone)]
struct Entry {
    token: String,
    logprob: Option<f64>,
    top: Vec<(String, f64)>,
}

/// The choice's logprobs as entries, after checking that they tile its `text`: the
/// tokens join into it and each offset is where its token starts.
fn entries(choice: &Value) -> Vec<Entry> {
    let text = choice["text"].as_str().unwrap();
    let lp = &choice["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    let offsets = lp["text_offset"].as_array().unwrap();
    let mut at = 0;
    let mut joined = String::new();
    let mut out = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let t = t.as_str().unwrap().to_string();
        assert_eq!(
            offsets[i].as_u64().unwrap(),
            at as u64,
            "offset of token {i}"
        );
        at += t.len();
        joined.push_str(&t);
        let mut top: Vec<(String, f64)> = lp["top_logprobs"][i]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        out.push(Entry {
            token: t,
            logprob: lp["token_logprobs"][i].as_f64(),
            top,
        });
    }
    assert_eq!(joined, text, "the tokens tile the text");
    out
}

/// The prompt's entries of an echoed choice, checked: the first has no logprob, every
/// other one a logprob no better than its best alternative's, and `k` alternatives.
fn prompt_entries(choice: &Value, prompt: &str, k: usize) -> Vec<Entry> {
    let all = entries(choice);
    assert!(choice["text"].as_str().unwrap().starts_with(prompt));
    let mut len = 0;
    let n = all
        .iter()
        .take_while(|e| {
            len += e.token.len();
            len <= prompt.len()
        })
        .count();
    assert_eq!(
        all[..n]
            .iter()
            .map(|e| e.token.as_str())
            .collect::<String>(),
        prompt,
        "the prompt's tokens come first"
    );
    let p = all[..n].to_vec();
    assert!(p[0].logprob.is_none() && p[0].top.is_empty(), "{:?}", p[0]);
    for e in &p[1..] {
        let lp = e.logprob.unwrap();
        assert!(lp <= 1e-6, "{e:?}");
        assert_eq!(e.top.len(), k, "{e:?}");
        assert!(lp <= e.top[0].1 + 1e-4, "{e:?}");
    }
    p
}

fn close(a: &[Entry], b: &[Entry], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.token, y.token, "{what}: token {i}");
        match (x.logprob, y.logprob) {
            (Some(p), Some(q)) => assert!((p - q).abs() < 2e-3, "{what}: token {i}: {p} vs {q}"),
            (None, None) => {}
            other => panic!("{what}: token {i}: {other:?}"),
        }
        for (s, t) in x.top.iter().zip(&y.top) {
            assert!(
                s.0 == t.0 && (s.1 - t.1).abs() < 2e-3,
                "{what}: token {i}: {s:?} vs {t:?}"
            );
        }
    }
}

async fn echo(s: &Server, prompt: &str, max_tokens: u32, disaggregate: bool) -> Value {
    let (st, v) = post_json(
        s,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": prompt, "echo": true, "logprobs": 3,
                "max_tokens": max_tokens, "temperature": 0,
                "genie": {"disaggregate": disaggregate}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_prompts_carry_their_own_logprobs_on_every_path() {
    let s = Server::start(&["--threads", "1"], &[]);
    // Disaggregated and colocated, each twice: the second time the prompt is in the
    // prefix caches, and its scores must still be computed, and be the same.
    let mut runs = Vec::new();
    for disaggregate in [true, false] {
        for _ in 0..2 {
            let v = echo(&s, PROMPT, 4, disaggregate).await;
            let c = &v["choices"][0];
            let p = prompt_entries(c, PROMPT, 3);
            // The generated tokens follow with their logprobs, offsets past the prompt.
            let all = entries(c);
            assert_eq!(all.len() - p.len(), 4, "{c}");
            assert!(all[p.len()..].iter().all(|e| e.logprob.is_some()));
            runs.push(p);
        }
    }
    for (i, r) in runs.iter().enumerate().skip(1) {
        close(&runs[0], r, &format!("run {i}"));
    }
    let full = &runs[0];
    assert!(full.len() > 12, "{} prompt tokens", full.len());
    // " Rome" after "... The capital of Italy is" is likely; "Paris" after "France is" too.
    let paris = full.iter().position(|e| e.token == " Paris").unwrap();
    assert!(full[paris].logprob.unwrap() > -3.0, "{:?}", full[paris]);

    // A shorter prompt's next-token distribution is the longer prompt's at that position:
    // cut after each word, greedy, one token.
    let mut cuts = 0;
    for k in 2..full.len() {
        if !full[k].token.starts_with(' ') {
            continue;
        }
        let prefix: String = full[..k].iter().map(|e| e.token.as_str()).collect();
        let v = echo(&s, &prefix, 1, k % 2 == 0).await;
        let c = &v["choices"][0];
        let p = prompt_entries(c, &prefix, 3);
        close(&full[..k], &p, &format!("prefix of {k} tokens"));
        let next = &entries(c)[k];
        let mut top = full[k].top.clone();
        top.truncate(3);
        for (s, t) in next.top.iter().zip(&top) {
            assert!(
                s.0 == t.0 && (s.1 - t.1).abs() < 2e-3,
                "after {k} tokens: generated {s:?}, scored {t:?}"
            );
        }
        // Greedy: the generated token is the best alternative.
        assert_eq!(next.token, top[0].0);
        cuts += 1;
    }
    assert!(cuts >= 8, "{cuts} cuts");

    // Streamed: the echo comes first, with the prompt's logprobs, then the tokens.
    let events = post_stream(
        &s,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": PROMPT, "echo": true, "logprobs": 3,
                "max_tokens": 4, "temperature": 0, "stream": true}),
    )
    .await;
    let chunks: Vec<Value> = events
        .iter()
        .take_while(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let first = &chunks[0]["choices"][0];
    assert_eq!(first["text"], PROMPT);
    close(full, &prompt_entries(first, PROMPT, 3), "streamed");
    let mut text = String::new();
    let mut offsets = Vec::new();
    for c in &chunks {
        let ch = &c["choices"][0];
        text.push_str(ch["text"].as_str().unwrap_or(""));
        if let Some(o) = ch["logprobs"]["text_offset"].as_array() {
            offsets.extend(o.iter().map(|x| x.as_u64().unwrap()));
        }
    }
    let whole = echo(&s, PROMPT, 4, true).await;
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    let want: Vec<u64> = whole["choices"][0]["logprobs"]["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(offsets, want, "streamed offsets index the whole text");

    // Echo without logprobs: the text only; logprobs without echo: the answer only.
    let (st, v) = post_json(
        &s,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": PROMPT, "echo": true, "max_tokens": 2, "temperature": 0}),
    )
    .await;
    assert_eq!(st, 200);
    assert!(v["choices"][0]["logprobs"].is_null());
    assert!(v["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with(PROMPT));
    let (st, v) = post_json(
        &s,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": PROMPT, "logprobs": 2, "max_tokens": 2, "temperature": 0}),
    )
    .await;
    assert_eq!(st, 200);
    let e = entries(&v["choices"][0]);
    assert_eq!(e.len(), 2);
    assert!(e.iter().all(|e| e.logprob.is_some()));
}
