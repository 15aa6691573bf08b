//! Activation quantisation: f32 rows to Q8_1 (for Q4_1 weights) or Q8_0 (for Q8_0 weights).
//!
//! Follows llama.cpp's vectorised CPU path: `d = amax / 127`, `q = round_half_even(x * 127 / amax)`,
//! `d` stored as f16, and for Q8_1 `s = f16(d * Σq)`.

use super::{BlockQ8_0, BlockQ8_1, QMatrix, WeightFormat, QK};

/// An activation block as the kernels consume it: the Q8_0/Q8_1 block's f16 scale (and,
/// for Q8_1, its f16 `s`) widened to f32 once, so inner loops do no f16 conversion.
/// The values are exactly those of the f16 block.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct ActBlock {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

impl From<BlockQ8_1> for ActBlock {
    fn from(b: BlockQ8_1) -> Self {
        ActBlock {
            d: b.d.to_f32(),
            s: b.s.to_f32(),
            qs: b.qs,
        }
    }
}

impl From<BlockQ8_0> for ActBlock {
    fn from(b: BlockQ8_0) -> Self {
        ActBlock {
            d: b.d.to_f32(),
            s: 0.0,
            qs: b.qs,
        }
    }
}
use half::f16;

/// Round half to even, valid for |v| < 2^22 (inputs here are within ±128): adding and
/// subtracting 1.5·2^23 leaves the nearest integer under the default rounding mode.
/// Same result as `f32::round_ties_even`, without a libm call in the hot loop.
#[inline(always)]
fn round_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

fn scale_block(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (d, id)
}

/// Quantises one 32-element block to Q8_0.
pub fn quantize_block_q8_0(x: &[f32]) -> BlockQ8_0 {
    let (d, id) = scale_block(x);
    let mut qs = [0i8; QK];
    for (q, v) in qs.iter_mut().zip(x) {
        *q = round_even_small(v * id) as i8;
    }
    BlockQ8_0 {
        d: f16::from_f32(d),
        qs,
    }
}

/// Quantises one 32-element block to Q8_1.
pub fn quantize_block_q8_1(x: &[f32]) -> BlockQ8_1 {
    let (d, id) = scale_block(x);
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = round_even_small(v * id) as i8;
        sum += *q as i32;
    }
    BlockQ8_1 {
        d: f16::from_f32(d),
        s: f16::from_f32(d * sum as f32),
        qs,
    }
}

/// `n` activation rows of `cols` elements, in the format a weight matrix consumes.
#[derive(Clone, Debug)]
pub enum QuantizedActs {
    F32 { cols: usize, data: Vec<f32> },
    Q8_1 { cols: usize, blocks: Vec<ActBlock> },
    Q8_0 { cols: usize, blocks: Vec<ActBlock> },
}

/// Quantises every block, in parallel on the current rayon pool when there are many.
fn quantize_all(x: &[f32], f: impl Fn(&[f32]) -> ActBlock + Sync + Send) -> Vec<ActBlock> {
    use rayon::prelude::*;
    if x.len() >= 64 * 1024 {
        x.par_chunks_exact(QK).map(f).collect()
    } else {
        x.chunks_exact(QK).map(f).collect()
    }
}

impl QuantizedActs {
    /// Quantises `x` (`n * cols` values, row-major) for multiplication by `w`.
    pub fn for_weight(w: &QMatrix, x: &[f32]) -> Self {
        Self::new(w.format(), w.cols(), x)
    }

    pub fn new(format: WeightFormat, cols: usize, x: &[f32]) -> Self {
        assert_eq!(
            x.len() % cols,
            0,
            "activation length not a multiple of cols"
        );
        match format {
            WeightFormat::F32 => QuantizedActs::F32 {
                cols,
                data: x.to_vec(),
            },
            WeightFormat::Q4_1 => QuantizedActs::Q8_1 {
                cols,
                blocks: quantize_all(x, |c| quantize_block_q8_1(c).into()),
            },
            WeightFormat::Q8_0 => QuantizedActs::Q8_0 {
                cols,
                blocks: quantize_all(x, |c| quantize_block_q8_0(c).into()),
            },
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            QuantizedActs::F32 { cols, .. }
            | QuantizedActs::Q8_1 { cols, .. }
            | QuantizedActs::Q8_0 { cols, .. } => *cols,
        }
    }

    /// Number of rows (tokens).
    pub fn rows(&self) -> usize {
        let cols = self.cols();
        match self {
            QuantizedActs::F32 { data, .. } => data.len() / cols,
            QuantizedActs::Q8_1 { blocks, .. } => blocks.len() * QK / cols,
            QuantizedActs::Q8_0 { blocks, .. } => blocks.len() * QK / cols,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_1_roundtrip_is_close_and_sum_matches() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 0.37).collect();
        let b = quantize_block_q8_1(&x);
        let d = b.d.to_f32();
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!((d - amax / 127.0).abs() < 1e-3 * amax);
        for (q, v) in b.qs.iter().zip(&x) {
            assert!((*q as f32 * d - v).abs() <= d * 0.51 + 1e-6, "{q} {v}");
        }
        let s: i32 = b.qs.iter().map(|&q| q as i32).sum();
        assert_eq!(b.s, f16::from_f32((amax / 127.0) * s as f32));
        // the extreme element maps to +-127
        assert_eq!(b.qs.iter().map(|q| q.unsigned_abs()).max(), Some(127));
    }

    #[test]
    fn fast_rounding_equals_round_ties_even() {
        let mut v = -130.0f32;
        while v <= 130.0 {
            assert_eq!(round_even_small(v), v.round_ties_even(), "{v}");
            v += 0.03125;
        }
        for v in [0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, -127.5, 0.49999997] {
            assert_eq!(round_even_small(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn zero_block_quantises_to_zero() {
        let b = quantize_block_q8_0(&[0.0; 32]);
        assert_eq!(b.qs, [0; 32]);
        assert_eq!(b.d.to_f32(), 0.0);
    }
}
