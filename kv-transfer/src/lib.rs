//! # genie-kv-transfer
//!
//! Will own moving KV caches between workers: the versioned wire framing around the
//! engine's self-describing per-layer chunks (`genie_engine::kv_cache`), the `KvTransport`
//! trait and its in-process, TCP and RDMA implementations. Nothing is implemented yet; the
//! engine's layer export/import is what it will carry.
