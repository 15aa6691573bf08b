//! Quantised weights and the integer dot-product kernels that run them.
//!
//! Weights stay in the GGUF's own formats (Q4_1, Q8_0, the K-quants, F32, F16, BF16; Q4_0,
//! Q5_0 and Q5_1 as the Q8_0 blocks they widen to losslessly, [`widen`]) so the
//! arithmetic is the file's: activations are quantised per 32-element block to Q8_1
//! (against Q4_1 weights) or Q8_0 (against Q8_0 weights), exactly as llama.cpp does,
//! and each block contributes `d_w * d_a * Σ q_w q_a (+ m_w * s_a)`; K-quants take Q8_K
//! activations ([`kquants`]); F32, F16 and BF16 weights take the activations unquantised.
//!
//! Kernels: a portable scalar version ([`dot_scalar`]) is the reference; an AVX2/FMA
//! version ([`dot_avx2`]) is selected at run time when the CPU has it, and on CPUs with
//! AVX-512 VNNI an AVX-512 version ([`dot_avx512`]) that is bit-identical to the AVX2 one
//! and runs two (row, token) pairs per instruction, beside which [`strips`] re-lays each
//! Q4_1/Q8_0 matrix's full 16-row strips for a kernel that keeps one row per lane (the
//! same bits again, fewer instructions). Each computes every (row, token)
//! product with the same per-block order, so a token's result never depends on which other
//! tokens share the batch.

pub mod ab;
pub mod acts;
pub mod attn_avx2;
pub mod dot_avx2;
pub mod dot_avx512;
pub mod dot_scalar;
pub mod kdot_x86;
pub mod kquants;
pub mod kstrips;
pub mod matmul;
pub mod side_fetch;
pub mod strips;
pub mod strips_avx2;
pub mod widen;

use half::f16;

/// Elements per quantisation block for every format used here.
pub const QK: usize = 32;

/// One Q4_1 block as stored in GGUF: scale, minimum, 32 unsigned nibbles.
/// Element `j` is the low nibble of `qs[j]`, element `j + 16` the high nibble.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// One Q8_0 block: scale and 32 signed bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// One Q8_1 activation block: scale, `d * Σ qs`, 32 signed bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// The storage formats the engine executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    /// 16-bit floats kept as stored (F16 or BF16), run against f32 activations: each
    /// weight widens exactly in the kernel, so the result is the F32 kernel's bits.
    Half(Half),
    Q4_1,
    Q8_0,
    /// A K-quant (Q4_K, Q5_K, Q6_K), run against Q8_K activations.
    K(kquants::KType),
}

impl WeightFormat {
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "F32",
            WeightFormat::Half(h) => h.name(),
            WeightFormat::Q4_1 => "Q4_1",
            WeightFormat::Q8_0 => "Q8_0",
            WeightFormat::K(k) => k.name(),
        }
    }

    /// Bytes needed for `n` elements (n a multiple of [`QK`] for block formats).
    pub fn bytes_for(self, n: usize) -> usize {
        match self {
            WeightFormat::F32 => n * 4,
            WeightFormat::Half(_) => n * 2,
            WeightFormat::Q4_1 => n / QK * std::mem::size_of::<BlockQ4_1>(),
            WeightFormat::Q8_0 => n / QK * std::mem::size_of::<BlockQ8_0>(),
            WeightFormat::K(k) => n / kquants::QK_K * k.block_bytes(),
        }
    }
}

/// The 16-bit float formats a [`QMatrix::Half`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    F16,
    Bf16,
}

impl Half {
    pub fn name(self) -> &'static str {
        match self {
            Half::F16 => "F16",
            Half::Bf16 => "BF16",
        }
    }

    /// The exact f32 value of `bits`.
    #[inline(always)]
    pub fn to_f32(self, bits: u16) -> f32 {
        match self {
            Half::F16 => f16::from_bits(bits).to_f32(),
            Half::Bf16 => f32::from_bits((bits as u32) << 16),
        }
    }

    /// The nearest value of this format to `v` (ties to even).
    pub fn from_f32(self, v: f32) -> u16 {
        match self {
            Half::F16 => f16::from_f32(v).to_bits(),
            Half::Bf16 => half::bf16::from_f32(v).to_bits(),
        }
    }
}

