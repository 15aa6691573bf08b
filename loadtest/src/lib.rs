//! # genie-loadtest
//!
//! Genie's OpenAI load generator: streamed requests in a closed loop (`--concurrency`),
//! an open loop (`--rate`, Poisson arrivals) or a trace's arrivals, with synthetic prompts
//! of chosen token lengths; it measures TTFT, inter-token latency, TPOT, end-to-end latency,
//! request and token throughput and goodput under SLOs (HDR histograms), and writes a JSON
//! report and a markdown summary. It speaks plain OpenAI, so it measures any compatible
//! server (Genie, llama.cpp, vLLM) the same way. The k6 scripts live in `loadtest/k6/`, the
//! side-by-side scripts in `loadtest/compare/`.
//!
//! Pure parts (workloads, statistics, reports) are unit-tested; `client` and `run` do the
//! I/O.

pub mod client;
pub mod report;
pub mod run;
pub mod stats;
pub mod workload;
