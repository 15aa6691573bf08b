//! `genie serve`: the gateway, prefill workers and decode workers in one process (the
//! local emulation backend), and what `genie gateway` shares with it: the flags, the
//! dispatcher's settings and serving the API until a signal.

use crate::config::{Mode, ServeConfig};
use crate::process::{banner, http_runtime, metrics_upkeep, Background, Edge};
use anyhow::{Context, Result};
use clap::Args;
use figment::value::{Dict, Value};
use genie_decode_worker::{DecodeConfig, DecodeWorker};
use genie_engine::fetch;
use genie_engine::kv_budget::KvBudget;
use genie_engine::model::Model;
use genie_engine::model_text::ModelText;
use genie_kv_transfer::InProcessTransport;
use genie_prefill_worker::{PrefillConfig, PrefillWorker};
use genie_protocol::WorkerId;
use genie_router::{DispatchConfig, Dispatcher, LocalPool, Registry};
use genie_scheduler::{ExecutionPlan, Role, Transport};
use genie_server::frontend::Limits;
use genie_server::{build_app_with, build_apps, AppOptions, AppState, Frontend, PlanLog};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Args, Debug, Clone, Default)]
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
    /// A GGUF model file (llama, qwen2, qwen3 or gemma3) (default: GENIE_MODEL, else the default model, fetched on first use).
    #[arg(long, env = "GENIE_MODEL")]
    pub model: Option<PathBuf>,
    /// A Jinja chat template file to use instead of the GGUF's own.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// Prefill on the decode worker (the baseline without disaggregation).
    #[arg(long)]
    pub colocated: bool,
    /// Require this API key (`Authorization: Bearer KEY`) on /v1/*. Repeatable.
    #[arg(long = "api-key", env = "GENIE_API_KEY", hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// Compute threads of each worker (0 = one per core).
    #[arg(long, env = "GENIE_THREADS")]
    pub threads: Option<usize>,
    /// Times a sequence is moved to live workers when it loses one mid-stream before it
    /// fails (0: never; default 2).
    #[arg(long)]
    pub migration_limit: Option<usize>,
    /// `genie gateway`: serve the control plane (`/internal/*`) on its own listener at this
    /// port; the public port then serves only /v1/*, /health, /metrics and /plan.
    #[arg(long)]
    pub internal_port: Option<u16>,
    /// Address of the control-plane listener (default: --host).
    #[arg(long)]
    pub internal_host: Option<String>,
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// Seconds requests in flight may take to finish after SIGTERM / Ctrl-C (default 30).
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<u64>,
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
        if let Some(t) = self.drain_timeout {
            section("server", "drain_timeout_secs", Value::from(t));
        }
        if let Some(m) = &self.model {
            section("model", "path", Value::from(m.display().to_string()));
        }
        if let Some(t) = &self.chat_template {
            section(
                "model",
                "chat_template",
                Value::from(t.display().to_string()),
            );
        }
        if self.colocated {
            section("scheduler", "mode", Value::from("colocated"));
        }
        if let Some(p) = self.internal_port {
            section("server", "internal_port", Value::from(p));
        }
        if let Some(h) = &self.internal_host {
            section("server", "internal_host", Value::from(h.clone()));
        }
        if let Some(t) = self.threads {
            section("prefill", "threads", Value::from(t));
            section("decode", "threads", Value::from(t));
        }
        if let Some(n) = self.migration_limit {
            section("scheduler", "migration_limit", Value::from(n));
        }
        for (k, v) in self.tls.overrides() {
            section("tls", k, Value::from(v));
        }
        d
    }

    /// Defaults → TOML → environment → these flags, validated.
    pub fn config_with_overrides(&self) -> Result<ServeConfig> {
        ServeConfig::load(self.config.as_deref(), self.overrides())
    }
}

/// The served model's file (the default model fetched on first use).
pub fn model_path(cfg: &ServeConfig) -> Result<PathBuf> {
    Ok(fetch::resolve_model(cfg.model.path.as_deref())?)
}

/// Loads the model's weights (compute pool of one thread: each worker shares the weights
/// with a pool of its own).
pub fn load_model(path: &Path) -> Result<genie_engine::gguf::GgufModel> {
    genie_engine::gguf::load(path).with_context(|| format!("loading {}", path.display()))
}

/// The front end of the API over the model's text side (with the configured chat
/// template in place of the file's).
pub fn frontend(cfg: &ServeConfig, mut text: ModelText, path: &Path) -> Result<Frontend> {
    let name = cfg
        .model
        .served_name
        .clone()
        .unwrap_or_else(|| Frontend::default_name(path, &text.config.name));
    if let Some(file) = &cfg.model.chat_template {
        let source = std::fs::read_to_string(file)
            .with_context(|| format!("reading the chat template {}", file.display()))?;
        text.template = text
            .template
            .with_source(&source)
            .with_context(|| format!("the chat template {}", file.display()))?;
    }
    let fe = Frontend::new(
        name,
        text,
        Limits {
            default_max_tokens: cfg.limits.default_max_tokens,
            max_n: cfg.limits.max_n,
            parse_special_in_content: cfg.server.parse_special_in_content,
        },
    );
    tracing::info!(
        tools = ?fe.tool_format,
        "chat template: functions {}",
        match fe.tool_format {
            genie_server::tools::ToolFormat::Hermes => "given to the template as `tools`, calls read as <tool_call> blocks",
            genie_server::tools::ToolFormat::Json => "described in Genie's generic system block",
        }
    );
    Ok(fe)
}

