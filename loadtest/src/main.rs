//! `genie-loadtest`: drive an OpenAI-compatible server and report what its users would see.

use anyhow::{bail, Context, Result};
use clap::Parser;
use genie_loadtest::client::{Endpoint, Target};
use genie_loadtest::report::{markdown, Report, RunConfig};
use genie_loadtest::run::{run, Load, Mode};
use genie_loadtest::stats::{summarise, Slo};
use genie_loadtest::workload::{parse_trace, Lengths};
use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
#[command(
    name = "genie-loadtest",
    version,
    about = "Load-test an OpenAI-compatible server: TTFT, ITL, TPOT, throughput, goodput"
)]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Model name to request (default: the first of GET /v1/models).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, value_enum, default_value = "chat")]
    endpoint: Endpoint,
    /// Closed loop: this many requests in flight at all times.
    #[arg(long, conflicts_with_all = ["rate", "trace"])]
    concurrency: Option<usize>,
    /// Open loop: Poisson arrivals at this many requests per second.
    #[arg(long, conflicts_with = "trace")]
    rate: Option<f64>,
    /// Replay a JSONL trace: {"arrival_s": S, "input_tokens": N, "output_tokens": M} per
    /// line, with optional "hash_ids" (shared prompt blocks), or Mooncake's lines
    /// ({"timestamp": MS, "input_length": N, "output_length": M, "hash_ids": [...]}).
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
    /// Tokens per trace block named by `hash_ids` (Mooncake's traces: 512).
    #[arg(long, default_value_t = 512)]
    trace_block_tokens: u32,
    /// Multi-turn chat (closed loop): each in-flight slot runs conversations of this many
    /// turns; every turn resends the history with the previous answer and a new user
    /// message of --input-tokens words.
    #[arg(long, conflicts_with_all = ["rate", "trace"])]
    multi_turn: Option<u32>,
    /// A system prompt of this many tokens, the same for every request (a shared prefix).
    #[arg(long)]
    shared_prefix_tokens: Option<u32>,
    /// Requests to measure.
    #[arg(long)]
    requests: Option<usize>,
    /// Stop sending after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Prompt length in tokens: N, uniform:LO:HI or normal:MEAN:STD.
    #[arg(long, default_value = "128")]
    input_tokens: Lengths,
    /// Output length (max_tokens): N, uniform:LO:HI or normal:MEAN:STD.
    #[arg(long, default_value = "64")]
    output_tokens: Lengths,
    /// Token ids to ban with logit_bias -100, so outputs run to their full length
    /// (SmolLM2: 0,1,2 are <|endoftext|>, <|im_start|>, <|im_end|>).
    #[arg(long, value_delimiter = ',')]
    ban_tokens: Vec<u32>,
    /// Send `ignore_eos: true` (a server extension: Genie, vLLM, SGLang, llama.cpp).
    #[arg(long)]
    ignore_eos: bool,
    /// Send no max_tokens (the server's default applies; answers end at the model's end
    /// of turn, so --output-tokens only sizes nothing but the report's asked column).
    #[arg(long, conflicts_with = "ignore_eos")]
    no_max_tokens: bool,
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// TTFT objective for goodput, in milliseconds.
    #[arg(long)]
    slo_ttft_ms: Option<f64>,
    /// Inter-token objective for goodput: every gap between a request's tokens, in ms.
    #[arg(long)]
    slo_itl_ms: Option<f64>,
    /// Write the full report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write every measured request here, one JSON line each: when it was sent (Unix ms),
    /// its outcome, time to first token and every inter-token gap (ms), to find where a
    /// tail came from.
    #[arg(long)]
    requests_out: Option<std::path::PathBuf>,
    /// Exit non-zero when the error rate is above this fraction.
    #[arg(long, default_value_t = 0.0)]
    max_error_rate: f64,
    /// Unmeasured requests sent first, one at a time.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Bearer token (or OPENAI_API_KEY).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Per-request time limit in seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// No progress bar (it is also off when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

async fn first_model(url: &str, key: Option<&str>) -> Result<String> {
    let mut r = reqwest::Client::new().get(format!("{}/v1/models", url.trim_end_matches('/')));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let v: serde_json::Value = r
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?
        .error_for_status()?
        .json()
        .await?;
    v["data"][0]["id"]
        .as_str()
        .map(String::from)
        .context("GET /v1/models listed no model; pass --model")
}

