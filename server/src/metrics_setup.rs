//! The process-wide Prometheus recorder (installed once) and its histogram buckets.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Mutex, OnceLock};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// Held while installing, so two first callers cannot both try.
static INSTALLING: Mutex<()> = Mutex::new(());

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
    5.0, 10.0, 20.0, 40.0, 80.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
const TOKEN_BUCKETS: &[f64] = &[16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0];

/// Installs the recorder on first call; later calls return the same handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let _installing = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("genie_decode_batch_size".into()),
            BATCH_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("genie_prefill_batch_tokens".into()),
            TOKEN_BUCKETS,
        )?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    describe();
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        "genie_time_to_first_token_seconds",
        Unit::Seconds,
        "Request arrival to first token, per sequence."
    );
    describe_histogram!(
        "genie_inter_token_latency_seconds",
        Unit::Seconds,
        "Time between consecutive tokens of a sequence."
    );
    describe_histogram!(
        "genie_e2e_request_latency_seconds",
        Unit::Seconds,
        "Request arrival to the end of a sequence."
    );
    describe_counter!(
        "genie_requests_total",
        "HTTP requests by endpoint and status."
    );
    describe_gauge!(
        "genie_num_requests_waiting",
        "Sequences admitted but not yet producing tokens."
    );
    describe_gauge!(
        "genie_num_requests_running",
        "Sequences in a decode worker's running batch."
    );
    describe_histogram!(
        "genie_decode_batch_size",
        "Sequences advanced by one decode step."
    );
    describe_histogram!(
        "genie_prefill_batch_tokens",
        "Prompt tokens in one prefill forward."
    );
    describe_gauge!(
        "genie_kv_cache_usage_ratio",
        "Reserved KV bytes over capacity, per decode worker."
    );
    describe_gauge!(
        "genie_kv_cache_used_bytes",
        Unit::Bytes,
        "Reserved KV bytes, per decode worker."
    );
    describe_counter!(
        "genie_kv_transfer_bytes_total",
        Unit::Bytes,
        "KV bytes moved from prefill to decode workers."
    );
    describe_histogram!(
        "genie_kv_transfer_seconds",
        Unit::Seconds,
        "First KV layer handed over to hand-off complete."
    );
    describe_counter!("genie_prompt_tokens_total", "Prompt tokens admitted.");
    describe_counter!("genie_generation_tokens_total", "Tokens generated.");
}
