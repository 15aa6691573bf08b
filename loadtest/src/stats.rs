//! Figures from outcomes: latency percentiles from HDR histograms, throughput, goodput.

use crate::client::Outcome;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Microsecond histogram, 3 significant digits, growing as needed.
fn histogram(values: impl Iterator<Item = Duration>) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    for v in values {
        // The histogram grows to fit, so recording cannot fail on range.
        let _ = h.record(v.as_micros().max(1) as u64);
    }
    h
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        mean_ms: h.mean() / 1000.0,
        min_ms: ms(h.min()),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p95_ms: ms(h.value_at_quantile(0.95)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// Service-level objectives a request must meet to count towards goodput.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    /// Every inter-token gap of the request must be within it (a stall anywhere in the
    /// answer misses the objective, as a reader of the stream would feel it).
    pub itl_ms: Option<f64>,
}

impl Slo {
    pub fn is_set(&self) -> bool {
        self.ttft_ms.is_some() || self.itl_ms.is_some()
    }

    pub fn met_by(&self, o: &Outcome) -> bool {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        o.ok && self
            .ttft_ms
            .is_none_or(|slo| o.ttft.is_some_and(|t| ms(t) <= slo))
            && self
                .itl_ms
                .is_none_or(|slo| o.itl.iter().all(|&gap| ms(gap) <= slo))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Goodput {
    pub slo: Slo,
    /// Requests that completed within every SLO.
    pub met: u64,
    pub fraction: f64,
    pub requests_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub completed: u64,
    pub failed: u64,
    pub error_rate: f64,
    /// First send to last completion.
    pub duration_s: f64,
    pub request_throughput: f64,
    pub input_token_throughput: f64,
    pub output_token_throughput: f64,
    pub mean_prompt_tokens: f64,
    pub mean_output_tokens: f64,
    /// Prompt tokens the server reported served from its prefix cache
    /// (`usage.prompt_tokens_details.cached_tokens`) over all prompt tokens; `None` when
    /// no response reported it.
    pub cached_prompt_fraction: Option<f64>,
    /// The most prompt tokens any one response reported cached (with a shared prefix: about
    /// what every request could have had, so `cached_prompt_fraction` can be read against
    /// `max_cached_tokens / mean_prompt_tokens`).
    pub max_cached_tokens: Option<u32>,
    pub ttft: Percentiles,
    pub itl: Percentiles,
    pub tpot: Percentiles,
    pub e2e: Percentiles,
    pub goodput: Option<Goodput>,
    /// Failure reasons and how often each occurred.
    pub errors: BTreeMap<String, u64>,
}

/// Summarises `outcomes` (completed requests only for latencies and tokens).
pub fn summarise(outcomes: &[Outcome], slo: Slo) -> Summary {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok).collect();
    let requests = outcomes.len() as u64;
    let completed = ok.len() as u64;
    let start = outcomes.iter().map(|o| o.sent_at).min().unwrap_or_default();
    let end = outcomes
        .iter()
        .map(|o| o.sent_at + o.e2e)
        .max()
        .unwrap_or_default();
    let duration_s = (end - start).as_secs_f64().max(1e-9);
    // (A fold from +0.0: an empty float `sum` is -0.0.)
    let input = ok
        .iter()
        .map(|o| o.prompt_tokens.unwrap_or(o.input_tokens_asked) as f64)
        .fold(0.0, |a, b| a + b);
    let output = ok
        .iter()
        .map(|o| o.output_tokens as f64)
        .fold(0.0, |a, b| a + b);
    let cached_prompt_fraction = ok.iter().any(|o| o.cached_tokens.is_some()).then(|| {
        let cached = ok
            .iter()
            .map(|o| o.cached_tokens.unwrap_or(0) as f64)
            .fold(0.0, |a, b| a + b);
        if input > 0.0 {
            cached / input
        } else {
            0.0
        }
    });
    let mean = |total: f64| {
        if completed > 0 {
            total / completed as f64
        } else {
            0.0
        }
    };
    let mut errors = BTreeMap::new();
    for o in outcomes.iter().filter(|o| !o.ok) {
        let e = o.error.clone().unwrap_or_else(|| "unknown".into());
        // Group by the reason's head (messages can carry numbers).
        let key: String = e.chars().take(120).collect();
        *errors.entry(key).or_insert(0) += 1;
    }
    let goodput = slo.is_set().then(|| {
        let met = outcomes.iter().filter(|o| slo.met_by(o)).count() as u64;
        Goodput {
            slo,
            met,
            fraction: if requests > 0 {
                met as f64 / requests as f64
            } else {
                0.0
            },
            requests_per_s: met as f64 / duration_s,
        }
    });
    Summary {
        requests,
        completed,
        failed: requests - completed,
        error_rate: if requests > 0 {
            (requests - completed) as f64 / requests as f64
        } else {
            0.0
        },
        duration_s,
        request_throughput: completed as f64 / duration_s,
        input_token_throughput: input / duration_s,
        output_token_throughput: output / duration_s,
        mean_prompt_tokens: mean(input),
        mean_output_tokens: mean(output),
        cached_prompt_fraction,
        max_cached_tokens: ok.iter().filter_map(|o| o.cached_tokens).max(),
        ttft: percentiles(&histogram(ok.iter().filter_map(|o| o.ttft))),
        itl: percentiles(&histogram(ok.iter().flat_map(|o| o.itl.iter().copied()))),
        tpot: percentiles(&histogram(ok.iter().filter_map(|o| o.tpot()))),
        e2e: percentiles(&histogram(ok.iter().map(|o| o.e2e))),
        goodput,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn outcome(sent: u64, ttft: u64, itl: &[u64], ok: bool) -> Outcome {
        let e2e = ttft + itl.iter().sum::<u64>();
        Outcome {
            ok,
            error: (!ok).then(|| "HTTP 429: queue full".into()),
            sent_at: ms(sent),
            ttft: ok.then(|| ms(ttft)),
            itl: itl.iter().map(|&v| ms(v)).collect(),
            e2e: ms(e2e),
            input_tokens_asked: 10,
            output_tokens_asked: itl.len() as u32 + 1,
            prompt_tokens: Some(12),
            output_tokens: if ok { itl.len() as u32 + 1 } else { 0 },
            cached_tokens: ok.then_some(3),
            text: String::new(),
        }
    }

    #[test]
    fn percentiles_throughput_and_goodput_follow_the_outcomes() {
        let outs = vec![
            outcome(0, 100, &[10, 10, 10], true),   // ends at 130
            outcome(0, 300, &[50, 50, 50], true),   // ends at 450
            outcome(500, 100, &[10, 10, 10], true), // ends at 630
            outcome(600, 0, &[], false),
        ];
        let s = summarise(
            &outs,
            Slo {
                ttft_ms: Some(200.0),
                itl_ms: Some(20.0),
            },
        );
        assert_eq!((s.requests, s.completed, s.failed), (4, 3, 1));
        assert!((s.error_rate - 0.25).abs() < 1e-9);
        assert!((s.duration_s - 0.63).abs() < 1e-6, "{}", s.duration_s);
        assert!((s.output_token_throughput - 12.0 / 0.63).abs() < 1e-6);
        assert!((s.mean_prompt_tokens - 12.0).abs() < 1e-9);
        // 3 of every 12 prompt tokens reported cached.
        assert_eq!(s.cached_prompt_fraction, Some(0.25));
        assert_eq!(s.max_cached_tokens, Some(3));
        assert_eq!(s.ttft.count, 3);
        assert!((s.ttft.p50_ms - 100.0).abs() < 0.2);
        assert!((s.ttft.max_ms - 300.0).abs() < 0.5);
        assert_eq!(s.itl.count, 9);
        assert!((s.tpot.max_ms - 50.0).abs() < 0.1);
        let g = s.goodput.unwrap();
        assert_eq!(g.met, 2, "the slow request and the failure miss the SLO");
        assert!((g.fraction - 0.5).abs() < 1e-9);
        assert_eq!(s.errors.get("HTTP 429: queue full"), Some(&1));
    }

    #[test]
    fn one_stall_misses_the_itl_objective_even_when_the_mean_is_fine() {
        let smooth = outcome(0, 50, &[10; 10], true);
        let mut gaps = [5; 10];
        gaps[9] = 45; // mean gap 9.5 ms, one stall of 45 ms
        let stalled = outcome(0, 50, &gaps, true);
        let slo = Slo {
            ttft_ms: None,
            itl_ms: Some(20.0),
        };
        assert!(slo.met_by(&smooth));
        assert!(stalled.tpot().unwrap() < Duration::from_millis(20));
        assert!(!slo.met_by(&stalled));
    }

    #[test]
    fn no_slo_no_goodput_and_empty_runs_are_zero() {
        let s = summarise(&[], Slo::default());
        assert!(s.goodput.is_none());
        assert_eq!(s.requests, 0);
        assert_eq!(s.ttft, Percentiles::default());
    }
}