/// The dispatcher's settings from the config.
pub fn dispatch_config(
    cfg: &ServeConfig,
    plan: &ExecutionPlan,
    kv_bytes_per_token: usize,
) -> DispatchConfig {
    let pinned_by = [Role::Prefill, Role::Decode]
        .into_iter()
        .filter_map(|role| {
            let phase = &plan.stage_of(role)?.phase;
            let k = cfg
                .plan
                .pins
                .iter()
                .rposition(|p| &p.phase == phase && p.worker.is_some())?;
            Some((role, format!("plan.pins[{k}].worker")))
        })
        .collect();
    DispatchConfig {
        routing: cfg.scheduler.routing,
        prefix_tokens: cfg.scheduler.prefix_tokens,
        disaggregated: cfg.scheduler.mode == Mode::Disaggregated,
        max_waiting: cfg.limits.max_waiting,
        queue_timeout: Duration::from_secs(cfg.limits.queue_timeout_secs),
        kv_bytes_per_token,
        pinned_by,
        migration_limit: cfg.scheduler.migration_limit,
        priority_max_wait: Duration::from_secs(cfg.limits.priority_max_wait_secs),
    }
}

/// Request plans kept for `GET /v1/plans/requests`.
const PLAN_LOG_CAPACITY: usize = 1024;

/// A gateway's control plane: its worker registry and the cluster secret its calls must
/// be signed with (`None`: an insecure cluster).
pub struct ControlPlane {
    pub registry: Arc<Registry>,
    pub secret: Option<genie_cluster_auth::ClusterSecret>,
}

/// Binds the configured address, prints `banner_for(address)` as the first stdout line
/// and serves the API until Ctrl-C / SIGTERM; then the server drains and every loop in
/// `bg` stops.
pub async fn serve_api(
    cfg: &ServeConfig,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    frontend: Arc<Frontend>,
    dispatcher: Arc<Dispatcher>,
    control: Option<ControlPlane>,
    bg: &Background,
    banner_for: impl FnOnce(std::net::SocketAddr, Option<std::net::SocketAddr>) -> String,
) -> Result<()> {
    let edge = Edge::new(cfg, genie_server::edge::shutting_down)?;
    let addr = format!("{}:{}", cfg.server.host, cfg.server.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot bind {addr}"))?;
    let local = listener.local_addr()?;
    let (registry, cluster) = match control {
        Some(c) => (Some(c.registry), c.secret),
        None => (None, None),
    };
    let internal = match (registry.is_some(), cfg.server.internal_port) {
        (true, Some(port)) => {
            let host = cfg
                .server
                .internal_host
                .as_ref()
                .unwrap_or(&cfg.server.host);
            let addr = format!("{host}:{port}");
            let l = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot bind the internal listener {addr}"))?;
            Some(l)
        }
        _ => None,
    };
    let internal_local = internal.as_ref().map(|l| l.local_addr()).transpose()?;
    bg.spawn(metrics_upkeep(metrics.clone(), bg.shutdown.clone()));
    let state = AppState {
        frontend,
        dispatcher,
        registry,
        api_keys: Arc::new(
            cfg.server
                .api_keys
                .iter()
                .map(|k| k.key().to_string())
                .collect(),
        ),
        tenants: Arc::new(genie_server::tenant::Tenants::new(&cfg.server.api_keys)),
        responses: Default::default(),
        metrics,
        plans: Arc::new(PlanLog::new(PLAN_LOG_CAPACITY)),
        max_body_bytes: cfg.limits.max_body_bytes,
        stall_timeout: Duration::from_secs(cfg.limits.stream_stall_secs),
        cost_profile: match &cfg.plan.cost_profile {
            Some(path) => Some(Arc::new(load_cost_profile(path)?)),
            None => None,
        },
    };
    let opts = AppOptions {
        cluster: cluster.map(|s| {
            genie_cluster_auth::http::Guard::new(
                Arc::new(genie_cluster_auth::Verifier::new(s)),
                cfg.limits.max_body_bytes,
            )
        }),
        metrics_need_key: cfg.server.metrics_need_key,
        plan_needs_key: cfg.server.plan_needs_key,
    };
    banner(&banner_for(local, internal_local))?;
    match internal {
        None => bg.serve(listener, build_app_with(state, opts), edge).await,
        Some(l) => {
            let (public, control) = build_apps(state, opts);
            let control = control.fallback(genie_server::app::not_found);
            // The control plane gets the same edge (timeouts, connection cap, envelope
            // errors) on its own listener; it closes when the public one has drained.
            let control =
                genie_server::edge::layer(control, &edge.cfg, Default::default(), edge.refuse);
            let (cfg, stop) = (edge.cfg.clone(), bg.shutdown.clone());
            bg.spawn(async move {
                let r = genie_server::edge::serve(
                    l,
                    control,
                    &cfg,
                    stop,
                    crate::process::CONNECTION_GRACE,
                )
                .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "the internal listener stopped");
                }
            });
            bg.serve(listener, public, edge).await
        }
    }
}

