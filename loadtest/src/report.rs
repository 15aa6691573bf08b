//! The run's report: JSON for machines (`--json FILE`), markdown for people (stdout).

use crate::stats::{Percentiles, Summary};
use serde::Serialize;
use std::fmt::Write;

/// What was run, against what.
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    pub url: String,
    pub model: String,
    pub endpoint: crate::client::Endpoint,
    /// `closed (concurrency N)`, `open (Poisson R req/s)` or `trace FILE`.
    pub mode: String,
    pub input_tokens: String,
    pub output_tokens: String,
    pub requests: Option<usize>,
    pub duration_s: Option<f64>,
    pub warmup: usize,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    /// Unix seconds at the start of the measured run.
    pub started_unix_s: u64,
    pub config: RunConfig,
    pub summary: Summary,
}

fn row(out: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
        p.mean_ms, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.count
    );
}

/// A markdown summary of `r`.
pub fn markdown(r: &Report) -> String {
    let c = &r.config;
    let s = &r.summary;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## genie-loadtest: {} ({:?}) at {}\n",
        c.model, c.endpoint, c.url
    );
    let _ = writeln!(
        out,
        "{}; input tokens {}, output tokens {}; {} requests ({} completed, {} failed, error rate {:.2} %) in {:.2} s\n",
        c.mode, c.input_tokens, c.output_tokens, s.requests, s.completed, s.failed,
        s.error_rate * 100.0, s.duration_s
    );
    let _ = writeln!(
        out,
        "| latency (ms) | mean | p50 | p90 | p99 | p99.9 | max | samples |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    row(&mut out, "TTFT", &s.ttft);
    row(&mut out, "ITL", &s.itl);
    row(&mut out, "TPOT", &s.tpot);
    row(&mut out, "end to end", &s.e2e);
    let _ = writeln!(out);
    let _ = writeln!(out, "| throughput | value |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(out, "| requests/s | {:.3} |", s.request_throughput);
    let _ = writeln!(
        out,
        "| output tokens/s | {:.1} |",
        s.output_token_throughput
    );
    let _ = writeln!(out, "| input tokens/s | {:.1} |", s.input_token_throughput);
    let _ = writeln!(out, "| mean prompt tokens | {:.1} |", s.mean_prompt_tokens);
    let _ = writeln!(out, "| mean output tokens | {:.1} |", s.mean_output_tokens);
    if let Some(f) = s.cached_prompt_fraction {
        let _ = writeln!(
            out,
            "| prompt tokens from the server's cache | {:.1} % |",
            f * 100.0
        );
    }
    if let Some(g) = &s.goodput {
        let slo = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        let _ = writeln!(
            out,
            "| goodput (TTFT ≤ {}, every ITL ≤ {}) | {:.3} req/s ({} of {}, {:.1} %) |",
            slo(g.slo.ttft_ms),
            slo(g.slo.itl_ms),
            g.requests_per_s,
            g.met,
            s.requests,
            g.fraction * 100.0
        );
    }
    if !s.errors.is_empty() {
        let _ = writeln!(out, "\nErrors:");
        for (e, n) in &s.errors {
            let _ = writeln!(out, "- {n} x {e}");
        }
    }
    out
}

/// One JSON line per request: sent (Unix ms, from the run's start `started`), outcome,
/// time to first token and every inter-token gap in ms (`genie-loadtest --requests-out`).
pub fn request_lines(outcomes: &[crate::client::Outcome], started: std::time::Duration) -> String {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let mut out = String::new();
    for o in outcomes {
        let line = serde_json::json!({
            "sent_unix_ms": ms(started + o.sent_at),
            "ok": o.ok,
            "error": o.error,
            "prompt_tokens": o.prompt_tokens,
            "output_tokens": o.output_tokens,
            "ttft_ms": o.ttft.map(ms),
            "itl_ms": o.itl.iter().map(|&g| ms(g)).collect::<Vec<_>>(),
            "e2e_ms": ms(o.e2e),
        });
        let _ = writeln!(out, "{line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Outcome;
    use std::time::Duration;

    #[test]
    fn request_lines_give_each_request_its_send_time_and_every_gap_in_ms() {
        let o = Outcome {
            ok: true,
            sent_at: Duration::from_millis(250),
            ttft: Some(Duration::from_millis(40)),
            itl: vec![Duration::from_micros(4500), Duration::from_millis(88)],
            e2e: Duration::from_micros(132_500),
            output_tokens: 3,
            ..Outcome::default()
        };
        let failed = Outcome {
            error: Some("HTTP 503: busy".into()),
            ..Outcome::default()
        };
        let text = request_lines(&[o, failed], Duration::from_secs(1_000));
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["sent_unix_ms"], 1_000_250.0);
        assert_eq!(lines[0]["ttft_ms"], 40.0);
        assert_eq!(lines[0]["itl_ms"], serde_json::json!([4.5, 88.0]));
        assert_eq!(lines[0]["e2e_ms"], 132.5);
        assert_eq!(lines[1]["ok"], false);
        assert_eq!(lines[1]["error"], "HTTP 503: busy");
        assert!(lines[1]["ttft_ms"].is_null());
    }
}
