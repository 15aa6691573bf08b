//! `genie plan tune`: the serving configuration that gives the most goodput for a
//! workload and an SLO on the hardware a cost profile describes, found by simulating
//! candidates (`genie_scheduler::serve_sim`, searched by `genie_scheduler::tune`), with
//! the reasons printed and the tuned config written.

use crate::config::{Mode, ServeConfig};
use anyhow::{bail, Context, Result};
use clap::Args;
use genie_scheduler::cost_profile::CostProfile;
use genie_scheduler::serve_sim::{
    simulate_serving, ServeCosts, ServeReport, ServeSetup, SimRequest, Slo,
};
use genie_scheduler::tune::{tune, Knobs, Scored, Space, Split, Tuned, THRESHOLDS};
use genie_scheduler::{ExecutionPlan, RoutingPolicy, Transport};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TuneArgs {
    #[command(flatten)]
    pub plan: crate::plan_cli::PlanArgs,
    /// A cost profile (`genie profile` writes one; `h100` or `a100` name a preset). Give
    /// one per thread count to let the tuner choose threads per worker.
    #[arg(long, required = true)]
    pub profile: Vec<String>,
    /// The decode workers' profile where they run on other hardware than the prefill
    /// workers (default: the same profiles).
    #[arg(long)]
    pub decode_profile: Option<String>,
    /// A JSONL trace (`genie-loadtest --trace` form, or Mooncake's), or a distribution:
    /// `poisson:rate=R,requests=N,prompt=A-B,output=C-D[,seed=S]`.
    #[arg(long)]
    pub workload: String,
    /// The objective: `ttft=MS,itl=MS`. A request counts toward goodput when its first
    /// token came within `ttft` and every gap between its tokens within `itl` (as
    /// `genie-loadtest --slo-ttft-ms --slo-itl-ms` counts it).
    #[arg(long)]
    pub slo: String,
    /// Cores the workers share (`genie serve` on one host; default: this host's).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Workers to split between prefill and decode where the profile's hardware has no
    /// thread knob (default: the config's prefill + decode workers).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Prompt tokens to add to each trace prompt: what the chat template wraps a user
    /// message in (`genie-loadtest` sends each as one; default: the served model's
    /// template's count; 0 where a trace counts whole prompts).
    #[arg(long)]
    pub prompt_overhead: Option<usize>,
    /// Write the tuned config here (the input config with the tuned keys set).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the search as JSON instead of words.
    #[arg(long)]
    pub json: bool,
}

fn load_profile(spec: &str) -> Result<CostProfile> {
    if let Some(p) = CostProfile::preset(spec) {
        return Ok(p);
    }
    let text = std::fs::read_to_string(spec).with_context(|| {
        format!("reading the cost profile {spec} (or name a preset: h100, a100)")
    })?;
    CostProfile::from_json(&text).map_err(|e| anyhow::anyhow!("{spec}: {e}"))
}

fn parse_slo(s: &str) -> Result<Slo> {
    let (mut ttft, mut itl) = (None, None);
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--slo: `{part}` is not KEY=MS"))?;
        let ms: f64 = v
            .trim()
            .trim_end_matches("ms")
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v > 0.0)
            .with_context(|| format!("--slo: `{v}` is not a positive number of ms"))?;
        match k.trim() {
            "ttft" | "ttft_ms" => ttft = Some(ms),
            "itl" | "itl_ms" => itl = Some(ms),
            other => bail!("--slo: unknown key `{other}` (ttft, itl)"),
        }
    }
    match (ttft, itl) {
        (Some(ttft_ms), Some(itl_ms)) => Ok(Slo { ttft_ms, itl_ms }),
        _ => bail!("--slo needs both ttft=MS and itl=MS"),
    }
}

/// `A` or `A-B` (inclusive), positive.
fn range(v: &str, key: &str) -> Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--workload: {key}=`{v}` is not N or A-B (positive)");
    let (a, b) = v.split_once('-').unwrap_or((v, v));
    let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok((a, b))
}

