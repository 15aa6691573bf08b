//! Batched decode steps at a fixed context, repeated, for profiling one step shape
//! (`perf record -D <ms>` skips the setup). Each round truncates the caches back to the
//! prompt, so every round times the same contexts.
//!
//! `cargo run --release -p genie-engine --example decode -- [BATCH] [CONTEXT] [STEPS] [ROUNDS]`
//! (defaults 16, 64, 32, 20; GENIE_MODEL or the cached default model; GENIE_THREADS).
//!
//! `GENIE_AB_SIDE_FETCH=BYTES` alternates rounds between the default side-fetch budget
//! (A) and BYTES (B) in this one process and reports the median of each adjacent pair's
//! B/A ratio: on a shared host, neighbouring rounds see the same neighbours, so the
//! pairs resolve effects that separate runs cannot. `GENIE_AB=1` alternates the same way
//! between variants 0 and 1 of `genie_engine::quant::ab` (a kernel change under trial).
//! BATCH 0 times prefill of CONTEXT tokens instead (one sequence, a fresh cache a round).

use genie_engine::generate::{Engine, EngineOptions};
use genie_engine::kv_cache::KvCache;
use std::time::Instant;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|a| a.parse().expect("numeric argument"))
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (batch, ctx, steps, rounds) = (arg(1, 16), arg(2, 64), arg(3, 32), arg(4, 20));
    let path = genie_engine::fetch::resolve_model(None).expect("model");
    let threads = std::env::var("GENIE_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let mut engine = Engine::load(
        &path,
        &EngineOptions {
            threads,
            ..Default::default()
        },
    )
    .expect("load");
    let ab: Option<usize> = std::env::var("GENIE_AB_SIDE_FETCH")
        .ok()
        .map(|b| b.parse().expect("GENIE_AB_SIDE_FETCH: bytes"));
    // GENIE_AB=1: rounds alternate `quant::ab` variants 0 (A) and 1 (B).
    let trial = std::env::var("GENIE_AB").is_ok_and(|v| v == "1");
    let model = &mut engine.model;
    let vocab = model.config().vocab_size as u32;
    let mut caches: Vec<KvCache> = (0..batch)
        .map(|_| model.new_cache(ctx + steps + 1))
        .collect();
    let mut first = Vec::new();
    for (i, c) in caches.iter_mut().enumerate() {
        let ids: Vec<u32> = (0..ctx as u32)
            .map(|j| (j * 7919 + i as u32 * 104729 + 17) % vocab)
            .collect();
        first.push(genie_engine::sampling::argmax(
            &model.prefill(&ids, c).expect("prefill"),
        ));
    }
    eprintln!(
        "decode: batch {batch}, context {ctx}, {steps} steps x {rounds} rounds, {} threads, {:?}",
        model.threads(),
        genie_engine::quant::kernel_kind()
    );
    let mut rates = Vec::new();
    let mut pairs = Vec::new();
    for round in 0..rounds {
        if trial {
            genie_engine::quant::ab::set_variant(round % 2);
        }
        if let Some(b) = ab {
            let bytes = if round % 2 == 0 {
                genie_engine::model::SIDE_FETCH_BYTES
            } else {
                b
            };
            model.set_side_fetch_bytes(bytes);
        }
        if batch == 0 {
            let ids: Vec<u32> = (0..ctx as u32).map(|j| (j * 7919 + 17) % vocab).collect();
            let mut c = model.new_cache(ctx);
            let t0 = Instant::now();
            model.prefill(&ids, &mut c).expect("prefill");
            rates.push(ctx as f64 / t0.elapsed().as_secs_f64());
            if trial && round % 2 == 1 {
                pairs.push(rates[round] / rates[round - 1]);
            }
            continue;
        }
        for c in caches.iter_mut() {
            c.truncate(ctx);
        }
        let mut tokens = first.clone();
        let t0 = Instant::now();
        for _ in 0..steps {
            let mut items: Vec<(u32, &mut KvCache)> =
                tokens.iter().copied().zip(caches.iter_mut()).collect();
            let logits = model.decode_batch(&mut items).expect("decode");
            tokens = logits
                .iter()
                .map(|l| genie_engine::sampling::argmax(l))
                .collect();
        }
        rates.push((batch * steps) as f64 / t0.elapsed().as_secs_f64());
        if (trial || ab.is_some()) && round % 2 == 1 {
            pairs.push(rates[round] / rates[round - 1]);
        }
    }
    if !pairs.is_empty() {
        let a: Vec<f64> = rates.iter().step_by(2).copied().collect();
        let b: Vec<f64> = rates.iter().skip(1).step_by(2).copied().collect();
        println!(
            "A/B: A median {:.1}, B median {:.1} tok/s; B/A per pair median {:.3} (min {:.3}, max {:.3}, {} pairs)",
            median(a),
            median(b),
            median(pairs.clone()),
            pairs.iter().copied().fold(f64::INFINITY, f64::min),
            pairs.iter().copied().fold(0.0, f64::max),
            pairs.len()
        );
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "tok/s: median {:.1}, best {:.1}, worst {:.1}",
        rates[rates.len() / 2],
        rates[rates.len() - 1],
        rates[0]
    );
}
