//! `genie bench engine`: prefill tok/s for several prompt lengths and aggregate decode tok/s
//! at several batch sizes, beside llama.cpp (llama-cpp-python) on the same GGUF, thread
//! count and token ids, measured in the same run.

use anyhow::{Context, Result};
use clap::Args;
use genie_engine::kv_cache::KvCache;
use genie_engine::model::Model;
use std::process::Command;
use std::time::Instant;

/// The model an engine benchmark loads, and its threads.
#[derive(Args, Debug)]
pub struct BenchModel {
    /// A llama GGUF file (default: GENIE_MODEL, else the default model, fetched on first use).
    #[arg(long, env = "GENIE_MODEL")]
    pub model: Option<std::path::PathBuf>,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0, env = "GENIE_THREADS")]
    pub threads: usize,
}

impl BenchModel {
    /// The engine, and the GGUF file it came from.
    pub fn load(&self) -> Result<(genie_engine::generate::Engine, std::path::PathBuf)> {
        let path = genie_engine::fetch::resolve_model(self.model.as_deref())?;
        let opts = genie_engine::generate::EngineOptions {
            threads: self.threads,
            ..Default::default()
        };
        let engine = genie_engine::generate::Engine::load(&path, &opts)
            .with_context(|| format!("loading {}", path.display()))?;
        Ok((engine, path))
    }
}

#[derive(Args, Debug)]
pub struct EngineBenchArgs {
    #[command(flatten)]
    pub engine: BenchModel,
    /// Prompt lengths for the prefill benchmark.
    #[arg(long, value_delimiter = ',', default_value = "32,256,1024")]
    pub prefill: Vec<usize>,
    /// Batch sizes for the decode benchmark.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub batch: Vec<usize>,
    /// Prompt tokens already in each sequence's cache when decode timing starts.
    #[arg(long, default_value_t = 64)]
    pub decode_context: usize,
    /// Decode steps timed per measurement.
    #[arg(long, default_value_t = 32)]
    pub decode_steps: usize,
    /// Measurements per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Run llama.cpp beside Genie: auto (if llama-cpp-python is importable) or off.
    #[arg(long, default_value = "auto")]
    pub llama_cpp: String,
    /// Python interpreter for the llama.cpp side.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Deterministic prompt ids shared with scripts/bench_llama_cpp.py.
fn synthetic_ids(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919) % 40000 + 100) as u32).collect()
}

use crate::stats::median;

fn prefill_rate(model: &Model, n: usize, repeat: usize) -> Result<f64> {
    let ids = synthetic_ids(n);
    let mut warm = model.new_cache(n);
    model.prefill(&ids, &mut warm)?;
    let mut rates = Vec::new();
    for _ in 0..repeat {
        let mut cache = model.new_cache(n);
        let t0 = Instant::now();
        model.prefill(&ids, &mut cache)?;
        rates.push(n as f64 / t0.elapsed().as_secs_f64());
    }
    Ok(median(rates))
}

/// Aggregate decode tok/s of one measurement: `batch` sequences holding `ctx` prompt
/// tokens each, `steps` greedy steps timed.
fn decode_rate(model: &Model, batch: usize, ctx: usize, steps: usize) -> Result<f64> {
    let mut caches: Vec<KvCache> = (0..batch)
        .map(|_| model.new_cache(ctx + steps + 1))
        .collect();
    let mut tokens = Vec::with_capacity(batch);
    for (i, c) in caches.iter_mut().enumerate() {
        // Different prompts per sequence so the batch is not one sequence repeated.
        let mut ids = synthetic_ids(ctx + i);
        ids.drain(..i);
        tokens.push(genie_engine::sampling::argmax(&model.prefill(&ids, c)?));
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        let mut items: Vec<(u32, &mut KvCache)> =
            tokens.iter().copied().zip(caches.iter_mut()).collect();
        let logits = model.decode_batch(&mut items)?;
        tokens = logits
            .iter()
            .map(|l| genie_engine::sampling::argmax(l))
            .collect();
    }
    Ok((batch * steps) as f64 / t0.elapsed().as_secs_f64())
}

/// Every batch size measured once per round, the rounds one after another, so each
/// batch size's measurements are spread over the same stretch of time (a shared host's
/// neighbours slow them alike): `rates[i][round]` for `batches[i]`.
fn decode_rounds(
    model: &Model,
    batches: &[usize],
    ctx: usize,
    steps: usize,
    rounds: usize,
) -> Result<Vec<Vec<f64>>> {
    let mut rates = vec![Vec::with_capacity(rounds); batches.len()];
    for _ in 0..rounds {
        for (i, &b) in batches.iter().enumerate() {
            rates[i].push(
                decode_rate(model, b, ctx, steps).with_context(|| format!("decode batch {b}"))?,
            );
        }
    }
    Ok(rates)
}

