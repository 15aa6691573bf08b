//! # genie-scheduler
//!
//! Where each request runs, decided by pure functions of explicit inputs (no I/O, no
//! clocks, no async runtime), so every decision can be unit-tested and replayed.
//!
//! - [`policy`]: the Policy API: phases with selectors, resource policies
//!   (`ScaleOut`/`ScaleTo`) and data dependencies (`ColocateWith`), in Rust or TOML.
//! - [`patterns`]: the pattern library (`llm::prefill_decode`, `vision::pipeline_parallel`,
//!   `moe::expert_parallel`, `multimodal::parallel_fusion`, …).
//! - [`profile`] and [`inventory`]: what the compiler knows of the model and the cluster.
//! - [`compile`]: `compile(policy, model, cluster) → ExecutionPlan`, or a typed error that
//!   names the field.
//! - [`plan`]: the ExecutionPlan (stages, edges, costs; versioned JSON) and its per-request
//!   prediction.
//! - [`render`]: DOT, Mermaid and plain-text explanations.
//! - [`placement`]: the per-request decision: colocated or disaggregated, which workers,
//!   by a routing policy (round robin, least loaded, power of two choices, prefix affinity).
//! - [`request_plan`]: one request's plan as clients and the plan page see it.
//! - [`simulate`]: a discrete-event run of any plan over a synthetic workload.
//! - [`serve_sim`]: a discrete-event run of a request trace through the gateway's queue
//!   and placement and the workers' batching, priced by a cost profile (what
//!   `genie plan tune` searches with).
//! - [`tune`]: that search: coordinate descent over the serving knobs, by goodput.

pub mod compile;
pub mod cost_profile;
pub mod inventory;
pub mod patterns;
pub mod placement;
pub mod plan;
pub mod policy;
pub mod profile;
pub mod render;
pub mod request_plan;
pub mod serve_sim;
pub mod simulate;
pub mod tune;

pub use compile::{compile, Pin, PlanError, PlanErrorKind};
pub use inventory::{Hardware, Inventory, Link, Pool, Transport};
pub use patterns::{PatternSpec, PolicySpec};
pub use placement::{
    PlaceError, Placement, PlacementHint, PlacementRequest, Role, RoutingPolicy, Scheduler,
    WorkerView,
};
pub use plan::{ExecutionPlan, LiveStage, Predicted, Stage, PLAN_VERSION};
pub use policy::{DataDependency, Op, Phase, Policy, RequestFacts, ResourcePolicy, Selector};
pub use profile::{Modality, ModelProfile, TensorKind};
pub use request_plan::{calibrate, Calibration, Measured, RequestPlan, SeqPlan};
