//! `genie bench kv-pages`: decode speed with the paged KV cache against the contiguous
//! layout it replaced, side by side in one process. Each round measures every layout at
//! every batch size and context in turn, so a shared host's neighbours slow them alike;
//! the ratio of each round's paged figure to the same round's contiguous one is reported
//! (median and range), beside the medians.
//!
//! The sequences are prefilled with the same synthetic ids whatever the layout, so every
//! layout computes the same tokens (block-table attention is bit-identical to the
//! contiguous kernel; `engine/tests/real_model.rs` checks it).

use crate::stats::median;
use anyhow::Result;
use clap::Args;
use genie_engine::kv_cache::KvCache;
use genie_engine::model::Model;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct KvPagesBenchArgs {
    #[command(flatten)]
    pub engine: crate::engine::BenchModel,
    /// Block sizes (tokens) of the paged layouts compared with the contiguous one.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
    pub blocks: Vec<usize>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub batch: Vec<usize>,
    /// Tokens in each sequence's cache when timing starts.
    #[arg(long, value_delimiter = ',', default_value = "64,1024")]
    pub context: Vec<usize>,
    /// Decode steps timed per measurement.
    #[arg(long, default_value_t = 16)]
    pub steps: usize,
    /// Rounds (every layout, batch and context once per round).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Contiguous,
    Paged(usize),
}

impl Layout {
    fn cache(self, model: &Model, capacity: usize) -> Result<KvCache> {
        Ok(match self {
            Layout::Contiguous => KvCache::contiguous(model.kv_shape(), capacity),
            Layout::Paged(b) => KvCache::paged(model.kv_shape(), b, capacity, None)?,
        })
    }

    fn name(self) -> String {
        match self {
            Layout::Contiguous => "contiguous".into(),
            Layout::Paged(b) => format!("paged {b}"),
        }
    }
}

fn ids(n: usize, seq: usize) -> Vec<u32> {
    (0..n)
        .map(|i| (((i + seq * 31) * 7919) % 40000 + 100) as u32)
        .collect()
}

/// Prefilled caches for `batch` sequences of `ctx` tokens (untimed).
fn prefilled(
    model: &Model,
    layout: Layout,
    batch: usize,
    ctx: usize,
    steps: usize,
) -> Result<(Vec<KvCache>, Vec<u32>)> {
    let mut caches = Vec::with_capacity(batch);
    let mut next = Vec::with_capacity(batch);
    for s in 0..batch {
        let mut c = layout.cache(model, ctx + steps + 1)?;
        let logits = model.prefill(&ids(ctx, s), &mut c)?;
        next.push(genie_engine::sampling::argmax(&logits));
        caches.push(c);
    }
    Ok((caches, next))
}

/// Aggregate decode tok/s of `steps` greedy steps over prefilled caches.
fn decode(model: &Model, caches: &mut [KvCache], mut next: Vec<u32>, steps: usize) -> Result<f64> {
    let t0 = Instant::now();
    for _ in 0..steps {
        let mut items: Vec<(u32, &mut KvCache)> =
            next.iter().copied().zip(caches.iter_mut()).collect();
        let logits = model.decode_batch(&mut items)?;
        next = logits
            .iter()
            .map(|l| genie_engine::sampling::argmax(l))
            .collect();
    }
    Ok((caches.len() * steps) as f64 / t0.elapsed().as_secs_f64())
}

pub fn run(a: KvPagesBenchArgs) -> Result<()> {
    let (engine, _) = a.engine.load()?;
    let model = &engine.model;
    let kernel = genie_engine::quant::kernel_kind().isa();
    let layouts: Vec<Layout> = std::iter::once(Layout::Contiguous)
        .chain(a.blocks.iter().map(|&b| Layout::Paged(b.max(1))))
        .collect();
    let cases: Vec<(usize, usize)> = a
        .batch
        .iter()
        .flat_map(|&b| a.context.iter().map(move |&c| (b, c)))
        .collect();
    eprintln!(
        "genie: {} threads, {kernel} kernels; {} rounds of {} layouts x {} cases…",
        model.threads(),
        a.rounds,
        layouts.len(),
        cases.len()
    );
    // rates[case][layout][round]
    let mut rates = vec![vec![Vec::with_capacity(a.rounds); layouts.len()]; cases.len()];
    for _ in 0..a.rounds {
        for (ci, &(batch, ctx)) in cases.iter().enumerate() {
            for (li, &layout) in layouts.iter().enumerate() {
                let (mut caches, next) = prefilled(model, layout, batch, ctx, a.steps)?;
                rates[ci][li].push(decode(model, &mut caches, next, a.steps)?);
            }
        }
    }
    println!("{}", crate::host::describe());
    println!("| batch | context | layout | decode tok/s (median) | / contiguous, per round: median (range) |");
    println!("|---:|---:|---|---:|---|");
    for (ci, &(batch, ctx)) in cases.iter().enumerate() {
        for (li, layout) in layouts.iter().enumerate() {
            let m = median(rates[ci][li].clone());
            let ratio = if li == 0 {
                String::new()
            } else {
                let r: Vec<f64> = rates[ci][li]
                    .iter()
                    .zip(&rates[ci][0])
                    .map(|(p, c)| p / c)
                    .collect();
                let (lo, hi) = r.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                    (lo.min(*v), hi.max(*v))
                });
                format!("{:.3}x ({lo:.3}-{hi:.3})", median(r.clone()))
            };
            println!("| {batch} | {ctx} | {} | {m:.1} | {ratio} |", layout.name());
        }
    }
    println!(
        "threads {}, kernels {kernel}, {} steps per measurement, {} rounds",
        model.threads(),
        a.steps,
        a.rounds
    );
    Ok(())
}
