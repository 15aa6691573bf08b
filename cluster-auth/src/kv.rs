//! The KV transport's hello: the first [`HELLO_LEN`] bytes a sender writes on a KV
//! connection, before any frame.
//!
//! | offset | field | type |
//! |---:|---|---|
//! | 0 | magic `GKVA` | `[u8; 4]` |
//! | 4 | version (1) | u16 |
//! | 6 | reserved (0) | u16 |
//! | 8 | transfer id | u64 |
//! | 16 | unix seconds | u64 |
//! | 24 | nonce | `[u8; 16]` |
//! | 40 | HMAC-SHA256(secret, `"genie-kv-hello-v1"` ‖ bytes 0..40) | `[u8; 32]` |
//!
//! (little-endian). It rides in the same write as nothing else and costs no round trip;
//! the receiver checks it (window, MAC, nonce once) and then admits only frames of that
//! transfer, which it must be expecting and which only one hello may claim.

use crate::sign::{random_nonce, unix_now};
use crate::{AuthError, ClusterSecret, Verifier};
use hmac::Mac;

pub const HELLO_MAGIC: [u8; 4] = *b"GKVA";
pub const HELLO_VERSION: u16 = 1;
pub const HELLO_LEN: usize = 72;
const SIGNED: usize = 40;

fn mac(secret: &ClusterSecret, signed: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    let mut m = secret.mac();
    m.update(b"genie-kv-hello-v1");
    m.update(signed);
    m
}

impl ClusterSecret {
    /// The hello for `transfer`, made now with a fresh nonce.
    pub fn kv_hello(&self, transfer: u64) -> [u8; HELLO_LEN] {
        self.kv_hello_at(transfer, unix_now(), random_nonce())
    }

    pub fn kv_hello_at(&self, transfer: u64, t: u64, nonce: [u8; 16]) -> [u8; HELLO_LEN] {
        let mut h = [0u8; HELLO_LEN];
        h[..4].copy_from_slice(&HELLO_MAGIC);
        h[4..6].copy_from_slice(&HELLO_VERSION.to_le_bytes());
        h[8..16].copy_from_slice(&transfer.to_le_bytes());
        h[16..24].copy_from_slice(&t.to_le_bytes());
        h[24..40].copy_from_slice(&nonce);
        let m = mac(self, &h[..SIGNED]).finalize().into_bytes();
        h[SIGNED..].copy_from_slice(&m);
        h
    }
}

impl Verifier {
    /// Checks a KV hello; the transfer id it claims when it verifies.
    pub fn verify_kv_hello(&self, h: &[u8; HELLO_LEN]) -> Result<u64, AuthError> {
        if h[..4] != HELLO_MAGIC {
            return Err(AuthError::Malformed(
                "a KV connection must start with its hello",
            ));
        }
        if h[4..6] != HELLO_VERSION.to_le_bytes() {
            return Err(AuthError::Malformed("unknown KV hello version"));
        }
        let word = |r: std::ops::Range<usize>| {
            u64::from_le_bytes(h[r].try_into().expect("an 8-byte range"))
        };
        let (transfer, t) = (word(8..16), word(16..24));
        let nonce: [u8; 16] = h[24..40].try_into().expect("a 16-byte range");
        self.accept(t, nonce, unix_now(), || {
            mac(self.secret(), &h[..SIGNED])
                .verify_slice(&h[SIGNED..])
                .is_ok()
        })?;
        Ok(transfer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretSource;

    #[test]
    fn hellos_verify_once_and_only_with_the_secret() {
        let s = ClusterSecret::new(&[7; 32], &SecretSource::Env).unwrap();
        let v = Verifier::new(s.clone());
        let h = s.kv_hello(42);
        assert_eq!(v.verify_kv_hello(&h), Ok(42));
        assert_eq!(v.verify_kv_hello(&h), Err(AuthError::Replayed));
        let mut other = s.kv_hello(43);
        other[8] = 44; // claims another transfer under the same MAC
        assert_eq!(v.verify_kv_hello(&other), Err(AuthError::BadMac));
        let wrong = ClusterSecret::new(&[8; 32], &SecretSource::Env).unwrap();
        assert_eq!(
            v.verify_kv_hello(&wrong.kv_hello(42)),
            Err(AuthError::BadMac)
        );
        let stale = s.kv_hello_at(42, unix_now() - 60, [5; 16]);
        assert!(matches!(
            v.verify_kv_hello(&stale),
            Err(AuthError::Stale { .. })
        ));
        assert!(matches!(
            v.verify_kv_hello(&[0; HELLO_LEN]),
            Err(AuthError::Malformed(_))
        ));
    }
}
