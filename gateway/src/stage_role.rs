//! `genie stage-worker`: one pipeline stage as its own process. It runs layers
//! `--layers A..B` of the model, keeps their KV cache, receives hidden states on its KV
//! port (stages after the first) and sends its output to the next hop named per sequence.
//! Control API (unauthenticated: keep it on a private network): `GET /internal/stage`,
//! `POST /internal/stage/begin {seq, capacity, next}`, `POST /internal/stage/tokens
//! {tokens}` and `POST /internal/stage/end` (stage 0), `/health`, `/metrics`.

use crate::api_error::ApiError;
use crate::pipeline::{BeginBody, StageInfo, StageWorker, TokensBody};
use crate::serve::{http_runtime, load_engine, shutdown_signal, ServeArgs};
use anyhow::{Context, Result};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use std::io::Write;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct StageArgs {
    /// The layers this stage runs, `START..END` (e.g. 0..15 and 15..30 for two stages of
    /// a 30-layer model; `genie plan show --config configs/pipeline-2stage.toml` lists them).
    #[arg(long)]
    pub layers: String,
    #[command(flatten)]
    pub listen: crate::roles::Listen,
    /// A llama GGUF file (default: GENIE_MODEL, else the default model).
    #[arg(long, env = "GENIE_MODEL")]
    pub model: Option<std::path::PathBuf>,
    /// Compute threads (0 = one per core).
    #[arg(long, env = "GENIE_THREADS")]
    pub threads: Option<usize>,
}

fn parse_layers(s: &str) -> Result<std::ops::Range<usize>> {
    let (a, b) = s
        .split_once("..")
        .context("--layers is START..END, e.g. 0..15")?;
    let (a, b): (usize, usize) = (
        a.trim().parse().context("--layers START is not a number")?,
        b.trim().parse().context("--layers END is not a number")?,
    );
    anyhow::ensure!(a < b, "--layers {a}..{b} is empty");
    Ok(a..b)
}

async fn info(State(w): State<Arc<StageWorker>>) -> Json<StageInfo> {
    Json(StageInfo {
        layers: [w.layers.start, w.layers.end],
        n_layers: w.n_layers,
        kv_endpoint: w.kv_endpoint.clone(),
    })
}

fn done(r: anyhow::Result<()>) -> Result<Response, ApiError> {
    r.map(|_| axum::http::StatusCode::NO_CONTENT.into_response())
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

async fn begin(
    State(w): State<Arc<StageWorker>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: BeginBody = crate::body::parse(&body)?;
    if b.capacity == 0 {
        return Err(ApiError::invalid("capacity", "must be at least 1"));
    }
    // Connecting to the next hop blocks (up to its connect timeout): off the runtime.
    let r = tokio::task::spawn_blocking(move || w.begin(b.seq, b.capacity, &b.next))
        .await
        .map_err(|_| ApiError::internal())?;
    done(r)
}

async fn tokens(
    State(w): State<Arc<StageWorker>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if w.layers.start != 0 {
        return Err(ApiError::invalid(
            "tokens",
            "only the first stage takes tokens; this one takes hidden states on its KV port",
        ));
    }
    let b: TokensBody = crate::body::parse(&body)?;
    if b.tokens.is_empty() {
        return Err(ApiError::invalid("tokens", "must not be empty"));
    }
    done(w.tokens(b.tokens))
}

async fn end(State(w): State<Arc<StageWorker>>) -> Result<Response, ApiError> {
    done(w.end())
}

pub fn run(a: StageArgs) -> Result<()> {
    let layers = parse_layers(&a.layers)?;
    let cfg = ServeArgs {
        config: None,
        host: None,
        port: None,
        model: a.model.clone(),
        colocated: true,
        api_keys: Vec::new(),
        threads: a.threads,
    }
    .config_with_overrides()?;
    let metrics = crate::metrics_setup::install()?;
    let (engine, _path) = load_engine(&cfg)?;
    let n_layers = engine.model.config().n_layers;
    anyhow::ensure!(
        layers.end <= n_layers,
        "--layers {layers:?} goes past the model's {n_layers} layers"
    );
    let model = engine.model.share(a.threads.unwrap_or(0))?;
    drop(engine);
    let rt = http_runtime()?;
    let kv = if layers.start > 0 {
        let (host, port) = (a.listen.host.as_str(), a.listen.kv_port);
        let l = std::net::TcpListener::bind((host, port))
            .with_context(|| format!("cannot bind the KV port {host}:{port}"))?;
        let ep = a.listen.advertised(l.local_addr()?)?;
        Some((l, ep))
    } else {
        None
    };
    let worker = Arc::new(StageWorker::start(
        0,
        model,
        layers.clone(),
        rt.handle(),
        kv,
    )?);
    rt.block_on(async move {
        let l = &a.listen;
        let listener = tokio::net::TcpListener::bind((l.host.as_str(), l.port))
            .await
            .with_context(|| format!("cannot bind {}:{}", l.host, l.port))?;
        let address = format!("http://{}", l.advertised(listener.local_addr()?)?);
        let m = metrics.clone();
        let app = Router::new()
            .route("/internal/stage", get(info))
            .route("/internal/stage/begin", post(begin))
            .route("/internal/stage/tokens", post(tokens))
            .route("/internal/stage/end", post(end))
            .route("/health", get(|| async { "ok" }))
            .route("/metrics", get(move || async move { m.render() }))
            .with_state(Arc::clone(&worker));
        {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "Genie stage worker (layers {}..{} of {n_layers}) on {address}{}",
                layers.start,
                layers.end,
                worker
                    .kv_endpoint
                    .as_ref()
                    .map(|k| format!(" (KV on {k})"))
                    .unwrap_or_default()
            )?;
            out.flush()?;
        }
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        anyhow::Ok(())
    })
}