fn main() -> std::process::ExitCode {
    match load_test(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("genie-loadtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn load_test(a: Args) -> Result<()> {
    let mode = match (a.concurrency, a.rate, &a.trace) {
        (Some(0), _, _) => bail!("--concurrency must be at least 1"),
        (Some(c), _, _) => Mode::Closed { concurrency: c },
        (None, Some(r), _) if !(r.is_finite() && r > 0.0) => {
            bail!("--rate must be a positive number of requests per second")
        }
        (None, Some(r), _) => Mode::Open { rate: r },
        (None, None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the trace {}", path.display()))?;
            Mode::Trace(parse_trace(&text).map_err(anyhow::Error::msg)?)
        }
        (None, None, None) => Mode::Closed { concurrency: 1 },
    };
    if !matches!(mode, Mode::Trace(_)) && a.requests.is_none() && a.duration.is_none() {
        bail!("say how much load: --requests N and/or --duration SECONDS");
    }
    if a.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    if let Some(d) = a.duration {
        if !(d.is_finite() && d > 0.0) {
            bail!("--duration must be a positive number of seconds");
        }
    }
    if a.multi_turn == Some(0) {
        bail!("--multi-turn must be at least 1 turn");
    }
    if a.shared_prefix_tokens == Some(0) {
        bail!("--shared-prefix-tokens must be at least 1");
    }
    if a.trace_block_tokens == 0 {
        bail!("--trace-block-tokens must be at least 1");
    }
    if !(0.0..=1.0).contains(&a.max_error_rate) {
        bail!("--max-error-rate is a fraction between 0 and 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let model = match &a.model {
            Some(m) => m.clone(),
            None => first_model(&a.url, a.api_key.as_deref()).await?,
        };
        let target = Target {
            url: a.url.clone(),
            model: model.clone(),
            endpoint: a.endpoint,
            api_key: a.api_key.clone(),
            ban_tokens: a.ban_tokens.clone(),
            ignore_eos: a.ignore_eos,
            no_max_tokens: a.no_max_tokens,
            temperature: a.temperature,
            timeout: Duration::from_secs_f64(a.timeout),
        };
        let mut mode_text = match &mode {
            Mode::Closed { concurrency } => match a.multi_turn {
                Some(t) => format!(
                    "multi-turn chat, {concurrency} conversations at a time, {t} turns each"
                ),
                None => format!("closed loop, concurrency {concurrency}"),
            },
            Mode::Open { rate } => format!("open loop, Poisson {rate} req/s"),
            Mode::Trace(t) => format!(
                "trace {} ({} requests)",
                a.trace
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                t.len()
            ),
        };
        if let Some(k) = a.shared_prefix_tokens {
            mode_text.push_str(&format!("; a shared {k}-token system prompt"));
        }
        let load = Load {
            mode,
            requests: a.requests,
            duration: a.duration.map(Duration::from_secs_f64),
            input: a.input_tokens,
            output: a.output_tokens,
            seed: a.seed,
            warmup: a.warmup,
            progress: !a.no_progress && std::io::stderr().is_terminal(),
            shared_prefix: a
                .shared_prefix_tokens
                .map(|k| genie_loadtest::workload::shared_prefix(k, a.seed)),
            turns: a.multi_turn,
            block_tokens: a.trace_block_tokens,
        };
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let (outcomes, measured_from) = run(&target, &load).await;
        if let Some(path) = &a.requests_out {
            let lines = genie_loadtest::report::request_lines(&outcomes, measured_from);
            std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
        }
        let slo = Slo {
            ttft_ms: a.slo_ttft_ms,
            itl_ms: a.slo_itl_ms,
        };
        let summary = summarise(&outcomes, slo);
        let spec = |l: &Lengths| match l {
            Lengths::Fixed(n) => n.to_string(),
            Lengths::Uniform { lo, hi } => format!("uniform {lo}..={hi}"),
            Lengths::Normal { mean, std } => format!("normal mean {mean} std {std}"),
        };
        let report = Report {
            tool: "genie-loadtest",
            version: env!("CARGO_PKG_VERSION"),
            started_unix_s: started,
            config: RunConfig {
                url: a.url.clone(),
                model,
                endpoint: a.endpoint,
                mode: mode_text,
                input_tokens: if matches!(load.mode, Mode::Trace(_)) {
                    "from the trace".into()
                } else {
                    spec(&a.input_tokens)
                },
                output_tokens: if matches!(load.mode, Mode::Trace(_)) {
                    "from the trace".into()
                } else {
                    spec(&a.output_tokens)
                },
                requests: a.requests,
                duration_s: a.duration,
                warmup: a.warmup,
                seed: a.seed,
            },
            summary,
        };
        print!("{}", markdown(&report));
        if let Some(path) = &a.json {
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let s = &report.summary;
        if s.requests == 0 {
            bail!("no request was sent");
        }
        if s.error_rate > a.max_error_rate {
            bail!(
                "error rate {:.2} % is above --max-error-rate {:.2} %",
                s.error_rate * 100.0,
                a.max_error_rate * 100.0
            );
        }
        Ok(())
    })
}
