//! # genie-prefill-worker
//!
//! Will own the prefill service: run a prompt through `genie_engine::model::Model`, sample
//! the first token and stream each layer's KV (`Model::forward_observed` reports layers as
//! they finish) to the chosen decode worker. Nothing is implemented yet.
