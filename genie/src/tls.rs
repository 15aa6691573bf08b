//! TLS for a process: `--tls-cert-file` / `--tls-key-file` (or `[tls]` in the config)
//! make every listener serve HTTPS; `--tls-ca-file` is the CA the process's calls to the
//! gateway, workers or stage workers trust besides the host's roots.

use crate::config::ServeConfig;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key-file.
    #[arg(long, requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Trust this CA (PEM) when calling the gateway, workers or stage workers over HTTPS.
    #[arg(long)]
    pub tls_ca_file: Option<PathBuf>,
}

impl TlsArgs {
    /// The `[tls]` keys these flags set.
    pub fn overrides(&self) -> Vec<(&'static str, String)> {
        [
            ("cert_file", &self.tls_cert_file),
            ("key_file", &self.tls_key_file),
            ("ca_file", &self.tls_ca_file),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_ref()?.display().to_string())))
        .collect()
    }
}

/// The listeners' TLS configuration, when the config gives a certificate and key.
pub fn server(cfg: &ServeConfig) -> Result<Option<Arc<rustls::ServerConfig>>> {
    match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(c), Some(k)) => Ok(Some(genie_cluster_auth::tls::server_config(c, k)?)),
        _ => Ok(None),
    }
}

/// `https` when the listeners serve TLS, else `http`.
pub fn scheme(cfg: &ServeConfig) -> &'static str {
    if cfg.tls.cert_file.is_some() {
        "https"
    } else {
        "http"
    }
}

/// An HTTP client builder for the cluster's calls, trusting `tls.ca_file` when set.
pub fn client(cfg: &ServeConfig) -> Result<reqwest::ClientBuilder> {
    Ok(genie_cluster_auth::tls::client_builder(
        cfg.tls.ca_file.as_deref(),
    )?)
}
