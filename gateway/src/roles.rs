//! `genie gateway`, `genie prefill-worker`, `genie decode-worker`: the roles of `genie
//! serve` as separate processes. Workers serve their control API over HTTP (and, decode, a
//! TCP KV receiver), register with the gateway and heartbeat their load.

use crate::backend::Backend;
use crate::config::ServeConfig;
use crate::frontend::Frontend;
use crate::remote::RemotePool;
use crate::serve::{http_runtime, load_engine, serve_api, shutdown_signal, ServeArgs};
use anyhow::{Context, Result};
use clap::Args;
use genie_decode_worker::service::{self as dsvc, DecodeService};
use genie_decode_worker::{DecodeConfig, DecodeWorker};
use genie_engine::kv_budget::KvBudget;
use genie_kv_transfer::{Deliver, NetTransport, TransferRegistry};
use genie_prefill_worker::service::{self as psvc, PrefillService};
use genie_prefill_worker::{PrefillConfig, PrefillWorker};
use genie_protocol::worker::{RegisterRequest, RegisterResponse, WorkerRole, WorkerStatus};
use genie_protocol::WorkerId;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The gateway to register with (http://host:port). Without it the worker waits to be
    /// polled by a gateway that lists it under `workers.static`.
    #[arg(long, env = "GENIE_GATEWAY")]
    pub gateway: Option<String>,
    #[command(flatten)]
    pub listen: Listen,
    /// How decode workers receive KV: `tcp`, or `rdma` (builds with `--features rdma`; needs
    /// an explicit --kv-port and an RDMA device).
    #[arg(long, default_value = "tcp")]
    pub kv_transport: String,
    /// Hardware label reported to the gateway.
    #[arg(long, default_value = "cpu")]
    pub hardware: String,
    /// TOML configuration (the `prefill` / `decode` / `model` sections apply).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// A llama GGUF file (default: GENIE_MODEL, else the default model).
    #[arg(long, env = "GENIE_MODEL")]
    pub model: Option<std::path::PathBuf>,
    /// Compute threads (0 = one per core).
    #[arg(long, env = "GENIE_THREADS")]
    pub threads: Option<usize>,
}

fn worker_cfg(a: &WorkerArgs) -> Result<ServeConfig> {
    let sa = ServeArgs {
        config: a.config.clone(),
        host: None,
        port: None,
        model: a.model.clone(),
        colocated: false,
        api_keys: Vec::new(),
        threads: a.threads,
    };
    sa.config_with_overrides()
}

/// Where a worker process listens and how others reach it.
#[derive(clap::Args, Debug, Clone)]
pub struct Listen {
    /// Address for this worker's control API and KV port (default 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port for the control API (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Port for the KV receiver (decode workers, later pipeline stages; 0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub kv_port: u16,
    /// Host name the gateway and other workers should use to reach this worker (default:
    /// the bound address).
    #[arg(long)]
    pub advertise_host: Option<String>,
}

impl Listen {
    /// `host:port` others use for a socket bound at `bound`.
    pub fn advertised(&self, bound: SocketAddr) -> Result<String> {
        match &self.advertise_host {
            Some(h) => Ok(format!("{h}:{}", bound.port())),
            None if bound.ip().is_unspecified() => {
                anyhow::bail!("--host {} binds every interface: give --advertise-host so others can reach this worker", bound.ip())
            }
            None => Ok(bound.to_string()),
        }
    }
}

fn advertised(a: &WorkerArgs, bound: SocketAddr) -> Result<String> {
    a.listen.advertised(bound)
}

