//! The K-quant formats (Q4_K, Q5_K, Q6_K): 256-value super-blocks with integer scales per
//! sub-block, multiplied against Q8_K activations (one f32 scale per 256 values, int8
//! values, and the sum of every 16 values), as the formats' own dot product is defined.
//!
//! At load each super-block is re-laid once into a [`KBlock`]: the scale `d` and the
//! second scale `m` widened to f32 (exactly: they are f16 in the file), one signed scale
//! and one offset coefficient per 16 values, and the low four bits of every value in one
//! layout for all three formats; the high bits (Q5_K one, Q6_K two) go to a parallel
//! array of [`HiBits`]. Every value of the file is kept: [`KMatrix::dequantize_row`] gives
//! the file's own dequantisation, which the tests check against candle's reader.
//!
//! Per super-block and token the kernels compute two exact integers,
//! `isum = Σ_g sc[g] · Σ_{i∈g} q_i a_i` and `msum = Σ_g mn[g] · bsum[g]` over the sixteen
//! groups `g` of 16 values; [`combine`] turns them into floats with the same operations on
//! every path. So the scalar, AVX2 and AVX-512 kernels give the same bits, whatever order
//! they add integers in, and a token's result never depends on its batch.

use super::dot_avx2::Avx2;
use super::dot_avx512::Avx512;
use super::QK;
use candle_core::quantized::GgmlDType;

/// Values per super-block.
pub const QK_K: usize = 256;
/// Values per scale group.
const GROUP: usize = 16;
/// Groups per super-block.
const GROUPS: usize = QK_K / GROUP;

/// The three K-quant formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KType {
    Q4K,
    Q5K,
    Q6K,
}

impl KType {
    pub fn name(self) -> &'static str {
        match self {
            KType::Q4K => "Q4_K",
            KType::Q5K => "Q5_K",
            KType::Q6K => "Q6_K",
        }
    }

    /// The K-quant a GGUF tensor type is, if it is one the engine runs.
    pub fn of(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4K => Some(KType::Q4K),
            GgmlDType::Q5K => Some(KType::Q5K),
            GgmlDType::Q6K => Some(KType::Q6K),
            _ => None,
        }
    }

    /// The GGUF tensor type.
    pub fn ggml(self) -> GgmlDType {
        match self {
            KType::Q4K => GgmlDType::Q4K,
            KType::Q5K => GgmlDType::Q5K,
            KType::Q6K => GgmlDType::Q6K,
        }
    }

    /// Bytes of one super-block in the file.
    pub fn block_bytes(self) -> usize {
        match self {
            KType::Q4K => 144,
            KType::Q5K => 176,
            KType::Q6K => 210,
        }
    }

    /// True where values have bits above the low four.
    fn has_hi(self) -> bool {
        self != KType::Q4K
    }
}

/// One super-block as the kernels read it. Value `v` of group `g = v / 16` dequantises to
/// `d · sc[g] · q_v − m · mn[g]` for Q4_K and Q5_K (`m` is the file's `dmin`), and to
/// `d · sc[g] · (q_v − 32)` for Q6_K (whose `mn` repeats `sc`, `m` unused).
///
/// `lo[32c + l]` holds the low nibbles of values `64c + l` (bits 0–3) and `64c + 32 + l`
/// (bits 4–7); the unsigned value `q_v` is that nibble plus sixteen times its high bits.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(8))]
pub struct KBlock {
    pub d: f32,
    pub m: f32,
    pub sc: [i8; GROUPS],
    pub mn: [i8; GROUPS],
    pub lo: [u8; QK_K / 2],
}

/// The high bits of one super-block: `hi[32h + l]` holds, in bits `2k..2k + 2`, the bits
/// above the low nibble of value `128h + 32k + l`.
pub type HiBits = [u8; QK_K / 4];

/// One Q8_K activation super-block: `x ≈ d · qs`, and the exact sum of each 16 values.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(32))]
pub struct Q8KBlock {
    pub qs: [i8; QK_K],
    pub bsums: [i16; GROUPS],
    pub d: f32,
}

