//! # genie-worker-core
//!
//! What every Genie worker shares, so the prefill and decode workers (and the gateway's
//! in-process pool, which calls the same admission) keep one copy of each rule:
//!
//! - [`thread`]: [`WorkerThread`], a compute thread fed by a bounded queue, shut down and
//!   joined when its handle drops;
//! - [`events`]: a sequence's bounded event channel ([`EventSender`]) and
//!   [`next_token`], the sample / stop-token / `max_tokens` rule every worker applies;
//! - [`admit`]: [`AdmitError`], why a worker refuses a sequence, as a typed failure code;
//! - [`control`]: the worker control API's NDJSON event body, refusals and health;
//! - [`kv_events`]: [`KvEventLog`], the prefix-cache blocks a worker reports it holds.

pub mod admit;
pub mod control;
pub mod costs;
pub mod events;
pub mod kv_events;
pub mod thread;

pub use admit::AdmitError;
pub use events::{event_channel, next_token, EventSender, Next};
pub use kv_events::KvEventLog;
pub use thread::WorkerThread;