/// Registers, then heartbeats forever; registers again when the gateway forgot us.
async fn heartbeat_loop(
    gateway: String,
    mut reg: RegisterRequest,
    status: impl Fn() -> WorkerStatus,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client without TLS builds");
    let gateway = gateway.trim_end_matches('/').to_string();
    loop {
        reg.status = status();
        let r = client
            .post(format!("{gateway}/internal/workers"))
            .json(&reg)
            .send()
            .await;
        let resp: RegisterResponse = match r {
            Ok(r) if r.status().is_success() => match r.json().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "bad registration answer");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            Ok(r) => {
                tracing::warn!(status = %r.status(), "gateway refused registration");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "gateway unreachable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let every = Duration::from_millis(resp.heartbeat_interval_ms.max(50));
        loop {
            tokio::time::sleep(every).await;
            let r = client
                .post(format!(
                    "{gateway}/internal/workers/{}/heartbeat",
                    resp.id.0
                ))
                .json(&status())
                .send()
                .await;
            match r {
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => break,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }
}

/// Starts the RDMA KV receiver; its endpoint is `rdma://host:port`.
#[cfg(feature = "rdma")]
fn start_rdma(
    a: &WorkerArgs,
    registry: &TransferRegistry,
    deliver: Deliver,
    stall: Duration,
) -> Result<String> {
    anyhow::ensure!(
        a.listen.kv_port != 0,
        "--kv-transport rdma needs an explicit --kv-port"
    );
    let bind = format!("{}:{}", a.listen.host, a.listen.kv_port);
    let ep = format!("rdma://{}", advertised(a, bind.parse()?)?);
    let reg = registry.clone();
    tokio::spawn(async move {
        if let Err(e) = genie_kv_transfer::rdma::serve(&bind, reg, deliver, stall).await {
            tracing::error!(error = %e, "the RDMA KV receiver stopped");
        }
    });
    Ok(ep)
}

#[cfg(not(feature = "rdma"))]
fn start_rdma(_: &WorkerArgs, _: &TransferRegistry, _: Deliver, _: Duration) -> Result<String> {
    anyhow::bail!(
        "this genie was built without RDMA: rebuild with `cargo build --release --features rdma`"
    )
}

async fn metrics_route(
    axum::extract::State(h): axum::extract::State<metrics_exporter_prometheus::PrometheusHandle>,
) -> String {
    h.render()
}

pub fn run_worker(a: WorkerArgs, role: WorkerRole) -> Result<()> {
    let cfg = worker_cfg(&a)?;
    let handle = crate::metrics_setup::install()?;
    let (engine, _path) = load_engine(&cfg)?;
    let model = engine.model;
    http_runtime()?.block_on(async move {
        let l = &a.listen;
        let listener = tokio::net::TcpListener::bind((l.host.as_str(), l.port))
            .await
            .with_context(|| format!("cannot bind {}:{}", l.host, l.port))?;
        let address = format!("http://{}", advertised(&a, listener.local_addr()?)?);
        let metrics_router = axum::Router::new()
            .route("/metrics", axum::routing::get(metrics_route))
            .with_state(handle.clone());
        let (router, kv_endpoint, status): (
            axum::Router,
            Option<String>,
            Box<dyn Fn() -> WorkerStatus + Send>,
        ) = match role {
            WorkerRole::Decode => {
                let registry = TransferRegistry::new();
                let timeout = Duration::from_secs(cfg.decode.transfer_timeout_secs);
                let worker = DecodeWorker::start(
                    DecodeConfig {
                        id: WorkerId(0),
                        max_batch: cfg.decode.max_batch,
                        max_prefill_tokens: cfg.decode.max_prefill_tokens,
                        transfer_timeout: timeout,
                    },
                    model.share(cfg.decode.threads)?,
                    KvBudget::new(usize::try_from(cfg.decode.kv_cache_bytes).unwrap_or(usize::MAX)),
                    Arc::new(|| {}),
                )?;
                let kv_endpoint = match a.kv_transport.as_str() {
                    "tcp" => {
                        let kv = tokio::net::TcpListener::bind((l.host.as_str(), l.kv_port))
                            .await
                            .with_context(|| {
                                format!("cannot bind the KV port {}:{}", l.host, l.kv_port)
                            })?;
                        let ep = advertised(&a, kv.local_addr()?)?;
                        tokio::spawn(genie_kv_transfer::tcp::serve(
                            kv,
                            registry.clone(),
                            worker.kv_deliverer(),
                            timeout,
                        ));
                        ep
                    }
                    "rdma" => start_rdma(&a, &registry, worker.kv_deliverer(), timeout)?,
                    other => anyhow::bail!("--kv-transport {other}: use tcp or rdma"),
                };
                let svc = Arc::new(DecodeService {
                    worker,
                    registry,
                    transfer_timeout: timeout,
                });
                let s2 = Arc::clone(&svc);
                (
                    dsvc::router(svc),
                    Some(kv_endpoint),
                    Box::new(move || dsvc::status(&s2.worker)),
                )
            }
            WorkerRole::Prefill => {
                let worker = PrefillWorker::start(
                    PrefillConfig {
                        id: WorkerId(0),
                        max_batch_tokens: cfg.prefill.max_batch_tokens,
                    },
                    model.share(cfg.prefill.threads)?,
                )?;
                let svc = Arc::new(PrefillService {
                    worker,
                    transport: Arc::new(NetTransport::default()),
                });
                let s2 = Arc::clone(&svc);
                (
                    psvc::router(svc),
                    None,
                    Box::new(move || psvc::status(&s2.worker)),
                )
            }
        };
        drop(model);
        {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "Genie {} worker on {address}{}; {}",
                match role {
                    WorkerRole::Prefill => "prefill",
                    WorkerRole::Decode => "decode",
                },
                kv_endpoint
                    .as_ref()
                    .map(|k| format!(" (KV on {k})"))
                    .unwrap_or_default(),
                match &a.gateway {
                    Some(g) => format!("registering with {g}"),
                    None => "static (no --gateway: waiting to be polled)".into(),
                }
            )?;
            out.flush()?;
        }
        let reg = RegisterRequest {
            role,
            address,
            kv_endpoint,
            hardware: a.hardware.clone(),
            status: WorkerStatus::default(),
        };
        if let Some(g) = a.gateway.clone() {
            tokio::spawn(heartbeat_loop(g, reg, status));
        }
        axum::serve(listener, router.merge(metrics_router))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        anyhow::Ok(())
    })
}

/// `genie gateway`: the HTTP API over registered (or static) worker processes.
pub fn run_gateway(args: ServeArgs) -> Result<()> {
    let cfg = args.config_with_overrides()?;
    let metrics = crate::metrics_setup::install()?;
    let (engine, path) = load_engine(&cfg)?;
    let kv_bytes_per_token = engine.model.kv_shape().bytes_per_token();
    let plan =
        crate::plan_config::served_plan(&cfg, &engine.model, genie_scheduler::Transport::Tcp)?;
    let frontend = Arc::new(Frontend::new(&cfg, engine, &path));
    let pool = Arc::new(RemotePool::new(
        Duration::from_millis(cfg.workers.heartbeat_ms),
        &cfg.workers.statics,
    ));
    let backend = Arc::new(Backend::remote(
        &cfg,
        Arc::clone(&pool),
        kv_bytes_per_token,
        plan,
    ));
    let (served_name, mode) = (frontend.served_name.clone(), backend.mode_label());
    let banner = |local| {
        format!("Genie gateway serving `{served_name}` on http://{local} ({mode}; workers register at http://{local}/internal/workers)")
    };
    http_runtime()?.block_on(async {
        let p = Arc::clone(&pool);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(p.heartbeat);
            loop {
                t.tick().await;
                p.sweep();
                p.poll_static().await;
            }
        });
        serve_api(&cfg, frontend, backend, metrics, banner).await
    })
}