/// A K-quant matrix `[rows, cols]`, `cols` a multiple of [`QK_K`].
#[derive(Clone, Debug)]
pub struct KMatrix {
    pub kind: KType,
    pub rows: usize,
    pub cols: usize,
    pub blocks: Vec<KBlock>,
    /// One entry per block for Q5_K and Q6_K; empty for Q4_K.
    pub hi: Vec<HiBits>,
    /// The full strips again, for the strip kernels: built only where this process runs
    /// one ([`super::KernelKind::uses_strips`]).
    pub strips: Option<super::kstrips::KStrips>,
}

/// The 6-bit scale and minimum of Q4_K/Q5_K sub-block `j` from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// One file super-block of `kind` into its kernel layout and high bits.
fn repack(kind: KType, b: &[u8]) -> (KBlock, HiBits) {
    let mut q = [0u8; QK_K];
    let mut sc = [0i8; GROUPS];
    let mut mn = [0i8; GROUPS];
    let (d, m);
    match kind {
        KType::Q4K | KType::Q5K => {
            d = f16_at(b, 0);
            m = f16_at(b, 2);
            let scales = &b[4..16];
            for j in 0..QK_K / QK {
                let (s, mm) = scale_min_k4(j, scales);
                sc[2 * j] = s as i8;
                sc[2 * j + 1] = s as i8;
                mn[2 * j] = mm as i8;
                mn[2 * j + 1] = mm as i8;
            }
            let (qh, qs) = match kind {
                KType::Q4K => (None, &b[16..144]),
                _ => (Some(&b[16..48]), &b[48..176]),
            };
            for c in 0..4 {
                for l in 0..32 {
                    let byte = qs[32 * c + l];
                    let (lo_hi, hi_hi) = match qh {
                        Some(h) => ((h[l] >> (2 * c)) & 1, (h[l] >> (2 * c + 1)) & 1),
                        None => (0, 0),
                    };
                    q[64 * c + l] = (byte & 0x0f) | (lo_hi << 4);
                    q[64 * c + 32 + l] = (byte >> 4) | (hi_hi << 4);
                }
            }
        }
        KType::Q6K => {
            let (ql, qh) = (&b[0..128], &b[128..192]);
            for (s, v) in sc.iter_mut().zip(&b[192..208]) {
                *s = *v as i8;
            }
            mn = sc;
            d = f16_at(b, 208);
            m = 0.0;
            for n in 0..2 {
                for l in 0..32 {
                    let (a, c, h) = (ql[64 * n + l], ql[64 * n + 32 + l], qh[32 * n + l]);
                    q[128 * n + l] = (a & 0x0f) | ((h & 3) << 4);
                    q[128 * n + 32 + l] = (c & 0x0f) | (((h >> 2) & 3) << 4);
                    q[128 * n + 64 + l] = (a >> 4) | (((h >> 4) & 3) << 4);
                    q[128 * n + 96 + l] = (c >> 4) | (((h >> 6) & 3) << 4);
                }
            }
        }
    }
    let mut lo = [0u8; QK_K / 2];
    let mut hi = [0u8; QK_K / 4];
    for c in 0..4 {
        for l in 0..32 {
            lo[32 * c + l] = (q[64 * c + l] & 0x0f) | ((q[64 * c + 32 + l] & 0x0f) << 4);
        }
    }
    for h in 0..2 {
        for l in 0..32 {
            hi[32 * h + l] = (0..4).fold(0u8, |acc, k| {
                acc | ((q[128 * h + 32 * k + l] >> 4) << (2 * k))
            });
        }
    }
    (KBlock { d, m, sc, mn, lo }, hi)
}

impl KMatrix {
    /// The matrix from the raw bytes of a GGUF tensor of `kind` (sizes checked by the caller).
    pub fn from_bytes(kind: KType, rows: usize, cols: usize, bytes: &[u8]) -> Self {
        assert_eq!(bytes.len(), rows * cols / QK_K * kind.block_bytes());
        let n = rows * cols / QK_K;
        let mut blocks = Vec::with_capacity(n);
        let mut hi = Vec::with_capacity(if kind.has_hi() { n } else { 0 });
        for b in bytes.chunks_exact(kind.block_bytes()) {
            let (blk, h) = repack(kind, b);
            blocks.push(blk);
            if kind.has_hi() {
                hi.push(h);
            }
        }
        let mut m = KMatrix {
            kind,
            rows,
            cols,
            blocks,
            hi,
            strips: None,
        };
        if super::kernel_kind().uses_strips() {
            m.strips = Some(super::kstrips::KStrips::new(&m));
        }
        m
    }

