//! Who the gateway's worker processes are: registration, heartbeats, static workers from
//! the config, health by silence, and the list `GET /v1/workers` shows.

use crate::kv_index::KvIndex;
use crate::pool::view;
use genie_protocol::worker::{
    RegisterRequest, RegisterResponse, WorkerInfo, WorkerRole, WorkerStatus,
};
use genie_protocol::WorkerId;
use genie_scheduler::WorkerView;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A worker named in configuration rather than registered.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticWorker {
    pub role: WorkerRole,
    pub address: String,
    #[serde(default)]
    pub kv_endpoint: Option<String>,
    #[serde(default = "default_hardware")]
    pub hardware: String,
}

fn default_hardware() -> String {
    "cpu".into()
}

fn role_name(r: WorkerRole) -> &'static str {
    match r {
        WorkerRole::Prefill => "prefill",
        WorkerRole::Decode => "decode",
    }
}

/// A registration refused: which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct RegistryError {
    pub field: &'static str,
    pub reason: String,
}

struct Entry {
    info: RegisterRequest,
    last_seen: Option<Instant>,
    healthy: bool,
    is_static: bool,
}

pub struct Registry {
    workers: RwLock<HashMap<WorkerId, Entry>>,
    next_id: AtomicU64,
    pub heartbeat: Duration,
    changed: Arc<Notify>,
    /// The plan's pool (name, hardware) for each role, where the plan names hardware other
    /// than the default `cpu`: a worker registering for that role must carry that label.
    pools: HashMap<WorkerRole, (String, String)>,
    /// The workers' prefix-cache blocks, from the KV events their heartbeats carry.
    pub kv: KvIndex,
}

impl Registry {
    pub fn new(heartbeat: Duration, statics: &[StaticWorker]) -> Self {
        let reg = Registry {
            workers: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            heartbeat,
            changed: Arc::new(Notify::new()),
            pools: HashMap::new(),
            kv: KvIndex::new(),
        };
        for s in statics {
            let id = WorkerId(reg.next_id.fetch_add(1, Ordering::Relaxed));
            reg.write().insert(
                id,
                Entry {
                    info: RegisterRequest {
                        role: s.role,
                        address: s.address.trim_end_matches('/').to_string(),
                        kv_endpoint: s.kv_endpoint.clone(),
                        hardware: s.hardware.clone(),
                        status: WorkerStatus::default(),
                    },
                    last_seen: None,
                    healthy: false,
                    is_static: true,
                },
            );
        }
        // Registered workers' ids start at this gateway's start time in milliseconds, so a
        // restarted gateway never hands out an id the previous one gave: a worker still
        // heartbeating with its old id gets "unknown, register again" instead of updating
        // whichever new worker got that id. (Static workers keep 1..=n, which pins name.)
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        reg.next_id.fetch_max(boot, Ordering::Relaxed);
        reg
    }

    /// Workers of `role` must register with `hardware` (compared without case): the plan
    /// put that role's phase on pool `pool` of that hardware. A plan on the default `cpu`
    /// pool accepts any label.
    pub fn expect_hardware(mut self, role: WorkerRole, pool: &str, hardware: &str) -> Self {
        if !hardware.eq_ignore_ascii_case("cpu") {
            self.pools
                .insert(role, (pool.to_string(), hardware.to_string()));
        }
        self
    }

    /// Notified whenever worker load or health changes (requests waiting for room retry).
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<WorkerId, Entry>> {
        self.workers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<WorkerId, Entry>> {
        self.workers.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, mut req: RegisterRequest) -> Result<RegisterResponse, RegistryError> {
        if !(req.address.starts_with("http://") || req.address.starts_with("https://")) {
            return Err(RegistryError {
                field: "address",
                reason: "`address` must be an http:// URL".into(),
            });
        }
        if req.role == WorkerRole::Decode && req.kv_endpoint.is_none() {
            return Err(RegistryError {
                field: "kv_endpoint",
                reason: "a decode worker must give its KV endpoint".into(),
            });
        }
        if let Some((pool, hw)) = self.pools.get(&req.role) {
            if !req.hardware.eq_ignore_ascii_case(hw) {
                return Err(RegistryError {
                    field: "hardware",
                    reason: format!(
                        "this gateway's plan runs {} on pool `{pool}` ({hw}); a worker with hardware `{}` does not belong to it: start it with --hardware {hw}, or change the plan's pools",
                        role_name(req.role),
                        req.hardware
                    ),
                });
            }
        }
        req.address = req.address.trim_end_matches('/').to_string();
        let id = WorkerId(self.next_id.fetch_add(1, Ordering::Relaxed));
        tracing::info!(%id, role = ?req.role, address = %req.address, hardware = %req.hardware, "worker registered");
        // The worker's first KV event report (its blocks held) rides on its registration.
        if let Some(ev) = req.status.kv_events.take() {
            self.kv.apply(id, &ev);
        }
        self.write().insert(
            id,
            Entry {
                info: req,
                last_seen: Some(Instant::now()),
                healthy: true,
                is_static: false,
            },
        );
        self.changed.notify_waiters();
        Ok(RegisterResponse {
            id,
            heartbeat_interval_ms: self.heartbeat.as_millis() as u64,
        })
    }

    /// False when the worker is unknown (removed): it should register again.
    pub fn heartbeat(&self, id: WorkerId, mut status: WorkerStatus) -> bool {
        let mut w = self.write();
        let Some(e) = w.get_mut(&id) else {
            return false;
        };
        if let Some(ev) = status.kv_events.take() {
            self.kv.apply(id, &ev);
        }
        e.info.status = status;
        e.last_seen = Some(Instant::now());
        e.healthy = true;
        drop(w);
        self.changed.notify_waiters();
        true
    }

    /// A worker leaving (it drains before it stops): a registered one is forgotten, a
    /// static one marked unhealthy until it answers again. False when it is unknown.
    pub fn deregister(&self, id: WorkerId) -> bool {
        let mut w = self.write();
        let known = match w.get_mut(&id) {
            None => false,
            Some(e) if e.is_static => {
                e.healthy = false;
                true
            }
            Some(_) => {
                self.kv.forget(id);
                w.remove(&id).is_some()
            }
        };
        drop(w);
        if known {
            tracing::info!(%id, "worker deregistered");
            self.changed.notify_waiters();
        }
        known
    }

    /// Marks a worker unhealthy until its next heartbeat (it could not be reached).
    pub fn mark_dead(&self, id: WorkerId) {
        if let Some(e) = self.write().get_mut(&id) {
            if e.healthy {
                tracing::warn!(%id, "worker unreachable; marked unhealthy");
            }
            e.healthy = false;
        }
    }

    /// Marks workers silent for 3 heartbeats unhealthy and forgets registered workers silent
    /// for 10 (a returning worker registers again).
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut w = self.write();
        w.retain(|id, e| {
            let silent = e.last_seen.map_or(Duration::MAX, |t| now - t);
            if silent > self.heartbeat * 3 && e.healthy {
                tracing::warn!(%id, "worker missed its heartbeats; marked unhealthy");
                e.healthy = false;
            }
            e.is_static || silent <= self.heartbeat * 10
        });
    }