/// The workload: a trace file, or Poisson arrivals with uniform lengths.
fn workload(spec: &str) -> Result<Vec<SimRequest>> {
    let Some(dist) = spec.strip_prefix("poisson:") else {
        let text = std::fs::read_to_string(spec)
            .with_context(|| format!("reading the trace {spec} (or give poisson:…)"))?;
        let entries = genie_protocol::trace::parse_trace(&text)
            .map_err(|e| anyhow::anyhow!("{spec}: {e}"))?;
        return Ok(entries
            .iter()
            .map(|e| SimRequest {
                arrival_ms: e.arrival_s * 1e3,
                prompt_tokens: e.input_tokens as usize,
                output_tokens: e.output_tokens as usize,
                cached_tokens: 0,
            })
            .collect());
    };
    let (mut rate, mut n, mut prompt, mut output, mut seed) = (None, None, None, None, 1u64);
    for part in dist.split(',') {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--workload: `{part}` is not KEY=VALUE"))?;
        match k {
            "rate" => {
                rate = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|r| *r > 0.0 && r.is_finite())
                        .with_context(|| {
                            format!("--workload: rate=`{v}` is not a positive number")
                        })?,
                )
            }
            "requests" => n = Some(range(v, k)?.0),
            "prompt" => prompt = Some(range(v, k)?),
            "output" => output = Some(range(v, k)?),
            "seed" => {
                seed = v
                    .parse()
                    .with_context(|| format!("--workload: seed=`{v}`"))?
            }
            other => {
                bail!("--workload: unknown key `{other}` (rate, requests, prompt, output, seed)")
            }
        }
    }
    let (Some(rate), Some(n), Some(prompt), Some(output)) = (rate, n, prompt, output) else {
        bail!("--workload poisson: needs rate, requests, prompt and output");
    };
    let mut rng = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut next = || {
        rng = genie_scheduler::placement::mix64(rng);
        ((rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut t = 0.0;
    Ok((0..n)
        .map(|_| {
            t += -next().ln() / rate * 1e3;
            let mut pick =
                |(a, b): (usize, usize)| a + ((next() * (b - a + 1) as f64) as usize).min(b - a);
            SimRequest {
                arrival_ms: t,
                prompt_tokens: pick(prompt),
                output_tokens: pick(output),
                cached_tokens: 0,
            }
        })
        .collect())
}

/// The knob's value as the config writes it.
fn threshold_name(t: Option<usize>) -> String {
    match t {
        None => "colocated".into(),
        Some(0) => "0 (all to prefill workers)".into(),
        Some(n) => n.to_string(),
    }
}

fn routing_name(r: RoutingPolicy) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{r:?}"))
}

fn split_name(k: &Knobs) -> String {
    let threads = if k.split.threads == 0 {
        String::new()
    } else {
        format!(", {} thread(s) each", k.split.threads)
    };
    format!(
        "{}P:{}D{threads}",
        k.split.prefill_workers, k.split.decode_workers
    )
}

fn knob_value(knob: &str, k: &Knobs) -> String {
    match knob {
        "placement" if k.colocated() => format!("{}, colocated", split_name(k)),
        "placement" => format!(
            "{}, min_prompt_tokens {}",
            split_name(k),
            threshold_name(k.min_prompt_tokens)
        ),
        "decode.max_batch" => k.decode_max_batch.to_string(),
        "prefill.max_batch_tokens" => k.prefill_max_batch_tokens.to_string(),
        _ => routing_name(k.routing),
    }
}

fn describe(k: &Knobs) -> String {
    format!(
        "{}, decode.max_batch {}, prefill.max_batch_tokens {}, routing {}",
        knob_value("placement", k),
        k.decode_max_batch,
        k.prefill_max_batch_tokens,
        routing_name(k.routing)
    )
}

fn figures(s: &Scored) -> String {
    let r = &s.report;
    format!(
        "goodput {:.3} req/s ({} of {} met the SLO{}), TTFT p50 {:.0} / p90 {:.0} ms, ITL p50 {:.1} / p99 {:.1} ms",
        r.goodput_per_s,
        r.slo_met,
        r.requests,
        if r.refused > 0 {
            format!(", {} refused", r.refused)
        } else {
            String::new()
        },
        r.ttft_ms.p50,
        r.ttft_ms.p90,
        r.itl_ms.p50,
        r.itl_ms.p99
    )
}

/// The tuned config: the input config's TOML with the tuned keys set.
fn tuned_toml(input: Option<&std::path::Path>, k: &Knobs) -> Result<String> {
    let mut doc: toml::Table = match input {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))?
            .parse()
            .with_context(|| format!("parsing {}", p.display()))?,
        None => toml::Table::new(),
    };
    let mut set = |section: &str, key: &str, v: toml::Value| {
        let t = doc
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = t {
            t.insert(key.into(), v);
        }
    };
    let int = |n: usize| toml::Value::Integer(n as i64);
    set("prefill", "workers", int(k.split.prefill_workers));
    set("decode", "workers", int(k.split.decode_workers));
    if k.split.threads > 0 {
        set("prefill", "threads", int(k.split.threads));
        set("decode", "threads", int(k.split.threads));
    }
    set("decode", "max_batch", int(k.decode_max_batch));
    set(
        "prefill",
        "max_batch_tokens",
        int(k.prefill_max_batch_tokens),
    );
    match k.min_prompt_tokens {
        Some(n) if k.split.prefill_workers > 0 => {
            set(
                "scheduler",
                "mode",
                toml::Value::String("disaggregated".into()),
            );
            set("scheduler", "min_prompt_tokens", int(n));
        }
        _ => set("scheduler", "mode", toml::Value::String("colocated".into())),
    }
    set(
        "scheduler",
        "routing",
        toml::Value::String(routing_name(k.routing)),
    );
    Ok(format!(
        "# Tuned by `genie plan tune`: {}\n{}",
        describe(k),
        toml::to_string_pretty(&doc)?
    ))
}

