//! Plans for people: Graphviz DOT, Mermaid, and a plain-text explanation of every
//! decision the compiler made.

use crate::inventory::Transport;
use crate::plan::{Criticality, Edge, ExecutionPlan, Rate, Stage};
use std::fmt::Write;

/// `1.5 GiB`, `23.0 KiB`, `12 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 1.0 {
        format!("{v:.1} ms")
    } else {
        format!("{:.0} µs", v * 1000.0)
    }
}

fn id(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn stage_lines(s: &Stage) -> [String; 3] {
    [
        format!("{} ({})", s.phase, s.op_label),
        format!(
            "{} x{} {}{}",
            s.pool,
            s.replicas,
            s.hardware,
            if s.gpus_per_replica > 1 {
                format!(" (tp {})", s.gpus_per_replica)
            } else {
                String::new()
            }
        ),
        s.selector_label.clone(),
    ]
}

fn edge_label(e: &Edge) -> String {
    let t = e.transport.as_str();
    let rate = match e.rate {
        Rate::OncePerRequest => "once",
        Rate::EveryStep => "every step",
    };
    format!(
        "{}: {}/token, {t}, {rate}",
        e.tensor.name,
        bytes(e.tensor.bytes_per_token)
    )
}

/// Graphviz: stages as boxes grouped by pool, edges labelled with the tensor.
pub fn to_dot(plan: &ExecutionPlan) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "digraph plan {{");
    let _ = writeln!(
        o,
        "  label=\"{} on {}\"; labelloc=t; rankdir=LR; node [shape=box, style=rounded];",
        plan.policy, plan.model.name
    );
    let mut pools: Vec<&str> = plan.stages.iter().map(|s| s.pool.as_str()).collect();
    pools.dedup();
    pools.sort_unstable();
    pools.dedup();
    for pool in pools {
        let _ = writeln!(o, "  subgraph cluster_{} {{", id(pool));
        let _ = writeln!(o, "    label=\"pool {pool}\";");
        for s in plan.stages.iter().filter(|s| s.pool == pool) {
            let [a, b, c] = stage_lines(s);
            let _ = writeln!(o, "    {} [label=\"{a}\\n{b}\\n{c}\"];", id(&s.phase));
        }
        let _ = writeln!(o, "  }}");
    }
    for e in &plan.edges {
        let style = match (e.transport, e.criticality) {
            (Transport::Local, _) => ", style=dashed",
            (_, Criticality::EveryToken) => ", penwidth=2",
            _ => "",
        };
        let _ = writeln!(
            o,
            "  {} -> {} [label=\"{}\"{style}];",
            id(&e.from),
            id(&e.to),
            edge_label(e)
        );
    }
    let _ = writeln!(o, "}}");
    o
}

/// Mermaid flowchart, the same graph.
pub fn to_mermaid(plan: &ExecutionPlan) -> String {
    let mut o = String::from("flowchart LR\n");
    let mut pools: Vec<&str> = plan.stages.iter().map(|s| s.pool.as_str()).collect();
    pools.sort_unstable();
    pools.dedup();
    for pool in pools {
        let _ = writeln!(o, "  subgraph pool_{}[\"pool {pool}\"]", id(pool));
        for s in plan.stages.iter().filter(|s| s.pool == pool) {
            let [a, b, c] = stage_lines(s);
            let _ = writeln!(o, "    {}[\"{a}<br/>{b}<br/>{c}\"]", id(&s.phase));
        }
        let _ = writeln!(o, "  end");
    }
    for e in &plan.edges {
        let arrow = if e.transport == Transport::Local {
            "-.->"
        } else {
            "-->"
        };
        let _ = writeln!(
            o,
            "  {} {arrow}|\"{}\"| {}",
            id(&e.from),
            edge_label(e),
            id(&e.to)
        );
    }
    o
}

