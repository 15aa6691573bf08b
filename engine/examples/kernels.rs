//! Single-thread kernel timings: one Q4_1 FFN-sized matrix (1536 x 576) and one Q8_0
//! output-head slice (4096 x 576) times 1, 4, 8 and 16 activation rows, per kernel family.
//! Best of many runs, so a busy machine shows the kernel and not the neighbours. On an
//! AVX-512 VNNI CPU the quantised matrices run through the 16-row strip kernels.
//!
//! `cargo run --release -p genie-engine --example kernels`

use genie_engine::quant::acts::QuantizedActs;
use genie_engine::quant::matmul::matmul;
use genie_engine::quant::{QMatrix, WeightFormat};
use std::time::Instant;

fn data(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn main() {
    if let Some(v) = std::env::var("GENIE_AB_VARIANT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        genie_engine::quant::ab::set_variant(v);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("one thread");
    println!(
        "kernels: {:?} (GENIE_KERNEL=avx2|scalar caps it)",
        genie_engine::quant::kernel_kind()
    );
    println!("| matrix | tokens | best µs | GMAC/s |");
    println!("|---|---:|---:|---:|");
    // (format, rows, cols, narrow): narrow exact-sum Q8_0 (Q5_0 widened) or, for other
    // Q8_0 matrices, exact block sums as every loaded Q8_0 takes (the last shape is
    // Gemma 3 270M's output head).
    for (format, rows, cols, narrow) in [
        (WeightFormat::Q4_1, 1536, 576, false),
        (WeightFormat::Q8_0, 1536, 576, true),
        (WeightFormat::Q8_0, 1536, 576, false),
        (WeightFormat::Q8_0, 49152, 576, false),
        (WeightFormat::Q4_1, 49152, 576, false),
        (WeightFormat::Q8_0, 262144, 640, false),
    ] {
        let mut w = QMatrix::quantize(format, rows, cols, &data(1, rows * cols));
        w = w.with_exact_block_sums();
        if narrow {
            // Weights in -16..=15 with exact block sums: a Q5_0 matrix widened to Q8_0.
            let QMatrix::Q8_0 { blocks, .. } = &w else {
                unreachable!("a Q8_0 matrix")
            };
            let mut blocks = blocks.clone();
            for b in &mut blocks {
                b.qs.iter_mut().for_each(|q| *q = (*q / 8).clamp(-16, 15));
            }
            w = QMatrix::q8_0(rows, cols, blocks).with_exact_block_sums();
        }
        let label = match (format, narrow) {
            (_, true) => " narrow exact",
            (WeightFormat::Q8_0, false) => " exact",
            _ => "",
        };
        for n in [1, 4, 8, 16] {
            let x = QuantizedActs::for_weight(&w, &data(2, n * cols));
            let mut out = vec![0.0f32; n * rows];
            let mut best = f64::INFINITY;
            pool.install(|| {
                for _ in 0..(400 * 1536 / rows).max(8) {
                    let t0 = Instant::now();
                    matmul(&w, &x, &mut out);
                    best = best.min(t0.elapsed().as_secs_f64());
                }
            });
            let macs = (rows * cols * n) as f64;
            println!(
                "| {}{label} {rows}x{cols} | {n} | {:.1} | {:.1} |",
                format.name(),
                best * 1e6,
                macs / best / 1e9
            );
        }
    }
}
