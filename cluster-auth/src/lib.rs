//! # genie-cluster-auth
//!
//! The cluster secret and the proofs made with it. The gateway and every worker of one
//! cluster share a secret of at least [`ClusterSecret::MIN_LEN`] bytes; every control-plane
//! call (registration, heartbeats, `/internal/*` on the workers) and every KV connection
//! carries an HMAC-SHA256 made with it, so a peer without the secret can neither register a
//! worker, drive one, nor push KV bytes into a decode worker.
//!
//! - [`ClusterSecret`]: loaded from a file or the environment, never printed (its `Debug`
//!   and `Display` are redacted), at least 32 bytes;
//! - [`sign`]: the `x-genie-signature` header (method, path with query, timestamp, nonce
//!   and the body's SHA-256 under HMAC-SHA256) and the [`Verifier`] that checks it: a
//!   constant-time compare, a ±30 s window and a bounded cache of the nonces seen in it, so
//!   an exact replay inside the window is refused;
//! - [`http`]: the axum middleware that verifies every `/internal/*` request before its
//!   handler runs, and [`http::send_signed`], which signs a `reqwest` request;
//! - [`kv`]: the 72-byte hello a KV sender writes before its first frame (transfer id,
//!   timestamp, nonce, HMAC): no extra round trip on the KV path.
//! - [`tls`]: TLS from PEM files for the listeners and the cluster's HTTP clients.

pub mod http;
pub mod kv;
mod nonces;
mod secret;
pub mod sign;
pub mod tls;

pub use secret::{ClusterSecret, SecretError, SecretSource};
pub use sign::{AuthError, Verifier, SIGNATURE_HEADER};
