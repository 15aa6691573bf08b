//! Worker processes as the gateway sees them: [`registry`] (registration, heartbeats,
//! static workers polled, health) and [`client`] (starting a placed sequence on them over
//! their control APIs and merging the legs' event streams). [`RemotePool`] puts the two
//! behind the [`WorkerPool`](crate::WorkerPool) contract.

pub mod client;
pub mod registry;

pub use registry::{Registry, RegistryError, StaticWorker};

use crate::pool::{SeqSpec, StartError, WorkerPool};
use futures_util::future::BoxFuture;
use genie_cluster_auth::ClusterSecret;
use genie_protocol::worker::SeqEvent;
use genie_scheduler::{Placement, WorkerView};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Registered (or listed) worker processes, reached over HTTP, KV between them over TCP.
pub struct RemotePool {
    pub registry: Arc<Registry>,
    client: client::Signed,
}

impl RemotePool {
    /// A pool whose control calls go out on `http` (made with the cluster's TLS roots; a
    /// connect timeout of 3 s is added), signed with `secret` (`None`: an insecure cluster).
    pub fn new(
        registry: Arc<Registry>,
        secret: Option<ClusterSecret>,
        http: reqwest::ClientBuilder,
    ) -> reqwest::Result<Self> {
        Ok(RemotePool {
            registry,
            client: client::Signed {
                http: http.connect_timeout(Duration::from_secs(3)).build()?,
                secret,
            },
        })
    }

    /// Every heartbeat interval: marks silent workers unhealthy, forgets long-silent ones
    /// and polls the static workers, until `shutdown` is cancelled.
    pub async fn upkeep(self: Arc<Self>, shutdown: CancellationToken) {
        let mut t = tokio::time::interval(self.registry.heartbeat);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = t.tick() => {}
            }
            self.registry.sweep();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = client::poll_static(&self.client, &self.registry) => {}
            }
        }
    }
}

impl WorkerPool for RemotePool {
    fn views(&self) -> Vec<WorkerView> {
        self.registry.views()
    }

    fn cached_tokens(
        &self,
        prompt: &[u32],
    ) -> std::collections::HashMap<genie_protocol::WorkerId, usize> {
        self.registry.kv.cached_tokens(prompt)
    }

    fn routed(&self, worker: genie_protocol::WorkerId, prompt: &[u32]) {
        self.registry.kv.assume(worker, prompt)
    }

    fn changed(&self) -> Arc<Notify> {
        self.registry.changed()
    }

    fn start<'a>(
        &'a self,
        placement: Placement,
        seq: &'a SeqSpec,
    ) -> BoxFuture<'a, Result<Receiver<SeqEvent>, StartError>> {
        Box::pin(client::start(&self.client, &self.registry, placement, seq))
    }
}
