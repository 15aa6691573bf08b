//! `genie serve` configuration: defaults → TOML file → `GENIE_<SECTION>__<KEY>` environment
//! variables → command-line flags (figment), then validated with errors that name the field.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use genie_router::StaticWorker;
use genie_scheduler::inventory::Inventory;
use genie_scheduler::patterns::PolicySpec;
use genie_scheduler::{ModelProfile, Pin, RoutingPolicy};
use genie_server::tenant::ApiKey;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    pub server: ServerSection,
    pub model: ModelSection,
    pub scheduler: SchedulerSection,
    pub prefill: PrefillSection,
    pub decode: DecodeSection,
    pub limits: LimitsSection,
    pub workers: WorkersSection,
    /// The cluster secret of a multi-process deployment.
    pub cluster: ClusterSection,
    /// HTTPS on this process's listeners, and the CA its cluster clients trust.
    pub tls: TlsSection,
    /// The ExecutionPlan: policy, model profile, cluster, overrides.
    pub plan: PlanSection,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PlanSection {
    /// A pattern with its arguments or phases written out; unset = `llm.prefill_decode`
    /// (or `llm.colocated`) over the `[prefill]` and `[decode]` workers, as `[scheduler]`
    /// says.
    pub policy: Option<PolicySpec>,
    /// A preset name (`preset = "llama-3-70b"`) or the dimensions written out; unset = the
    /// served model's GGUF.
    pub model: Option<ProfileSpec>,
    /// Pools and links; unset = a `prefill` and a `decode` pool of CPU workers.
    pub cluster: Option<Inventory>,
    /// Overrides: pin a phase to a pool or to one worker.
    pub pins: Vec<Pin>,
    /// A cost profile (`genie profile`'s JSON): the gateway predicts with its curves for
    /// workers that have not yet fitted their own.
    pub cost_profile: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ProfileSpec {
    Preset { preset: String },
    Explicit(Box<ModelProfile>),
}

/// The cluster secret (`genie gateway` and the workers; `genie serve` ignores it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// A file holding the secret (`--cluster-secret-file` and GENIE_CLUSTER_SECRET win).
    pub secret_file: Option<PathBuf>,
    /// Run without a secret (as `--insecure-cluster`).
    pub insecure: bool,
}

/// TLS from PEM files: with `cert_file` and `key_file`, every listener of the process
/// (public, internal, a worker's control port) serves HTTPS; `ca_file` is trusted, besides
/// the host's roots, by the process's own calls to the gateway or workers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Certificate chain (PEM, leaf first).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM). Keep it readable by the server's user only.
    pub key_file: Option<PathBuf>,
    /// A CA (PEM) that signed the cluster's certificates.
    pub ca_file: Option<PathBuf>,
}

/// Worker processes (`genie gateway`): heartbeats and statically listed workers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersSection {
    /// Heartbeat interval; a worker silent for 3 is unhealthy, for 10 forgotten.
    pub heartbeat_ms: u64,
    /// Workers the gateway polls instead of waiting for them to register.
    #[serde(rename = "static")]
    pub statics: Vec<StaticWorker>,
}