/// What a simulation of this config needs: the config, the workload and objective, the
/// cost profiles and one compiled plan per threshold the search tries.
pub(crate) struct Inputs {
    cfg: ServeConfig,
    trace: Vec<SimRequest>,
    slo: Slo,
    /// Profiles by the thread count they were measured at.
    by_threads: BTreeMap<usize, CostProfile>,
    decode_profile: Option<CostProfile>,
    /// All workers on this host's `cores` (profiles with thread counts), or each on its
    /// own hardware (presets).
    per_host: bool,
    cores: usize,
    plans: BTreeMap<Option<usize>, ExecutionPlan>,
    kv_bytes_per_token: u64,
    layers: usize,
    link: Option<&'static str>,
}

/// What the served model's chat template adds to one user message of a trace, in tokens,
/// and how many of those come before the message (the same for every prompt).
fn template_tokens(meta: genie_engine::gguf::GgufMeta) -> Result<(usize, usize)> {
    let path = meta.path.clone();
    let text = genie_engine::model_text::ModelText::from_meta(meta)
        .with_context(|| format!("reading {}", path.display()))?;
    const MARK: &str = " zebra";
    let rendered = text
        .template
        .render(
            &[genie_engine::chat_template::ChatMessage::new("user", MARK)],
            true,
        )
        .map_err(|e| anyhow::anyhow!("rendering the chat template: {e}"))?;
    let count = |s: &str| -> Result<usize> {
        Ok(text
            .tokenizer
            .encode(s, true)
            .map_err(|e| anyhow::anyhow!("tokenizing the chat template: {e}"))?
            .len())
    };
    let before = rendered
        .find(MARK)
        .map_or(rendered.as_str(), |at| &rendered[..at]);
    let overhead = count(&rendered)?.saturating_sub(count(MARK)?);
    Ok((overhead, count(before)?))
}

