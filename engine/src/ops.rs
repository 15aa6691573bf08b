//! Element-wise and per-row operations of the llama forward pass, written to follow
//! llama.cpp's CPU arithmetic (f64 sum of squares in RMS norm, iterative RoPE angles).

use crate::quant::dot_avx2::{self, Avx2};
use crate::quant::{dot_scalar, kernel_kind, KernelKind};

/// Element-wise work on this many values or more is split across the compute pool (each
/// value's arithmetic is the same either way). A parallel region costs a wake-up of the
/// other threads, worth it for the `exp` of SiLU from a few thousand values and for
/// the cheap arithmetic of RMS norm only from many more.
pub(crate) const PARALLEL_EXP_ELEMENTS: usize = 8 * 1024;
const PARALLEL_ELEMENTS: usize = 64 * 1024;

/// `out = x / sqrt(mean(x²) + eps) * weight`, row by row.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    use rayon::prelude::*;
    let d = weight.len();
    // Four rows at a time: each row's f64 sum still adds its squares in order, but the
    // four chains are independent, so they overlap instead of waiting on each other.
    let rows = |(xr, or): (&[f32], &mut [f32])| {
        let mut xs = xr.chunks_exact(4 * d);
        let mut os = or.chunks_exact_mut(4 * d);
        for (x4, o4) in (&mut xs).zip(&mut os) {
            let mut sum = [0.0f64; 4];
            for k in 0..d {
                for (r, s) in sum.iter_mut().enumerate() {
                    let v = x4[r * d + k];
                    *s += (v * v) as f64;
                }
            }
            for (r, s) in sum.iter().enumerate() {
                scale_row(
                    &x4[r * d..(r + 1) * d],
                    weight,
                    *s,
                    eps,
                    &mut o4[r * d..(r + 1) * d],
                );
            }
        }
        let (xr, or) = (xs.remainder(), os.into_remainder());
        for (xr, or) in xr.chunks_exact(d).zip(or.chunks_exact_mut(d)) {
            let sum = xr.iter().fold(0.0f64, |s, v| s + (v * v) as f64);
            scale_row(xr, weight, sum, eps, or);
        }
    };
    if x.len() >= PARALLEL_ELEMENTS {
        x.par_chunks(4 * d)
            .zip(out.par_chunks_mut(4 * d))
            .for_each(rows);
    } else {
        rows((x, out));
    }
}

fn scale_row(x: &[f32], weight: &[f32], sum: f64, eps: f32, out: &mut [f32]) {
    let mean = (sum / weight.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

/// Cosine/sine table for one position: `rope_dim / 2` pairs.
pub fn rope_table(pos: usize, rope_dim: usize, base: f32, out: &mut Vec<[f32; 2]>) {
    rope_table_scaled(pos, rope_dim, base, 1.0, None, out)
}

/// [`rope_table`] with the angles scaled as the GGUF says: each multiplied by
/// `freq_scale` (linear scaling) and divided by its frequency's factor, where given
/// (Llama 3.1's `rope_freqs`), as llama.cpp computes them.
pub fn rope_table_scaled(
    pos: usize,
    rope_dim: usize,
    base: f32,
    freq_scale: f32,
    factors: Option<&[f32]>,
    out: &mut Vec<[f32; 2]>,
) {
    out.clear();
    let theta_scale = base.powf(-2.0 / rope_dim as f32);
    let mut theta = pos as f32;
    for i in 0..rope_dim / 2 {
        let factor = factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0);
        let t = freq_scale * (theta / factor);
        out.push([t.cos(), t.sin()]);
        theta *= theta_scale;
    }
}

/// Rotates the pairs `(x[i], x[i + n])` (`n` the table's length) of every head in `row`:
/// the NEOX arrangement of Qwen and Gemma. Same arithmetic as [`apply_rope`].
pub fn apply_rope_neox(row: &mut [f32], head_dim: usize, table: &[[f32; 2]]) {
    let n = table.len();
    for head in row.chunks_exact_mut(head_dim) {
        for (i, &[c, s]) in table.iter().enumerate() {
            let (x0, x1) = (head[i], head[i + n]);
            head[i] = x0 * c - x1 * s;
            head[i + n] = x0 * s + x1 * c;
        }
    }
}

/// `gate[i] = gelu(gate[i]) * up[i]`, GELU in its tanh form (Gemma's
/// `gelu_pytorch_tanh`): `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
pub fn gelu_mul_in_place(gate: &mut [f32], up: &[f32]) {
    // tanh(y) = 1 − 2 / (e^{2y} + 1), the exponentials by the engine's vectorised `expf`
    // (the same function on every kernel family; libm's `tanhf` cost a tenth of Gemma's
    // prefill), 64 values at a time; saturates to ±1 for large |y|.
    const K: f32 = 0.797_884_6; // √(2/π)
    let mut e = [0.0f32; 64];
    for (gs, us) in gate.chunks_mut(64).zip(up.chunks(64)) {
        let e = &mut e[..gs.len()];
        for (t, &x) in e.iter_mut().zip(gs.iter()) {
            *t = 2.0 * (K * x * (1.0 + 0.044715 * x * x));
        }
        crate::expf::exp_sub_in_place(e, 0.0);
        for ((g, u), t) in gs.iter_mut().zip(us).zip(e.iter()) {
            let tanh = 1.0 - 2.0 / (t + 1.0);
            *g = 0.5 * *g * (1.0 + tanh) * u;
        }
    }
}

/// `x += b` for every `b.len()`-wide row of `x`.
pub fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        add_assign(row, b);
    }
}

