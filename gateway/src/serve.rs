//! `genie serve`: load the model, start the workers, serve HTTP until Ctrl-C / SIGTERM.

use crate::backend::Backend;
use crate::config::ServeConfig;
use crate::frontend::Frontend;
use crate::server::{self, AppState};
use anyhow::{Context, Result};
use clap::Args;
use figment::value::{Dict, Value};
use genie_engine::fetch;
use genie_engine::generate::{Engine, EngineOptions};
use genie_scheduler::Transport;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// TOML configuration (see configs/local.toml); flags and GENIE_<SECTION>__<KEY>
    /// environment variables override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to bind (default 127.0.0.1).
    #[arg(long)]
    pub host: Option<String>,
    /// Port to bind (default 8000; 0 picks a free port).
    #[arg(long)]
    pub port: Option<u16>,
    /// A llama GGUF file (default: GENIE_MODEL, else the default model, fetched on first use).
    #[arg(long, env = "GENIE_MODEL")]
    pub model: Option<PathBuf>,
    /// Prefill on the decode worker (the baseline without disaggregation).
    #[arg(long)]
    pub colocated: bool,
    /// Require this API key (`Authorization: Bearer KEY`) on /v1/*. Repeatable.
    #[arg(long = "api-key", env = "GENIE_API_KEY", hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// Compute threads of each worker (0 = one per core).
    #[arg(long, env = "GENIE_THREADS")]
    pub threads: Option<usize>,
}

impl ServeArgs {
    fn overrides(&self) -> Dict {
        let mut d = Dict::new();
        let mut section = |name: &str, key: &str, v: Value| {
            let entry = d
                .entry(name.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, m) = entry {
                m.insert(key.to_string(), v);
            }
        };
        if let Some(h) = &self.host {
            section("server", "host", Value::from(h.clone()));
        }
        if let Some(p) = self.port {
            section("server", "port", Value::from(p));
        }
        if !self.api_keys.is_empty() {
            section("server", "api_keys", Value::from(self.api_keys.clone()));
        }
        if let Some(m) = &self.model {
            section("model", "path", Value::from(m.display().to_string()));
        }
        if self.colocated {
            section("scheduler", "mode", Value::from("colocated"));
        }
        if let Some(t) = self.threads {
            section("prefill", "threads", Value::from(t));
            section("decode", "threads", Value::from(t));
        }
        d
    }
}

impl ServeArgs {
    /// Defaults → TOML → environment → these flags, validated.
    pub fn config_with_overrides(&self) -> Result<ServeConfig> {
        ServeConfig::load(self.config.as_deref(), self.overrides())
    }
}

/// Loads the configured model (fetching the default one on first use).
pub fn load_engine(cfg: &ServeConfig) -> Result<(Engine, PathBuf)> {
    let path = fetch::resolve_model(cfg.model.path.as_deref())?;
    // The loading engine's own pool is unused: each worker gets its own over shared weights.
    let engine = Engine::load(
        &path,
        &EngineOptions {
            threads: 1,
            ..EngineOptions::default()
        },
    )
    .with_context(|| format!("loading {}", path.display()))?;
    Ok((engine, path))
}

impl Frontend {
    /// Takes the tokenizer and template out of a loaded engine.
    pub fn new(cfg: &ServeConfig, engine: Engine, path: &std::path::Path) -> Self {
        let eog_ids = engine.end_of_generation_ids().to_vec();
        let Engine {
            model,
            tokenizer,
            template,
            ..
        } = engine;
        let mc = model.config().clone();
        // Default id: the file name without its quantisation suffix
        // (`SmolLM2-135M-Instruct.Q4_1.gguf` → `SmolLM2-135M-Instruct`).
        let served_name = cfg.model.served_name.clone().unwrap_or_else(|| {
            path.file_name()
                .map(|s| {
                    s.to_string_lossy()
                        .split('.')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| mc.name.clone())
        });
        Frontend {
            served_name,
            tokenizer,
            template,
            context_length: mc.context_length,
            vocab_size: mc.vocab_size,
            eog_ids,
            default_max_tokens: cfg.limits.default_max_tokens,
            max_n: cfg.limits.max_n,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// Keeps the Prometheus histograms bounded.
pub fn spawn_upkeep(h: metrics_exporter_prometheus::PrometheusHandle) {
    tokio::spawn(async move {
        let mut t = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            t.tick().await;
            h.run_upkeep();
        }
    });
}

/// Request plans kept for `GET /v1/plans/requests`.
const PLAN_LOG_CAPACITY: usize = 1024;

/// The runtime the HTTP side runs on (compute has its own threads).
pub fn http_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("genie-http")
        .enable_all()
        .build()?)
}

/// Binds the configured address, prints `banner(address)` as the first stdout line and
/// serves the OpenAI API over `backend` until Ctrl-C / SIGTERM.
pub async fn serve_api(
    cfg: &ServeConfig,
    frontend: Arc<Frontend>,
    backend: Arc<Backend>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    banner: impl FnOnce(std::net::SocketAddr) -> String,
) -> Result<()> {
    let addr = format!("{}:{}", cfg.server.host, cfg.server.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot bind {addr}"))?;
    let local = listener.local_addr()?;
    spawn_upkeep(metrics.clone());
    let state = AppState {
        frontend,
        backend,
        api_keys: Arc::new(cfg.server.api_keys.clone()),
        metrics,
        plans: Arc::new(crate::plan_log::PlanLog::new(PLAN_LOG_CAPACITY)),
    };
    let app = server::router(state, cfg.limits.max_body_bytes);
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", banner(local))?;
        out.flush()?;
    }
    server::serve(listener, app, shutdown_signal()).await?;
    Ok(())
}

pub fn run(args: ServeArgs) -> Result<()> {
    let cfg = args.config_with_overrides()?;
    let metrics = crate::metrics_setup::install()?;
    let (engine, path) = load_engine(&cfg)?;
    let model = engine.model.share(1)?;
    let plan = crate::plan_config::served_plan(&cfg, &model, Transport::InProcess)?;
    let frontend = Arc::new(Frontend::new(&cfg, engine, &path));
    let backend = Arc::new(Backend::local(&cfg, &model, plan)?);
    drop(model);
    let served_name = frontend.served_name.clone();
    let mode = backend.mode_label();
    let banner = |local| {
        format!(
            "Genie serving `{served_name}` on http://{local} ({mode}; {} prefill + {} decode workers; API keys {})",
            if mode == "colocated" { 0 } else { cfg.prefill.workers },
            cfg.decode.workers,
            if cfg.server.api_keys.is_empty() { "off" } else { "on" },
        )
    };
    http_runtime()?.block_on(serve_api(
        &cfg,
        frontend,
        Arc::clone(&backend),
        metrics,
        banner,
    ))?;
    // Workers stop (and join) when the backend drops.
    drop(backend);
    Ok(())
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
