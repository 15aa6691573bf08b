//! HTTP request signing with the cluster secret.
//!
//! The header `x-genie-signature: v1,t=<unix seconds>,n=<32 hex nonce>,m=<64 hex HMAC>`
//! carries `HMAC-SHA256(secret, "genie-http-v1\n" METHOD "\n" PATH?QUERY "\n" t "\n" n "\n"
//! hex(SHA-256(body)))`. The method and path bind the proof to one route, the body hash to
//! one body, the timestamp to a ±[`Verifier::WINDOW_SECS`] window and the nonce to one use
//! (the [`Verifier`] remembers the nonces it accepted until their window closes).

use crate::nonces::{Insert, NonceCache};
use crate::ClusterSecret;
use hmac::Mac;
use sha2::{Digest, Sha256};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The header that carries a request's proof.
pub const SIGNATURE_HEADER: &str = "x-genie-signature";

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn random_nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).expect("the OS random source is available");
    n
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Why a proof was refused. Missing or unreadable proofs are 401; proofs that were read
/// but are wrong, outside the window or already used are 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no cluster signature: this route needs the `x-genie-signature` header made with the cluster secret")]
    Missing,
    #[error("the cluster signature is malformed ({0})")]
    Malformed(&'static str),
    #[error(
        "the cluster signature does not match: wrong cluster secret, or the request was altered"
    )]
    BadMac,
    #[error("the cluster signature's timestamp is {skew} s away from this host's clock (at most {window} s accepted)")]
    Stale { skew: u64, window: u64 },
    #[error("the cluster signature was already used (replayed request)")]
    Replayed,
    #[error("too many signed requests inside the replay window; retry")]
    Busy,
}

impl AuthError {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Malformed(_) => 401,
            AuthError::BadMac | AuthError::Stale { .. } | AuthError::Replayed => 403,
            AuthError::Busy => 503,
        }
    }

    /// The error code in the response envelope.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "cluster_auth_missing",
            AuthError::Malformed(_) => "cluster_auth_malformed",
            AuthError::BadMac => "cluster_auth_invalid",
            AuthError::Stale { .. } => "cluster_auth_stale",
            AuthError::Replayed => "cluster_auth_replayed",
            AuthError::Busy => "cluster_auth_busy",
        }
    }
}

fn http_mac(
    secret: &ClusterSecret,
    method: &str,
    path_and_query: &str,
    t: u64,
    nonce: &[u8; 16],
    body: &[u8],
) -> hmac::Hmac<Sha256> {
    let mut m = secret.mac();
    m.update(b"genie-http-v1\n");
    m.update(method.as_bytes());
    m.update(b"\n");
    m.update(path_and_query.as_bytes());
    m.update(b"\n");
    m.update(t.to_string().as_bytes());
    m.update(b"\n");
    m.update(hex(nonce).as_bytes());
    m.update(b"\n");
    m.update(hex(&Sha256::digest(body)).as_bytes());
    m
}

impl ClusterSecret {
    /// The `x-genie-signature` value for a request, signed now with a fresh nonce.
    pub fn sign_http(&self, method: &str, path_and_query: &str, body: &[u8]) -> String {
        self.sign_http_at(unix_now(), random_nonce(), method, path_and_query, body)
    }

    /// The `x-genie-signature` value for a request at time `t` with `nonce`.
    pub fn sign_http_at(
        &self,
        t: u64,
        nonce: [u8; 16],
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> String {
        let mac = http_mac(self, method, path_and_query, t, &nonce, body).finalize();
        format!("v1,t={t},n={},m={}", hex(&nonce), hex(&mac.into_bytes()))
    }
}

/// Checks proofs made with the cluster secret and remembers the nonces it accepted.
pub struct Verifier {
    secret: ClusterSecret,
    nonces: Mutex<NonceCache>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

impl Verifier {
    /// A proof's timestamp may be this far from the verifier's clock, either way.
    pub const WINDOW_SECS: u64 = 30;

    pub fn new(secret: ClusterSecret) -> Self {
        Verifier {
            secret,
            nonces: Mutex::new(NonceCache::new()),
        }
    }

    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }

    /// Checks the window, then the MAC (`check_mac`), then records the nonce: only proofs
    /// that verified take room in the nonce cache.
    pub(crate) fn accept(
        &self,
        t: u64,
        nonce: [u8; 16],
        now: u64,
        check_mac: impl FnOnce() -> bool,
    ) -> Result<(), AuthError> {
        let skew = now.abs_diff(t);
        if skew > Self::WINDOW_SECS {
            return Err(AuthError::Stale {
                skew,
                window: Self::WINDOW_SECS,
            });
        }
        if !check_mac() {
            return Err(AuthError::BadMac);
        }
        let mut cache = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        match cache.insert(nonce, t + Self::WINDOW_SECS, now) {
            Insert::New => Ok(()),
            Insert::Replayed => Err(AuthError::Replayed),
            Insert::Full => Err(AuthError::Busy),
        }
    }

    /// Verifies a request's `x-genie-signature` (`header`, if any) against its method,
    /// path with query and body.
    pub fn verify_http(
        &self,
        method: &str,
        path_and_query: &str,
        header: Option<&str>,
        body: &[u8],
    ) -> Result<(), AuthError> {
        self.verify_http_at(unix_now(), method, path_and_query, header, body)
    }

