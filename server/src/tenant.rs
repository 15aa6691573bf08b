//! Per-tenant limits: each API key may carry a request rate (a token bucket, from the
//! `governor` crate), a cap on its sequences in flight and a default priority. Checked
//! after authentication, before a request's sequences enter the dispatcher's queue; a
//! refusal is a 429 with `Retry-After`. Metrics name a key by its configured `name` or the
//! first 8 hex digits of its SHA-256, never by the key itself.

use crate::api_error::ApiError;
use axum::http::{header, HeaderMap};
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The range of the `priority` request field and of a key's priorities.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -100..=100;

/// One entry of `server.api_keys`: a plain key (no limits, priority 0) or a table.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ApiKey {
    Plain(String),
    Limited(KeyLimits),
}

/// A key with its limits (`[[server.api_keys]]` tables).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    pub key: String,
    /// The key's label in metrics and logs; unset = the first 8 hex digits of its SHA-256.
    #[serde(default)]
    pub name: Option<String>,
    /// Sustained requests per second (a token bucket); unset = unlimited.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Requests that may arrive at once above the rate (the bucket's size); unset = one
    /// second's worth of the rate, at least 1.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Sequences (`n` per prompt) this key may have in flight; unset = unlimited.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Priority of its requests that give none.
    #[serde(default)]
    pub priority: i32,
    /// Highest priority its requests may ask for; unset = `priority`. Higher asks are
    /// lowered to it.
    #[serde(default)]
    pub max_priority: Option<i32>,
}

impl ApiKey {
    pub fn key(&self) -> &str {
        match self {
            ApiKey::Plain(k) => k,
            ApiKey::Limited(l) => &l.key,
        }
    }

    /// Range checks: the error names the entry's field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.key().trim().is_empty() {
            return Err(("key", "keys must not be empty strings".into()));
        }
        let ApiKey::Limited(l) = self else {
            return Ok(());
        };
        if let Some(r) = l.requests_per_second {
            if !(r.is_finite() && r > 0.0 && r <= 1e6) {
                return Err(("requests_per_second", format!("{r} is not in (0, 1e6]")));
            }
        }
        if l.burst == Some(0) {
            return Err(("burst", "must be at least 1".into()));
        }
        if l.max_concurrent == Some(0) {
            return Err(("max_concurrent", "must be at least 1".into()));
        }
        for (field, p) in [
            ("priority", Some(l.priority)),
            ("max_priority", l.max_priority),
        ] {
            if let Some(p) = p.filter(|p| !PRIORITY_RANGE.contains(p)) {
                return Err((field, format!("{p} is not in [-100, 100]")));
            }
        }
        if l.max_priority.is_some_and(|m| m < l.priority) {
            return Err(("max_priority", "must not be below `priority`".into()));
        }
        Ok(())
    }
}

/// Keys are secrets: Debug shows only their label.
impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({})", label(self))
    }
}

impl std::fmt::Debug for KeyLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLimits")
            .field("key", &"<redacted>")
            .field("name", &self.name)
            .field("requests_per_second", &self.requests_per_second)
            .field("burst", &self.burst)
            .field("max_concurrent", &self.max_concurrent)
            .field("priority", &self.priority)
            .field("max_priority", &self.max_priority)
            .finish()
    }
}

/// The first 8 hex digits of the key's SHA-256.
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn label(k: &ApiKey) -> String {
    match k {
        ApiKey::Limited(KeyLimits {
            name: Some(name), ..
        }) => name.clone(),
        _ => key_hash(k.key()),
    }
}

/// One key's live state.
pub struct Tenant {
    /// Its metrics label.
    pub label: String,
    rate: Option<governor::DefaultDirectRateLimiter>,
    sequences: Option<(Arc<Semaphore>, u32)>,
    priority: i32,
    max_priority: i32,
}

/// Why a tenant's request was refused: its metric `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Rate,
    Concurrency,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::Concurrency => "concurrency",
        }
    }
}

/// Sequences a request holds against its key's cap; released (and the in-flight gauge
/// lowered) when the response ends or its client goes away.
#[derive(Debug)]
pub struct SeqPermit {
    _permit: Option<OwnedSemaphorePermit>,
    label: String,
    n: u32,
}

impl Drop for SeqPermit {
    fn drop(&mut self) {
        metrics::gauge!("genie_tenant_sequences_in_flight", "key" => self.label.clone())
            .decrement(self.n as f64);
    }
}

impl Tenant {
    fn new(k: &ApiKey) -> Self {
        let (rate, sequences, priority, max_priority) = match k {
            ApiKey::Plain(_) => (None, None, 0, 0),
            ApiKey::Limited(l) => {
                let rate = l.requests_per_second.map(|r| {
                    let period = Duration::from_secs_f64(1.0 / r).max(Duration::from_nanos(1));
                    let burst = l.burst.unwrap_or_else(|| r.ceil().max(1.0) as u32);
                    let quota = Quota::with_period(period)
                        .expect("a positive period")
                        .allow_burst(NonZeroU32::new(burst.max(1)).expect("at least 1"));
                    RateLimiter::direct(quota)
                });
                let seqs = l
                    .max_concurrent
                    .map(|m| (Arc::new(Semaphore::new(m as usize)), m));
                (rate, seqs, l.priority, l.max_priority.unwrap_or(l.priority))
            }
        };
        Tenant {
            label: label(k),
            rate,
            sequences,
            priority,
            max_priority,
        }
    }