impl Default for WorkersSection {
    fn default() -> Self {
        WorkersSection {
            heartbeat_ms: 1000,
            statics: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to bind (loopback by default: expose deliberately).
    pub host: String,
    /// Port to bind; 0 picks a free one (printed at start-up).
    pub port: u16,
    /// Bearer keys accepted on `/v1/*`; empty = no authentication. Each is a string or a
    /// table with its limits: `{ key, name, requests_per_second, burst, max_concurrent,
    /// priority, max_priority }`.
    pub api_keys: Vec<ApiKey>,
    /// Read control-token strings (`<|im_end|>`) in message content and completion
    /// prompts as control tokens. Off: they are plain text, so users cannot forge turns.
    pub parse_special_in_content: bool,
    /// `genie gateway`: serve the control plane (`/internal/*`) on this port of
    /// `internal_host` instead of the public listener (which then 404s `/internal/*`).
    pub internal_port: Option<u16>,
    /// Address of the control-plane listener (default: `host`); bind it to a private
    /// interface.
    pub internal_host: Option<String>,
    /// `/metrics` needs the API key (when keys are set). Default: open (no prompt text).
    pub metrics_need_key: bool,
    /// `/plan` (the page) needs the API key. Default: open; its data, `/v1/plans*`,
    /// always needs the key.
    pub plan_needs_key: bool,
    /// On SIGTERM / Ctrl-C, how long requests in flight may go on finishing (new ones get
    /// 503 + `Retry-After` meanwhile); past it open streams get an error event and end.
    pub drain_timeout_secs: u64,
    /// A connection that does not finish sending a request's headers within this is closed.
    pub header_read_timeout_secs: u64,
    /// A request whose body has not arrived within this after its headers gets a 408.
    pub body_read_timeout_secs: u64,
    /// Most connections open at once on a listener; past it a new one gets a 503 and is
    /// closed.
    pub max_connections: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A GGUF model file (llama, qwen2, qwen3 or gemma3); unset = the default model (fetched and cached on first use).
    pub path: Option<PathBuf>,
    /// The id clients send as `model`; unset = the GGUF's `general.name`.
    pub served_name: Option<String>,
    /// A Jinja chat template file used instead of the GGUF's `tokenizer.chat_template`
    /// (one that takes `tools` and writes `<tool_call>` gets functions natively).
    pub chat_template: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Disaggregated,
    Colocated,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSection {
    /// `disaggregated`: prefill on prefill workers, decode on decode workers;
    /// `colocated`: both on the decode worker (the baseline).
    pub mode: Mode,
    /// In disaggregated mode, shorter prompts prefill on the decode worker.
    pub min_prompt_tokens: usize,
    /// `least_loaded`, `round_robin`, `power_of_two`, `prefix_affinity` or `kv_aware`.
    pub routing: RoutingPolicy,
    /// Prompt tokens that make up the prefix `prefix_affinity` routes by.
    pub prefix_tokens: usize,
    /// Times a sequence that loses a worker mid-stream is moved to live workers before it
    /// fails (0: never moved).
    pub migration_limit: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrefillSection {
    pub workers: usize,
    /// Compute threads per worker (0 = one per core).
    pub threads: usize,
    /// Most prompt tokens batched into one prefill forward.
    pub max_batch_tokens: usize,
    /// KV bytes of finished prompts each prefill worker keeps, so a prompt that starts
    /// like an earlier one computes only the rest (automatic prefix caching; 0: off).
    pub prefix_cache_bytes: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeSection {
    pub workers: usize,
    /// Compute threads per worker (0 = one per core).
    pub threads: usize,
    /// Most sequences in one decode step.
    pub max_batch: usize,
    /// Most prompt tokens prefilled per step by a decode worker (colocated prompts).
    pub max_prefill_tokens: usize,
    /// While sequences are decoding, a colocated prompt is prefilled in chunks of at most
    /// this many tokens a step (chunked prefill), so their next token never waits for a
    /// whole long prompt; 0 prefills prompts whole.
    pub prefill_chunk_tokens: usize,
    /// KV cache bytes each decode worker may hold.
    pub kv_cache_bytes: u64,
    /// A KV transfer that makes no progress (no layer) for this long once it has started
    /// is dropped (the gateway then moves the sequence elsewhere).
    pub transfer_timeout_secs: u64,
    /// How long a sequence with reserved KV waits for its transfer's first layer: the
    /// prefill worker's queue. A backstop only: the gateway cancels the sequence (freeing
    /// the KV) as soon as its prefill worker is lost or the client goes away.
    pub kv_wait_timeout_secs: u64,
    /// KV bytes of prompts this decode worker prefilled (colocated) or received, kept for
    /// reuse: automatic prefix caching, as on prefill workers; a received prompt's cached
    /// prefix is not sent again (0: off).
    pub prefix_cache_bytes: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Sequences admitted but not yet producing tokens; beyond it requests get 429.
    pub max_waiting: usize,
    /// How long a request may wait for KV room before it gets 429.
    pub queue_timeout_secs: u64,
    /// `max_tokens` when a request gives none (capped by the context left).
    pub default_max_tokens: usize,
    /// Largest `n` accepted.
    pub max_n: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// A streaming client that reads nothing for this long (its buffers full) has its
    /// sequences cancelled and their KV freed.
    pub stream_stall_secs: u64,
    /// A waiting sequence that has waited this long is placed before any higher priority
    /// that has not (so low priorities never starve).
    pub priority_max_wait_secs: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            host: "127.0.0.1".into(),
            port: 8000,
            api_keys: Vec::new(),
            internal_port: None,
            internal_host: None,
            metrics_need_key: false,
            plan_needs_key: false,
            drain_timeout_secs: 30,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            max_connections: 1024,
            parse_special_in_content: false,
        }
    }
}

impl Default for SchedulerSection {
    fn default() -> Self {
        SchedulerSection {
            mode: Mode::Disaggregated,
            min_prompt_tokens: 0,
            routing: RoutingPolicy::LeastLoaded,
            prefix_tokens: 64,
            migration_limit: 2,
        }
    }
}

impl Default for PrefillSection {
    fn default() -> Self {
        PrefillSection {
            workers: 1,
            threads: 0,
            max_batch_tokens: 4096,
            prefix_cache_bytes: 256 << 20,
        }
    }
}

impl Default for DecodeSection {
    fn default() -> Self {
        DecodeSection {
            workers: 1,
            threads: 0,
            max_batch: 64,
            max_prefill_tokens: 2048,
            prefill_chunk_tokens: 128,
            kv_cache_bytes: 4 << 30,
            transfer_timeout_secs: 60,
            kv_wait_timeout_secs: 600,
            prefix_cache_bytes: 256 << 20,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_waiting: 256,
            queue_timeout_secs: 60,
            default_max_tokens: 2048,
            max_n: 16,
            max_body_bytes: 4 << 20,
            stream_stall_secs: 30,
            priority_max_wait_secs: 10,
        }
    }
}

/// One invalid field: `section.key` and why.
#[derive(Debug)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl std::error::Error for FieldError {}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config field `{}`: {}", self.field, self.reason)
    }
}

impl ServerSection {
    /// How every listener of the process is served.
    pub fn edge(&self) -> genie_server::edge::EdgeConfig {
        genie_server::edge::EdgeConfig {
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_secs),
            body_read_timeout: std::time::Duration::from_secs(self.body_read_timeout_secs),
            max_connections: self.max_connections,
            tls: None,
        }
    }
}