/// A 2-D weight matrix `[rows, cols]`, row-major, each row quantised independently.
#[derive(Clone, Debug)]
pub enum QMatrix {
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    /// F16 or BF16 values as stored ([`WeightFormat::Half`]).
    Half {
        rows: usize,
        cols: usize,
        kind: Half,
        data: Vec<u16>,
    },
    Q4_1 {
        rows: usize,
        cols: usize,
        blocks: Vec<BlockQ4_1>,
        /// The blocks' minima again, transposed by [`strip_minima`] for the batched kernels.
        minima: Vec<f16>,
        /// The full strips again, laid out for the strip kernels; built only where this
        /// process runs one ([`KernelKind::uses_strips`]).
        strips: Option<strips::Strips>,
    },
    Q8_0 {
        rows: usize,
        cols: usize,
        blocks: Vec<BlockQ8_0>,
        /// As for Q4_1: the full strips for the strip kernels, where one runs.
        strips: Option<strips::Strips>,
        /// Exact block sums ([`dot_scalar::dot_q8_0_exact`]): every Q8_0 matrix a GGUF
        /// loads, stored Q8_0 or widened from Q4_0/Q5_0/Q5_1. False: llama.cpp's eight
        /// lane chains ([`dot_scalar::dot_q8_0_q8_0`]), which stored Q8_0 took until
        /// exact sums were measured faster in the 256-bit strip kernels.
        exact: bool,
        /// Blocks widened from Q5_1 (`d · q + m`, `q` in 0..=31 kept as the block's
        /// integers): each block's `m` as f32, row-major `[row][block]`. The matmul adds
        /// `Σ_b m[r][b] · s[t][b]` (`s` = `d_a · Σ q_a`, [`block_sums`]) to the exact
        /// block sums, by [`dot_scalar::dot_f32`]'s order.
        minima: Option<Vec<f32>>,
    },
    K(kquants::KMatrix),
}

/// Why raw bytes could not become a [`QMatrix`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("{format} matrix of {rows}x{cols} needs {expected} bytes, got {got}")]
    Size {
        format: &'static str,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("{format} rows must hold a multiple of {block} elements, got {cols}")]
    RowLength {
        format: &'static str,
        block: usize,
        cols: usize,
    },
}

impl QMatrix {
    /// A Q4_1 matrix from its blocks (`rows * cols / QK` of them, row-major).
    pub fn q4_1(rows: usize, cols: usize, blocks: Vec<BlockQ4_1>) -> Self {
        assert_eq!(blocks.len() * QK, rows * cols, "Q4_1 matrix: block count");
        let minima = strip_minima(rows, cols / QK, &blocks);
        let strips = kernel_kind()
            .uses_strips()
            .then(|| strips::Strips::q4_1(rows, cols / QK, &blocks));
        QMatrix::Q4_1 {
            rows,
            cols,
            blocks,
            minima,
            strips,
        }
    }

    /// A Q8_0 matrix from its blocks (`rows * cols / QK` of them, row-major).
    pub fn q8_0(rows: usize, cols: usize, blocks: Vec<BlockQ8_0>) -> Self {
        assert_eq!(blocks.len() * QK, rows * cols, "Q8_0 matrix: block count");
        let strips = kernel_kind()
            .uses_strips()
            .then(|| strips::Strips::q8_0(rows, cols / QK, &blocks));
        QMatrix::Q8_0 {
            rows,
            cols,
            blocks,
            strips,
            exact: false,
            minima: None,
        }
    }

