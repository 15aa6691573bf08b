//! The cluster secret: where it comes from and how it is kept out of sight.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The secret the gateway and its workers share. Cheap to clone; never printed.
#[derive(Clone)]
pub struct ClusterSecret(Arc<[u8]>);

/// Where a secret was found (for the start-up log; never the secret itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// `--cluster-secret-file PATH`.
    Flag(PathBuf),
    /// The `GENIE_CLUSTER_SECRET` environment variable.
    Env,
    /// The config key `cluster.secret_file`.
    Config(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Flag(p) => write!(f, "--cluster-secret-file {}", p.display()),
            SecretSource::Env => f.write_str("GENIE_CLUSTER_SECRET"),
            SecretSource::Config(p) => write!(f, "cluster.secret_file {}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the cluster secret from {from} is {len} bytes; it must be at least {min} (e.g. `openssl rand -hex 32`)", min = ClusterSecret::MIN_LEN)]
    TooShort { from: String, len: usize },
    #[error("cannot read the cluster secret file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
}

impl ClusterSecret {
    /// Shortest secret accepted: 32 bytes, the HMAC-SHA256 key size.
    pub const MIN_LEN: usize = 32;

    /// A secret from its bytes; trailing whitespace (a file's newline) is not part of it.
    pub fn new(bytes: &[u8], source: &SecretSource) -> Result<Self, SecretError> {
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let bytes = &bytes[..end];
        if bytes.len() < Self::MIN_LEN {
            return Err(SecretError::TooShort {
                from: source.to_string(),
                len: bytes.len(),
            });
        }
        Ok(ClusterSecret(bytes.into()))
    }

    /// Reads a secret file.
    pub fn from_file(path: &Path, source: &SecretSource) -> Result<Self, SecretError> {
        let bytes = std::fs::read(path).map_err(|e| SecretError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::new(&bytes, source)
    }

    /// The first source given, in order: the flag's file, the environment variable, the
    /// config's file. `None` when none is given.
    pub fn resolve(
        flag_file: Option<&Path>,
        env: Option<&str>,
        config_file: Option<&Path>,
    ) -> Result<Option<(Self, SecretSource)>, SecretError> {
        if let Some(p) = flag_file {
            let s = SecretSource::Flag(p.to_path_buf());
            return Ok(Some((Self::from_file(p, &s)?, s)));
        }
        if let Some(v) = env.filter(|v| !v.is_empty()) {
            return Ok(Some((
                Self::new(v.as_bytes(), &SecretSource::Env)?,
                SecretSource::Env,
            )));
        }
        if let Some(p) = config_file {
            let s = SecretSource::Config(p.to_path_buf());
            return Ok(Some((Self::from_file(p, &s)?, s)));
        }
        Ok(None)
    }

    /// An HMAC-SHA256 keyed with the secret.
    pub(crate) fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl std::fmt::Display for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused_and_nothing_prints_the_secret() {
        let e = ClusterSecret::new(b"short\n", &SecretSource::Env).unwrap_err();
        assert!(e.to_string().contains("at least 32"), "{e}");
        assert!(!e.to_string().contains("short\n"));
        let s =
            ClusterSecret::new(b"0123456789abcdef0123456789abcdef\n", &SecretSource::Env).unwrap();
        assert_eq!(&*s.0, b"0123456789abcdef0123456789abcdef");
        assert!(!format!("{s:?} {s}").contains("0123"));
    }

    #[test]
    fn sources_are_taken_in_order() {
        let dir = std::env::temp_dir().join(format!("genie-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "a".repeat(40) + "\n").unwrap();
        std::fs::write(&b, "b".repeat(40)).unwrap();
        let env = "e".repeat(40);
        let (s, src) = ClusterSecret::resolve(Some(&a), Some(&env), Some(&b))
            .unwrap()
            .unwrap();
        assert_eq!(
            (src, &*s.0),
            (SecretSource::Flag(a.clone()), "a".repeat(40).as_bytes())
        );
        let (s, src) = ClusterSecret::resolve(None, Some(&env), Some(&b))
            .unwrap()
            .unwrap();
        assert_eq!((src, &*s.0), (SecretSource::Env, env.as_bytes()));
        let (_, src) = ClusterSecret::resolve(None, Some(""), Some(&b))
            .unwrap()
            .unwrap();
        assert_eq!(src, SecretSource::Config(b.clone()));
        assert!(ClusterSecret::resolve(None, None, None).unwrap().is_none());
        let e = ClusterSecret::resolve(Some(&dir.join("missing")), None, None).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
