//! TLS from PEM files, for the listeners (rustls with the ring provider) and for the
//! HTTP clients of the cluster (the gateway calling workers, workers calling the gateway,
//! the pipeline driver calling stage workers).
//!
//! A listener needs a certificate chain and its private key; a client trusts the host's
//! root store plus, with a CA file, that CA (a private cluster CA, or a self-signed
//! certificate). Errors name the file and what is wrong with it, never its contents.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS {what} file {}: {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The certificates in a PEM file (at least one).
fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// A listener's TLS configuration: `cert` holds the certificate chain (leaf first), `key`
/// its private key (PKCS#8, PKCS#1 or SEC1 PEM). HTTP/1.1 only, as the listeners serve.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(cert, "certificate")?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("private key", key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            TlsError::Config(format!(
                "the key in {} does not fit the certificate in {}: {e}",
                key.display(),
                cert.display()
            ))
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An HTTP client builder that speaks TLS (rustls) and trusts the host's roots plus every
/// certificate in `ca` (PEM), when given.
pub fn client_builder(ca: Option<&Path>) -> Result<reqwest::ClientBuilder, TlsError> {
    let mut b = reqwest::Client::builder().use_rustls_tls();
    if let Some(path) = ca {
        for c in certificates(path, "CA")? {
            let c = reqwest::Certificate::from_der(c.as_ref())
                .map_err(|e| file_error("CA", path, e))?;
            b = b.add_root_certificate(c);
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_generated_pair_loads_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("genie-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(&dir, "cert.pem", &c.cert.pem());
        let key = write(&dir, "key.pem", &c.key_pair.serialize_pem());
        let other_key = write(&dir, "other.pem", &other.key_pair.serialize_pem());
        let empty = write(&dir, "empty.pem", "not a pem file\n");
        assert!(server_config(&cert, &key).is_ok());
        assert!(client_builder(Some(&cert)).unwrap().build().is_ok());

        let e = server_config(&empty, &key).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = server_config(&cert, &empty).unwrap_err().to_string();
        assert!(
            e.contains("private key file") && e.contains("empty.pem"),
            "{e}"
        );
        let e = server_config(&cert, &other_key).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
        // The key's text never appears in an error.
        let secret_line = other.key_pair.serialize_pem();
        let secret_line = secret_line.lines().nth(1).unwrap();
        assert!(!e.contains(secret_line));
        let e = client_builder(Some(&dir.join("missing.pem")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CA file") && e.contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
