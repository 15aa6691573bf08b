//! `genie prefill-worker` and `genie decode-worker`: the roles of `genie serve` as
//! separate processes. A worker serves its control API over HTTP (and, decode, a KV
//! receiver), registers with the gateway and heartbeats its load until shutdown. With the
//! cluster secret every `/internal/*` call it serves must be signed, every call it makes
//! (registration, heartbeats) is, and its KV receiver and sender use the KV hello;
//! `/health` and `/metrics` stay open (they carry no prompt text and change nothing).

use crate::config::ServeConfig;
use crate::process::{
    banner, http_runtime, metrics_route, stopped_refusal, Background, Edge, Listen,
};
use crate::run_serve::{load_model, model_path, ServeArgs};
use anyhow::{Context, Result};
use clap::Args;
use genie_cluster_auth::http::{send_signed, verify_internal, Guard};
use genie_cluster_auth::{ClusterSecret, Verifier};
use genie_decode_worker::{DecodeConfig, DecodeWorker};
use genie_engine::kv_budget::KvBudget;
use genie_engine::model::Model;
use genie_kv_transfer::{Deliver, NetTransport, TcpTransport, TransferRegistry};
use genie_prefill_worker::{PrefillConfig, PrefillWorker};
use genie_protocol::worker::{RegisterRequest, RegisterResponse, WorkerRole, WorkerStatus};
use genie_protocol::WorkerId;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    /// A GGUF model file (llama, qwen2, qwen3 or gemma3) (default: GENIE_MODEL, else the default model).
    #[arg(long, env = "GENIE_MODEL")]
    pub model: Option<std::path::PathBuf>,
    /// Compute threads (0 = one per core).
    #[arg(long, env = "GENIE_THREADS")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

fn worker_cfg(a: &WorkerArgs) -> Result<ServeConfig> {
    let sa = ServeArgs {
        config: a.config.clone(),
        host: None,
        port: None,
        model: a.model.clone(),
        colocated: false,
        threads: a.threads,
        cluster: a.cluster.clone(),
        tls: a.tls.clone(),
        drain_timeout: a.listen.drain_timeout,
        ..ServeArgs::default()
    };
    sa.config_with_overrides()
}

/// Sleeps `d`, or returns false at once when shutdown begins.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// What heartbeats read of a worker: its full status (which takes the KV events since the
/// last report), and its load alone (cheap, read often).
pub struct Beat {
    pub status: Box<dyn Fn() -> WorkerStatus + Send + Sync>,
    pub load: Box<dyn Fn() -> u64 + Send + Sync>,
}

/// How often a heartbeat loop looks at the worker's load between beats.
const LOAD_POLL: Duration = Duration::from_millis(50);

/// Registers, then heartbeats until the drain begins; registers again when the gateway
/// forgot us. A worker registered when the drain begins deregisters, so the gateway stops
/// placing on it at once instead of after missed heartbeats.
async fn heartbeat_loop(
    gateway: String,
    reg: RegisterRequest,
    beat: Beat,
    secret: Option<ClusterSecret>,
    client: reqwest::ClientBuilder,
    stop: CancellationToken,
) {
    let secret = secret.as_ref();
    let client = match client.timeout(Duration::from_secs(5)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client for the gateway; not registering");
            return;
        }
    };
    let gateway = gateway.trim_end_matches('/').to_string();
    let mut registered = None;
    heartbeats(
        &client,
        &gateway,
        reg,
        &beat,
        secret,
        &stop,
        &mut registered,
    )
    .await;
    if let Some(id) = registered {
        let url = format!("{gateway}/internal/workers/{}/deregister", id.0);
        match send_signed(client.post(url), secret).await {
            Ok(r) if r.status().is_success() => tracing::info!(%id, "deregistered"),
            Ok(r) => tracing::warn!(status = %r.status(), "the gateway refused deregistration"),
            Err(e) => tracing::warn!(error = %e, "deregistration failed"),
        }
    }
}

