//! `genie gateway`: the HTTP API over worker processes that register with it (or are
//! listed in its config). It reads the model's GGUF metadata only — tokenizer, chat
//! template, dimensions — never its tensor data.

use crate::process::{http_runtime, Background};
use crate::run_serve::{dispatch_config, frontend, model_path, serve_api, ControlPlane, ServeArgs};
use anyhow::Result;
use genie_engine::model_text::ModelText;
use genie_protocol::worker::WorkerRole;
use genie_router::{Dispatcher, Registry, RemotePool};
use std::sync::Arc;
use std::time::Duration;

pub fn run(args: ServeArgs) -> Result<()> {
    let cfg = args.config_with_overrides()?;
    let secret = crate::cluster::secret(&args.cluster, &cfg, "genie gateway")?;
    let metrics = genie_server::metrics_setup::install()?;
    let path = model_path(&cfg)?;
    let text = ModelText::open(&path)?;
    let plan = crate::plan_setup::served_plan(&cfg, &text, genie_scheduler::Transport::Tcp)?;
    // A worker's `--hardware` label must match the pool the plan put its role on.
    let registry = plan.stages.iter().fold(
        Registry::new(
            Duration::from_millis(cfg.workers.heartbeat_ms),
            &cfg.workers.statics,
        ),
        |reg, s| match s.op {
            genie_scheduler::Op::Prefill => {
                reg.expect_hardware(WorkerRole::Prefill, &s.pool, &s.hardware)
            }
            genie_scheduler::Op::Decode => {
                reg.expect_hardware(WorkerRole::Decode, &s.pool, &s.hardware)
            }
            _ => reg,
        },
    );
    let registry = Arc::new(registry);
    let pool = Arc::new(RemotePool::new(
        Arc::clone(&registry),
        secret.clone(),
        crate::tls::client(&cfg)?,
    )?);
    let dcfg = dispatch_config(&cfg, &plan, text.kv_shape().bytes_per_token());
    let dispatcher = Arc::new(Dispatcher::new(dcfg, Arc::clone(&pool) as _, plan));
    let frontend = Arc::new(frontend(&cfg, text, &path)?);
    let (served_name, mode) = (frontend.served_name.clone(), dispatcher.mode_label());
    let scheme = crate::tls::scheme(&cfg);
    let banner_for = |local, internal: Option<std::net::SocketAddr>| {
        let control = internal.unwrap_or(local);
        format!("Genie gateway serving `{served_name}` on {scheme}://{local} ({mode}; workers register at {scheme}://{control}/internal/workers)")
    };
    let bg = Background::default();
    http_runtime()?.block_on(async {
        bg.spawn(Arc::clone(&pool).upkeep(bg.shutdown.clone()));
        serve_api(
            &cfg,
            metrics,
            frontend,
            dispatcher,
            Some(ControlPlane { registry, secret }),
            &bg,
            banner_for,
        )
        .await
    })
}
