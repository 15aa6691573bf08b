//! `genie bench scheduler`: how long one placement decision takes with many registered
//! workers, for every routing policy (the plan's decision plus worker choice, as the
//! gateway makes it per sequence).

use clap::Args;
use genie_protocol::WorkerId;
use genie_scheduler::patterns::llm;
use genie_scheduler::placement::prefix_hash;
use genie_scheduler::{
    compile, Inventory, ModelProfile, PlacementRequest, RequestFacts, ResourcePolicy, Role,
    RoutingPolicy, Scheduler, WorkerView,
};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct SchedBenchArgs {
    /// Registered workers (half prefill, half decode).
    #[arg(long, default_value_t = 1000)]
    pub workers: usize,
    /// Decisions timed per routing policy.
    #[arg(long, default_value_t = 100_000)]
    pub decisions: usize,
}

pub fn run(a: SchedBenchArgs) -> anyhow::Result<()> {
    let half = (a.workers / 2).max(1);
    let plan = compile(
        &llm::prefill_decode(
            ResourcePolicy::scale_out(half as u32, "H100"),
            ResourcePolicy::scale_to(half as u32, "A100"),
            64,
        ),
        &ModelProfile::preset("llama-3-8b").expect("preset"),
        &Inventory {
            pools: vec![
                genie_scheduler::Pool {
                    name: "h100".into(),
                    hardware: "H100".into(),
                    count: half as u32,
                },
                genie_scheduler::Pool {
                    name: "a100".into(),
                    hardware: "A100".into(),
                    count: half as u32,
                },
            ],
            ..Inventory::default()
        },
        &[],
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Varied, deterministic load so no policy gets an easy tie.
    let views: Vec<WorkerView> = (0..2 * half)
        .map(|i| {
            let h = genie_scheduler::placement::mix64(i as u64);
            WorkerView {
                id: WorkerId(i as u64),
                role: if i < half {
                    Role::Prefill
                } else {
                    Role::Decode
                },
                healthy: !h.is_multiple_of(50),
                load: (h % 64) as usize,
                queued_tokens: ((h >> 8) % 8192) as usize,
                kv_capacity_bytes: 64 << 30,
                kv_free_bytes: ((h >> 16) % 64) << 30,
                cached_tokens: 0,
                running: 0,
                costs: None,
            }
        })
        .collect();
    let prompts: Vec<Vec<u32>> = (0..256u32)
        .map(|k| (0..200).map(|t| (t * 7 + k * 13) % 49152).collect())
        .collect();
    println!(
        "{} workers ({} prefill, {} decode), {} decisions per policy, plan `{}`",
        views.len(),
        half,
        half,
        a.decisions,
        plan.policy
    );
    println!("| routing | mean | p50 | p99 | max | decisions/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for routing in [
        RoutingPolicy::RoundRobin,
        RoutingPolicy::LeastLoaded,
        RoutingPolicy::PowerOfTwo,
        RoutingPolicy::PrefixAffinity,
    ] {
        let mut s = Scheduler::new(routing);
        let mut times = Vec::with_capacity(a.decisions);
        let mut placed = 0usize;
        let total = Instant::now();
        for i in 0..a.decisions {
            let prompt = &prompts[i % prompts.len()];
            let t = Instant::now();
            let facts = RequestFacts {
                prompt_tokens: 20 + (i * 37) % 4000,
                max_tokens: 256,
                inputs: Vec::new(),
            };
            let disaggregate = plan.prefill_for(&facts).is_some_and(|(_, local)| !local);
            let mut req = PlacementRequest::new(facts.prompt_tokens, 1 << 20, disaggregate);
            if routing == RoutingPolicy::PrefixAffinity {
                req.prefix_hash = Some(prefix_hash(prompt, 64));
            }
            placed += usize::from(s.place(&req, &views).is_ok());
            times.push(t.elapsed().as_nanos() as f64 / 1e3);
        }
        let wall = total.elapsed().as_secs_f64();
        anyhow::ensure!(
            placed == a.decisions,
            "{} decisions failed",
            a.decisions - placed
        );
        times.sort_by(f64::total_cmp);
        let q = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "| {routing:?} | {mean:.2} µs | {:.2} µs | {:.2} µs | {:.1} µs | {:.0} |",
            q(0.5),
            q(0.99),
            times[times.len() - 1],
            a.decisions as f64 / wall
        );
    }
    Ok(())
}
