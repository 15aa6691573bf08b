//! `genie bench engine`: prefill tok/s for several prompt lengths and aggregate decode tok/s
//! at several batch sizes, beside native llama.cpp (`llama-bench`) on the same GGUF,
//! threads, prompt lengths and decode context, in interleaved rounds (Genie's figures,
//! then llama-bench's, round after round), with a memory read probe that bounds batch-1
//! decode. Without a native `llama-bench`, llama-cpp-python's bindings stand in, labelled
//! as such (they understate llama.cpp).

use anyhow::{Context, Result};
use clap::Args;
use genie_engine::kv_cache::KvCache;
use genie_engine::model::{Model, Segment};
use std::process::Command;
use std::time::Instant;

/// The model an engine benchmark loads, and its threads.
#[derive(Args, Debug)]
pub struct BenchModel {
    /// A GGUF model file (llama, qwen2, qwen3 or gemma3) (default: GENIE_MODEL, else the default model, fetched on first use).
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
    /// Rounds: each measures every Genie figure once, then the peer's (medians reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Native llama.cpp's `llama-bench` to run beside Genie (default: GENIE_LLAMA_BENCH,
    /// else `llama-bench` on PATH).
    #[arg(long)]
    pub llama_bench: Option<std::path::PathBuf>,
    /// llama.cpp beside Genie: auto (native llama-bench if found, else llama-cpp-python's
    /// bindings if importable, labelled as such), native (llama-bench or fail), or off.
    #[arg(long, default_value = "auto")]
    pub llama_cpp: String,
    /// Python interpreter for the bindings fallback.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// MiB read by the memory bandwidth probe each round (0 = no probe).
    #[arg(long, default_value_t = 512)]
    pub probe_mib: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Deterministic prompt ids shared with scripts/bench_llama_cpp.py.
fn synthetic_ids(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919) % 40000 + 100) as u32).collect()
}

use crate::stats::median;

/// Sequence `i`'s prompt of `n` ids: the synthetic one shifted by `i` (different prompts,
/// so a batch is not one sequence repeated).
pub(crate) fn prompt_ids(n: usize, i: usize) -> Vec<u32> {
    let mut ids = synthetic_ids(n + i);
    ids.drain(..i);
    ids
}

/// Seconds of one prefill forward of prompts of `shape` tokens each, fresh caches.
pub(crate) fn prefill_seconds(model: &Model, shape: &[usize]) -> Result<f64> {
    let prompts: Vec<Vec<u32>> = shape
        .iter()
        .enumerate()
        .map(|(i, &n)| prompt_ids(n, i))
        .collect();
    let mut caches: Vec<KvCache> = shape.iter().map(|&n| model.new_cache(n)).collect();
    let t0 = Instant::now();
    let mut segs: Vec<Segment> = prompts
        .iter()
        .zip(caches.iter_mut())
        .map(|(p, c)| Segment::new(p, c))
        .collect();
    model.forward(&mut segs)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Prefill tok/s of one measurement (a fresh cache, the synthetic prompt of `n` ids).
fn prefill_rate(model: &Model, n: usize) -> Result<f64> {
    Ok(n as f64 / prefill_seconds(model, &[n])?)
}

/// Where a decode measurement starts: `batch` sequences holding `ctx` prompt tokens each
/// (room for `steps` more), and each one's next token.
pub(crate) fn decode_start(
    model: &Model,
    batch: usize,
    ctx: usize,
    steps: usize,
) -> Result<(Vec<KvCache>, Vec<u32>)> {
    let mut caches: Vec<KvCache> = (0..batch)
        .map(|_| model.new_cache(ctx + steps + 1))
        .collect();
    let mut tokens = Vec::with_capacity(batch);
    for (i, c) in caches.iter_mut().enumerate() {
        tokens.push(genie_engine::sampling::argmax(
            &model.prefill(&prompt_ids(ctx, i), c)?,
        ));
    }
    Ok((caches, tokens))
}

/// One greedy decode step of every sequence; their next tokens.
pub(crate) fn decode_step(
    model: &Model,
    tokens: &[u32],
    caches: &mut [KvCache],
) -> Result<Vec<u32>> {
    let mut items: Vec<(u32, &mut KvCache)> =
        tokens.iter().copied().zip(caches.iter_mut()).collect();
    Ok(model
        .decode_batch(&mut items)?
        .iter()
        .map(|l| genie_engine::sampling::argmax(l))
        .collect())
}

/// Aggregate decode tok/s of one measurement: `batch` sequences holding `ctx` prompt
/// tokens each, `steps` greedy steps timed.
fn decode_rate(model: &Model, batch: usize, ctx: usize, steps: usize) -> Result<f64> {
    let (mut caches, mut tokens) = decode_start(model, batch, ctx, steps)?;
    let t0 = Instant::now();
    for _ in 0..steps {
        tokens = decode_step(model, &tokens, &mut caches)?;
    }
    Ok((batch * steps) as f64 / t0.elapsed().as_secs_f64())
}

/// The bindings fallback: llama-cpp-python, all its repetitions in one call.
fn bindings(
    a: &EngineBenchArgs,
    model_path: &std::path::Path,
    threads: usize,
) -> Option<serde_json::Value> {
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

/// Per-round figures of one side: `prefill[i][round]` for the i-th prompt length,
/// `decode[i][round]` for the i-th batch size (the peer measures batch 1 only).
struct Rounds {
    prefill: Vec<Vec<f64>>,
    decode: Vec<Vec<f64>>,
}

/// Which llama.cpp ran beside Genie.
enum Peer {
    Native(std::path::PathBuf),
    Bindings(serde_json::Value),
    None,
}

/// `median (min–max)` of the per-round ratios `ours[r] / theirs[r]`.
/// Per-round ratios `ours / theirs`: `median (min-max)`.
pub(crate) fn paired(ours: &[f64], theirs: &[f64]) -> String {
    let r: Vec<f64> = ours.iter().zip(theirs).map(|(a, b)| a / b).collect();
    let (lo, hi) = r.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(*v), hi.max(*v))
    });
    format!("{:.2}x ({lo:.2}-{hi:.2})", median(r.clone()))
}

