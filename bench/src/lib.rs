//! # genie-bench
//!
//! `genie bench`: benchmarks that print figures, each with its own arguments, all
//! reporting through [`stats`]:
//!
//! - [`accuracy`]: the engine against the exact float64 reference, beside llama.cpp;
//! - [`engine`]: prefill and batched decode throughput of the engine, beside native
//!   llama.cpp ([`llama_bench`]) and a memory read probe ([`membw`]);
//! - [`kv`]: the TCP KV transport beside a raw socket copy of the same bytes;
//! - [`kv_pages`]: decode speed with the paged KV cache beside the contiguous layout;
//! - [`disagg`]: time to first and second token, disaggregated vs colocated, across
//!   processes (it starts the current `genie` binary's roles);
//! - [`sched`]: placement decision time with many workers, per routing policy;
//! - [`profile`]: `genie profile`, the engine's cost curves on this host, fitted and
//!   written as a versioned cost profile;
//! - [`host`]: the CPU and ISA line printed with the figures.

pub mod accuracy;
pub mod disagg;
pub mod engine;
pub mod grammar;
pub mod host;
pub mod kv;
pub mod kv_pages;
pub mod llama_bench;
pub mod membw;
pub mod peak;
pub mod profile;
pub mod sched;
pub mod stats;