impl Inputs {
    pub(crate) fn new(
        plan: &crate::plan_cli::PlanArgs,
        profiles: &[String],
        decode_profile: Option<&str>,
        workload_spec: &str,
        slo: Option<&str>,
        cores: Option<usize>,
        prompt_overhead: Option<usize>,
    ) -> Result<Self> {
        let cfg = ServeConfig::load(plan.config.as_deref(), Default::default())?;
        let slo = match slo {
            Some(s) => parse_slo(s)?,
            None => Slo {
                ttft_ms: f64::INFINITY,
                itl_ms: f64::INFINITY,
            },
        };
        let mut trace = workload(workload_spec)?;
        // The served GGUF's metadata, read once: the plan's model profile and the chat
        // template.
        let meta = crate::plan_cli::served_meta(plan, &cfg)?;
        let served = meta.as_ref().map(crate::plan_cli::profile_of_meta);
        // Each prompt as the gateway counts it: the trace's tokens and the template's
        // around them (what `min_prompt_tokens` compares); the template's leading blocks,
        // which a prefix cache holds after the first request, are not computed.
        let (overhead, shared) = match (prompt_overhead, meta) {
            (Some(n), _) => (n, 0),
            (None, None) => (0, 0),
            (None, Some(meta)) => template_tokens(meta)?,
        };
        let cached = if cfg.decode.prefix_cache_bytes > 0 && cfg.prefill.prefix_cache_bytes > 0 {
            shared / genie_scheduler::serve_sim::BLOCK_TOKENS
                * genie_scheduler::serve_sim::BLOCK_TOKENS
        } else {
            0
        };
        for r in &mut trace {
            r.prompt_tokens += overhead;
            r.cached_tokens = cached.min(r.prompt_tokens.saturating_sub(1));
        }
        let mut by_threads = BTreeMap::new();
        for p in profiles {
            let p = load_profile(p)?;
            by_threads.insert(p.threads, p);
        }
        if by_threads.is_empty() {
            bail!("--profile: give at least one cost profile");
        }
        let decode_profile = decode_profile.map(load_profile).transpose()?;
        let transport = crate::plan_cli::transport_of(plan);
        // One plan per threshold: the real compiler decides which prompts leave.
        let plan_for = |threshold: Option<usize>| -> Result<ExecutionPlan> {
            let mut c = cfg.clone();
            match threshold {
                Some(n) => {
                    c.scheduler.mode = Mode::Disaggregated;
                    c.scheduler.min_prompt_tokens = n;
                    c.prefill.workers = c.prefill.workers.max(1);
                }
                None => c.scheduler.mode = Mode::Colocated,
            }
            c.compile_plan(served.clone(), transport)
                .map_err(|e| anyhow::anyhow!("invalid plan: {e}"))
        };
        let mut plans = BTreeMap::new();
        for t in THRESHOLDS
            .into_iter()
            .chain([Some(cfg.scheduler.min_prompt_tokens)])
        {
            plans.insert(t, plan_for(t)?);
        }
        let model = plans[&None].model.clone();
        Ok(Inputs {
            per_host: by_threads.keys().all(|&t| t > 0),
            cores: cores
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            cfg,
            trace,
            slo,
            by_threads,
            decode_profile,
            plans,
            kv_bytes_per_token: model.kv_bytes_per_token,
            layers: model.layers,
            link: match transport {
                Transport::InProcess | Transport::Local => None,
                Transport::Tcp => Some("tcp"),
                Transport::Rdma => Some("rdma"),
            },
        })
    }

    /// The config's own knobs (threads: the profile nearest the config's).
    pub(crate) fn start(&self, workers: Option<usize>) -> Knobs {
        let cfg = &self.cfg;
        let want = if cfg.decode.threads == 0 {
            self.cores
        } else {
            cfg.decode.threads
        };
        let threads = *self
            .by_threads
            .keys()
            .min_by_key(|&&t| t.abs_diff(want))
            .expect("at least one profile");
        let split = match (self.per_host, workers) {
            (false, Some(n)) => Split {
                prefill_workers: n / 2,
                decode_workers: n - n / 2,
                threads: 0,
            },
            _ => Split {
                prefill_workers: cfg.prefill.workers,
                decode_workers: cfg.decode.workers,
                threads: if self.per_host { threads } else { 0 },
            },
        };
        Knobs {
            split,
            min_prompt_tokens: match cfg.scheduler.mode {
                Mode::Colocated => None,
                Mode::Disaggregated => Some(cfg.scheduler.min_prompt_tokens),
            },
            decode_max_batch: cfg.decode.max_batch,
            prefill_max_batch_tokens: cfg.prefill.max_batch_tokens,
            routing: cfg.scheduler.routing,
        }
    }

