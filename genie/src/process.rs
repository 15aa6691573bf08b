//! What every long-running role of the binary shares: the HTTP runtime, the shutdown
//! signal and the orderly shutdown of spawned loops, where it listens, its start-up line.

use anyhow::{Context, Result};
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

/// Resolves on Ctrl-C or SIGTERM.
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

/// The loops a process spawns beside its HTTP server, and the one token that stops them
/// all: a signal cancels it, the server drains, then every loop is awaited.
#[derive(Clone, Default)]
pub struct Background {
    pub shutdown: CancellationToken,
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

    /// Serves `app` on `listener` until Ctrl-C / SIGTERM, lets open requests finish, then
    /// stops every loop.
    pub async fn serve(&self, listener: tokio::net::TcpListener, app: axum::Router) -> Result<()> {
        genie_server::serve(listener, app, self.on_signal()).await?;
        self.stop().await;
        Ok(())
    }

    /// Cancels the token on Ctrl-C / SIGTERM; the returned future resolves when it is
    /// cancelled (by the signal or by anyone else).
    fn on_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let token = self.shutdown.clone();
        self.tasks.spawn({
            let token = token.clone();
            async move {
                tokio::select! {
                    _ = shutdown_signal() => token.cancel(),
                    _ = token.cancelled() => {}
                }
            }
        });
        async move { token.cancelled().await }
    }

    /// Stops every loop and waits for them (bounded: a stuck loop is reported, not
    /// waited on forever).
    pub async fn stop(&self) {
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
}

impl Listen {
    /// Binds the control API's port; the listener and the `http://` address others use.
    pub async fn bind_control(&self) -> Result<(tokio::net::TcpListener, String)> {
        let listener = tokio::net::TcpListener::bind((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot bind {}:{}", self.host, self.port))?;
        let address = format!("http://{}", self.advertised(listener.local_addr()?)?);
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
