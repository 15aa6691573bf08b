//! What every long-running role of the binary shares: the HTTP runtime, the signals, the
//! orderly shutdown (drain, then the spawned loops), where it listens, its start-up line.

use crate::config::ServeConfig;
use anyhow::{Context, Result};
use genie_server::edge::{Drain, EdgeConfig, Refusal};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The runtime the HTTP side runs on (compute has its own threads).
pub fn http_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("genie-http")
        .enable_all()
        .build()?)
}

/// SIGTERM and Ctrl-C (SIGINT) as one stream of shutdown requests. The handlers are
/// installed once, so a second signal during the drain is seen, not lost between two
/// registrations.
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves at the next SIGTERM or Ctrl-C.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = one(&mut self.term) => {},
                _ = one(&mut self.int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

/// How a process's listener is served and drained.
#[derive(Clone)]
pub struct Edge {
    pub cfg: EdgeConfig,
    /// How long requests in flight may take to finish after the first signal.
    pub drain_timeout: Duration,
    /// What a new request gets while draining.
    pub refuse: Refusal,
}

impl Edge {
    /// The config's edge settings, with its TLS certificate loaded when it has one.
    pub fn new(cfg: &ServeConfig, refuse: Refusal) -> Result<Self> {
        let mut edge = cfg.server.edge();
        edge.tls = crate::tls::server(cfg)?;
        Ok(Edge {
            cfg: edge,
            drain_timeout: Duration::from_secs(cfg.server.drain_timeout_secs),
            refuse,
        })
    }
}

/// A draining worker's answer to new work: the typed `stopped` refusal, which the
/// gateway reads as "place it elsewhere".
pub fn stopped_refusal() -> axum::response::Response {
    use axum::response::IntoResponse;
    genie_worker_core::AdmitError::Stopped.into_response()
}

/// Streams given this long to take their error event once the drain deadline passed.
const STREAM_STOP_GRACE: Duration = Duration::from_secs(2);
/// Connections given this long to close once the listener stops.
pub const CONNECTION_GRACE: Duration = Duration::from_secs(3);

/// The loops a process spawns beside its HTTP server, and the tokens that stop them:
/// the first signal cancels `draining` (new work refused, a worker deregisters, requests
/// in flight go on), the end of the drain cancels `shutdown`, then every loop is awaited.
#[derive(Clone, Default)]
pub struct Background {
    pub shutdown: CancellationToken,
    pub draining: CancellationToken,
    pub tasks: TaskTracker,
}

impl Background {
    /// Spawns a loop that must end when [`Background::shutdown`] is cancelled.
    pub fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(f);
    }

    /// Serves `app` on `listener` until SIGTERM / Ctrl-C (or [`Background::shutdown`]),
    /// then drains: new requests get `edge.refuse`, requests in flight have
    /// `edge.drain_timeout` to finish; past it, or at a second signal, open streams get
    /// an error event and end. Then the listener closes and every loop stops.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        app: axum::Router,
        edge: Edge,
    ) -> Result<()> {
        let mut signals = Signals::new();
        let drain = Drain::new();
        let app = genie_server::edge::layer(app, &edge.cfg, drain.clone(), edge.refuse);
        let stop_listener = CancellationToken::new();
        let mut server = tokio::spawn({
            let (cfg, stop) = (edge.cfg.clone(), stop_listener.clone());
            async move { genie_server::edge::serve(listener, app, &cfg, stop, CONNECTION_GRACE).await }
        });
        tokio::select! {
            _ = signals.next() => {},
            _ = self.shutdown.cancelled() => {},
            r = &mut server => {
                self.stop().await;
                r.context("the HTTP server task failed")??;
                return Ok(());
            }
        }
        drain.begin();
        self.draining.cancel();
        tracing::info!(
            in_flight = drain.in_flight(),
            timeout_s = edge.drain_timeout.as_secs_f64(),
            "draining: new requests are refused, requests in flight may finish"
        );
        let cut = tokio::select! {
            _ = drain.idle() => false,
            _ = tokio::time::sleep(edge.drain_timeout) => {
                tracing::warn!(in_flight = drain.in_flight(), "drain deadline passed; ending open streams");
                true
            }
            _ = signals.next() => {
                tracing::warn!(in_flight = drain.in_flight(), "second signal; ending open streams now");
                true
            }
        };
        if cut {
            drain.stop_streams();
            let _ = tokio::time::timeout(STREAM_STOP_GRACE, drain.idle()).await;
        }
        stop_listener.cancel();
        let served = server.await;
        self.stop().await;
        served.context("the HTTP server task failed")??;
        Ok(())
    }

    /// Stops every loop and waits for them (bounded: a stuck loop is reported, not
    /// waited on forever).
    pub async fn stop(&self) {
        self.draining.cancel();
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background loops did not stop within 10 s");
        }
    }
}

/// Keeps the Prometheus histograms bounded until shutdown.
pub async fn metrics_upkeep(
    h: metrics_exporter_prometheus::PrometheusHandle,
    stop: CancellationToken,
) {
    let mut t = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = t.tick() => h.run_upkeep(),
        }
    }
}

/// `GET /metrics` of a worker process.
pub fn metrics_route(h: metrics_exporter_prometheus::PrometheusHandle) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move { h.render() }),
    )
}

/// Prints the start-up line (the first stdout line; tests and scripts read the address
/// from it).
pub fn banner(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
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
    /// Seconds sequences in flight may take to finish after SIGTERM / Ctrl-C (default 30).
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<u64>,
}

impl Listen {
    /// Binds the control API's port; the listener and the address others use
    /// (`scheme://host:port`).
    pub async fn bind_control(&self, scheme: &str) -> Result<(tokio::net::TcpListener, String)> {
        let listener = tokio::net::TcpListener::bind((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot bind {}:{}", self.host, self.port))?;
        let address = format!("{scheme}://{}", self.advertised(listener.local_addr()?)?);
        Ok((listener, address))
    }

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