    /// The worker splits the search tries: on one host, every count of workers up to its
    /// cores at each profiled thread count (more threads than cores share them); else
    /// `workers` split in steps of 5 %.
    fn splits(&self, workers: Option<usize>) -> Vec<Split> {
        if self.per_host {
            let mut splits = Vec::new();
            for &t in self.by_threads.keys() {
                for n in 1..=self.cores {
                    for p in 0..n {
                        splits.push(Split {
                            prefill_workers: p,
                            decode_workers: n - p,
                            threads: t,
                        });
                    }
                }
            }
            return splits;
        }
        let n = workers
            .unwrap_or(self.cfg.prefill.workers + self.cfg.decode.workers)
            .max(1);
        let mut ps: Vec<usize> = (0..=18).map(|i| n * i / 20).collect();
        ps.dedup();
        ps.into_iter()
            .filter(|&p| p < n)
            .map(|p| Split {
                prefill_workers: p,
                decode_workers: n - p,
                threads: 0,
            })
            .collect()
    }

    /// One simulated run of the workload under `k`.
    pub(crate) fn evaluate(&self, k: &Knobs) -> ServeReport {
        self.evaluate_on(k, &self.trace)
    }

    /// One simulated run of `trace` under `k`.
    fn evaluate_on(&self, k: &Knobs, trace: &[SimRequest]) -> ServeReport {
        let prefill = if self.per_host {
            self.by_threads
                .get(&k.split.threads)
                .expect("splits use profiled thread counts")
        } else {
            self.by_threads.values().next().expect("a profile")
        };
        let decode = self.decode_profile.as_ref().unwrap_or(prefill);
        let link = self
            .link
            .and_then(|n| prefill.link(n).or_else(|| prefill.links.first()).cloned());
        let setup = ServeSetup {
            prefill_workers: if k.min_prompt_tokens.is_none() {
                0
            } else {
                k.split.prefill_workers
            },
            decode_workers: k.split.decode_workers,
            decode_max_batch: k.decode_max_batch,
            decode_max_prefill_tokens: self.cfg.decode.max_prefill_tokens,
            decode_prefill_chunk_tokens: self.cfg.decode.prefill_chunk_tokens,
            prefill_max_batch_tokens: k.prefill_max_batch_tokens,
            routing: k.routing,
            kv_cache_bytes: self.cfg.decode.kv_cache_bytes,
            kv_bytes_per_token: self.kv_bytes_per_token,
            layers: self.layers,
            max_waiting: self.cfg.limits.max_waiting,
            shared_cores: self.per_host.then_some((self.cores, k.split.threads)),
        };
        simulate_serving(
            &self.plans[&k.min_prompt_tokens],
            &setup,
            &ServeCosts::new(prefill, decode, link),
            trace,
            self.slo,
        )
    }
}