impl ServeConfig {
    /// Layers the sources; `overrides` are the command-line flags that were given.
    pub fn load(file: Option<&Path>, overrides: figment::value::Dict) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(ServeConfig::default()));
        if let Some(f) = file {
            if !f.is_file() {
                anyhow::bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        let env = Env::raw().filter_map(|k| {
            let k = k.as_str().to_ascii_lowercase();
            let rest = k.strip_prefix("genie_")?;
            rest.contains("__").then(|| rest.replace("__", ".").into())
        });
        fig = fig.merge(env).merge(Serialized::defaults(overrides));
        let cfg: ServeConfig = fig.extract().map_err(|e| {
            let field = e.path.join(".");
            anyhow::anyhow!(
                "invalid configuration{}: {}",
                if field.is_empty() {
                    String::new()
                } else {
                    format!(" at `{field}`")
                },
                e.kind
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range checks the type system cannot express.
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |field: &str, reason: &str| {
            Err(FieldError {
                field: field.into(),
                reason: reason.into(),
            })
        };
        if self.server.host.trim().is_empty() {
            return err("server.host", "must not be empty");
        }
        if self.server.header_read_timeout_secs == 0 {
            return err("server.header_read_timeout_secs", "must be at least 1");
        }
        if self.server.body_read_timeout_secs == 0 {
            return err("server.body_read_timeout_secs", "must be at least 1");
        }
        if self.server.max_connections == 0 {
            return err("server.max_connections", "must be at least 1");
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => return err("tls.key_file", "must be set with tls.cert_file"),
            (None, Some(_)) => return err("tls.cert_file", "must be set with tls.key_file"),
            _ => {}
        }
        for (i, k) in self.server.api_keys.iter().enumerate() {
            if let Err((field, reason)) = k.validate() {
                return Err(FieldError {
                    field: format!("server.api_keys[{i}].{field}"),
                    reason,
                });
            }
        }
        if self.limits.priority_max_wait_secs == 0 {
            return err("limits.priority_max_wait_secs", "must be at least 1");
        }
        if self.prefill.workers == 0 && self.scheduler.mode == Mode::Disaggregated {
            return err(
                "prefill.workers",
                "disaggregated mode needs at least 1 prefill worker (or set scheduler.mode = \"colocated\")",
            );
        }
        if self.scheduler.prefix_tokens == 0 {
            return err("scheduler.prefix_tokens", "must be at least 1");
        }
        if self.prefill.workers > 64 {
            return err("prefill.workers", "at most 64 in one process");
        }
        if self.decode.workers == 0 || self.decode.workers > 64 {
            return err("decode.workers", "must be between 1 and 64");
        }
        if self.prefill.max_batch_tokens == 0 {
            return err("prefill.max_batch_tokens", "must be at least 1");
        }
        if self.decode.max_batch == 0 {
            return err("decode.max_batch", "must be at least 1");
        }
        if self.decode.max_prefill_tokens == 0 {
            return err("decode.max_prefill_tokens", "must be at least 1");
        }
        if self.decode.kv_cache_bytes < (1 << 20) {
            return err("decode.kv_cache_bytes", "must be at least 1 MiB");
        }
        if self.decode.transfer_timeout_secs == 0 {
            return err("decode.transfer_timeout_secs", "must be at least 1");
        }
        if self.decode.kv_wait_timeout_secs == 0 {
            return err("decode.kv_wait_timeout_secs", "must be at least 1");
        }
        if self.limits.max_waiting == 0 {
            return err("limits.max_waiting", "must be at least 1");
        }
        if self.limits.default_max_tokens == 0 {
            return err("limits.default_max_tokens", "must be at least 1");
        }
        if self.limits.max_n == 0 {
            return err("limits.max_n", "must be at least 1");
        }
        if self.limits.stream_stall_secs == 0 {
            return err("limits.stream_stall_secs", "must be at least 1");
        }
        if self.workers.heartbeat_ms < 50 {
            return err("workers.heartbeat_ms", "must be at least 50");
        }
        for (i, w) in self.workers.statics.iter().enumerate() {
            if !w.address.starts_with("http://") {
                return Err(FieldError {
                    field: format!("workers.static[{i}].address"),
                    reason: "must be an http:// URL".into(),
                });
            }
            if w.role == genie_protocol::worker::WorkerRole::Decode && w.kv_endpoint.is_none() {
                return Err(FieldError {
                    field: format!("workers.static[{i}].kv_endpoint"),
                    reason: "a decode worker needs its KV endpoint (host:port)".into(),
                });
            }
        }
        if self.limits.max_body_bytes < 1024 {
            return err("limits.max_body_bytes", "must be at least 1024");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bind_loopback() {
        let c = ServeConfig::default();
        c.validate().unwrap();
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.server.port, 8000);
    }

    #[test]
    fn toml_then_overrides_win_in_order_and_bad_fields_are_named() {
        let dir = std::env::temp_dir().join(format!("genie-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "[server]\nport = 9001\n[decode]\nmax_batch = 8\n").unwrap();
        let mut o = figment::value::Dict::new();
        o.insert(
            "decode".into(),
            figment::value::Value::from(figment::value::Dict::from_iter([(
                "max_batch".to_string(),
                figment::value::Value::from(4u64),
            )])),
        );
        let c = ServeConfig::load(Some(&f), o).unwrap();
        assert_eq!((c.server.port, c.decode.max_batch), (9001, 4));

        std::fs::write(&f, "[decode]\nmax_batch = 0\n").unwrap();
        let e = ServeConfig::load(Some(&f), Default::default()).unwrap_err();
        assert!(e.to_string().contains("decode.max_batch"), "{e}");
        std::fs::write(&f, "[decode]\nmax_bach = 3\n").unwrap();
        let e = ServeConfig::load(Some(&f), Default::default()).unwrap_err();
        assert!(e.to_string().contains("max_bach"), "{e}");
        std::fs::write(&f, "[server]\nport = \"x\"\n").unwrap();
        let e = ServeConfig::load(Some(&f), Default::default()).unwrap_err();
        assert!(e.to_string().contains("server.port"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod shipped_configs {
    use super::*;

    /// Every TOML under configs/ loads and validates (found by listing the folder, so a
    /// new config cannot go unchecked).
    #[test]
    fn shipped_configs_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut checked = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                if let Err(e) = ServeConfig::load(Some(&path), Default::default()) {
                    panic!("{}: {e}", path.display());
                }
                checked.push(path);
            }
        }
        assert!(checked.len() >= 8, "{checked:?}");
        let local = dir.join("local.toml");
        let c = ServeConfig::load(Some(&local), Default::default()).unwrap();
        assert_eq!(
            c,
            ServeConfig::default(),
            "local.toml documents the defaults"
        );
        let cluster =
            ServeConfig::load(Some(&dir.join("cluster.toml")), Default::default()).unwrap();
        assert_eq!(cluster.server.host, "0.0.0.0");
        assert_eq!(cluster.scheduler.min_prompt_tokens, 64);
        assert_eq!(cluster.workers.heartbeat_ms, 500);
        assert_eq!(cluster.decode.kv_cache_bytes, 8 << 30);
    }
}