pub fn run(a: EngineBenchArgs) -> Result<()> {
    let (engine, path) = a.engine.load()?;
    let model = &engine.model;
    let threads = model.threads();
    let kind = genie_engine::quant::kernel_kind();
    let host = crate::host::describe();
    let native = match a.llama_cpp.as_str() {
        "off" => None,
        mode => match crate::llama_bench::locate(a.llama_bench.as_deref()) {
            Some(p) => Some(p),
            None if mode == "native" => anyhow::bail!(
                "no llama-bench: give --llama-bench PATH or GENIE_LLAMA_BENCH (BENCHMARKS.md says how to build it)"
            ),
            None => None,
        },
    };
    eprintln!("{host}");
    eprintln!(
        "genie: {threads} threads, {} kernels; llama.cpp: {}",
        kind.isa(),
        match &native {
            Some(p) => format!("native {}", p.display()),
            None if a.llama_cpp == "off" => "off".into(),
            None => "no native llama-bench found; llama-cpp-python bindings after Genie".into(),
        }
    );
    // Warm-up: weights into memory, pools started.
    prefill_rate(
        model,
        a.prefill.iter().copied().max().unwrap_or(32).min(256),
    )?;
    let mut ours = Rounds {
        prefill: vec![Vec::new(); a.prefill.len()],
        decode: vec![Vec::new(); a.batch.len()],
    };
    let mut theirs = Rounds {
        prefill: vec![Vec::new(); a.prefill.len()],
        decode: vec![Vec::new()],
    };
    let mut probe = Vec::new();
    let mut compute = Vec::new();
    for round in 0..a.repeat {
        eprintln!("round {} of {}", round + 1, a.repeat);
        for (i, &n) in a.prefill.iter().enumerate() {
            ours.prefill[i].push(prefill_rate(model, n).with_context(|| format!("prefill {n}"))?);
        }
        for (i, &b) in a.batch.iter().enumerate() {
            ours.decode[i].push(
                decode_rate(model, b, a.decode_context, a.decode_steps)
                    .with_context(|| format!("decode batch {b}"))?,
            );
        }
        if let Some(bin) = &native {
            let r = crate::llama_bench::run_round(
                bin,
                &path,
                threads,
                &a.prefill,
                a.decode_context,
                a.decode_steps,
            )?;
            for (i, (_, v)) in r.prefill.into_iter().enumerate() {
                theirs.prefill[i].push(v);
            }
            theirs.decode[0].push(r.decode);
        }
        if a.probe_mib > 0 {
            probe.push(crate::membw::read_bandwidth(a.probe_mib << 20, threads, 3));
        }
        if let Some(r) = crate::peak::dot_step_rate(kind, threads, 3) {
            compute.push(r);
        }
    }
    let peer = match native {
        Some(p) => Peer::Native(p),
        None if a.llama_cpp == "off" => Peer::None,
        None => {
            eprintln!("llama.cpp (bindings): measuring…");
            match bindings(&a, &path, threads) {
                Some(v) => {
                    for (i, n) in a.prefill.iter().enumerate() {
                        if let Some(x) = v["prefill"][n.to_string()].as_f64() {
                            theirs.prefill[i] = vec![x; a.repeat];
                        }
                    }
                    if let Some(x) = v["decode_batch1"].as_f64() {
                        theirs.decode[0] = vec![x; a.repeat];
                    }
                    Peer::Bindings(v)
                }
                None => Peer::None,
            }
        }
    };
    let label = match &peer {
        Peer::Native(_) => "llama.cpp (native llama-bench)",
        Peer::Bindings(_) => "llama.cpp (Python bindings: understate it)",
        Peer::None => "llama.cpp",
    };

    println!("{host}");
    println!(
        "genie kernels: {}; threads {threads}; {} rounds, each Genie's figures then {label}'s; medians",
        kind.isa(),
        a.repeat
    );
    println!();
    println!("| benchmark | genie tok/s | {label} tok/s | genie / llama.cpp, per round: median (min-max) |");
    println!("|---|---:|---:|---:|");
    let row = |name: String, o: &[f64], t: &[f64]| {
        if t.len() == o.len() && !t.is_empty() {
            println!(
                "| {name} | {:.1} | {:.1} | {} |",
                median(o.to_vec()),
                median(t.to_vec()),
                paired(o, t)
            );
        } else {
            println!("| {name} | {:.1} | n/a | |", median(o.to_vec()));
        }
    };
    for (i, &n) in a.prefill.iter().enumerate() {
        row(
            format!("prefill {n} tokens"),
            &ours.prefill[i],
            &theirs.prefill[i],
        );
    }
    let ones = a.batch.iter().position(|&b| b == 1);
    for (i, &b) in a.batch.iter().enumerate() {
        let t: &[f64] = if b == 1 { &theirs.decode[0] } else { &[] };
        row(format!("decode batch {b} (aggregate)"), &ours.decode[i], t);
    }
    if let Some(ones) = ones {
        for (i, &b) in a.batch.iter().enumerate().filter(|(_, b)| **b > 1) {
            println!(
                "decode batch {b} / batch 1 = {:.2}x (medians); per round {}",
                median(ours.decode[i].clone()) / median(ours.decode[ones].clone()),
                paired(&ours.decode[i], &ours.decode[ones])
            );
        }
    }
    println!(
        "decode: {} tokens of context, {} steps timed",
        a.decode_context, a.decode_steps
    );
    let weights = model.weights().decode_step_bytes();
    if let (Some(ones), false) = (ones, probe.is_empty()) {
        let bw = median(probe.clone());
        let b1 = median(ours.decode[ones].clone());
        println!(
            "memory: read probe {:.1} GB/s ({threads} threads, {} MiB, median of rounds); batch-1 decode reads {:.1} MB of weights a token: {:.1} GB/s at {b1:.1} tok/s = {:.0} % of the probe (bound: {:.0} tok/s)",
            bw / 1e9,
            a.probe_mib,
            weights as f64 / 1e6,
            b1 * weights as f64 / 1e9,
            100.0 * b1 * weights as f64 / bw,
            bw / weights as f64
        );
    }
    if !compute.is_empty() {
        let peak = median(compute.clone());
        let macs = model.weights().decode_step_macs() as f64;
        println!(
            "compute: {} dot-step probe {:.1} GMAC/s ({threads} threads, operands in L1, median of rounds), the lane-order kernels' ceiling for the matrices' {:.1} M MACs a token: {:.0} tok/s (exact-sum kernels can pass it)",
            kind.isa(),
            peak / 1e9,
            macs / 1e6,
            peak / macs
        );
        for (i, &b) in a.batch.iter().enumerate().filter(|(_, b)| **b > 1) {
            let r = median(ours.decode[i].clone());
            println!(
                "compute: decode batch {b} does {:.1} GMAC/s in its matrices = {:.0} % of the probe",
                r * macs / 1e9,
                100.0 * r * macs / peak
            );
        }
        if let Some(ones) = ones {
            let b1 = median(ours.decode[ones].clone());
            println!(
                "compute: 4x batch 1 ({:.0} tok/s) would need {:.1} GMAC/s = {:.0} % of the probe",
                4.0 * b1,
                4.0 * b1 * macs / 1e9,
                100.0 * 4.0 * b1 * macs / peak
            );
        }
    }
    if let Some(file) = &a.json {
        let v = serde_json::json!({
            "host": host,
            "threads": threads,
            "kernels": kind.isa(),
            "prefill_lengths": a.prefill,
            "batches": a.batch,
            "genie": {"prefill": ours.prefill, "decode": ours.decode},
            "llama_cpp": {"prefill": theirs.prefill, "decode_batch1": theirs.decode[0]},
            "llama_cpp_kind": label,
            "llama_cpp_source": match &peer {
                Peer::Native(p) => serde_json::json!(p.display().to_string()),
                Peer::Bindings(v) => v.clone(),
                Peer::None => serde_json::Value::Null,
            },
            "read_probe_bytes_per_s": probe,
            "dot_step_probe_macs_per_s": compute,
            "macs_per_token": model.weights().decode_step_macs(),
            "weight_bytes_per_token": weights,
        });
        std::fs::write(file, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}
