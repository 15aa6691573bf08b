//! The transfers a receiver expects: a decode worker registers a transfer id (with its
//! byte bound and deadline) when it reserves KV for it, before any byte arrives; frames
//! for ids it does not expect, past their deadline, or beyond their bound are refused.
//! With the cluster secret ([`TransferRegistry::with_auth`]) a connection must first
//! present a hello naming one expected transfer, which only one hello may claim.

use genie_cluster_auth::kv::HELLO_LEN;
use genie_cluster_auth::{AuthError, Verifier};
use genie_protocol::TransferId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RegistryError {
    #[error("transfer {0} is not expected here")]
    Unknown(TransferId),
    #[error("transfer {0} expired")]
    Expired(TransferId),
    #[error("transfer {id} exceeds its {max} bytes")]
    Oversize { id: TransferId, max: usize },
    #[error("transfer {0} was already claimed by another connection")]
    Claimed(TransferId),
    #[error("KV hello refused: {0}")]
    Auth(#[from] AuthError),
}

#[derive(Debug)]
struct Expected {
    deadline: Instant,
    /// Each frame moves the deadline this far ahead: only a stall expires a transfer.
    patience: Duration,
    max_bytes: usize,
    received: usize,
    /// A verified hello has claimed it (only one connection may carry it).
    claimed: bool,
}

#[derive(Clone, Debug, Default)]
pub struct TransferRegistry {
    inner: Arc<Mutex<HashMap<TransferId, Expected>>>,
    /// Set: connections must open with a hello made with the cluster secret.
    auth: Option<Arc<Verifier>>,
}

impl TransferRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry whose receivers accept only connections that open with a hello made
    /// with the cluster secret `verifier` checks.
    pub fn with_auth(verifier: Arc<Verifier>) -> Self {
        TransferRegistry {
            auth: Some(verifier),
            ..Self::default()
        }
    }

    /// Does a connection need a hello before its frames?
    pub fn needs_hello(&self) -> bool {
        self.auth.is_some()
    }

    /// Checks a connection's hello: a valid proof naming a transfer that is expected and
    /// not yet claimed, which it then claims. A refused hello changes nothing.
    pub fn claim(&self, hello: &[u8; HELLO_LEN]) -> Result<TransferId, RegistryError> {
        let Some(v) = &self.auth else {
            return Err(AuthError::Malformed("this receiver takes no hello").into());
        };
        let id = TransferId(v.verify_kv_hello(hello)?);
        self.check(id)?;
        let mut m = self.lock();
        let e = m.get_mut(&id).ok_or(RegistryError::Unknown(id))?;
        if e.claimed {
            return Err(RegistryError::Claimed(id));
        }
        e.claimed = true;
        Ok(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TransferId, Expected>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Expects `id` carrying at most `max_bytes` of layer payload, each frame (the first
    /// included) within `timeout` of the previous one.
    pub fn expect(&self, id: TransferId, max_bytes: usize, timeout: Duration) {
        self.expect_within(id, max_bytes, timeout, timeout);
    }

    /// Expects `id` carrying at most `max_bytes`: its first frame within `first` (the
    /// sender may queue the work before it sends anything), each later one within
    /// `patience` of the previous one (a stall).
    pub fn expect_within(
        &self,
        id: TransferId,
        max_bytes: usize,
        first: Duration,
        patience: Duration,
    ) {
        let mut m = self.lock();
        let now = Instant::now();
        m.retain(|_, e| e.deadline > now);
        m.insert(
            id,
            Expected {
                deadline: now + first,
                patience,
                max_bytes,
                received: 0,
                claimed: false,
            },
        );
    }

    pub fn forget(&self, id: TransferId) {
        self.lock().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The time left for `id`, or why its frames are refused.
    pub fn check(&self, id: TransferId) -> Result<Duration, RegistryError> {
        let mut m = self.lock();
        let e = m.get(&id).ok_or(RegistryError::Unknown(id))?;
        let now = Instant::now();
        if now >= e.deadline {
            m.remove(&id);
            return Err(RegistryError::Expired(id));
        }
        Ok(e.deadline - now)
    }

    /// Counts `n` more payload bytes for `id`.
    pub fn account(&self, id: TransferId, n: usize) -> Result<(), RegistryError> {
        let mut m = self.lock();
        let e = m.get_mut(&id).ok_or(RegistryError::Unknown(id))?;
        if e.received + n > e.max_bytes {
            let max = e.max_bytes;
            m.remove(&id);
            return Err(RegistryError::Oversize { id, max });
        }
        e.received += n;
        e.deadline = Instant::now() + e.patience;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_expired_and_oversize_transfers_are_refused() {
        let r = TransferRegistry::new();
        assert_eq!(
            r.check(TransferId(1)),
            Err(RegistryError::Unknown(TransferId(1)))
        );
        r.expect(TransferId(1), 100, Duration::from_secs(60));
        assert!(r.check(TransferId(1)).is_ok());
        r.account(TransferId(1), 60).unwrap();
        assert_eq!(
            r.account(TransferId(1), 60),
            Err(RegistryError::Oversize {
                id: TransferId(1),
                max: 100
            })
        );
        assert!(r.is_empty(), "an oversize transfer is dropped");
        r.expect(TransferId(2), 100, Duration::ZERO);
        assert_eq!(
            r.check(TransferId(2)),
            Err(RegistryError::Expired(TransferId(2)))
        );
    }
}