    /// Row `r` as f32, as the file's format defines its values.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / QK_K;
        for (i, chunk) in out.chunks_exact_mut(QK_K).enumerate().take(nb) {
            let b = r * nb + i;
            let blk = &self.blocks[b];
            let qs = unpack(blk, self.hi.get(b));
            for (v, o) in chunk.iter_mut().enumerate() {
                let g = v / GROUP;
                let q = qs[v] as f32;
                *o = match self.kind {
                    KType::Q6K => blk.d * blk.sc[g] as f32 * (q - 32.0),
                    _ => blk.d * blk.sc[g] as f32 * q - blk.m * blk.mn[g] as f32,
                };
            }
        }
    }

    /// Row `r`'s blocks and, for Q5_K/Q6_K, their high bits.
    pub fn row(&self, r: usize) -> (&[KBlock], &[HiBits]) {
        let nb = self.cols / QK_K;
        let hi = if self.hi.is_empty() {
            &self.hi[..]
        } else {
            &self.hi[r * nb..(r + 1) * nb]
        };
        (&self.blocks[r * nb..(r + 1) * nb], hi)
    }

    /// Bytes of the re-laid blocks in memory.
    pub fn memory_bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<KBlock>()
            + self.hi.len() * std::mem::size_of::<HiBits>()
            + self.strips.as_ref().map_or(0, |s| s.memory_bytes())
    }
}

/// One super-block's exact integer sums and scales into the running f32 result: the same
/// operations on every kernel path.
#[inline(always)]
pub(crate) fn combine(kind: KType, w: &KBlock, da: f32, isum: i32, msum: i32, acc: f32) -> f32 {
    match kind {
        KType::Q6K => (w.d * da).mul_add((isum - 32 * msum) as f32, acc),
        _ => (-(w.m * da)).mul_add(msum as f32, (w.d * da).mul_add(isum as f32, acc)),
    }
}

/// Quantises `x` (a multiple of [`QK_K`] long) to Q8_K: per super-block, the value of
/// largest magnitude maps to −128, `q = min(127, round_half_even(x · −128 / max))`.
pub fn quantize_q8k(x: &[f32]) -> Vec<Q8KBlock> {
    x.chunks_exact(QK_K).map(quantize_block_q8k).collect()
}

fn quantize_block_q8k(x: &[f32]) -> Q8KBlock {
    #[cfg(target_arch = "x86_64")]
    if super::kernel_kind() != super::KernelKind::Scalar {
        // SAFETY: kernel_kind() is not Scalar only where AVX2 and FMA were detected.
        if let Some(b) = unsafe { simd::quantize_block_q8k(x) } {
            return b;
        }
    }
    quantize_block_q8k_scalar(x)
}