/// Beats every interval, and early when the worker goes idle after its last beat said it
/// was busy: placement (`kv_aware` above all) reads the load of the last beat, and a stale
/// "busy" sends work away from an idle worker that holds its prefix. At most one beat per
/// [`LOAD_POLL`], and only on that transition, so a busy worker beats no more often.
async fn heartbeats(
    client: &reqwest::Client,
    gateway: &str,
    mut reg: RegisterRequest,
    beat: &Beat,
    secret: Option<&ClusterSecret>,
    stop: &CancellationToken,
    registered: &mut Option<WorkerId>,
) {
    loop {
        *registered = None;
        reg.status = (beat.status)();
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = send_signed(client.post(format!("{gateway}/internal/workers")).json(&reg), secret) => r,
        };
        let resp: RegisterResponse = match r {
            Ok(r) if r.status().is_success() => match r.json().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "bad registration answer");
                    if !pause(Duration::from_secs(1), stop).await {
                        return;
                    }
                    continue;
                }
            },
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                tracing::warn!(status = %r.status(), "the gateway refused our cluster signature: both must use the same cluster secret, and clocks must agree within 30 s");
                if !pause(Duration::from_secs(1), stop).await {
                    return;
                }
                continue;
            }
            Ok(r) => {
                let status = r.status();
                // The gateway says which field and why (the OpenAI error envelope).
                let why = r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or_default();
                tracing::warn!(%status, reason = %why, "gateway refused registration");
                if !pause(Duration::from_secs(1), stop).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "gateway unreachable; retrying");
                if !pause(Duration::from_secs(1), stop).await {
                    return;
                }
                continue;
            }
        };
        *registered = Some(resp.id);
        let every = Duration::from_millis(resp.heartbeat_interval_ms.max(50));
        let mut sent_load = reg.status.load;
        loop {
            let since = tokio::time::Instant::now();
            loop {
                if !pause(LOAD_POLL.min(every), stop).await {
                    return;
                }
                if since.elapsed() >= every || (sent_load > 0 && (beat.load)() == 0) {
                    break;
                }
            }
            let url = format!("{gateway}/internal/workers/{}/heartbeat", resp.id.0);
            let status = (beat.status)();
            sent_load = status.load;
            match send_signed(client.post(url).json(&status), secret).await {
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
    bg: &Background,
) -> Result<String> {
    anyhow::ensure!(
        a.listen.kv_port != 0,
        "--kv-transport rdma needs an explicit --kv-port"
    );
    let bind = format!("{}:{}", a.listen.host, a.listen.kv_port);
    let ep = format!("rdma://{}", a.listen.advertised(bind.parse()?)?);
    let reg = registry.clone();
    let stop = bg.shutdown.clone();
    bg.spawn(async move {
        if let Err(e) = genie_kv_transfer::rdma::serve(&bind, reg, deliver, stall, stop).await {
            tracing::error!(error = %e, "the RDMA KV receiver stopped");
        }
    });
    Ok(ep)
}

#[cfg(not(feature = "rdma"))]
fn start_rdma(
    _: &WorkerArgs,
    _: &TransferRegistry,
    _: Deliver,
    _: Duration,
    _: &Background,
) -> Result<String> {
    anyhow::bail!(
        "this genie was built without RDMA: rebuild with `cargo build --release --features rdma`"
    )
}

/// The decode worker with its KV receiver: its router, KV endpoint and status source.
async fn decode_role(
    a: &WorkerArgs,
    cfg: &ServeConfig,
    model: &Model,
    verifier: Option<&Arc<Verifier>>,
    bg: &Background,
) -> Result<(axum::Router, String, Beat)> {
    let l = &a.listen;
    let registry = match verifier {
        Some(v) => TransferRegistry::with_auth(Arc::clone(v)),
        None => TransferRegistry::new(),
    };
    let timeout = Duration::from_secs(cfg.decode.transfer_timeout_secs);
    let worker = Arc::new(DecodeWorker::start(
        DecodeConfig {
            id: WorkerId(0),
            max_batch: cfg.decode.max_batch,
            max_prefill_tokens: cfg.decode.max_prefill_tokens,
            prefill_chunk_tokens: cfg.decode.prefill_chunk_tokens,
            transfer_timeout: timeout,
            kv_wait_timeout: Duration::from_secs(cfg.decode.kv_wait_timeout_secs),
            queue: genie_decode_worker::DEFAULT_QUEUE,
            prefix_cache_bytes: cfg.decode.prefix_cache_bytes,
        },
        model.share(cfg.decode.threads)?,
        KvBudget::new(usize::try_from(cfg.decode.kv_cache_bytes).unwrap_or(usize::MAX)),
        Arc::new(|| {}),
        Some(registry.clone()),
    )?);
    let kv_endpoint = match a.kv_transport.as_str() {
        "tcp" => {
            let kv = tokio::net::TcpListener::bind((l.host.as_str(), l.kv_port))
                .await
                .with_context(|| format!("cannot bind the KV port {}:{}", l.host, l.kv_port))?;
            let ep = l.advertised(kv.local_addr()?)?;
            bg.spawn(genie_kv_transfer::tcp::serve(
                kv,
                registry,
                worker.kv_deliverer(),
                timeout,
                bg.shutdown.clone(),
            ));
            ep
        }
        "rdma" => start_rdma(a, &registry, worker.kv_deliverer(), timeout, bg)?,
        other => anyhow::bail!("--kv-transport {other}: use tcp or rdma"),
    };
    let (w, l) = (Arc::clone(&worker), Arc::clone(&worker));
    Ok((
        genie_decode_worker::service::router(worker),
        kv_endpoint,
        Beat {
            status: Box::new(move || w.status()),
            load: Box::new(move || l.load()),
        },
    ))
}

pub fn run(a: WorkerArgs, role: WorkerRole) -> Result<()> {
    let cfg = worker_cfg(&a)?;
    let role_name = match role {
        WorkerRole::Prefill => "genie prefill-worker",
        WorkerRole::Decode => "genie decode-worker",
    };
    let secret = crate::cluster::secret(&a.cluster, &cfg, role_name)?;
    let verifier = secret.clone().map(|s| Arc::new(Verifier::new(s)));
    let handle = genie_server::metrics_setup::install()?;
    // TLS files are read before anything starts: a bad one stops the worker here.
    let edge = Edge::new(&cfg, stopped_refusal)?;
    let client = crate::tls::client(&cfg)?;
    let model = Model::from_gguf(load_model(&model_path(&cfg)?)?, 1)?;
    let bg = Background::default();
    http_runtime()?.block_on(async move {
        let (listener, address) = a.listen.bind_control(crate::tls::scheme(&cfg)).await?;
        let (router, kv_endpoint, beat): (axum::Router, Option<String>, Beat) = match role {
            WorkerRole::Decode => {
                let (r, ep, s) = decode_role(&a, &cfg, &model, verifier.as_ref(), &bg).await?;
                (r, Some(ep), s)
            }
            WorkerRole::Prefill => {
                let worker = Arc::new(PrefillWorker::start(
                    PrefillConfig {
                        id: WorkerId(0),
                        max_batch_tokens: cfg.prefill.max_batch_tokens,
                        prefix_cache_bytes: cfg.prefill.prefix_cache_bytes,
                        queue: genie_prefill_worker::DEFAULT_QUEUE,
                    },
                    model.share(cfg.prefill.threads)?,
                    Arc::new(NetTransport {
                        tcp: TcpTransport {
                            secret: secret.clone(),
                            ..TcpTransport::default()
                        },
                    }),
                )?);
                let (w, l) = (Arc::clone(&worker), Arc::clone(&worker));
                (
                    genie_prefill_worker::service::router(worker),
                    None,
                    Beat {
                        status: Box::new(move || w.status()),
                        load: Box::new(move || l.load()),
                    },
                )
            }
        };
        drop(model);
        banner(&format!(
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
        ))?;
        let reg = RegisterRequest {
            role,
            address,
            kv_endpoint,
            hardware: a.hardware.clone(),
            status: WorkerStatus::default(),
        };
        if let Some(g) = a.gateway.clone() {
            bg.spawn(heartbeat_loop(
                g,
                reg,
                beat,
                secret,
                client,
                bg.draining.clone(),
            ));
        }
        let router = match verifier {
            Some(v) => router.layer(axum::middleware::from_fn_with_state(
                Guard::new(v, cfg.limits.max_body_bytes),
                verify_internal,
            )),
            None => router,
        };
        bg.serve(listener, router.merge(metrics_route(handle)), edge)
            .await
    })
}