    pub fn verify_http_at(
        &self,
        now: u64,
        method: &str,
        path_and_query: &str,
        header: Option<&str>,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let rest = header
            .strip_prefix("v1,")
            .ok_or(AuthError::Malformed("unknown version; expected v1"))?;
        let (mut t, mut n, mut m) = (None, None, None);
        for part in rest.split(',') {
            match part.split_once('=') {
                Some(("t", v)) => t = v.parse::<u64>().ok(),
                Some(("n", v)) => n = unhex::<16>(v),
                Some(("m", v)) => m = unhex::<32>(v),
                _ => return Err(AuthError::Malformed("unknown field")),
            }
        }
        let t = t.ok_or(AuthError::Malformed("t must be unix seconds"))?;
        let n = n.ok_or(AuthError::Malformed("n must be 32 hex digits"))?;
        let m = m.ok_or(AuthError::Malformed("m must be 64 hex digits"))?;
        self.accept(t, n, now, || {
            http_mac(&self.secret, method, path_and_query, t, &n, body)
                .verify_slice(&m)
                .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretSource;

    fn secret(c: u8) -> ClusterSecret {
        ClusterSecret::new(&[c; 32], &SecretSource::Env).unwrap()
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let v = Verifier::new(secret(b'k'));
        let sig = secret(b'k').sign_http("POST", "/internal/workers", b"{}");
        v.verify_http("POST", "/internal/workers", Some(&sig), b"{}")
            .unwrap();
        assert_eq!(
            v.verify_http("POST", "/internal/workers", Some(&sig), b"{}"),
            Err(AuthError::Replayed)
        );
    }

    #[test]
    fn any_change_or_another_secret_is_refused() {
        let v = Verifier::new(secret(b'k'));
        let sig = secret(b'k').sign_http("POST", "/internal/decode", b"{\"a\":1}");
        for (m, p, b) in [
            ("GET", "/internal/decode", &b"{\"a\":1}"[..]),
            ("POST", "/internal/prefill", b"{\"a\":1}"),
            ("POST", "/internal/decode?x=1", b"{\"a\":1}"),
            ("POST", "/internal/decode", b"{\"a\":2}"),
        ] {
            assert_eq!(v.verify_http(m, p, Some(&sig), b), Err(AuthError::BadMac));
        }
        let forged = secret(b'x').sign_http("POST", "/internal/decode", b"{}");
        assert_eq!(
            v.verify_http("POST", "/internal/decode", Some(&forged), b"{}"),
            Err(AuthError::BadMac)
        );
        // A refused proof did not take its nonce: the genuine one still verifies.
        v.verify_http("POST", "/internal/decode", Some(&sig), b"{\"a\":1}")
            .unwrap();
    }

    #[test]
    fn missing_malformed_and_stale_proofs() {
        let v = Verifier::new(secret(b'k'));
        let e = v
            .verify_http("GET", "/internal/status", None, b"")
            .unwrap_err();
        assert_eq!((e.status(), e.code()), (401, "cluster_auth_missing"));
        for bad in [
            "",
            "v2,t=1",
            "v1,t=x,n=00,m=00",
            "v1,t=1,n=zz,m=00",
            "v1,q=1",
        ] {
            let e = v.verify_http("GET", "/", Some(bad), b"").unwrap_err();
            assert_eq!(e.status(), 401, "{bad}: {e}");
        }
        let now = unix_now();
        let old = secret(b'k').sign_http_at(now - 31, [1; 16], "GET", "/internal/status", b"");
        let e = v
            .verify_http("GET", "/internal/status", Some(&old), b"")
            .unwrap_err();
        assert!(
            matches!(e, AuthError::Stale { .. }) && e.status() == 403,
            "{e}"
        );
        let future = secret(b'k').sign_http_at(now + 31, [2; 16], "GET", "/internal/status", b"");
        assert!(matches!(
            v.verify_http("GET", "/internal/status", Some(&future), b""),
            Err(AuthError::Stale { .. })
        ));
        let edge = secret(b'k').sign_http_at(now - 29, [3; 16], "GET", "/internal/status", b"");
        v.verify_http("GET", "/internal/status", Some(&edge), b"")
            .unwrap();
    }

    #[test]
    fn nonces_expire_with_their_window_and_the_cache_is_bounded() {
        let v = Verifier::new(secret(b'k'));
        let t = 1_000_000;
        let sig = secret(b'k').sign_http_at(t, [7; 16], "GET", "/internal/status", b"");
        v.verify_http_at(t, "GET", "/internal/status", Some(&sig), b"")
            .unwrap();
        assert_eq!(
            v.verify_http_at(t + 30, "GET", "/internal/status", Some(&sig), b""),
            Err(AuthError::Replayed)
        );
        assert!(matches!(
            v.verify_http_at(t + 31, "GET", "/internal/status", Some(&sig), b""),
            Err(AuthError::Stale { .. })
        ));
        let mut c = NonceCache::new();
        for i in 0..NonceCache::CAPACITY as u64 {
            let mut n = [0u8; 16];
            n[..8].copy_from_slice(&i.to_le_bytes());
            assert!(matches!(c.insert(n, t + 30, t), Insert::New));
        }
        assert!(matches!(c.insert([0xff; 16], t + 30, t), Insert::Full));
        // Once the window has passed, old entries make room.
        assert!(matches!(c.insert([0xff; 16], t + 61, t + 31), Insert::New));
        assert_eq!(c.len(), 1);
    }
}
