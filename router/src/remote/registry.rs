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
    claims: Claims,
}

/// Sequences this gateway placed on a worker that the worker's last status may not count
/// yet: between two heartbeats a worker's status is as old as the beat, and placement
/// would see a worker given several sequences since as idle. Each is counted from its
/// placement until a status includes its admission (`admitted` reaches the number the
/// admission's answer gave) or the gateway sees its leg end, whichever comes first.
#[derive(Default)]
struct Claims {
    next_ticket: u64,
    open: HashMap<u64, Claimed>,
    /// The highest `admitted` this worker's status has given.
    admitted: u64,
}

struct Claimed {
    /// The admission's number, once the worker's answer gave it.
    number: Option<u64>,
    /// Prompt tokens it queues there until they are prefilled.
    queued_tokens: usize,
}

impl Claims {
    /// A status that includes admissions up to `admitted`: those claims are counted there.
    /// A lower number than before is a restarted worker (a static one keeps its id):
    /// numbers start again, and the old process's numbered claims are dropped (its
    /// sequences' streams break and move).
    fn seen(&mut self, admitted: u64) {
        let restarted = admitted < self.admitted;
        self.admitted = admitted;
        self.open.retain(|_, c| match c.number {
            None => true,
            Some(n) => !restarted && n > admitted,
        });
    }

    fn load(&self) -> (usize, usize) {
        let tokens = self.open.values().map(|c| c.queued_tokens).sum();
        (self.open.len(), tokens)
    }
}

/// A sequence placed on a worker, counted in its view until the worker's status includes
/// it or this is dropped (its leg ended, or its start failed).
pub struct Claim {
    registry: Arc<Registry>,
    worker: WorkerId,
    ticket: u64,
}

impl Claim {
    /// The worker admitted it as `number` (`None`: the worker does not number its
    /// admissions, and its status counts the sequence from now on).
    pub fn admitted(&self, number: Option<u64>) {
        self.registry
            .update_claim(self.worker, self.ticket, |claims, ticket| {
                let counted = number.is_none_or(|n| n <= claims.admitted);
                if counted {
                    claims.open.remove(&ticket);
                } else if let Some(c) = claims.open.get_mut(&ticket) {
                    c.number = number;
                }
            });
    }

    /// Its prompt has been prefilled: no tokens queued any more.
    pub fn prefilled(&self) {
        self.registry
            .update_claim(self.worker, self.ticket, |claims, ticket| {
                if let Some(c) = claims.open.get_mut(&ticket) {
                    c.queued_tokens = 0;
                }
            });
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.registry
            .update_claim(self.worker, self.ticket, |claims, ticket| {
                claims.open.remove(&ticket);
            });
    }
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
                    claims: Claims::default(),
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
                claims: Claims::default(),
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
        e.claims.seen(status.admitted);
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

    /// Every worker as placement sees it: its last status, and the sequences placed on it
    /// that the status does not include yet ([`Claim`]).
    pub fn views(&self) -> Vec<WorkerView> {
        self.read()
            .iter()
            .map(|(id, e)| {
                let mut v = view(*id, e.info.role, e.healthy, &e.info.status);
                let (load, tokens) = e.claims.load();
                v.load += load;
                v.queued_tokens += tokens;
                v
            })
            .collect()
    }

    /// Counts a sequence placed on `worker`, with `queued_tokens` prompt tokens to prefill
    /// there, in its view until the worker's status includes it or the claim is dropped.
    /// `None` for a worker no longer listed.
    pub fn claim(self: &Arc<Self>, worker: WorkerId, queued_tokens: usize) -> Option<Claim> {
        let mut w = self.write();
        let claims = &mut w.get_mut(&worker)?.claims;
        claims.next_ticket += 1;
        let ticket = claims.next_ticket;
        claims.open.insert(
            ticket,
            Claimed {
                number: None,
                queued_tokens,
            },
        );
        Some(Claim {
            registry: Arc::clone(self),
            worker,
            ticket,
        })
    }

    fn update_claim(&self, worker: WorkerId, ticket: u64, f: impl FnOnce(&mut Claims, u64)) {
        if let Some(e) = self.write().get_mut(&worker) {
            f(&mut e.claims, ticket);
        }
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

    fn status(admitted: u64, load: u64) -> WorkerStatus {
        WorkerStatus {
            admitted,
            load,
            ..WorkerStatus::default()
        }
    }

    /// A registry (shared, as claims hold it) with one registered decode worker.
    fn one_decode_worker() -> (Arc<Registry>, WorkerId) {
        let reg = Arc::new(Registry::new(Duration::from_secs(1), &[]));
        let id = reg.register(decode("10.0.0.1:9000")).unwrap().id;
        (reg, id)
    }

    fn load_of(reg: &Registry, id: WorkerId) -> (usize, usize) {
        let v = reg.views().into_iter().find(|v| v.id == id).unwrap();
        (v.load, v.queued_tokens)
    }

    #[test]
    fn a_placement_counts_until_a_status_includes_it_or_it_ends() {
        let (reg, id) = one_decode_worker();
        let a = reg.claim(id, 100).unwrap();
        let b = reg.claim(id, 0).unwrap();
        assert_eq!(load_of(&reg, id), (2, 100), "counted from placement");
        a.admitted(Some(1));
        b.admitted(Some(2));
        // A beat read before either admission, then one that includes the first.
        assert!(reg.heartbeat(id, status(0, 0)));
        assert_eq!(load_of(&reg, id), (2, 100));
        assert!(reg.heartbeat(id, status(1, 1)));
        assert_eq!(
            load_of(&reg, id),
            (2, 0),
            "a by the status, b by the gateway"
        );
        // b ends before any status includes it: the gateway stops counting it.
        drop(b);
        assert_eq!(load_of(&reg, id), (1, 0));
        // Ending after the status counted it changes nothing.
        drop(a);
        assert_eq!(load_of(&reg, id), (1, 0));
    }

    #[test]
    fn a_claim_admitted_behind_the_status_or_unnumbered_ends_at_once() {
        let (reg, id) = one_decode_worker();
        assert!(reg.heartbeat(id, status(5, 1)));
        let c = reg.claim(id, 10).unwrap();
        let prefilled = reg.claim(id, 10).unwrap();
        prefilled.prefilled();
        assert_eq!(load_of(&reg, id), (3, 10));
        // The status already vouched for admission 5.
        c.admitted(Some(5));
        assert_eq!(load_of(&reg, id), (2, 0));
        // A worker that does not number admissions counts it in its next status.
        prefilled.admitted(None);
        assert_eq!(load_of(&reg, id), (1, 0));
        // A gone worker has nothing to claim.
        assert!(reg.claim(WorkerId(1), 1).is_none());
    }

    #[test]
    fn a_restarted_worker_s_numbers_do_not_keep_old_claims() {
        let (reg, id) = one_decode_worker();
        assert!(reg.heartbeat(id, status(40, 0)));
        let old = reg.claim(id, 0).unwrap();
        old.admitted(Some(41));
        let fresh = reg.claim(id, 0).unwrap();
        // A static worker restarted under the same id: numbers start again.
        assert!(reg.heartbeat(id, status(2, 1)));
        assert_eq!(
            load_of(&reg, id),
            (2, 0),
            "the status, and the claim not yet admitted"
        );
        fresh.admitted(Some(3));
        assert!(reg.heartbeat(id, status(3, 1)));
        assert_eq!(load_of(&reg, id), (1, 0));
        drop((old, fresh));
    }
}
