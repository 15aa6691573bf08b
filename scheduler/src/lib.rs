//! # genie-scheduler
//!
//! Where each request runs, decided by pure functions of explicit inputs (no I/O, no
//! clocks, no async runtime), so every decision can be unit-tested and replayed.
//!
//! - [`placement`]: the per-request decision: colocated (prefill on the decode worker, for
//!   short prompts or `--colocated`) or disaggregated (which prefill worker, which decode
//!   worker), chosen by a routing policy over the workers' reported load and free KV.
//!
//! The ExecutionPlan, Policy API and pattern library (issue 5) build on this crate.

pub mod placement;

pub use placement::{
    DisaggregationMode, PlaceError, Placement, PlacementRequest, Role, RoutingPolicy, Scheduler,
    WorkerView,
};
