//! # genie-router
//!
//! Where sequences run. The [`Dispatcher`] owns the waiting queue, asks the
//! ExecutionPlan and the scheduler where each sequence goes and starts it on a
//! [`WorkerPool`]: [`LocalPool`] (`genie serve`: worker threads in this process, KV over
//! the in-process transport) or [`RemotePool`] (`genie gateway`: worker processes
//! registered in a [`Registry`], reached over HTTP, KV between them over TCP). Every
//! refusal is a typed [`DispatchError`]; the HTTP server maps it to a status.

pub mod dispatch;
pub mod error;
pub mod kv_index;
pub mod local;
mod migrate;
pub mod pool;
pub mod remote;
pub mod wait_queue;

pub use dispatch::{fits_together, DispatchConfig, Dispatched, Dispatcher, SeqRequest, WaitTicket};
pub use error::DispatchError;
pub use local::LocalPool;
pub use pool::{SeqSpec, StartError, WorkerPool};
pub use remote::{Registry, RegistryError, RemotePool, StaticWorker};
