//! `genie stage-worker`: one pipeline stage as its own process. It runs layers
//! `--layers A..B` of the model, keeps their KV cache, receives hidden states on its KV
//! port (stages after the first) and sends its output to the next hop named per sequence.
//! Its control API is `genie_pipeline::service` (every `/internal/*` call signed with the
//! cluster secret, as its KV connections open with the KV hello), plus `/metrics` and
//! `/health`, which stay open.

use crate::process::{
    banner, http_runtime, metrics_route, stopped_refusal, Background, Edge, Listen,
};
use crate::run_serve::{load_model, model_path, ServeArgs};
use anyhow::{Context, Result};
use clap::Args;
use genie_engine::model::Model;
use genie_pipeline::StageWorker;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct StageArgs {
    /// The layers this stage runs, `START..END` (e.g. 0..15 and 15..30 for two stages of
    /// a 30-layer model; `genie plan show --config configs/pipeline-2stage.toml` lists them).
    #[arg(long)]
    pub layers: String,
    #[command(flatten)]
    pub listen: Listen,
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

pub fn run(a: StageArgs) -> Result<()> {
    let layers = parse_layers(&a.layers)?;
    let cfg = ServeArgs {
        config: None,
        host: None,
        port: None,
        model: a.model.clone(),
        colocated: true,
        threads: a.threads,
        cluster: a.cluster.clone(),
        tls: a.tls.clone(),
        drain_timeout: a.listen.drain_timeout,
        ..ServeArgs::default()
    }
    .config_with_overrides()?;
    let secret = crate::cluster::secret(&a.cluster, &cfg, "genie stage-worker")?;
    let edge = Edge::new(&cfg, stopped_refusal)?;
    let metrics = genie_server::metrics_setup::install()?;
    let model = Model::from_gguf(load_model(&model_path(&cfg)?)?, a.threads.unwrap_or(0))?;
    let n_layers = model.config().n_layers;
    anyhow::ensure!(
        layers.end <= n_layers,
        "--layers {layers:?} goes past the model's {n_layers} layers"
    );
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
    let bg = Background::default();
    let worker = Arc::new(StageWorker::start(
        0,
        model,
        layers.clone(),
        rt.handle(),
        kv,
        secret.clone(),
        bg.shutdown.clone(),
    )?);
    rt.block_on(async move {
        let (listener, address) = a.listen.bind_control(crate::tls::scheme(&cfg)).await?;
        let mut app = genie_pipeline::service::router(Arc::clone(&worker));
        if let Some(s) = secret {
            app = app.layer(axum::middleware::from_fn_with_state(
                genie_cluster_auth::http::Guard::new(
                    Arc::new(genie_cluster_auth::Verifier::new(s)),
                    cfg.limits.max_body_bytes,
                ),
                genie_cluster_auth::http::verify_internal,
            ));
        }
        let app = app.merge(metrics_route(metrics));
        banner(&format!(
            "Genie stage worker (layers {}..{} of {n_layers}) on {address}{}",
            layers.start,
            layers.end,
            worker
                .kv_endpoint
                .as_ref()
                .map(|k| format!(" (KV on {k})"))
                .unwrap_or_default()
        ))?;
        bg.serve(listener, app, edge).await
    })
}