fn quantize_block_q8k_scalar(x: &[f32]) -> Q8KBlock {
    let mut out = Q8KBlock {
        qs: [0; QK_K],
        bsums: [0; GROUPS],
        d: 0.0,
    };
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        return out;
    }
    let iscale = -128.0 / max;
    for (q, &v) in out.qs.iter_mut().zip(x) {
        // |iscale · v| <= 128: the add-and-subtract rounding is round-half-even here.
        *q = (super::acts::round_even_small(iscale * v) as i32).min(127) as i8;
    }
    for (s, g) in out.bsums.iter_mut().zip(out.qs.chunks_exact(GROUP)) {
        *s = g.iter().map(|&q| q as i16).sum();
    }
    out.d = 1.0 / iscale;
    out
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Q8KBlock, GROUP, GROUPS, QK_K};
    use std::arch::x86_64::*;

    /// [`super::quantize_block_q8k_scalar`] eight lanes at a time, with its bits: the same
    /// largest-magnitude value (the first of equals), the same f32 scale, product and
    /// add-and-subtract rounding, the exact group sums. None where `x` holds a NaN (the
    /// scalar scan's comparisons decide those).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_block_q8k(x: &[f32]) -> Option<Q8KBlock> {
        assert!(x.len() >= QK_K);
        let p = x.as_ptr();
        // SAFETY: `x.len() >= QK_K` (asserted): 32 unaligned loads of 8 values.
        let v: [__m256; QK_K / 8] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_ps(p.add(8 * i)) });
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        let mut nan = _mm256_setzero_ps();
        for vi in &v {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(*vi, *vi));
        }
        if _mm256_movemask_ps(nan) != 0 {
            return None;
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let mut out = Q8KBlock {
            qs: [0; QK_K],
            bsums: [0; GROUPS],
            d: 0.0,
        };
        if amax == 0.0 {
            return Some(out);
        }
        // The first value of that magnitude, as the scalar scan's strict `>` keeps it.
        let am = _mm256_set1_ps(amax);
        let mut max = 0.0f32;
        for (i, vi) in v.iter().enumerate() {
            let hit =
                _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, *vi), am));
            if hit != 0 {
                max = x[8 * i + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -128.0 / max;
        let is = _mm256_set1_ps(iscale);
        let magic = _mm256_set1_ps(12_582_912.0);
        let top = _mm256_set1_epi32(127);
        let q: [__m256i; QK_K / 8] = std::array::from_fn(|i| {
            let r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(is, v[i]), magic), magic);
            _mm256_min_epi32(_mm256_cvtps_epi32(r), top)
        });
        for g in 0..GROUPS {
            // Group g is vectors 2g and 2g + 1; its sum and its sixteen bytes.
            let (a, b) = (q[2 * g], q[2 * g + 1]);
            let s = _mm256_add_epi32(a, b);
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            out.bsums[g] = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2))) as i16;
            // i32 -> i16 -> i8 (values within -128..=127); packs work per 128-bit lane, so
            // the halves are put back in order.
            let w16 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
            let w8 = _mm_packs_epi16(
                _mm256_castsi256_si128(w16),
                _mm256_extracti128_si256::<1>(w16),
            );
            // SAFETY: sixteen bytes at `16 g`, inside the 256-byte `qs`; unaligned.
            unsafe { _mm_storeu_si128(out.qs.as_mut_ptr().add(GROUP * g) as *mut __m128i, w8) };
        }
        out.d = 1.0 / iscale;
        Some(out)
    }
}

/// The kernel families for K-quant rows; the SIMD ones carry the proof that the CPU has
/// their instructions ([`Avx2`], [`Avx512`]).
#[derive(Clone, Copy, Debug)]
pub enum KIsa {
    Scalar,
    Avx2(Avx2),
    Avx512(Avx512),
}

impl KIsa {
    /// Tokens one call takes at most: a super-block unpacked into registers serves this
    /// many.
    pub fn tile(self) -> usize {
        match self {
            KIsa::Scalar => 4,
            _ => 8,
        }
    }
}

/// `out[t] = row · a[t]` for one K-quant row against `N` tokens' Q8_K rows.
pub fn dot_row<const N: usize>(
    isa: KIsa,
    kind: KType,
    w: &[KBlock],
    hi: &[HiBits],
    a: [&[Q8KBlock]; N],
) -> [f32; N] {
    match isa {
        KIsa::Scalar => {
            check_row(kind, w, hi, &a);
            dot_scalar(kind, w, hi, a)
        }
        KIsa::Avx2(k) => super::kdot_x86::dot_avx2(k, kind, w, hi, a),
        KIsa::Avx512(k) => super::kdot_x86::dot_avx512(k, kind, w, hi, a),
    }
}

/// The unsigned values (0..63) of one super-block: the low nibbles of `lo`, plus sixteen
/// times the high bits where the format has them.
pub(crate) fn unpack(blk: &KBlock, hi: Option<&HiBits>) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for c in 0..4 {
        for l in 0..32 {
            q[64 * c + l] = blk.lo[32 * c + l] & 0x0f;
            q[64 * c + 32 + l] = blk.lo[32 * c + l] >> 4;
        }
    }
    if let Some(h) = hi {
        for (v, qv) in q.iter_mut().enumerate() {
            *qv |= ((h[32 * (v / 128) + v % 32] >> (2 * ((v % 128) / 32))) & 3) << 4;
        }
    }
    q
}

