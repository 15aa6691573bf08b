//! Batched decode steps at a fixed context, repeated, for profiling one step shape
//! (`perf record -D <ms>` skips the setup). Each round truncates the caches back to the
//! prompt, so every round times the same contexts.
//!
//! `cargo run --release -p genie-engine --example decode -- [BATCH] [CONTEXT] [STEPS] [ROUNDS]`
//! (defaults 16, 64, 32, 20; GENIE_MODEL or the cached default model; GENIE_THREADS).

use genie_engine::generate::{Engine, EngineOptions};
use genie_engine::kv_cache::KvCache;
use std::time::Instant;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|a| a.parse().expect("numeric argument"))
        .unwrap_or(default)
}

fn main() {
    let (batch, ctx, steps, rounds) = (arg(1, 16), arg(2, 64), arg(3, 32), arg(4, 20));
    let path = genie_engine::fetch::resolve_model(None).expect("model");
    let threads = std::env::var("GENIE_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let engine = Engine::load(
        &path,
        &EngineOptions {
            threads,
            ..Default::default()
        },
    )
    .expect("load");
    let model = &engine.model;
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
    for _ in 0..rounds {
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
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "tok/s: median {:.1}, best {:.1}, worst {:.1}",
        rates[rates.len() / 2],
        rates[rates.len() - 1],
        rates[0]
    );
}