fn llama_cpp(
    a: &EngineBenchArgs,
    model_path: &std::path::Path,
    threads: usize,
) -> Option<serde_json::Value> {
    if a.llama_cpp == "off" {
        return None;
    }
    let script = std::env::var("GENIE_LLAMA_CPP_BENCH").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench_llama_cpp.py").to_string()
    });
    let prefill: Vec<String> = a.prefill.iter().map(|n| n.to_string()).collect();
    let out = Command::new(&a.python)
        .arg(&script)
        .arg("--model")
        .arg(model_path)
        .args(["--threads", &threads.to_string()])
        .args(["--prefill", &prefill.join(",")])
        .args(["--decode-context", &a.decode_context.to_string()])
        .args(["--decode-steps", &a.decode_steps.to_string()])
        .args(["--repeat", &a.repeat.to_string()])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            if let Some(e) = v.get("error") {
                eprintln!("llama.cpp side skipped: {e}");
                return None;
            }
            Some(v)
        }
        Ok(o) => {
            eprintln!(
                "llama.cpp side failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("llama.cpp side skipped: cannot run {}: {e}", a.python);
            None
        }
    }
}

pub fn run(a: EngineBenchArgs) -> Result<()> {
    let (engine, path) = a.engine.load()?;
    let model = &engine.model;
    let threads = model.threads();
    let kernel = format!("{:?}", genie_engine::quant::kernel_kind());
    eprintln!("genie: {} threads, {kernel} kernels; measuring…", threads);
    let mut prefill = Vec::new();
    for &n in &a.prefill {
        prefill.push((
            n,
            prefill_rate(model, n, a.repeat).with_context(|| format!("prefill {n}"))?,
        ));
    }
    let rounds = decode_rounds(model, &a.batch, a.decode_context, a.decode_steps, a.repeat)?;
    let decode: Vec<(usize, f64)> = a
        .batch
        .iter()
        .zip(&rounds)
        .map(|(&b, r)| (b, median(r.clone())))
        .collect();
    eprintln!("llama.cpp: measuring…");
    let peer = llama_cpp(&a, &path, threads);
    let peer_prefill = |n: usize| {
        peer.as_ref()
            .and_then(|p| p["prefill"][n.to_string()].as_f64())
    };
    let peer_decode = peer.as_ref().and_then(|p| p["decode_batch1"].as_f64());

    println!("| benchmark | genie tok/s | llama.cpp tok/s | ratio |");
    println!("|---|---:|---:|---:|");
    let row = |name: String, ours: f64, theirs: Option<f64>| match theirs {
        Some(t) => println!("| {name} | {ours:.1} | {t:.1} | {:.2}x |", ours / t),
        None => println!("| {name} | {ours:.1} | n/a | |"),
    };
    for &(n, r) in &prefill {
        row(format!("prefill {n} tokens"), r, peer_prefill(n));
    }
    let b1 = decode.iter().find(|(b, _)| *b == 1).map(|(_, r)| *r);
    for &(b, r) in &decode {
        let theirs = if b == 1 { peer_decode } else { None };
        row(format!("decode batch {b} (aggregate)"), r, theirs);
    }
    let ones = a.batch.iter().position(|&b| b == 1);
    if let (Some(b1), Some(ones)) = (b1, ones) {
        for (i, &(b, r)) in decode.iter().enumerate().filter(|(_, (b, _))| *b > 1) {
            // Each round's ratio compares measurements taken back to back.
            let per_round: Vec<f64> = rounds[i]
                .iter()
                .zip(&rounds[ones])
                .map(|(x, y)| x / y)
                .collect();
            let (lo, hi) = per_round
                .iter()
                .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                    (lo.min(*v), hi.max(*v))
                });
            println!(
                "decode batch {b} / batch 1 = {:.2}x (medians); per round {:.2}x median, {lo:.2}-{hi:.2}x",
                r / b1,
                median(per_round.clone())
            );
        }
    }
    println!(
        "threads {threads}, kernels {kernel}, decode context {} + {} steps, median of {} (decode: rounds of every batch size in turn)",
        a.decode_context, a.decode_steps, a.repeat
    );
    if let Some(file) = &a.json {
        let v = serde_json::json!({
            "threads": threads,
            "kernels": kernel,
            "prefill": prefill.iter().map(|(n, r)| (n.to_string(), *r)).collect::<std::collections::BTreeMap<_, _>>(),
            "decode": decode.iter().map(|(b, r)| (b.to_string(), *r)).collect::<std::collections::BTreeMap<_, _>>(),
            "llama_cpp": peer,
        });
        std::fs::write(file, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}
