//! Portable reference kernels: exact integer block sums, f32 accumulation.

use super::acts::ActBlock;
use super::{BlockQ4_1, BlockQ8_0, QK};

/// `Σ_blocks d_w d_a Σ q_w q_a + m_w s_a` for one Q4_1 row against one Q8_1 row.
pub fn dot_q4_1_q8_1(w: &[BlockQ4_1], a: &[ActBlock]) -> f32 {
    debug_assert_eq!(w.len(), a.len());
    let mut sum = 0.0f32;
    for (bw, ba) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            sumi += (bw.qs[j] & 0x0f) as i32 * ba.qs[j] as i32;
            sumi += (bw.qs[j] >> 4) as i32 * ba.qs[j + QK / 2] as i32;
        }
        sum += bw.d.to_f32() * ba.d * sumi as f32 + bw.m.to_f32() * ba.s;
    }
    sum
}

/// `Σ_blocks d_w d_a Σ q_w q_a` for one Q8_0 row against one Q8_0 row.
pub fn dot_q8_0_q8_0(w: &[BlockQ8_0], a: &[ActBlock]) -> f32 {
    debug_assert_eq!(w.len(), a.len());
    let mut sum = 0.0f32;
    for (bw, ba) in w.iter().zip(a) {
        let sumi: i32 = bw
            .qs
            .iter()
            .zip(&ba.qs)
            .map(|(&x, &y)| x as i32 * y as i32)
            .sum();
        sum += bw.d.to_f32() * ba.d * sumi as f32;
    }
    sum
}

/// Plain f32 dot product.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for k in 0..8 {
            acc[k] += a[i * 8 + k] * b[i * 8 + k];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `y += alpha * x`.
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv;
    }
}
