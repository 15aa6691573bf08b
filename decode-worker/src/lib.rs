//! # genie-decode-worker
//!
//! Will own the decode service: reserve KV capacity for an incoming transfer, import the
//! layers, and run continuous batching over `genie_engine::model::Model::decode_batch`.
//! Nothing is implemented yet.
