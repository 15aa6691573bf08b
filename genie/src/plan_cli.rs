//! `genie plan show|validate|explain|render|simulate|tune`: the plan a config compiles
//! to, without serving it (`tune`: `plan_tune`).

use crate::config::ServeConfig;
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use genie_scheduler::{render, ExecutionPlan, Transport};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Print the plan (JSON with `stages` and `edges` by default).
    Show(PlanArgs),
    /// Compile the plan and say whether it is valid (exit 1 with the field and reason if not).
    Validate(PlanArgs),
    /// Every placement decision and data movement in words.
    Explain(PlanArgs),
    /// Draw the plan (DOT by default; pipe to `dot -Tsvg`, or paste Mermaid into a doc).
    Render(PlanArgs),
    /// Run the plan's cost model over a synthetic workload (Poisson arrivals, seeded):
    /// TTFT and end-to-end percentiles, stage utilisation, queueing.
    Simulate(SimulateArgs),
    /// Search the serving knobs (worker split and threads, min_prompt_tokens,
    /// decode.max_batch, prefill.max_batch_tokens, routing) for the most goodput on a
    /// workload under an SLO, by simulating each candidate with a cost profile; prints why
    /// and writes the tuned config.
    Tune(crate::plan_tune::TuneArgs),
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    #[arg(long, default_value_t = 500)]
    pub requests: usize,
    /// Mean arrivals per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 1024)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    pub output_tokens: usize,
    /// Images per request (multimodal plans).
    #[arg(long, default_value_t = 0)]
    pub images: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Cost profiles (`genie profile`'s files, or `h100`/`a100`): run the config as it
    /// stands through the serving simulator (gateway queue, placement, the workers'
    /// batching) on --workload instead of the plan's stage model.
    #[arg(long)]
    pub profile: Vec<String>,
    /// With --profile: a JSONL trace or `poisson:rate=R,requests=N,prompt=A-B,output=C-D`.
    #[arg(long, requires = "profile")]
    pub workload: Option<String>,
    /// With --profile: `ttft=MS,itl=MS`, for goodput.
    #[arg(long, requires = "profile")]
    pub slo: Option<String>,
    /// With --profile: cores the workers share (default: this host's).
    #[arg(long, requires = "profile")]
    pub cores: Option<usize>,
    /// With --profile: tokens added to each trace prompt (default: the chat template's;
    /// see `genie plan tune --help`).
    #[arg(long, requires = "profile")]
    pub prompt_overhead: Option<usize>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Json,
    Dot,
    Mermaid,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Deployment {
    /// `genie serve`: workers are threads of one process (in-process KV transport).
    Serve,
    /// `genie gateway` with worker processes (KV over TCP).
    Gateway,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The config to plan (e.g. configs/hetero-h100-a100.toml); unset = the defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// A GGUF to take the model profile from when the config has no `[plan.model]`
    /// (default: the config's model, else GENIE_MODEL, else the default model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// How the derived pools are linked when the config lists no `[plan.cluster]`.
    #[arg(long, value_enum, default_value = "serve")]
    pub deployment: Deployment,
}

/// The served GGUF's metadata (not its weights), where `cfg` has no `[plan.model]`.
pub(crate) fn served_meta(
    a: &PlanArgs,
    cfg: &ServeConfig,
) -> Result<Option<genie_engine::gguf::GgufMeta>> {
    if cfg.plan.model.is_some() {
        return Ok(None);
    }
    let path =
        genie_engine::fetch::resolve_model(a.model.as_deref().or(cfg.model.path.as_deref()))?;
    let g = genie_engine::gguf::read_meta(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(g))
}

/// The plan's model profile of a served GGUF.
pub(crate) fn profile_of_meta(g: &genie_engine::gguf::GgufMeta) -> genie_scheduler::ModelProfile {
    crate::plan_setup::profile_of(&g.config, g.weights_bytes, g.has_output)
}

/// How the derived pools are linked.
pub(crate) fn transport_of(a: &PlanArgs) -> Transport {
    match a.deployment {
        Deployment::Serve => Transport::InProcess,
        Deployment::Gateway => Transport::Tcp,
    }
}

fn compile(a: &PlanArgs) -> Result<ExecutionPlan> {
    let cfg = ServeConfig::load(a.config.as_deref(), Default::default())?;
    let served = served_meta(a, &cfg)?.as_ref().map(profile_of_meta);
    cfg.compile_plan(served, transport_of(a))
        .map_err(|e| anyhow::anyhow!("invalid plan: {e}"))
}

pub fn run(cmd: PlanCommand) -> Result<()> {
    match cmd {
        PlanCommand::Show(a) => {
            let plan = compile(&a)?;
            print(&plan, a.format.unwrap_or(Format::Json))
        }
        PlanCommand::Render(a) => {
            let plan = compile(&a)?;
            print(&plan, a.format.unwrap_or(Format::Dot))
        }
        PlanCommand::Explain(a) => {
            print!("{}", render::explain(&compile(&a)?));
            Ok(())
        }
        PlanCommand::Simulate(a) => simulate(a),
        PlanCommand::Tune(a) => crate::plan_tune::run(a),
        PlanCommand::Validate(a) => {
            let plan = compile(&a)?;
            let servable = match crate::plan_setup::check_servable(&plan) {
                Ok(()) => "servable by genie serve / genie gateway".to_string(),
                Err(e) => format!("not served by the gateway ({})", e.reason),
            };
            println!(
                "valid: policy `{}`, {} stages, {} edges, {} warnings; {servable}",
                plan.policy,
                plan.stages.len(),
                plan.edges.len(),
                plan.warnings.len()
            );
            for w in &plan.warnings {
                println!("warning: {w}");
            }
            Ok(())
        }
    }
}

fn print(plan: &ExecutionPlan, f: Format) -> Result<()> {
    match f {
        Format::Json => println!("{}", serde_json::to_string_pretty(plan)?),
        Format::Dot => print!("{}", render::to_dot(plan)),
        Format::Mermaid => print!("{}", render::to_mermaid(plan)),
    }
    Ok(())
}

fn simulate(a: SimulateArgs) -> Result<()> {
    if !a.profile.is_empty() {
        let Some(w) = &a.workload else {
            anyhow::bail!("--profile needs --workload (a trace or poisson:…)");
        };
        let inputs = crate::plan_tune::Inputs::new(
            &a.plan,
            &a.profile,
            None,
            w,
            a.slo.as_deref(),
            a.cores,
            a.prompt_overhead,
        )?;
        let (k, r) = crate::plan_tune::simulate_config(&inputs);
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            crate::plan_tune::print_report(&k, &r);
        }
        return Ok(());
    }
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        anyhow::bail!("--rate must be a positive number of requests per second");
    }
    let plan = compile(&a.plan)?;
    let w = genie_scheduler::simulate::Workload {
        requests: a.requests,
        rate_per_s: a.rate,
        prompt_tokens: a.prompt_tokens,
        output_tokens: a.output_tokens,
        inputs: vec![genie_scheduler::Modality::Image; a.images],
        seed: a.seed,
    };
    let r = genie_scheduler::simulate::simulate(&plan, &w);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{} requests of {} prompt + {} output tokens at {}/s through `{}` (simulated):",
        r.requests, a.prompt_tokens, a.output_tokens, a.rate, plan.policy
    );
    println!("  TTFT: {}", r.ttft_ms);
    println!("  e2e:  {}", r.e2e_ms);
    println!(
        "  output throughput {:.1} tok/s over {:.1} s",
        r.output_tokens_per_s,
        r.makespan_ms / 1e3
    );
    for s in &r.stages {
        println!(
            "  stage {:<16} {} replica(s), prompt-work utilisation {:>5.1} %, longest wait {:.1} ms",
            s.phase,
            s.replicas,
            s.utilisation * 100.0,
            s.max_wait_ms
        );
    }
    Ok(())
}
