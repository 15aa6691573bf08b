//! The cluster as the plan compiler sees it: pools of identical workers (a hardware type and
//! a count) and the links between pools.

use serde::{Deserialize, Serialize};

/// One accelerator (or CPU worker) type: what the cost model needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    pub name: String,
    /// Sustained dense throughput the cost model counts on (not the datasheet peak), in
    /// TFLOP/s: prefill is bound by it.
    pub tflops: f64,
    /// Device memory in GiB.
    pub memory_gib: f64,
    /// Sustained memory bandwidth in GB/s: decode is bound by it.
    pub memory_gbps: f64,
}

impl Hardware {
    /// Built-in types: `H100`, `H200`, `A100`, `L40S` (about half the datasheet FLOPs and
    /// 80 % of its bandwidth), and `cpu`: one 2-core AVX2 worker running Genie's engine,
    /// from the figures in BENCHMARKS.md (prefill ~280 tok/s and batch-1 decode ~100 tok/s
    /// of the 135M-parameter, 97 MB default model).
    pub fn preset(name: &str) -> Option<Hardware> {
        let hw = |tflops, memory_gib, memory_gbps| Hardware {
            name: name.into(),
            tflops,
            memory_gib,
            memory_gbps,
        };
        Some(match name {
            "H100" => hw(495.0, 80.0, 2680.0),
            "H200" => hw(495.0, 141.0, 3840.0),
            "A100" => hw(156.0, 80.0, 1630.0),
            "L40S" => hw(181.0, 48.0, 690.0),
            "cpu" => hw(0.075, 8.0, 9.7),
            _ => return None,
        })
    }

    pub fn memory_bytes(&self) -> u64 {
        (self.memory_gib * (1u64 << 30) as f64) as u64
    }
}

/// How bytes move between two pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Producer and consumer are the same worker: nothing moves.
    Local,
    /// Worker threads of one process (`genie serve`).
    InProcess,
    Tcp,
    Rdma,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Local => "local",
            Transport::InProcess => "in_process",
            Transport::Tcp => "tcp",
            Transport::Rdma => "rdma",
        }
    }

    /// Bandwidth assumed when a link gives none, in Gbit/s.
    pub fn default_gbps(self) -> f64 {
        match self {
            Transport::Local => f64::INFINITY,
            Transport::InProcess => 80.0,
            Transport::Tcp => 25.0,
            Transport::Rdma => 200.0,
        }
    }
}

/// A set of identical workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub name: String,
    /// A preset name (`H100`, `A100`, …) or a type listed under `hardware`.
    pub hardware: String,
    /// Accelerators (or workers) in the pool.
    pub count: u32,
}

/// A link between two pools (both directions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub from: String,
    pub to: String,
    pub transport: Transport,
    /// Gbit/s; unset = the transport's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
}

/// Every pool and link the plan may use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Inventory {
    pub pools: Vec<Pool>,
    pub links: Vec<Link>,
    /// Transport between pools that no link names.
    pub default_transport: Option<Transport>,
    /// Hardware types besides the presets.
    pub hardware: Vec<Hardware>,
}

impl Inventory {
    /// `genie serve`'s pools: `prefill` and `decode` CPU workers in one process.
    pub fn local(prefill_workers: u32, decode_workers: u32) -> Inventory {
        let mut pools = vec![Pool {
            name: "decode".into(),
            hardware: "cpu".into(),
            count: decode_workers,
        }];
        if prefill_workers > 0 {
            pools.insert(
                0,
                Pool {
                    name: "prefill".into(),
                    hardware: "cpu".into(),
                    count: prefill_workers,
                },
            );
        }
        Inventory {
            pools,
            links: Vec::new(),
            default_transport: Some(Transport::InProcess),
            hardware: Vec::new(),
        }
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The hardware of a type name: listed ones first, then presets.
    pub fn hardware(&self, name: &str) -> Option<Hardware> {
        self.hardware
            .iter()
            .find(|h| h.name == name)
            .cloned()
            .or_else(|| Hardware::preset(name))
    }

    /// Transport and Gbit/s between two pools.
    pub fn link(&self, a: &str, b: &str) -> (Transport, f64) {
        if let Some(l) = self
            .links
            .iter()
            .find(|l| (l.from == a && l.to == b) || (l.from == b && l.to == a))
        {
            return (l.transport, l.gbps.unwrap_or(l.transport.default_gbps()));
        }
        let t = self.default_transport.unwrap_or(Transport::Tcp);
        (t, t.default_gbps())
    }
}