    fn refuse(&self, why: Refusal, retry_after: u64, message: String) -> ApiError {
        metrics::counter!("genie_tenant_rejections_total", "key" => self.label.clone(), "reason" => why.as_str())
            .increment(1);
        ApiError::rate_limited(message, retry_after)
    }

    /// Takes one request from the key's bucket, or refuses with the seconds until the
    /// bucket holds one again.
    pub fn admit_request(&self) -> Result<(), ApiError> {
        metrics::counter!("genie_tenant_requests_total", "key" => self.label.clone()).increment(1);
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        rate.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            self.refuse(
                Refusal::Rate,
                secs.max(1),
                "Rate limit reached for requests on this API key. Retry after the time given in `Retry-After`.".into(),
            )
        })
    }

    /// Holds `n` sequences against the key's cap, or refuses: 429 while other sequences of
    /// the key are in flight, 400 naming `n` when `n` alone is over the cap.
    pub fn admit_sequences(&self, n: usize) -> Result<SeqPermit, ApiError> {
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        let permit = match &self.sequences {
            None => None,
            Some((_, cap)) if n32 > *cap => {
                return Err(ApiError::invalid(
                    "n",
                    format!("the request has {n} sequences; this API key may run at most {cap} at once"),
                ))
            }
            Some((sem, cap)) => Some(Arc::clone(sem).try_acquire_many_owned(n32).map_err(|_| {
                self.refuse(
                    Refusal::Concurrency,
                    1,
                    format!("This API key already has the most sequences in flight it may ({cap}). Retry when one ends."),
                )
            })?),
        };
        metrics::gauge!("genie_tenant_sequences_in_flight", "key" => self.label.clone())
            .increment(n as f64);
        Ok(SeqPermit {
            _permit: permit,
            label: self.label.clone(),
            n: n32,
        })
    }

    /// The request's priority: what it asked for (lowered to the key's ceiling) or the
    /// key's default.
    pub fn priority(&self, asked: Option<i32>) -> i32 {
        asked.map_or(self.priority, |p| p.min(self.max_priority))
    }
}

/// Every key's state, found by the request's bearer key.
#[derive(Default)]
pub struct Tenants {
    by_key: HashMap<String, Arc<Tenant>>,
}

impl Tenants {
    pub fn new(keys: &[ApiKey]) -> Self {
        Tenants {
            by_key: keys
                .iter()
                .map(|k| (k.key().to_string(), Arc::new(Tenant::new(k))))
                .collect(),
        }
    }

    /// The tenant of the request's bearer key (already checked by the auth layer); `None`
    /// on a server without keys.
    pub fn of(&self, headers: &HeaderMap) -> Option<Arc<Tenant>> {
        let key = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .trim();
        self.by_key.get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(rps: Option<f64>, burst: Option<u32>, conc: Option<u32>) -> ApiKey {
        ApiKey::Limited(KeyLimits {
            key: "sk-secret".into(),
            name: None,
            requests_per_second: rps,
            burst,
            max_concurrent: conc,
            priority: 1,
            max_priority: Some(5),
        })
    }

    #[test]
    fn the_bucket_allows_its_burst_then_says_when_to_retry() {
        let t = Tenant::new(&limited(Some(0.1), Some(2), None));
        t.admit_request().unwrap();
        t.admit_request().unwrap();
        let e = t.admit_request().unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        // One token per 10 s: the next is 9-10 s away.
        let after = e.retry_after.unwrap();
        assert!((9..=10).contains(&after), "{after}");
    }

    #[test]
    fn the_sequence_cap_is_held_until_the_permit_drops() {
        let t = Tenant::new(&limited(None, None, Some(3)));
        let a = t.admit_sequences(2).unwrap();
        let e = t.admit_sequences(2).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(1));
        let e = t.admit_sequences(4).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
        drop(a);
        t.admit_sequences(3).unwrap();
    }

    #[test]
    fn priority_defaults_to_the_key_and_is_capped() {
        let t = Tenant::new(&limited(None, None, None));
        assert_eq!(t.priority(None), 1);
        assert_eq!(t.priority(Some(-3)), -3);
        assert_eq!(t.priority(Some(50)), 5);
    }

    #[test]
    fn keys_never_show_in_labels_or_debug() {
        let k = limited(None, None, None);
        assert_eq!(label(&k).len(), 8);
        assert!(!format!("{k:?}").contains("secret"));
        let ApiKey::Limited(l) = &k else {
            unreachable!()
        };
        assert!(!format!("{l:?}").contains("secret"));
        assert!(!format!("{:?}", ApiKey::Plain("sk-secret".into())).contains("secret"));
        let named = ApiKey::Limited(KeyLimits {
            name: Some("team-a".into()),
            ..l.clone()
        });
        assert_eq!(label(&named), "team-a");
    }

    #[test]
    fn plain_strings_and_tables_both_parse() {
        let v: Vec<ApiKey> = serde_json::from_str(
            r#"["k1", {"key": "k2", "requests_per_second": 5, "max_concurrent": 2, "priority": 3}]"#,
        )
        .unwrap();
        assert_eq!(v[0].key(), "k1");
        let ApiKey::Limited(l) = &v[1] else { panic!() };
        assert_eq!((l.max_concurrent, l.priority), (Some(2), 3));
        assert!(v.iter().all(|k| k.validate().is_ok()));
        let bad: ApiKey = serde_json::from_str(r#"{"key": "k", "burst": 0}"#).unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "burst");
    }
}