    /// A matrix from the bytes of a Q5_1 tensor (24 per block of 32): the blocks' scales
    /// and 5-bit integers as exact-sum Q8_0 blocks, their minima beside them
    /// ([`QMatrix::Q8_0`]'s `minima`). 38 bytes per 32 values in memory.
    pub fn q5_1(rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, QuantError> {
        check_size("Q5_1", rows, cols, QK, 24 * (rows * cols / QK), bytes.len())?;
        let (q8, mins) = widen::q5_1_split(bytes);
        let mut m = QMatrix::from_bytes(WeightFormat::Q8_0, rows, cols, &q8)?;
        if let QMatrix::Q8_0 { minima, exact, .. } = &mut m {
            *exact = true;
            *minima = Some(mins);
        }
        Ok(m)
    }

    /// This matrix with exact block sums where it is Q8_0 (blocks widened from Q4_0 or
    /// Q5_0); any other matrix unchanged.
    pub fn with_exact_block_sums(mut self) -> Self {
        if let QMatrix::Q8_0 { exact, .. } = &mut self {
            *exact = true;
        }
        self
    }

    /// Builds a matrix from the raw little-endian bytes of a GGUF tensor.
    pub fn from_bytes(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self, QuantError> {
        let block = match format {
            WeightFormat::F32 | WeightFormat::Half(_) => 1,
            WeightFormat::K(_) => kquants::QK_K,
            _ => QK,
        };
        let expected = format.bytes_for(rows * cols);
        check_size(format.name(), rows, cols, block, expected, bytes.len())?;
        Ok(match format {
            WeightFormat::F32 => QMatrix::F32 {
                rows,
                cols,
                data: bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            },
            WeightFormat::Half(kind) => QMatrix::Half {
                rows,
                cols,
                kind,
                data: bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            },
            WeightFormat::Q4_1 => QMatrix::q4_1(
                rows,
                cols,
                bytes
                    .chunks_exact(20)
                    .map(|c| {
                        let mut qs = [0u8; 16];
                        qs.copy_from_slice(&c[4..20]);
                        BlockQ4_1 {
                            d: f16::from_le_bytes([c[0], c[1]]),
                            m: f16::from_le_bytes([c[2], c[3]]),
                            qs,
                        }
                    })
                    .collect(),
            ),
            WeightFormat::Q8_0 => QMatrix::q8_0(
                rows,
                cols,
                bytes
                    .chunks_exact(34)
                    .map(|c| {
                        let mut qs = [0i8; QK];
                        for (q, b) in qs.iter_mut().zip(&c[2..34]) {
                            *q = *b as i8;
                        }
                        BlockQ8_0 {
                            d: f16::from_le_bytes([c[0], c[1]]),
                            qs,
                        }
                    })
                    .collect(),
            ),
            WeightFormat::K(k) => QMatrix::K(kquants::KMatrix::from_bytes(k, rows, cols, bytes)),
        })
    }

    pub fn rows(&self) -> usize {
        match self {
            QMatrix::F32 { rows, .. }
            | QMatrix::Half { rows, .. }
            | QMatrix::Q4_1 { rows, .. }
            | QMatrix::Q8_0 { rows, .. } => *rows,
            QMatrix::K(m) => m.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            QMatrix::F32 { cols, .. }
            | QMatrix::Half { cols, .. }
            | QMatrix::Q4_1 { cols, .. }
            | QMatrix::Q8_0 { cols, .. } => *cols,
            QMatrix::K(m) => m.cols,
        }
    }

    pub fn format(&self) -> WeightFormat {
        match self {
            QMatrix::F32 { .. } => WeightFormat::F32,
            QMatrix::Half { kind, .. } => WeightFormat::Half(*kind),
            QMatrix::Q4_1 { .. } => WeightFormat::Q4_1,
            QMatrix::Q8_0 { .. } => WeightFormat::Q8_0,
            QMatrix::K(m) => WeightFormat::K(m.kind),
        }
    }

    /// Bytes of the quantised blocks: what a one-token step reads. In memory, Q4_1 adds a
    /// tenth for the transposed minima and, on AVX-512 CPUs, the strip copy (about as
    /// much again; the strip kernel reads it instead of the blocks). Q5_1's minima count.
    pub fn size_bytes(&self) -> usize {
        let minima = match self {
            QMatrix::Q8_0 {
                minima: Some(m), ..
            } => m.len() * 4,
            _ => 0,
        };
        self.format().bytes_for(self.rows() * self.cols()) + minima
    }

    /// Writes row `r` as f32 into `out` (exact dequantisation: `d*q + m` or `d*q`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let cols = self.cols();
        assert_eq!(out.len(), cols, "dequantize_row: output length");
        match self {
            QMatrix::F32 { data, .. } => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
            QMatrix::Half { data, kind, .. } => {
                for (o, &b) in out.iter_mut().zip(&data[r * cols..(r + 1) * cols]) {
                    *o = kind.to_f32(b);
                }
            }
            QMatrix::Q4_1 { blocks, .. } => {
                let nb = cols / QK;
                for (b, chunk) in blocks[r * nb..(r + 1) * nb]
                    .iter()
                    .zip(out.chunks_exact_mut(QK))
                {
                    let d = b.d.to_f32();
                    let m = b.m.to_f32();
                    for j in 0..QK / 2 {
                        chunk[j] = (b.qs[j] & 0x0f) as f32 * d + m;
                        chunk[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
                    }
                }
            }
            QMatrix::Q8_0 { blocks, minima, .. } => {
                let nb = cols / QK;
                for (i, (b, chunk)) in blocks[r * nb..(r + 1) * nb]
                    .iter()
                    .zip(out.chunks_exact_mut(QK))
                    .enumerate()
                {
                    let d = b.d.to_f32();
                    let m = minima.as_ref().map(|m| m[r * nb + i]);
                    for (o, q) in chunk.iter_mut().zip(b.qs.iter()) {
                        *o = match m {
                            Some(m) => *q as f32 * d + m,
                            None => *q as f32 * d,
                        };
                    }
                }
            }
            QMatrix::K(m) => m.dequantize_row(r, out),
        }
    }

    /// Quantises an f32 matrix into `format` (used to build small test models).
    pub fn quantize(format: WeightFormat, rows: usize, cols: usize, data: &[f32]) -> Self {
        assert_eq!(data.len(), rows * cols);
        match format {
            WeightFormat::F32 => QMatrix::F32 {
                rows,
                cols,
                data: data.to_vec(),
            },
            WeightFormat::Half(kind) => QMatrix::Half {
                rows,
                cols,
                kind,
                data: data.iter().map(|&v| kind.from_f32(v)).collect(),
            },
            WeightFormat::Q4_1 => QMatrix::q4_1(
                rows,
                cols,
                data.chunks_exact(QK).map(quantize_block_q4_1).collect(),
            ),
            WeightFormat::Q8_0 => QMatrix::q8_0(
                rows,
                cols,
                data.chunks_exact(QK)
                    .map(acts::quantize_block_q8_0)
                    .collect(),
            ),
            WeightFormat::K(k) => {
                // candle's K-quantisers (ports of ggml's reference ones) make the bytes.
                use candle_core::quantized::QTensor;
                let dtype = k.ggml();
                let bytes =
                    candle_core::Tensor::from_slice(data, (rows, cols), &candle_core::Device::Cpu)
                        .and_then(|t| QTensor::quantize(&t, dtype))
                        .and_then(|q| q.data().map(|d| d.to_vec()))
                        .expect("K-quantising an f32 matrix of whole super-blocks");
                QMatrix::K(kquants::KMatrix::from_bytes(k, rows, cols, &bytes))
            }
        }
    }
}

/// A matrix's stored size, checked against the bytes given for it.
fn check_size(
    format: &'static str,
    rows: usize,
    cols: usize,
    block: usize,
    expected: usize,
    got: usize,
) -> Result<(), QuantError> {
    if !cols.is_multiple_of(block) {
        return Err(QuantError::RowLength {
            format,
            block,
            cols,
        });
    }
    if got != expected {
        return Err(QuantError::Size {
            format,
            rows,
            cols,
            expected,
            got,
        });
    }
    Ok(())
}

/// `s = d · Σ q` of every Q8_0 activation block, in f32 (the Q5_1 minimum terms' other
/// factor; Q8_0 activations are quantised without it).
pub fn block_sums(a: &[acts::ActBlock]) -> Vec<f32> {
    a.iter()
        .map(|b| b.d * b.qs.iter().map(|&q| q as i32).sum::<i32>() as f32)
        .collect()
}

/// Panics unless the `R` weight rows of a tile have one length and every activation row
/// is at least that long: what every tile kernel reads.
pub(crate) fn check_tile<W, const R: usize, const N: usize>(
    w: &[&[W]; R],
    a: &[&[acts::ActBlock]; N],
) {
    let len = w[0].len();
    assert!(
        w.iter().all(|r| r.len() == len),
        "weight rows of different lengths"
    );
    assert!(
        a.iter().all(|r| r.len() >= len),
        "activation row shorter than weight row"
    );
}

/// Blocks per row in a strip of transposed minima (`mins` is `[block][MIN_STRIP]`), after
/// checking that every activation row has that many: what the strip kernels read.
pub(crate) fn check_strip<const N: usize>(mins: &[f16], a: &[&[acts::ActBlock]; N]) -> usize {
    let nb = mins.len() / MIN_STRIP;
    assert!(
        mins.len() == nb * MIN_STRIP && a.iter().all(|r| r.len() >= nb),
        "min_terms: shapes"
    );
    nb
}

/// Deterministic test data in `[-scale, scale)` (a 64-bit LCG), shared by the kernel tests.
#[cfg(test)]
pub(crate) fn test_values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Rows per strip of a Q4_1 matrix's transposed minima.
pub const MIN_STRIP: usize = 16;

/// The minima `m` of `rows` rows of `nb` Q4_1 blocks, transposed in strips of
/// [`MIN_STRIP`] rows: element `[strip][block][row in strip]`, rows past the end zero.
/// A batched step computes the minimum terms `Σ_b m[r][b] · s[t][b]` of sixteen rows per
/// load from this instead of gathering each row's `m` from its blocks.
pub fn strip_minima(rows: usize, nb: usize, blocks: &[BlockQ4_1]) -> Vec<f16> {
    let strips = rows.div_ceil(MIN_STRIP);
    let mut out = vec![f16::ZERO; strips * nb * MIN_STRIP];
    for (r, row) in blocks.chunks_exact(nb.max(1)).enumerate().take(rows) {
        let (strip, lane) = (r / MIN_STRIP, r % MIN_STRIP);
        for (b, block) in row.iter().enumerate() {
            out[(strip * nb + b) * MIN_STRIP + lane] = block.m;
        }
    }
    out
}

/// Reference Q4_1 quantisation of one block (min/max affine, 16 levels).
pub fn quantize_block_q4_1(x: &[f32]) -> BlockQ4_1 {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; QK / 2];
    for j in 0..QK / 2 {
        let q0 = (((x[j] - min) * id + 0.5) as u8).min(15);
        let q1 = (((x[j + QK / 2] - min) * id + 0.5) as u8).min(15);
        qs[j] = q0 | (q1 << 4);
    }
    BlockQ4_1 {
        d: f16::from_f32(d),
        m: f16::from_f32(min),
        qs,
    }
}

/// Which kernel family this CPU runs; detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    Scalar,
    /// AVX2 with the row-major tiles only: the AVX2 path before the strip kernels, kept
    /// to measure against (`GENIE_KERNEL=avx2-rows`).
    Avx2Rows,
    /// AVX2 with the 256-bit strip kernel ([`strips_avx2`]).
    Avx2,
    /// AVX2 with the strip kernel's sums in AVX-VNNI's 256-bit `vpdpbusd`.
    AvxVnni,
    /// AVX-512 VNNI for the quantised matmuls (AVX2 for the f32 kernels).
    Avx512,
}