    /// The static workers' ids and control addresses.
    pub fn statics(&self) -> Vec<(WorkerId, String)> {
        self.read()
            .iter()
            .filter(|(_, e)| e.is_static)
            .map(|(id, e)| (*id, e.info.address.clone()))
            .collect()
    }

    pub fn list(&self) -> Vec<WorkerInfo> {
        let now = Instant::now();
        let mut v: Vec<WorkerInfo> = self
            .read()
            .iter()
            .map(|(id, e)| WorkerInfo {
                id: *id,
                role: e.info.role,
                address: e.info.address.clone(),
                kv_endpoint: e.info.kv_endpoint.clone(),
                hardware: e.info.hardware.clone(),
                healthy: e.healthy,
                source: if e.is_static { "static" } else { "registered" }.into(),
                seconds_since_seen: e
                    .last_seen
                    .map_or(f64::INFINITY, |t| (now - t).as_secs_f64()),
                status: e.info.status.clone(),
            })
            .collect();
        v.sort_by_key(|w| w.id);
        v
    }

    pub fn views(&self) -> Vec<WorkerView> {
        self.read()
            .iter()
            .map(|(id, e)| view(*id, e.info.role, e.healthy, &e.info.status))
            .collect()
    }

    /// A worker's control address and KV endpoint.
    pub fn addresses(&self, id: WorkerId) -> Option<(String, Option<String>)> {
        self.read()
            .get(&id)
            .map(|e| (e.info.address.clone(), e.info.kv_endpoint.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(addr: &str) -> RegisterRequest {
        RegisterRequest {
            role: WorkerRole::Decode,
            address: format!("http://{addr}"),
            kv_endpoint: Some(addr.to_string()),
            hardware: "cpu".into(),
            status: WorkerStatus::default(),
        }
    }

    #[test]
    fn a_restarted_registry_never_reuses_an_id_an_earlier_one_gave() {
        let first = Registry::new(Duration::from_secs(1), &[]);
        let old = first.register(decode("10.0.0.1:9000")).unwrap().id;
        std::thread::sleep(Duration::from_millis(2));
        // The gateway restarts: a new registry, and another worker registers first.
        let second = Registry::new(Duration::from_secs(1), &[]);
        let new = second.register(decode("10.0.0.2:9000")).unwrap().id;
        assert!(new.0 > old.0, "{new} after {old}");
        // The old worker's heartbeat is refused, so it registers again.
        assert!(!second.heartbeat(old, WorkerStatus::default()));
    }

    #[test]
    fn a_worker_must_carry_the_hardware_of_its_pool() {
        let reg = Registry::new(Duration::from_secs(1), &[])
            .expect_hardware(WorkerRole::Decode, "a100", "A100")
            .expect_hardware(WorkerRole::Prefill, "local", "cpu");
        let e = reg.register(decode("10.0.0.1:9000")).unwrap_err();
        assert_eq!(e.field, "hardware");
        assert!(e.reason.contains("pool `a100` (A100)"), "{}", e.reason);
        assert!(e.reason.contains("--hardware A100"), "{}", e.reason);
        assert!(reg.list().is_empty());
        // The label is compared without case.
        let mut ok = decode("10.0.0.2:9000");
        ok.hardware = "a100".into();
        assert!(reg.register(ok).is_ok());
        // A role on the default cpu pool takes any label.
        let mut p = decode("10.0.0.3:9000");
        p.role = WorkerRole::Prefill;
        p.kv_endpoint = None;
        p.hardware = "xeon".into();
        assert!(reg.register(p).is_ok());
        assert_eq!(reg.list().len(), 2);
    }
}