/// Starts `genie serve`'s workers (threads over the shared weights) in a pool.
fn local_pool(cfg: &ServeConfig, model: &Model) -> Result<LocalPool> {
    let changed = Arc::new(Notify::new());
    let transport = InProcessTransport::new();
    let mut decode = Vec::new();
    for i in 0..cfg.decode.workers {
        let notify = Arc::clone(&changed);
        decode.push(DecodeWorker::start(
            DecodeConfig {
                id: WorkerId(100 + i as u64),
                max_batch: cfg.decode.max_batch,
                max_prefill_tokens: cfg.decode.max_prefill_tokens,
                prefill_chunk_tokens: cfg.decode.prefill_chunk_tokens,
                transfer_timeout: Duration::from_secs(cfg.decode.transfer_timeout_secs),
                kv_wait_timeout: Duration::from_secs(cfg.decode.kv_wait_timeout_secs),
                queue: genie_decode_worker::DEFAULT_QUEUE,
                prefix_cache_bytes: cfg.decode.prefix_cache_bytes,
            },
            model.share(cfg.decode.threads)?,
            KvBudget::new(usize::try_from(cfg.decode.kv_cache_bytes).unwrap_or(usize::MAX)),
            Arc::new(move || notify.notify_waiters()),
            None,
        )?);
    }
    let mut prefill = Vec::new();
    if cfg.scheduler.mode == Mode::Disaggregated {
        for i in 0..cfg.prefill.workers {
            prefill.push(PrefillWorker::start(
                PrefillConfig {
                    id: WorkerId(i as u64),
                    max_batch_tokens: cfg.prefill.max_batch_tokens,
                    prefix_cache_bytes: cfg.prefill.prefix_cache_bytes,
                    queue: genie_prefill_worker::DEFAULT_QUEUE,
                },
                model.share(cfg.prefill.threads)?,
                Arc::new(transport.clone()),
            )?);
        }
    }
    Ok(LocalPool::new(prefill, decode, &transport, changed))
}

pub fn run(args: ServeArgs) -> Result<()> {
    let cfg = args.config_with_overrides()?;
    // Installed before the workers start, so their metrics are recorded from the first.
    let metrics = genie_server::metrics_setup::install()?;
    let path = model_path(&cfg)?;
    let g = load_model(&path)?;
    let text = ModelText::from_meta(g.meta())?;
    let model = Model::from_gguf(g, 1)?;
    let plan = crate::plan_setup::served_plan(&cfg, &text, Transport::InProcess)?;
    let pool = Arc::new(local_pool(&cfg, &model)?);
    drop(model);
    let kv_bytes_per_token = text.kv_shape().bytes_per_token();
    let dcfg = dispatch_config(&cfg, &plan, kv_bytes_per_token);
    let dispatcher = Arc::new(Dispatcher::new(dcfg, pool, plan));
    let frontend = Arc::new(frontend(&cfg, text, &path)?);
    let served_name = frontend.served_name.clone();
    let mode = dispatcher.mode_label();
    let banner_for = |local, _| {
        format!(
            "Genie serving `{served_name}` on {}://{local} ({mode}; {} prefill + {} decode workers; API keys {})",
            crate::tls::scheme(&cfg),
            if mode == "colocated" { 0 } else { cfg.prefill.workers },
            cfg.decode.workers,
            if cfg.server.api_keys.is_empty() { "off" } else { "on" },
        )
    };
    let bg = Background::default();
    http_runtime()?.block_on(serve_api(
        &cfg,
        metrics,
        frontend,
        Arc::clone(&dispatcher),
        None,
        &bg,
        banner_for,
    ))?;
    // The workers stop (and their threads are joined) when the pool drops with the
    // dispatcher, after the server has drained.
    drop(dispatcher);
    Ok(())
}

/// `plan.cost_profile`, read and checked; an error names the field and the file.
fn load_cost_profile(
    path: &std::path::Path,
) -> anyhow::Result<genie_scheduler::cost_profile::CostProfile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("plan.cost_profile: cannot read {}", path.display()))?;
    genie_scheduler::cost_profile::CostProfile::from_json(&text)
        .map_err(|e| anyhow::anyhow!("plan.cost_profile: {}: {e}", path.display()))
}
