//! # genie-protocol
//!
//! The vocabulary every Genie crate shares: OpenAI-compatible request/response types,
//! gateway↔worker messages, and id newtypes. Ids are never bare integers across crates.
//!
//! - [`batching`]: the workers' rule for which queued prompts join a step;
//! - [`trace`]: request traces (JSONL, this project's form or Mooncake's), the workload
//!   `genie-loadtest` replays and `genie plan tune` simulates;
//! - [`kv`]: [`kv::LayerShape`], the shape of one layer of KV as the engine exports it and
//!   the KV transports carry it;
//! - [`openai`]: the OpenAI request/response/error types the gateway speaks;
//! - [`worker`]: sequence events workers send the gateway, the prefill→decode hand-off, and
//!   the gateway↔worker control messages of separate processes (registration, status,
//!   prefill and decode requests, the worker list);
//! - id newtypes ([`RequestId`], [`WorkerId`], [`TransferId`], [`SeqId`]).

pub mod batching;
pub mod costs;
pub mod kv;
pub mod openai;
pub mod trace;
pub mod worker;

use serde::{Deserialize, Serialize};

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}-{:x}", stringify!($name), self.0)
            }
        }
    };
}

id_newtype!(
    /// One client request (may fan out into several sequences with `n > 1`).
    RequestId
);
id_newtype!(
    /// A registered prefill or decode worker.
    WorkerId
);
id_newtype!(
    /// One KV hand-off from a prefill worker to a decode worker.
    TransferId
);
id_newtype!(
    /// One generated sequence inside a worker.
    SeqId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialise_as_plain_numbers_and_display_with_their_kind() {
        assert_eq!(serde_json::to_string(&TransferId(42)).unwrap(), "42");
        assert_eq!(serde_json::from_str::<SeqId>("7").unwrap(), SeqId(7));
        assert_eq!(RequestId(255).to_string(), "RequestId-ff");
    }
}