/// Rotates adjacent pairs `(x[2i], x[2i+1])` of every head in `row` by the table's
/// `[cos, sin]` pairs (GGUF llama convention): `x0·c − x1·s`, `x0·s + x1·c`, each product
/// rounded then added (the AVX2 version gives the same bits).
pub fn apply_rope(row: &mut [f32], head_dim: usize, table: &[[f32; 2]]) {
    let avx2 = avx2();
    for head in row.chunks_exact_mut(head_dim) {
        match avx2 {
            Some(k) => dot_avx2::rope_pairs(k, head, table.as_flattened()),
            None => rope_pairs(head, table),
        }
    }
}

/// The scalar rotation of one head's first `table.len()` pairs.
fn rope_pairs(head: &mut [f32], table: &[[f32; 2]]) {
    for (x, &[c, s]) in head.chunks_exact_mut(2).zip(table) {
        let (x0, x1) = (x[0], x[1]);
        x[0] = x0 * c - x1 * s;
        x[1] = x0 * s + x1 * c;
    }
}

/// `a += b`.
pub fn add_assign(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// `out[j] = scale * (q · rows[j])` for consecutive `q.len()`-wide rows.
pub fn dot_rows(q: &[f32], rows: &[f32], scale: f32, out: &mut [f32]) {
    match avx2() {
        Some(k) => dot_avx2::dot_rows(k, q, rows, scale, out),
        None => {
            for (o, r) in out.iter_mut().zip(rows.chunks_exact(q.len())) {
                *o = dot_scalar::dot_f32(q, r) * scale;
            }
        }
    }
}

/// Rows of `width` f16 values at `offset` in each `stride`-wide row of `src`, widened
/// exactly to f32, contiguously into `dst` (`dst.len() / width` rows).
pub fn widen_f16_rows(
    src: &[half::f16],
    stride: usize,
    offset: usize,
    width: usize,
    dst: &mut [f32],
) {
    match avx2() {
        Some(k) => dot_avx2::widen_f16_rows(k, src, stride, offset, width, dst),
        None => {
            use half::slice::HalfFloatSliceExt;
            for (j, d) in dst.chunks_exact_mut(width).enumerate() {
                src[j * stride + offset..j * stride + offset + width].convert_to_f32_slice(d);
            }
        }
    }
}

/// `out += Σ_j p[j] * rows[j]` for consecutive `out.len()`-wide rows, in order.
pub fn weighted_rows(p: &[f32], rows: &[f32], out: &mut [f32]) {
    match avx2() {
        Some(k) => dot_avx2::weighted_rows(k, p, rows, out),
        None => {
            let hd = out.len();
            for (&w, r) in p.iter().zip(rows.chunks_exact(hd)) {
                dot_scalar::axpy_f32(w, r, out);
            }
        }
    }
}

/// Appends `x` rounded to f16 (nearest, ties to even: `half::f16::from_f32`) to `dst`.
pub fn extend_f16(dst: &mut Vec<half::f16>, x: &[f32]) {
    match avx2() {
        Some(k) => dot_avx2::extend_f16(k, dst, x),
        None => dst.extend(x.iter().map(|&v| half::f16::from_f32(v))),
    }
}

/// Writes `x` rounded to f16 (nearest, ties to even) into `dst`, which is as long.
pub fn store_f16(dst: &mut [half::f16], x: &[f32]) {
    match avx2() {
        Some(k) => dot_avx2::store_f16(k, dst, x),
        None => {
            assert_eq!(dst.len(), x.len(), "store_f16: lengths differ");
            for (d, &v) in dst.iter_mut().zip(x) {
                *d = half::f16::from_f32(v);
            }
        }
    }
}

/// Rounds every value to the nearest f16 (kept as f32).
pub fn round_to_f16(x: &mut [f32]) {
    match avx2() {
        Some(k) => dot_avx2::round_to_f16(k, x),
        None => {
            for v in x {
                *v = half::f16::from_f32(*v).to_f32();
            }
        }
    }
}

/// The attention kernels that read f16 rows directly: AVX2, and AVX-512 where the kernel
/// family allows it (all bit-identical).
#[derive(Clone, Copy, Debug)]
pub struct F16Kernels {
    pub avx2: Avx2,
    pub avx512: Option<crate::quant::dot_avx512::Avx512>,
}

impl F16Kernels {
    /// The AVX-512 kernels where they take head width `hd` (else the AVX2 ones run).
    pub fn avx512_for(&self, hd: usize) -> Option<crate::quant::dot_avx512::Avx512> {
        self.avx512
            .filter(|_| crate::quant::dot_avx512::attention_width_ok(hd))
    }
}

/// The f16 attention kernels this CPU has, unless capped off (`GENIE_KERNEL=scalar`).
pub fn f16_kernels() -> Option<F16Kernels> {
    avx2().map(|avx2| F16Kernels {
        avx2,
        avx512: match kernel_kind() {
            KernelKind::Avx512 => crate::quant::dot_avx512::Avx512::new(),
            _ => None,
        },
    })
}

#[inline]
fn avx2() -> Option<Avx2> {
    match kernel_kind() {
        KernelKind::Scalar => None,
        _ => Avx2::new(),
    }
}

/// Numerically stable softmax in place; the sum is accumulated in f64, in order.
pub fn softmax(x: &mut [f32]) {
    crate::expf::exp_sub_in_place(x, max_of(x));
    let sum = x.iter().fold(0.0f64, |s, v| s + *v as f64);
    scale_by_inverse(x, sum);
}

/// [`softmax`] of every row, the same bits: four rows' f64 sums run side by side (each
/// still in its own order), so the additions' latency overlaps.
pub fn softmax_rows(rows: &mut [&mut [f32]]) {
    for r in rows.iter_mut() {
        crate::expf::exp_sub_in_place(r, max_of(r));
    }
    for group in rows.chunks_mut(4) {
        let mut sums = [0.0f64; 4];
        let mut done = 0;
        if let [a, b, c, d] = group {
            done = a.len().min(b.len()).min(c.len()).min(d.len());
            for j in 0..done {
                sums[0] += a[j] as f64;
                sums[1] += b[j] as f64;
                sums[2] += c[j] as f64;
                sums[3] += d[j] as f64;
            }
        }
        for (r, sum) in group.iter_mut().zip(&mut sums) {
            *sum = r[done..].iter().fold(*sum, |s, v| s + *v as f64);
            scale_by_inverse(r, *sum);
        }
    }
}

/// The largest value, NaNs left out (as folding with `f32::max`), in eight lanes.
fn max_of(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(*v);
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

fn scale_by_inverse(x: &mut [f32], sum: f64) {
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_gives_the_one_row_bits_for_any_row_count() {
        let d = 37;
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 / 13.0).collect();
        let x: Vec<f32> = (0..d * 11)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0)
            .collect();
        let mut all = vec![0.0; x.len()];
        rms_norm(&x, &w, 1e-5, &mut all);
        for (r, row) in x.chunks_exact(d).enumerate() {
            // The reference: one row, its squares summed in order in f64.
            let sum = row.iter().fold(0.0f64, |s, v| s + (v * v) as f64);
            let scale = 1.0 / ((sum / d as f64) as f32 + 1e-5).sqrt();
            for k in 0..d {
                assert_eq!(
                    all[r * d + k].to_bits(),
                    ((row[k] * scale) * w[k]).to_bits()
                );
            }
        }
    }

    #[test]
    fn gelu_is_the_tanh_form_to_float_precision() {
        let xs: Vec<f32> = (-400..=400)
            .map(|i| i as f32 * 0.025)
            .chain([-60.0, 60.0])
            .collect();
        let mut g = xs.clone();
        gelu_mul_in_place(&mut g, &vec![1.0; xs.len()]);
        for (x, v) in xs.iter().zip(&g) {
            let x = *x as f64;
            let k = (2.0 / std::f64::consts::PI).sqrt();
            let want = 0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh());
            assert!(
                (*v as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{x}: {v} vs {want}"
            );
        }
    }

    #[test]
    fn softmax_and_softmax_rows_give_the_in_order_reference_bits() {
        // The reference: the max by folding `f32::max`, the sum in f64 in order.
        let reference = |x: &[f32]| -> Vec<u32> {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = x.iter().map(|v| crate::expf::expf(v - max)).collect();
            let sum = e.iter().fold(0.0f64, |s, v| s + *v as f64);
            let inv = (1.0 / sum) as f32;
            e.iter().map(|v| (v * inv).to_bits()).collect()
        };
        let row = |seed: usize, n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 37.0 - 27.0)
                .collect()
        };
        // Lengths that leave tails of the eight lanes and of the four-row groups,
        // a NaN, a row of one value and an empty row.
        let lens = [1, 9, 64, 63, 200, 17, 0, 130, 5];
        let mut rows: Vec<Vec<f32>> = lens.iter().enumerate().map(|(s, &n)| row(s, n)).collect();
        rows[3][10] = f32::NAN;
        let want: Vec<Vec<u32>> = rows.iter().map(|r| reference(r)).collect();
        for (r, w) in rows.iter().zip(&want) {
            let mut one = r.clone();
            softmax(&mut one);
            assert_eq!(one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), *w);
        }
        let mut all: Vec<&mut [f32]> = rows.iter_mut().map(|r| &mut r[..]).collect();
        softmax_rows(&mut all);
        for (r, w) in rows.iter().zip(&want) {
            assert_eq!(r.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), *w);
        }
    }

    #[test]
    fn rms_norm_of_constant_row_is_weight() {
        let x = [2.0f32; 8];
        let w: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let mut out = [0.0; 8];
        rms_norm(&x, &w, 0.0, &mut out);
        for (o, w) in out.iter().zip(&w) {
            assert!((o - w).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let mut t = Vec::new();
        rope_table(0, 4, 10000.0, &mut t);
        let mut row = [1.0, 2.0, 3.0, 4.0];
        apply_rope(&mut row, 4, &t);
        assert_eq!(row, [1.0, 2.0, 3.0, 4.0]);
        rope_table(7, 4, 10000.0, &mut t);
        apply_rope(&mut row, 4, &t);
        let n: f32 = row.iter().map(|v| v * v).sum();
        assert!((n - 30.0).abs() < 1e-4);
        // first pair rotated by 7 radians
        assert!((row[0] - (7.0f32.cos() - 2.0 * 7.0f32.sin())).abs() < 1e-5);
    }

    #[test]
    fn vectorised_rope_gives_the_scalar_bits() {
        let Some(k) = avx2() else {
            eprintln!("no AVX2 here: vectorised rope not tested");
            return;
        };
        // Full and partial rotary widths, and a width with a tail past the last 8 lanes.
        for (hd, rope_dim) in [(64, 64), (64, 32), (22, 22), (6, 4)] {
            let mut t = Vec::new();
            rope_table(1234, rope_dim, 10000.0, &mut t);
            let x: Vec<f32> = (0..hd * 3)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0)
                .collect();
            let (mut a, mut b) = (x.clone(), x.clone());
            for (ha, hb) in a.chunks_exact_mut(hd).zip(b.chunks_exact_mut(hd)) {
                rope_pairs(ha, &t);
                dot_avx2::rope_pairs(k, hb, t.as_flattened());
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "head dim {hd}, rope dim {rope_dim}");
            assert_ne!(a, x, "the rotation changed the row");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_orders() {
        let mut x = [1.0, 2.0, 3.0, f32::NEG_INFINITY];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0] && x[3] == 0.0);
    }
}
