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
pub(crate) fn round_even_small(v: f32) -> f32 {
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
    F32 {
        cols: usize,
        data: Vec<f32>,
    },
    Q8_1 {
        cols: usize,
        blocks: Vec<ActBlock>,
    },
    Q8_0 {
        cols: usize,
        blocks: Vec<ActBlock>,
    },
    /// For K-quant weights: one block per 256 values.
    Q8K {
        cols: usize,
        blocks: Vec<super::kquants::Q8KBlock>,
    },
}

/// Every 256-value block of `x` to Q8_K, in parallel on the current rayon pool when there
/// are many (each block alone, so the bits do not depend on the split).
fn quantize_all_q8k(x: &[f32]) -> Vec<super::kquants::Q8KBlock> {
    use super::kquants::{quantize_q8k, QK_K};
    use rayon::prelude::*;
    if x.len() >= 64 * 1024 {
        x.par_chunks(64 * QK_K)
            .flat_map_iter(quantize_q8k)
            .collect()
    } else {
        quantize_q8k(x)
    }
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

/// One block to Q8_1 (`with_sum`) or Q8_0, as an [`ActBlock`]: the vectorised version
/// where the CPU has AVX2, else the scalar one; both give the same bits.
fn act_block(x: &[f32], with_sum: bool) -> ActBlock {
    #[cfg(target_arch = "x86_64")]
    if super::kernel_kind() != super::KernelKind::Scalar {
        // SAFETY: kernel_kind() is not Scalar only where `dot_avx2::available()` detected
        // AVX2, FMA and F16C on this CPU.
        return unsafe { simd::act_block(x, with_sum) };
    }
    if with_sum {
        quantize_block_q8_1(x).into()
    } else {
        quantize_block_q8_0(x).into()
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{ActBlock, QK};
    use half::f16;
    use std::arch::x86_64::*;

    /// The scalar quantisers' arithmetic, eight lanes at a time: `|x|` maximum (exact),
    /// `d = amax / 127`, `q = round_half_even(x * (127 / amax))` (the same f32 product,
    /// rounded by the same rule), the exact integer sum of `q`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn act_block(x: &[f32], with_sum: bool) -> ActBlock {
        assert!(x.len() >= QK);
        let p = x.as_ptr();
        // SAFETY: `x.len() >= QK == 32` (asserted above): the four unaligned 8-value
        // loads cover `x[..32]`.
        let v = unsafe {
            [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ]
        };
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for vi in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(v[i], id),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        });
        let sum = {
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1)))
        };
        // i32 -> i8 (values within ±127): the packs interleave 128-bit lanes, the
        // permutation puts the 32 bytes back in order.
        let w16a = _mm256_packs_epi32(q[0], q[1]);
        let w16b = _mm256_packs_epi32(q[2], q[3]);
        let bytes = _mm256_permutevar8x32_epi32(
            _mm256_packs_epi16(w16a, w16b),
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        );
        let mut qs = [0i8; QK];
        // SAFETY: an unaligned store of 32 bytes into the 32-byte array `qs`.
        unsafe { _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, bytes) };
        ActBlock {
            d: f16::from_f32(d).to_f32(),
            s: if with_sum {
                f16::from_f32(d * sum as f32).to_f32()
            } else {
                0.0
            },
            qs,
        }
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
            WeightFormat::F32 | WeightFormat::Half(_) => QuantizedActs::F32 {
                cols,
                data: x.to_vec(),
            },
            WeightFormat::Q4_1 => QuantizedActs::Q8_1 {
                cols,
                blocks: quantize_all(x, |c| act_block(c, true)),
            },
            WeightFormat::Q8_0 => QuantizedActs::Q8_0 {
                cols,
                blocks: quantize_all(x, |c| act_block(c, false)),
            },
            WeightFormat::K(_) => {
                assert_eq!(
                    cols % super::kquants::QK_K,
                    0,
                    "Q8_K needs whole super-blocks"
                );
                QuantizedActs::Q8K {
                    cols,
                    blocks: quantize_all_q8k(x),
                }
            }
        }
    }

    /// Runs `make` over `x` in chunks of whole `cols`-wide rows and quantises each chunk's
    /// output as soon as it is made, for multiplication by a matrix of `format` — one
    /// parallel region when there are at least `parallel_rows` rows, so the element-wise
    /// step before a matmul (RMS norm, SiLU) and the quantisation of its result do not run
    /// on one thread while the others wait. `make(first_row, chunk)` rewrites `chunk`
    /// (rows `first_row..`) in place. Every block is quantised from the same values as
    /// by [`QuantizedActs::new`] after `make` over all of `x`, so the bits are the same.
    pub fn make_then_quantize(
        format: WeightFormat,
        cols: usize,
        x: &mut [f32],
        parallel_rows: usize,
        make: impl Fn(usize, &mut [f32]) + Sync + Send,
    ) -> Self {
        use rayon::prelude::*;
        assert_eq!(
            x.len() % cols,
            0,
            "activation length not a multiple of cols"
        );
        let n = x.len() / cols;
        let threads = rayon::current_num_threads().max(1);
        let parallel = threads > 1 && n >= parallel_rows.max(2);
        let with_sum = match format {
            WeightFormat::F32 | WeightFormat::Half(_) | WeightFormat::K(_) => {
                if parallel {
                    let rows = n.div_ceil(threads);
                    x.par_chunks_mut(rows * cols)
                        .enumerate()
                        .for_each(|(i, c)| make(i * rows, c));
                } else {
                    make(0, x);
                }
                return QuantizedActs::new(format, cols, x);
            }
            WeightFormat::Q4_1 => true,
            WeightFormat::Q8_0 => false,
        };
        assert_eq!(cols % QK, 0, "quantised activations need whole blocks");
        let per_row = cols / QK;
        let mut blocks = vec![
            ActBlock {
                d: 0.0,
                s: 0.0,
                qs: [0; QK]
            };
            n * per_row
        ];
        let run = |first: usize, x: &mut [f32], out: &mut [ActBlock]| {
            make(first, x);
            for (b, c) in out.iter_mut().zip(x.chunks_exact(QK)) {
                *b = act_block(c, with_sum);
            }
        };
        if parallel {
            let rows = n.div_ceil(threads);
            x.par_chunks_mut(rows * cols)
                .zip(blocks.par_chunks_mut(rows * per_row))
                .enumerate()
                .for_each(|(i, (x, b))| run(i * rows, x, b));
        } else {
            run(0, x, &mut blocks);
        }
        match format {
            WeightFormat::Q4_1 => QuantizedActs::Q8_1 { cols, blocks },
            _ => QuantizedActs::Q8_0 { cols, blocks },
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            QuantizedActs::F32 { cols, .. }
            | QuantizedActs::Q8_1 { cols, .. }
            | QuantizedActs::Q8_0 { cols, .. }
            | QuantizedActs::Q8K { cols, .. } => *cols,
        }
    }

    /// Number of rows (tokens).
    pub fn rows(&self) -> usize {
        let cols = self.cols();
        match self {
            QuantizedActs::F32 { data, .. } => data.len() / cols,
            QuantizedActs::Q8_1 { blocks, .. } => blocks.len() * QK / cols,
            QuantizedActs::Q8_0 { blocks, .. } => blocks.len() * QK / cols,
            QuantizedActs::Q8K { blocks, .. } => blocks.len() * super::kquants::QK_K / cols,
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
    fn vectorised_quantisers_give_the_scalar_bits() {
        if super::super::kernel_kind() == super::super::KernelKind::Scalar {
            eprintln!("skipped: no vector kernels on this CPU");
            return;
        }
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let mut blocks: Vec<Vec<f32>> = (0..200)
            .map(|i| (0..32).map(|_| next() * (1 + i % 7) as f32 * 3.0).collect())
            .collect();
        blocks.push(vec![0.0; 32]);
        // Exact ties after scaling: amax 127 makes x * 127 / amax == x.
        blocks.push(
            (0..32)
                .map(|i| if i == 0 { 127.0 } else { i as f32 - 15.5 })
                .collect(),
        );
        blocks.push(
            (0..32)
                .map(|i| if i == 3 { -127.0 } else { 0.5 * i as f32 })
                .collect(),
        );
        for b in &blocks {
            let q1: ActBlock = quantize_block_q8_1(b).into();
            let q0: ActBlock = quantize_block_q8_0(b).into();
            assert_eq!(act_block(b, true), q1, "{b:?}");
            assert_eq!(act_block(b, false), q0, "{b:?}");
        }
    }

    #[test]
    fn making_and_quantising_by_chunks_gives_the_whole_batch_bits() {
        let cols = 96;
        let make = |first: usize, c: &mut [f32]| {
            for (i, v) in c.iter_mut().enumerate() {
                // Depends on the absolute row, so a wrong `first` changes the values.
                let row = first + i / cols;
                *v = (*v * 1.5 - row as f32).sin() * (row + 1) as f32;
            }
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for rows in [1, 2, 7, 16] {
            let x: Vec<f32> = (0..rows * cols).map(|i| (i % 37) as f32 * 0.25).collect();
            let mut whole = x.clone();
            make(0, &mut whole);
            for format in [WeightFormat::Q4_1, WeightFormat::Q8_0, WeightFormat::F32] {
                let want = QuantizedActs::new(format, cols, &whole);
                for parallel_rows in [1, 4, usize::MAX] {
                    let mut y = x.clone();
                    let got = pool.install(|| {
                        QuantizedActs::make_then_quantize(format, cols, &mut y, parallel_rows, make)
                    });
                    assert_eq!(y, whole, "{rows} rows: the made values");
                    let same = match (&got, &want) {
                        (
                            QuantizedActs::F32 { data: a, .. },
                            QuantizedActs::F32 { data: b, .. },
                        ) => a == b,
                        (
                            QuantizedActs::Q8_1 { blocks: a, .. },
                            QuantizedActs::Q8_1 { blocks: b, .. },
                        )
                        | (
                            QuantizedActs::Q8_0 { blocks: a, .. },
                            QuantizedActs::Q8_0 { blocks: b, .. },
                        ) => a == b,
                        _ => false,
                    };
                    assert!(
                        same,
                        "{rows} rows, {format:?}, parallel from {parallel_rows}"
                    );
                }
            }
        }
    }

    #[test]
    fn zero_block_quantises_to_zero() {
        let b = quantize_block_q8_0(&[0.0; 32]);
        assert_eq!(b.qs, [0; 32]);
        assert_eq!(b.d.to_f32(), 0.0);
    }
}