pub fn run(a: TuneArgs) -> Result<()> {
    let inputs = Inputs::new(
        &a.plan,
        &a.profile,
        a.decode_profile.as_deref(),
        &a.workload,
        Some(&a.slo),
        a.cores,
        a.prompt_overhead,
    )?;
    let start = inputs.start(a.workers);
    let space = Space {
        splits: inputs.splits(a.workers),
        thresholds: THRESHOLDS.to_vec(),
        decode_max_batch: vec![4, 8, 16, 32, 64, 128],
        prefill_max_batch_tokens: vec![512, 1024, 2048, 4096, 8192],
        routing: vec![
            RoutingPolicy::LeastLoaded,
            RoutingPolicy::RoundRobin,
            RoutingPolicy::PowerOfTwo,
            RoutingPolicy::KvAware,
        ],
    };
    if inputs.per_host && !inputs.by_threads.contains_key(&start.split.threads) {
        bail!("no profile for the config's threads");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t0 = std::time::Instant::now();
    // Large traces rank a knob's values on their first twentieth (at least 1,000 requests)
    // before simulating the best few in full.
    let screen_len = (inputs.trace.len() / 20).max(1000);
    let screen = |k: &Knobs| inputs.evaluate_on(k, &inputs.trace[..screen_len]);
    let screen: Option<&(dyn Fn(&Knobs) -> ServeReport + Sync)> =
        (inputs.trace.len() > 2 * screen_len).then_some(&screen);
    let tuned = tune(
        &space,
        start,
        &|k: &Knobs| inputs.evaluate(k),
        screen,
        threads,
    );
    let took = t0.elapsed().as_secs_f64();
    let toml = tuned_toml(a.plan.config.as_deref(), &tuned.chosen.knobs)?;
    if let Some(out) = &a.out {
        std::fs::write(out, &toml).with_context(|| format!("writing {}", out.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&tuned)?);
        return Ok(());
    }
    explain(&tuned, &inputs.trace, inputs.slo, took);
    match &a.out {
        Some(out) => println!("tuned config written to {}", out.display()),
        None => print!("\ntuned config (write it with --out FILE):\n{toml}"),
    }
    Ok(())
}

/// `genie plan simulate --profile`: the config as it stands, through the serving
/// simulator.
pub(crate) fn simulate_config(inputs: &Inputs) -> (Knobs, ServeReport) {
    let k = inputs.start(None);
    (k, inputs.evaluate(&k))
}

/// The report in words.
pub(crate) fn print_report(k: &Knobs, r: &ServeReport) {
    println!("{} (simulated):", describe(k));
    println!(
        "  {} requests: {} completed, {} refused, {} disaggregated, over {:.1} s",
        r.requests, r.completed, r.refused, r.disaggregated, r.duration_s
    );
    println!("  TTFT: {}", r.ttft_ms);
    println!("  ITL:  {}", r.itl_ms);
    println!("  e2e:  {}", r.e2e_ms);
    println!(
        "  goodput {:.3} req/s ({} met the SLO); mean decode batch {:.2}; busy: prefill {:.0} %, decode {:.0} %{}",
        r.goodput_per_s,
        r.slo_met,
        r.mean_decode_batch,
        r.prefill_utilisation * 100.0,
        r.decode_utilisation * 100.0,
        if r.kv_overflows > 0 {
            format!("; KV ran out {} times (preemption is not simulated)", r.kv_overflows)
        } else {
            String::new()
        }
    );
}

fn explain(t: &Tuned, trace: &[SimRequest], slo: Slo, took: f64) {
    let span = trace.last().map_or(0.0, |r| r.arrival_ms) / 1e3;
    println!(
        "{} requests over {:.1} s; SLO: TTFT <= {} ms and every ITL <= {} ms; {} candidates simulated in {:.2} s",
        trace.len(),
        span,
        slo.ttft_ms,
        slo.itl_ms,
        t.evaluations,
        took
    );
    for turn in &t.turns {
        println!("\nround {}, {}:", turn.round, turn.knob);
        for (i, s) in turn.tried.iter().enumerate() {
            println!(
                "  {} {:<28} {}",
                if i == 0 { "*" } else { " " },
                knob_value(turn.knob, &s.knobs),
                figures(s)
            );
        }
    }
    println!(
        "\nstart:     {}\n           {}",
        describe(&t.start.knobs),
        figures(&t.start)
    );
    println!(
        "chosen:    {}\n           {}",
        describe(&t.chosen.knobs),
        figures(&t.chosen)
    );
    if let Some(r) = &t.runner_up {
        println!(
            "runner-up: {}\n           {}",
            describe(&r.knobs),
            figures(r)
        );
    }
    let (c, s) = (&t.chosen.report, &t.start.report);
    if s.goodput_per_s > 0.0 {
        println!(
            "predicted goodput {:.2}x the start's",
            c.goodput_per_s / s.goodput_per_s
        );
    }
}
