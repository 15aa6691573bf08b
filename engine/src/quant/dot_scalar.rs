//! Portable reference kernels that compute, operation for operation, what the AVX2 kernels
//! compute: the same eight f32 lane accumulators per dot product (lane `j` of a 32-value
//! block takes the exact integer sum of values `4j..4j + 3`, scaled by one fused
//! multiply-add), the same horizontal-sum tree, the same tails. So a CPU without AVX2
//! (or `GENIE_KERNEL=scalar`) gives the same bits as every other family. Accuracy is
//! measured against the exact float64 reference (`genie-reference`), not against
//! llama.cpp, whose own greedy tokens change with its CPU code path; the summation order
//! matters on this model (a per-block integer sum once moved near-tied tokens).

use super::acts::ActBlock;
use super::{BlockQ4_1, BlockQ8_0, Half, QK};

/// The AVX2 kernels' horizontal sum of eight lanes: `(l0+l4) + (l2+l6)` and
/// `(l1+l5) + (l3+l7)`, then their sum.
#[inline(always)]
fn hsum8(l: [f32; 8]) -> f32 {
    let s = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

/// Adds one block's eight exact lane sums (`lane(j)` for values `4j..4j + 3`), scaled by
/// `d`, into the lane accumulators.
#[inline(always)]
fn accumulate(acc: &mut [f32; 8], d: f32, lane: impl Fn(usize) -> i32) {
    for (j, a) in acc.iter_mut().enumerate() {
        *a = d.mul_add(lane(j) as f32, *a);
    }
}

/// `Σ_blocks d_w d_a Σ q_w q_a + m_w s_a` for one Q4_1 row against one Q8_1 row.
pub fn dot_q4_1_q8_1(w: &[BlockQ4_1], a: &[ActBlock]) -> f32 {
    debug_assert_eq!(w.len(), a.len());
    let mut acc = [0.0f32; 8];
    let mut summ = 0.0f32;
    for (bw, ba) in w.iter().zip(a) {
        // Value k of the block: the low nibble of qs[k] for k < 16, else the high nibble
        // of qs[k - 16].
        let q = |k: usize| {
            if k < QK / 2 {
                (bw.qs[k] & 0x0f) as i32
            } else {
                (bw.qs[k - QK / 2] >> 4) as i32
            }
        };
        accumulate(&mut acc, bw.d.to_f32() * ba.d, |j| {
            (4 * j..4 * j + 4).map(|k| q(k) * ba.qs[k] as i32).sum()
        });
        summ += bw.m.to_f32() * ba.s;
    }
    hsum8(acc) + summ
}

/// `Σ_blocks d_w d_a Σ q_w q_a` for one Q8_0 row against one Q8_0 row.
pub fn dot_q8_0_q8_0(w: &[BlockQ8_0], a: &[ActBlock]) -> f32 {
    debug_assert_eq!(w.len(), a.len());
    let mut acc = [0.0f32; 8];
    for (bw, ba) in w.iter().zip(a) {
        accumulate(&mut acc, bw.d.to_f32() * ba.d, |j| {
            (4 * j..4 * j + 4)
                .map(|k| bw.qs[k] as i32 * ba.qs[k] as i32)
                .sum()
        });
    }
    hsum8(acc)
}

/// `Σ_blocks d_w d_a Σ q_w q_a` for one Q8_0 row whose blocks were widened from Q4_0 or
/// Q5_0, against one Q8_0 row, with exact block sums: each block's integer sum of 32
/// products, scaled by one fused multiply-add, block after block in one chain. Those
/// formats have no llama.cpp lane order to keep, and one rounding per block is fewer than
/// the eight lanes' (the strip kernels do a block in eight `vpdpbusd` and one FMA).
pub fn dot_q8_0_exact(w: &[BlockQ8_0], a: &[ActBlock]) -> f32 {
    debug_assert_eq!(w.len(), a.len());
    w.iter().zip(a).fold(0.0f32, |acc, (bw, ba)| {
        let isum: i32 = bw
            .qs
            .iter()
            .zip(&ba.qs)
            .map(|(&x, &y)| x as i32 * y as i32)
            .sum();
        (bw.d.to_f32() * ba.d).mul_add(isum as f32, acc)
    })
}

/// f32 dot product: two eight-lane FMA chains over 16-value steps (an 8-value step after
/// them goes to the first), the chains added lane by lane, [`hsum8`], then the last
/// values one by one.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_by(a.len().min(b.len()), |i| a[i], b)
}

/// [`dot_f32`] of F16 or BF16 weights `w` (each widened exactly) and f32 `x`: the bits
/// of `dot_f32` on the widened row.
pub fn dot_half(kind: Half, w: &[u16], x: &[f32]) -> f32 {
    dot_by(w.len().min(x.len()), |i| kind.to_f32(w[i]), x)
}

#[inline(always)]
fn dot_by(n: usize, a: impl Fn(usize) -> f32, b: &[f32]) -> f32 {
    let (mut acc0, mut acc1) = ([0.0f32; 8], [0.0f32; 8]);
    let mut i = 0;
    while i + 16 <= n {
        for k in 0..8 {
            acc0[k] = a(i + k).mul_add(b[i + k], acc0[k]);
            acc1[k] = a(i + 8 + k).mul_add(b[i + 8 + k], acc1[k]);
        }
        i += 16;
    }
    if i + 8 <= n {
        for k in 0..8 {
            acc0[k] = a(i + k).mul_add(b[i + k], acc0[k]);
        }
        i += 8;
    }
    let mut s = hsum8(std::array::from_fn(|k| acc0[k] + acc1[k]));
    for (k, bk) in b.iter().enumerate().take(n).skip(i) {
        s += a(k) * bk;
    }
    s
}

/// `y += alpha * x`: fused over whole groups of eight, multiply-then-add for the rest.
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let whole = n / 8 * 8;
    for (yv, xv) in y[..whole].iter_mut().zip(&x[..whole]) {
        *yv = alpha.mul_add(*xv, *yv);
    }
    for (yv, xv) in y[whole..n].iter_mut().zip(&x[whole..n]) {
        *yv += alpha * xv;
    }
}
