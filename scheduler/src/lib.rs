//! # genie-scheduler
//!
//! Will own the ExecutionPlan (the semantically rich graph of phases and tensor edges), the
//! Policy API and pattern library (`llm::prefill_decode`, `vision::pipeline_parallel`, …),
//! placement and routing policies and the cost model — as pure logic with no I/O, so every
//! decision is unit-tested and replayable. Nothing is implemented yet; see the open issues.
