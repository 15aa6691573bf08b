//! The cluster secret of a multi-process role (`genie gateway`, the workers, a stage
//! worker): where it is read from, and the refusal to start without one unless
//! `--insecure-cluster` says so. `genie serve` (one process) needs none.

use crate::config::ServeConfig;
use anyhow::Result;
use clap::Args;
use genie_cluster_auth::ClusterSecret;
use std::path::PathBuf;

/// The environment variable that may hold the secret itself.
pub const SECRET_ENV: &str = "GENIE_CLUSTER_SECRET";

#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// A file holding the cluster secret (at least 32 bytes; a trailing newline is
    /// ignored) shared by the gateway and every worker. Also GENIE_CLUSTER_SECRET (the
    /// secret itself) or the config key `cluster.secret_file`.
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Run the control plane and KV transport without the cluster secret: anyone who can
    /// reach these ports can register workers, drive them and push KV. For trusted test
    /// networks only.
    #[arg(long)]
    pub insecure_cluster: bool,
}

/// The secret `role` runs with: the flag's file, else GENIE_CLUSTER_SECRET, else the
/// config's `cluster.secret_file`; `None` only with `--insecure-cluster` (or
/// `cluster.insecure = true`), which warns loudly.
pub fn secret(args: &ClusterArgs, cfg: &ServeConfig, role: &str) -> Result<Option<ClusterSecret>> {
    let env = std::env::var(SECRET_ENV).ok();
    let found = ClusterSecret::resolve(
        args.cluster_secret_file.as_deref(),
        env.as_deref(),
        cfg.cluster.secret_file.as_deref(),
    )?;
    match found {
        Some((s, source)) => {
            tracing::info!(%source, "cluster secret loaded");
            Ok(Some(s))
        }
        None if args.insecure_cluster || cfg.cluster.insecure => {
            tracing::warn!(
                "INSECURE CLUSTER: {role} runs without a cluster secret; anyone who can reach its \
                 ports can register workers, drive them and send KV. Give a secret with \
                 --cluster-secret-file, {SECRET_ENV} or cluster.secret_file"
            );
            Ok(None)
        }
        None => anyhow::bail!(
            "{role} needs the cluster secret shared by the gateway and its workers: give \
             --cluster-secret-file PATH, the {SECRET_ENV} environment variable, or the config \
             key cluster.secret_file (at least {} bytes, e.g. `openssl rand -hex 32 > secret`); \
             or run with --insecure-cluster on a trusted network",
            ClusterSecret::MIN_LEN
        ),
    }
}