/// Every decision in words: where each phase runs and why, what moves and what it costs.
pub fn explain(plan: &ExecutionPlan) -> String {
    let mut o = String::new();
    let m = &plan.model;
    let _ = writeln!(
        o,
        "Plan v{} from policy `{}` for {} ({} layers, {} parameters, {} of weights, {} of KV per token).",
        plan.version,
        plan.policy,
        m.name,
        m.layers,
        m.params,
        bytes(m.weight_bytes),
        bytes(m.kv_bytes_per_token)
    );
    let _ = writeln!(o, "\nStages, in dependency order:");
    for (i, s) in plan.stages.iter().enumerate() {
        let how = if s.pinned_pool {
            "pinned by an override"
        } else if !s.colocated_with.is_empty() {
            "chosen by hardware type, shared with what it is colocated with"
        } else {
            "chosen by hardware type"
        };
        let _ = writeln!(
            o,
            "{}. `{}` runs {} on pool `{}` ({how}) for {}.",
            i + 1,
            s.phase,
            s.op_label,
            s.pool,
            s.selector_label
        );
        let _ = writeln!(
            o,
            "   {:?}: {} {} as {} replica(s) of {} device(s) each{}.",
            s.scaling,
            s.gpus,
            s.hardware,
            s.replicas,
            s.gpus_per_replica,
            if s.gpus_per_replica > 1 {
                " (the weights do not fit one)"
            } else {
                ""
            }
        );
        if s.layers[1] > s.layers[0] {
            let _ = write!(o, "   Layers {}..{}", s.layers[0], s.layers[1]);
            if let Some([a, b]) = s.experts {
                let _ = write!(o, ", experts {a}..{b} of every MoE layer");
            }
            let _ = writeln!(o, ".");
        }
        for r in &s.residency {
            let size = match (r.bytes, r.bytes_per_token) {
                (Some(b), _) => bytes(b),
                (_, Some(b)) => format!("{}/token", bytes(b)),
                _ => "?".into(),
            };
            let _ = writeln!(o, "   Holds {} ({:?}, {size}).", r.tensor, r.residency);
        }
        if let Some(t) = s.cost.kv_capacity_tokens {
            let _ = writeln!(o, "   KV room per replica: {t} tokens.");
        }
        let c = &s.cost;
        let mut costs = Vec::new();
        if s.op.prompt_work() {
            costs.push(format!("{} per prompt token", ms(c.prompt_ms_per_token)));
        }
        if c.step_ms > 0.0 {
            costs.push(format!("{} per decode step at batch 1", ms(c.step_ms)));
        }
        let _ = writeln!(o, "   Cost: {}.", costs.join(", "));
        if let Some(w) = s.pinned_worker {
            let _ = writeln!(o, "   Requests go to worker {w} (pinned).");
        }
    }
    let _ = writeln!(o, "\nData movement:");
    if plan.edges.is_empty() {
        let _ = writeln!(o, "   nothing moves between stages.");
    }
    for e in &plan.edges {
        let when = match (e.rate, e.criticality) {
            (Rate::OncePerRequest, _) => "once per request, on the path to the first token",
            (Rate::EveryStep, _) => "for the prompt and on every decode step",
        };
        let how = match e.transport {
            Transport::Local => "stays local (the consumer is colocated with it)".to_string(),
            t => format!(
                "over {} at {} Gbit/s, {} per 1,000 tokens",
                t.as_str(),
                e.gbps,
                ms(e.ms_per_1k_tokens)
            ),
        };
        let _ = writeln!(
            o,
            "- {} -> {}: `{}` ({:?}, {}/token) {how}; {when}.",
            e.from,
            e.to,
            e.tensor.name,
            e.tensor.residency,
            bytes(e.tensor.bytes_per_token)
        );
    }
    if !plan.warnings.is_empty() {
        let _ = writeln!(o, "\nWarnings:");
        for w in &plan.warnings {
            let _ = writeln!(o, "- {w}");
        }
    }
    o
}