impl KernelKind {
    /// True where the matmuls read the 16-row strip copies of the weights.
    pub fn uses_strips(self) -> bool {
        matches!(
            self,
            KernelKind::Avx2 | KernelKind::AvxVnni | KernelKind::Avx512
        )
    }

    /// The instruction set, as benchmarks print it beside their figures.
    pub fn isa(self) -> &'static str {
        match self {
            KernelKind::Scalar => "scalar",
            KernelKind::Avx2Rows => "AVX2 (row tiles)",
            KernelKind::Avx2 => "AVX2",
            KernelKind::AvxVnni => "AVX-VNNI",
            KernelKind::Avx512 => "AVX-512 VNNI",
        }
    }
}

/// The kernel family chosen for this process: the best this CPU has (AVX-512 VNNI, then
/// AVX-VNNI, then AVX2), unless `GENIE_KERNEL` caps it: `scalar`, `avx2-rows`, `avx2` or
/// `avxvnni`.
pub fn kernel_kind() -> KernelKind {
    static KIND: std::sync::OnceLock<KernelKind> = std::sync::OnceLock::new();
    *KIND.get_or_init(|| choose_kernel(&std::env::var("GENIE_KERNEL").unwrap_or_default()))
}

fn choose_kernel(cap: &str) -> KernelKind {
    if cap == "scalar" || !dot_avx2::available() {
        KernelKind::Scalar
    } else if cap == "avx2-rows" {
        KernelKind::Avx2Rows
    } else if cap == "avx2" {
        KernelKind::Avx2
    } else if cap != "avxvnni" && dot_avx512::available() {
        KernelKind::Avx512
    } else if strips_avx2::vnni_available() {
        KernelKind::AvxVnni
    } else {
        KernelKind::Avx2
    }
}