/// Panics unless every activation row has at least `w.len()` blocks and `hi` is one entry
/// per block for Q5_K/Q6_K, none for Q4_K: what every kernel reads.
pub(crate) fn check_row<const N: usize>(
    kind: KType,
    w: &[KBlock],
    hi: &[HiBits],
    a: &[&[Q8KBlock]; N],
) {
    assert!(a.iter().all(|r| r.len() >= w.len()), "K-quant dot: shapes");
    assert!(
        hi.len() == if kind.has_hi() { w.len() } else { 0 },
        "K-quant dot: high bits"
    );
}

/// The portable kernel: the exact integer sums, then [`combine`].
fn dot_scalar<const N: usize>(
    kind: KType,
    w: &[KBlock],
    hi: &[HiBits],
    a: [&[Q8KBlock]; N],
) -> [f32; N] {
    let mut acc = [0.0f32; N];
    for (b, blk) in w.iter().enumerate() {
        let q = unpack(blk, hi.get(b));
        for (t, at) in a.iter().enumerate() {
            let ab = &at[b];
            let (mut isum, mut msum) = (0i32, 0i32);
            for g in 0..GROUPS {
                let dot: i32 = (g * GROUP..(g + 1) * GROUP)
                    .map(|v| q[v] as i32 * ab.qs[v] as i32)
                    .sum();
                isum += blk.sc[g] as i32 * dot;
                msum += blk.mn[g] as i32 * ab.bsums[g] as i32;
            }
            acc[t] = combine(kind, blk, ab.d, isum, msum, acc[t]);
        }
    }
    acc
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Random but valid super-blocks: finite small scales, any other bytes.
    pub(crate) fn random_bytes(kind: KType, blocks: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u8
        };
        let mut out = Vec::new();
        for _ in 0..blocks {
            let mut b: Vec<u8> = (0..kind.block_bytes()).map(|_| next()).collect();
            let scale = |v: u8| half::f16::from_f32((v as f32 + 1.0) * 1e-4).to_le_bytes();
            match kind {
                KType::Q6K => {
                    let d = scale(next());
                    b[208..210].copy_from_slice(&d);
                }
                _ => {
                    let (d, m) = (scale(next()), scale(next()));
                    b[0..2].copy_from_slice(&d);
                    b[2..4].copy_from_slice(&m);
                }
            }
            out.extend(b);
        }
        out
    }

    fn acts(seed: u64, n: usize) -> Vec<f32> {
        crate::quant::test_values(seed, n, 2.0)
    }

    #[test]
    fn the_simd_q8k_quantiser_gives_the_scalar_bits() {
        if super::super::kernel_kind() == super::super::KernelKind::Scalar {
            eprintln!("skipped: CPU lacks AVX2");
            return;
        }
        let mut cases: Vec<Vec<f32>> = (0..20).map(|s| acts(300 + s, QK_K)).collect();
        // Ties of magnitude with opposite signs (the first one sets the sign), a single
        // spike, values that round at exactly one half, a zero block.
        let mut tie = vec![0.25f32; QK_K];
        tie[7] = -3.0;
        tie[100] = 3.0;
        cases.push(tie.clone());
        tie[7] = 3.0;
        tie[100] = -3.0;
        cases.push(tie);
        let mut spike = vec![1e-3f32; QK_K];
        spike[255] = -1e3;
        cases.push(spike);
        cases.push((0..QK_K).map(|i| (i as f32 - 128.0) * 0.5).collect());
        cases.push(vec![0.0; QK_K]);
        for x in &cases {
            // SAFETY: kernel_kind() is not Scalar: AVX2 and FMA are present.
            let v = unsafe { simd::quantize_block_q8k(x) }.expect("no NaN");
            assert_eq!(v, quantize_block_q8k_scalar(x));
            assert_eq!(v.d.to_bits(), quantize_block_q8k_scalar(x).d.to_bits());
        }
        let mut nan = acts(9, QK_K);
        nan[3] = f32::NAN;
        // SAFETY: as above.
        assert!(unsafe { simd::quantize_block_q8k(&nan) }.is_none());
    }

    #[test]
    fn q8k_quantisation_round_trips_and_sums() {
        let x = acts(3, 512);
        for (blk, xs) in quantize_q8k(&x).iter().zip(x.chunks_exact(QK_K)) {
            for (q, v) in blk.qs.iter().zip(xs) {
                assert!((*q as f32 * blk.d - v).abs() <= blk.d.abs() * 0.5 + 1e-6);
            }
            for (g, s) in blk.bsums.iter().enumerate() {
                let want: i16 = blk.qs[g * 16..g * 16 + 16].iter().map(|&q| q as i16).sum();
                assert_eq!(*s, want);
            }
        }
        assert_eq!(quantize_q8k(&[0.0; 256])[0].d, 0.0);
    }

    #[test]
    fn the_kernels_compute_the_dequantised_dot_and_agree_bit_for_bit() {
        let mut isas = vec![KIsa::Scalar];
        isas.extend(Avx2::new().map(KIsa::Avx2));
        match Avx512::new() {
            Some(k) => isas.push(KIsa::Avx512(k)),
            None => eprintln!("AVX-512 K-quant kernel skipped: CPU lacks AVX-512 VNNI"),
        }
        let (rows, cols) = (5, 3 * QK_K);
        for kind in [KType::Q4K, KType::Q5K, KType::Q6K] {
            let w = KMatrix::from_bytes(
                kind,
                rows,
                cols,
                &random_bytes(kind, rows * cols / QK_K, 11),
            );
            let xs: Vec<Vec<f32>> = (0..8).map(|t| acts(100 + t, cols)).collect();
            let qa: Vec<Vec<Q8KBlock>> = xs.iter().map(|x| quantize_q8k(x)).collect();
            for r in 0..rows {
                let (blocks, hi) = w.row(r);
                let mut wf = vec![0.0f32; cols];
                w.dequantize_row(r, &mut wf);
                let scalar: [f32; 8] = dot_row(
                    KIsa::Scalar,
                    kind,
                    blocks,
                    hi,
                    std::array::from_fn(|t| &qa[t][..]),
                );
                for (t, a) in qa.iter().enumerate() {
                    // The exact dot of the dequantised weights and activations.
                    let exact: f64 = a
                        .iter()
                        .enumerate()
                        .flat_map(|(b, ab)| {
                            let wf = &wf;
                            (0..QK_K).map(move |v| {
                                wf[b * QK_K + v] as f64 * ab.qs[v] as f64 * ab.d as f64
                            })
                        })
                        .sum();
                    let tol = 1e-4 * exact.abs().max(1e-2);
                    assert!(
                        (scalar[t] as f64 - exact).abs() < tol,
                        "{kind:?} row {r} token {t}: {} vs {exact}",
                        scalar[t]
                    );
                    let one = dot_row(KIsa::Scalar, kind, blocks, hi, [&a[..]]);
                    assert_eq!(one[0].to_bits(), scalar[t].to_bits(), "batch-invariant");
                }
                for &isa in &isas {
                    let got: [f32; 8] =
                        dot_row(isa, kind, blocks, hi, std::array::from_fn(|t| &qa[t][..]));
                    let four: [f32; 4] = dot_row(
                        isa,
                        kind,
                        blocks,
                        hi,
                        std::array::from_fn(|t| &qa[t + 3][..]),
                    );
                    let one: [f32; 1] = dot_row(isa, kind, blocks, hi, [&qa[7][..]]);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&scalar), "{isa:?} {kind:?} row {r}");
                    assert_eq!(
                        bits(&four),
                        bits(&scalar[3..7]),
                        "{isa:?} {kind:?} 4 tokens"
                    );
                    assert_eq!(one[0].to_bits(), scalar[7].to_bits(), "{isa:?} 1 token");
                }
            }
        }
    }
}
