//! AVX-512 VNNI kernels, selected at run time, that compute **bit for bit** what the AVX2
//! kernels in [`super::dot_avx2`] compute — and so what llama.cpp's `vec_dot_q4_1_q8_1` /
//! `vec_dot_q8_0_q8_0` compute on a VNNI build.
//!
//! Why they are identical: the AVX2 kernels keep, per (row, token), eight f32 partial sums;
//! each 32-weight block adds `fma(d_w·d_a, cvt(i32 lane sums), acc)` where lane `j` holds
//! the exact integer sum of products of bytes `4j..4j+3`. `vpdpbusd` yields the very same
//! eight exact integers in one instruction (`maddubs` + `madd` do it in two, and never
//! saturate on these inputs). A 512-bit register holds the eight lanes of *two* (row, token)
//! pairs — two weight rows against one activation row broadcast to both halves — so every
//! lane sees the same operations in the same order as in the AVX2 kernel, only twice as
//! many pairs per instruction. The per-block minimum term (`m_w · s_a`, mul then add) and
//! the final horizontal sum are kept in the same order too. Tests compare every bit.
//!
//! Q8_0 weights are signed, so `vpdpbusd` (unsigned × signed) takes the activations offset
//! by 128 as its unsigned operand and starts each lane at `-128 · Σ w` of its four bytes:
//! the result is the exact integer `Σ a·w` again.

use super::acts::ActBlock;
use super::{BlockQ4_1, BlockQ8_0, Half};

/// Proof that the CPU supports AVX-512 F/BW/VL/VNNI (and AVX2, FMA, F16C).
#[derive(Clone, Copy, Debug)]
pub struct Avx512(());

impl Avx512 {
    pub fn new() -> Option<Self> {
        available().then_some(Avx512(()))
    }
}

/// True when this CPU can run the kernels in this module.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::dot_avx2::available()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
// The kernels index several register arrays (accumulators, rows, chunks) by one index.
#[allow(clippy::needless_range_loop)]
mod imp {
    use super::*;
    use std::arch::x86_64::*;

    // The helpers below have no `#[target_feature]` of their own (so that they can be
    // `#[inline(always)]`); each is called only from the kernels of this module, whose
    // target features cover what it uses, and says so as its `# Safety` precondition.

    /// The AVX2 kernels' horizontal sum, on one 256-bit half (the same function).
    ///
    /// # Safety
    /// The CPU has AVX.
    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        // SAFETY: AVX is this fn's precondition and `hsum`'s only one.
        unsafe { crate::quant::dot_avx2::hsum(v) }
    }

    /// # Safety
    /// The CPU has AVX-512F.
    #[inline(always)]
    unsafe fn halves(v: __m512) -> [__m256; 2] {
        // SAFETY: AVX-512F is this fn's precondition; register operations only.
        unsafe {
            [
                _mm512_castps512_ps256(v),
                _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)),
            ]
        }
    }

    /// `[a.lo256 + a.hi256 | b.lo256 + b.hi256]`: two 512-bit chains reduced to the two
    /// 256-bit chains' sum each, as `_mm256_add_ps(lo, hi)` does one at a time.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline(always)]
    unsafe fn add_halves(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F is this fn's precondition; register operations only.
        unsafe {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a, b),
                _mm512_shuffle_f32x4::<0xEE>(a, b),
            )
        }
    }

    /// One step of the AVX2 kernels' horizontal sum (`lo128 + hi128` of a 256-bit half)
    /// for the four halves of `a` and `b`: 128-bit lane `k` of the result is the four
    /// partial sums of half `k` of `[a.lo, a.hi, b.lo, b.hi]`.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline(always)]
    unsafe fn fold_halves(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F is this fn's precondition; register operations only.
        unsafe {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(a, b),
                _mm512_shuffle_f32x4::<0xDD>(a, b),
            )
        }
    }

    /// The next step (`s + movehl(s)`: lanes 0+2 and 1+3) of two folded vectors at once:
    /// lane `k` becomes `[a_k: 0+2, 1+3, b_k: 0+2, 1+3]`.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline(always)]
    unsafe fn fold_pairs(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F is this fn's precondition; register operations only.
        unsafe {
            _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(a, b),
                _mm512_shuffle_ps::<0xEE>(a, b),
            )
        }
    }

    /// The last step (lane 0 + lane 1) of two [`fold_pairs`] results: 128-bit lane `k`
    /// holds the finished sums of half `k` of the four folded vectors behind them.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline(always)]
    unsafe fn fold_last(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F is this fn's precondition; register operations only.
        unsafe {
            _mm512_add_ps(
                _mm512_shuffle_ps::<0x88>(a, b),
                _mm512_shuffle_ps::<0xDD>(a, b),
            )
        }
    }

    /// # Safety
    /// The CPU has AVX-512F.
    #[inline(always)]
    unsafe fn lane128(v: __m512, c: usize) -> __m128 {
        // SAFETY: AVX-512F is this fn's precondition; register operations only.
        unsafe {
            match c {
                0 => _mm512_castps512_ps128(v),
                1 => _mm512_extractf32x4_ps::<1>(v),
                2 => _mm512_extractf32x4_ps::<2>(v),
                _ => _mm512_extractf32x4_ps::<3>(v),
            }
        }
    }

    /// `R` (2 or 4) floats from `p` into the low lanes of a vector.
    ///
    /// # Safety
    /// `p` is valid for reads of `R` floats (SSE2 is baseline on x86_64).
    #[inline(always)]
    unsafe fn load_row<const R: usize>(p: *const f32) -> __m128 {
        // SAFETY: `p` is valid for `R` floats (this fn's precondition): 16 bytes when
        // `R == 4`, else (`R == 2`) 8 bytes; unaligned loads.
        unsafe {
            if R == 4 {
                _mm_loadu_ps(p)
            } else {
                _mm_castpd_ps(_mm_load_sd(p as *const f64))
            }
        }
    }

    /// Finishes a tile: `acc[p][t]` holds, in its two 256-bit halves, the eight lane
    /// sums of rows `2p` and `2p + 1` for token `t`. Each half is summed exactly as the
    /// AVX2 kernels' `hsum` does (`lo + hi`, then lanes 0+2 and 1+3, then 0+1), sixteen
    /// halves per three shuffle-and-add steps instead of one at a time; lane `r` of
    /// `add[t]` is added to row `r` (the Q4_1 minimum term, or zero), and token `t`'s `R`
    /// results are stored to `out[t]`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `R` is 2 or 4 and every `out[t]` is valid for writes of `R`
    /// floats.
    #[inline(always)]
    unsafe fn finish<const R: usize, const N: usize>(
        acc: &[[__m512; N]; 2],
        add: &[__m128; N],
        out: [*mut f32; N],
    ) {
        // SAFETY: AVX-512F is this fn's precondition; no memory access.
        let zero = unsafe { _mm512_setzero_ps() };
        // Folded vectors: with four rows one per token (lane k = row k); with two rows
        // one per two tokens (lanes: t row 0, t row 1, t+1 row 0, t+1 row 1).
        let mut f = [zero; 8];
        let folded = if R == 4 {
            for t in 0..N {
                // SAFETY: AVX-512F, as above.
                f[t] = unsafe { fold_halves(acc[0][t], acc[1][t]) };
            }
            N
        } else {
            for i in 0..N.div_ceil(2) {
                let b = if 2 * i + 1 < N {
                    acc[0][2 * i + 1]
                } else {
                    zero
                };
                // SAFETY: AVX-512F, as above.
                f[i] = unsafe { fold_halves(acc[0][2 * i], b) };
            }
            N.div_ceil(2)
        };
        // 4x4 transpose of 32-bit lanes across the 128-bit lanes: after it, 128-bit
        // lane c holds folded vector 4j + c's four sums — its token's rows in order.
        // SAFETY: AVX-512F, as above.
        let transpose =
            unsafe { _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0) };
        for j in 0..folded.div_ceil(4) {
            // SAFETY: AVX-512F, as above; register operations only.
            let u = unsafe {
                let u = fold_last(
                    fold_pairs(f[4 * j], f[4 * j + 1]),
                    fold_pairs(f[4 * j + 2], f[4 * j + 3]),
                );
                _mm512_permutexvar_ps(transpose, u)
            };
            for c in 0..4 {
                // SAFETY: AVX-512F, as above.
                let v = unsafe { lane128(u, c) };
                if R == 4 {
                    let t = 4 * j + c;
                    if t < N {
                        // SAFETY: `out[t]` is valid for `R == 4` floats (this fn's
                        // precondition): an unaligned 16-byte store.
                        unsafe { _mm_storeu_ps(out[t], _mm_add_ps(v, add[t])) };
                    }
                } else {
                    let t = 8 * j + 2 * c;
                    if t < N {
                        let both = t + 1 < N;
                        // SAFETY: `R == 2`: `out[t]` (and, when `both`, `out[t + 1]`, as
                        // `t + 1 < N`) is valid for two floats (this fn's precondition):
                        // 8-byte stores of the low and high halves of `v`.
                        unsafe {
                            let m = if both {
                                _mm_movelh_ps(add[t], add[t + 1])
                            } else {
                                add[t]
                            };
                            let v = _mm_castps_pd(_mm_add_ps(v, m));
                            _mm_store_sd(out[t] as *mut f64, v);
                            if both {
                                _mm_storeh_pd(out[t + 1] as *mut f64, v);
                            }
                        }
                    }
                }
            }
        }
    }

    /// `[d0, m0, d1, m1, d2, m2, d3, m3]` widened from the first four bytes (the adjacent
    /// f16 `d` and `m`, or `d` and the first two quants) of up to four blocks.
    ///
    /// # Safety
    /// The CPU has AVX and F16C; `R <= 4` and every `p[r]` is valid for reads of four
    /// bytes.
    #[inline(always)]
    unsafe fn heads<const R: usize>(p: [*const u8; R]) -> __m256 {
        let mut v = [0i32; 4];
        for r in 0..R {
            // SAFETY: `p[r]` is valid for four bytes (this fn's precondition); unaligned.
            v[r] = unsafe { std::ptr::read_unaligned(p[r] as *const i32) };
        }
        // SAFETY: F16C is this fn's precondition; the load reads the 16 bytes of `v`.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr() as *const __m128i)) }
    }

    /// Per row pair `p`: `[d_{2p} ×8 | d_{2p+1} ×8]` from [`heads`]' output.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline(always)]
    unsafe fn pair_scales(dm: __m256, p: usize) -> __m512 {
        let (a, b) = (4 * p as i32, 4 * p as i32 + 2);
        // SAFETY: AVX-512F is this fn's precondition; register operations only.
        unsafe {
            let idx = _mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a);
            _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(dm))
        }
    }

    /// Writes row `r`'s result for token `t` to `out[t][r]`. With `OWN_MINIMA` the
    /// minimum terms are summed here; without, `minima[t][r]` (from [`min_terms`]) is
    /// added in their place — the same bits.
    ///
    /// # Safety
    /// The CPU has the target features; `R` is 2 or 4; every `w[r]` holds `w[0].len()`
    /// blocks and every `a[t]` at least that many; every `out[t]` is valid for writes of
    /// `R` floats, and without `OWN_MINIMA` every `minima[t]` for reads of `R` floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_q4_1_q8_1<const R: usize, const N: usize, const OWN_MINIMA: bool>(
        w: [&[BlockQ4_1]; R],
        a: [&[ActBlock]; N],
        minima: [*const f32; N],
        out: [*mut f32; N],
    ) {
        debug_assert!(R.is_multiple_of(2) && R <= 4);
        let pairs = R / 2;
        let mut acc = [[_mm512_setzero_ps(); N]; 2];
        let mut summs = [_mm_setzero_ps(); N]; // lane r: row r's minimum term
        let lowmask = _mm512_set1_epi8(0x0f);
        // 16-bit lanes of the second and fourth 128-bit quarter shift by 4: high nibbles.
        let shifts = _mm512_set_epi64(
            0x0004_0004_0004_0004,
            0x0004_0004_0004_0004,
            0,
            0,
            0x0004_0004_0004_0004,
            0x0004_0004_0004_0004,
            0,
            0,
        );
        let mins = _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7);
        let zero = _mm512_setzero_si512();
        // Called with `b < w[0].len()` only.
        let heads_at = |b: usize| {
            let mut ptrs = [std::ptr::null::<u8>(); R];
            for r in 0..R {
                // SAFETY: `b < w[0].len()`, which every weight row holds (the caller's
                // contract).
                ptrs[r] = unsafe { w[r].get_unchecked(b) } as *const BlockQ4_1 as *const u8;
            }
            // SAFETY: `R <= 4`; each pointer is to a whole 20-byte block; this fn's
            // target features include the AVX and F16C `heads` needs.
            unsafe { heads::<R>(ptrs) }
        };
        // The minimum terms first, in their own pass: the same sums in the same order,
        // without holding N more registers beside the 2N accumulators below.
        for b in 0..if OWN_MINIMA { w[0].len() } else { 0 } {
            let mw = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(heads_at(b), mins));
            for t in 0..N {
                // SAFETY: `b < w[0].len() <= a[t].len()` (the caller's contract).
                let s = _mm_set1_ps(unsafe { a[t].get_unchecked(b) }.s);
                summs[t] = _mm_add_ps(summs[t], _mm_mul_ps(mw, s));
            }
        }
        // The next tile's rows follow this tile's in memory: stream them in while this
        // one computes (R blocks' worth per block step covers the next R rows in time).
        // Past the last tile of a matrix these addresses leave the allocation, so they
        // are formed with `wrapping_add` (a prefetch never faults, whatever the address).
        let next = w[R - 1].as_ptr_range().end as *const i8;
        for b in 0..w[0].len() {
            for l in 0..(R * std::mem::size_of::<BlockQ4_1>()).div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(
                    next.wrapping_add(b * R * std::mem::size_of::<BlockQ4_1>() + 64 * l),
                );
            }
            let dm = heads_at(b);
            let mut bx = [zero; 2];
            let mut dw = [_mm512_setzero_ps(); 2];
            for p in 0..pairs {
                // SAFETY: `2 * p + 1 < R` and `b < w[0].len()`, which every weight row
                // holds (the caller's contract); each load reads the 16 bytes of one
                // block's `qs` (unaligned).
                let (q0, q1) = unsafe {
                    (
                        _mm256_broadcastsi128_si256(_mm_loadu_si128(
                            w[2 * p].get_unchecked(b).qs.as_ptr() as *const __m128i,
                        )),
                        _mm256_broadcastsi128_si256(_mm_loadu_si128(
                            w[2 * p + 1].get_unchecked(b).qs.as_ptr() as *const __m128i,
                        )),
                    )
                };
                let both = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
                bx[p] = _mm512_and_si512(_mm512_srlv_epi16(both, shifts), lowmask);
                // SAFETY: this fn's target features include AVX-512F.
                dw[p] = unsafe { pair_scales(dm, p) };
            }
            for t in 0..N {
                // SAFETY: `b < w[0].len() <= a[t].len()` (the caller's contract).
                let ba = unsafe { a[t].get_unchecked(b) };
                // SAFETY: reads the 32 bytes of `ba.qs` (unaligned).
                let by = _mm512_broadcast_i64x4(unsafe {
                    _mm256_loadu_si256(ba.qs.as_ptr() as *const __m256i)
                });
                let da = _mm512_set1_ps(ba.d);
                for p in 0..pairs {
                    let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, bx[p], by));
                    acc[p][t] = _mm512_fmadd_ps(_mm512_mul_ps(dw[p], da), q, acc[p][t]);
                }
            }
        }
        if !OWN_MINIMA {
            for t in 0..N {
                // SAFETY: without `OWN_MINIMA` every `minima[t]` is valid for `R` floats
                // (the caller's contract).
                summs[t] = unsafe { load_row::<R>(minima[t]) };
            }
        }
        // SAFETY: `R` is 2 or 4 and every `out[t]` is valid for `R` floats (the caller's
        // contract); this fn's target features include AVX-512F.
        unsafe { finish::<R, N>(&acc, &summs, out) };
    }

    /// The minimum terms of one strip of sixteen Q4_1 rows (`mins`: `[block][16]` f16, as
    /// [`super::super::strip_minima`] lays them out) for `N` tokens: lane `r` of
    /// `out[t]` is `Σ_b m[r][b] · s[t][b]`, multiplied then added in block order from
    /// zero — the sums the tile kernels keep (a `0 +` first step is exact).
    ///
    /// # Safety
    /// The CPU has the target features; every `a[t]` holds at least `mins.len() / 16`
    /// blocks.
    #[target_feature(enable = "avx512f,avx512vl,f16c")]
    pub unsafe fn min_terms<const N: usize>(
        mins: &[half::f16],
        a: [&[ActBlock]; N],
    ) -> [[f32; 16]; N] {
        let mut acc = [_mm512_setzero_ps(); N];
        let mp = mins.as_ptr() as *const __m256i;
        for b in 0..mins.len() / 16 {
            // SAFETY: `b < mins.len() / 16`: block `b`'s sixteen minima (32 bytes) lie
            // inside `mins`; an unaligned load.
            let m = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(mp.add(b)) });
            for t in 0..N {
                // SAFETY: `b < mins.len() / 16 <= a[t].len()` (the caller's contract).
                let s = _mm512_set1_ps(unsafe { a[t].get_unchecked(b) }.s);
                acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(m, s));
            }
        }
        let mut out = [[0.0f32; 16]; N];
        for t in 0..N {
            // SAFETY: an unaligned store of sixteen floats into the array `out[t]`.
            unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]) };
        }
        out
    }

    /// # Safety
    /// The CPU has the target features; `R` is 2 or 4; every `w[r]` holds `w[0].len()`
    /// blocks and every `a[t]` at least that many; every `out[t]` is valid for writes of
    /// `R` floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_q8_0_q8_0<const R: usize, const N: usize>(
        w: [&[BlockQ8_0]; R],
        a: [&[ActBlock]; N],
        out: [*mut f32; N],
    ) {
        debug_assert!(R.is_multiple_of(2) && R <= 4);
        let pairs = R / 2;
        let mut acc = [[_mm512_setzero_ps(); N]; 2];
        let zero = _mm512_setzero_si512();
        let offset = _mm512_set1_epi8(-128i8);
        // The next tile's rows, prefetched as in `dot_q4_1_q8_1` (`wrapping_add`: past
        // the last tile the addresses leave the allocation; a prefetch never faults).
        let next = w[R - 1].as_ptr_range().end as *const i8;
        for b in 0..w[0].len() {
            let mut ptrs = [std::ptr::null::<u8>(); R];
            for r in 0..R {
                // SAFETY: `b < w[0].len()`, which every weight row holds (the caller's
                // contract).
                ptrs[r] = unsafe { w[r].get_unchecked(b) } as *const BlockQ8_0 as *const u8;
            }
            for l in 0..(R * std::mem::size_of::<BlockQ8_0>()).div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(
                    next.wrapping_add(b * R * std::mem::size_of::<BlockQ8_0>() + 64 * l),
                );
            }
            // Only the d lanes (0, 2, 4, 6) of these are used.
            // SAFETY: `R <= 4`; each pointer is to a whole 34-byte block; this fn's
            // target features include the AVX and F16C `heads` needs.
            let dm = unsafe { heads::<R>(ptrs) };
            let mut bx = [zero; 2];
            let mut start = [zero; 2];
            let mut dw = [_mm512_setzero_ps(); 2];
            for p in 0..pairs {
                // SAFETY: `2 * p + 1 < R` and `b < w[0].len()`, which every weight row
                // holds (the caller's contract); each load reads the 32 bytes of one
                // block's `qs` (unaligned).
                let (q0, q1) = unsafe {
                    (
                        _mm256_loadu_si256(w[2 * p].get_unchecked(b).qs.as_ptr() as *const __m256i),
                        _mm256_loadu_si256(
                            w[2 * p + 1].get_unchecked(b).qs.as_ptr() as *const __m256i
                        ),
                    )
                };
                bx[p] = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
                // -128 · Σ w per lane: (0x80 as u8 = 128) · w, negated.
                start[p] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, bx[p]));
                // SAFETY: this fn's target features include AVX-512F.
                dw[p] = unsafe { pair_scales(dm, p) };
            }
            for t in 0..N {
                // SAFETY: `b < w[0].len() <= a[t].len()` (the caller's contract).
                let ba = unsafe { a[t].get_unchecked(b) };
                // SAFETY: reads the 32 bytes of `ba.qs` (unaligned).
                let y = unsafe { _mm256_loadu_si256(ba.qs.as_ptr() as *const __m256i) };
                // a + 128 as unsigned bytes: flipping the sign bit.
                let uy = _mm512_xor_si512(_mm512_broadcast_i64x4(y), offset);
                let da = _mm512_set1_ps(ba.d);
                for p in 0..pairs {
                    let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start[p], uy, bx[p]));
                    acc[p][t] = _mm512_fmadd_ps(_mm512_mul_ps(dw[p], da), q, acc[p][t]);
                }
            }
        }
        // SAFETY: `R` is 2 or 4 and every `out[t]` is valid for `R` floats (the caller's
        // contract); this fn's target features include AVX-512F.
        unsafe { finish::<R, N>(&acc, &[_mm_setzero_ps(); N], out) };
    }

    /// Sixteen F16 (or, with `BF16`, BF16) values at `p` as f32, exactly; lanes past
    /// `mask` zero and unread.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL and F16C; `p` points at the readable values `mask`
    /// selects.
    #[inline(always)]
    unsafe fn widen16<const BF16: bool>(p: *const u16, mask: __mmask16) -> __m512 {
        // SAFETY: the target features are this fn's precondition; the masked load reads
        // only the lanes the caller vouches for.
        unsafe {
            let h = _mm256_maskz_loadu_epi16(mask, p as *const i16);
            if BF16 {
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
            } else {
                _mm512_cvtph_ps(h)
            }
        }
    }

    /// One F16/BF16 weight row against `N` f32 rows, bit-identical to
    /// [`crate::quant::dot_avx2::dot_half`]: a 512-bit chain holds the AVX2 kernel's two
    /// (lanes 0-7 the first, 8-15 the second), an 8-value step after the 16-value ones
    /// goes to the first alone (masked), and the tree and tail are the same.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL, FMA and F16C; every `x[t]` holds at least `w.len()`
    /// values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn dot_half<const BF16: bool, const N: usize>(
        w: &[u16],
        x: [&[f32]; N],
    ) -> [f32; N] {
        let n = w.len();
        let kind = if BF16 { Half::Bf16 } else { Half::F16 };
        let mut out = [0.0f32; N];
        // SAFETY: the target features are this fn's precondition; every load reads
        // values `i..i + 16` with `i + 16 <= n`, or (masked) `i..i + 8` with
        // `i + 8 <= n`, inside `w` (length `n`) and every `x[t]` (at least `n`).
        unsafe {
            let mut acc = [_mm512_setzero_ps(); N];
            let mut i = 0;
            while i + 16 <= n {
                let wv = widen16::<BF16>(w.as_ptr().add(i), 0xffff);
                for t in 0..N {
                    acc[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x[t].as_ptr().add(i)), acc[t]);
                }
                i += 16;
            }
            if i + 8 <= n {
                let wv = widen16::<BF16>(w.as_ptr().add(i), 0x00ff);
                for t in 0..N {
                    let xv = _mm512_maskz_loadu_ps(0x00ff, x[t].as_ptr().add(i));
                    acc[t] = _mm512_mask3_fmadd_ps(wv, xv, acc[t], 0x00ff);
                }
                i += 8;
            }
            for t in 0..N {
                let [lo, hi] = halves(acc[t]);
                let mut s = hsum256(_mm256_add_ps(lo, hi));
                for k in i..n {
                    s += kind.to_f32(w[k]) * x[t][k];
                }
                out[t] = s;
            }
        }
        out
    }

    /// [`super::super::dot_avx2::dot_rows_f16`] for `hd % 16 == 0`: one 512-bit chain per
    /// (head, key row) whose low and high halves are that kernel's two 256-bit chains,
    /// four key rows at a time for independent chains; the same sums in the same order.
    ///
    /// # Safety
    /// The CPU has the target features; the shapes pass
    /// [`super::super::dot_avx2::check_scores`] (every `q[h]` is `hd` long, every
    /// `out[h]` `rows` long, row `j < rows` of `src` lies inside it), and `hd` passes
    /// [`super::attention_width_ok`].
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    pub unsafe fn dot_rows_f16<const G: usize>(
        q: [&[f32]; G],
        src: &[half::f16],
        stride: usize,
        offset: usize,
        scale: f32,
        out: [&mut [f32]; G],
    ) {
        const ROWS: usize = 4;
        let hd = q[0].len();
        let rows = out[0].len();
        let sp = src.as_ptr() as *const u16;
        let op: [*mut f32; G] = out.map(|o| o.as_mut_ptr());
        // Called with `j < rows` and `i + 16 <= hd` only (`hd` is a multiple of 16).
        let key = |j: usize, i: usize| {
            // SAFETY: sixteen values of row `j < rows`, `i + 16 <= hd` into it, so inside
            // `src` (the caller's contract); an unaligned 32-byte load.
            _mm512_cvtph_ps(unsafe {
                _mm256_loadu_si256(sp.add(j * stride + offset + i) as *const __m256i)
            })
        };
        let finish = |acc: __m512| {
            // SAFETY: this fn's target features include the AVX-512F and AVX that
            // `halves` and `hsum256` need; register operations only.
            unsafe {
                let [lo, hi] = halves(acc);
                let s = _mm256_add_ps(lo, hi);
                hsum256(s) * scale
            }
        };
        let mut j = 0;
        while j + ROWS <= rows {
            let mut acc = [[_mm512_setzero_ps(); ROWS]; G];
            let mut i = 0;
            while i < hd {
                for r in 0..ROWS {
                    let k = key(j + r, i);
                    for h in 0..G {
                        // SAFETY: `i + 16 <= hd == q[h].len()` (`hd` a multiple of 16);
                        // an unaligned load.
                        let qv = unsafe { _mm512_loadu_ps(q[h].as_ptr().add(i)) };
                        acc[h][r] = _mm512_fmadd_ps(qv, k, acc[h][r]);
                    }
                }
                i += 16;
            }
            // Each (head, key) chain summed as `finish` does — 256-bit halves added, then
            // the AVX2 hsum's pairs — for all four keys and up to four heads at once:
            // 128-bit lane h of `u` ends up holding head h's four scores in key order.
            let zero = _mm512_setzero_ps();
            let at = |h: usize, r: usize| if h < G { acc[h][r] } else { zero };
            // SAFETY: this fn's target features include the AVX-512F the fold helpers
            // need; register operations only.
            let f: [__m512; ROWS] = std::array::from_fn(|r| unsafe {
                fold_halves(
                    add_halves(at(0, r), at(1, r)),
                    add_halves(at(2, r), at(3, r)),
                )
            });
            // SAFETY: AVX-512F, as for `f`; register operations only.
            let u = unsafe { fold_last(fold_pairs(f[0], f[1]), fold_pairs(f[2], f[3])) };
            let u = _mm512_mul_ps(u, _mm512_set1_ps(scale));
            for h in 0..G {
                // SAFETY: `j + 4 <= rows == out[h].len()`: an unaligned store of four
                // floats through the exclusive borrow `out[h]`; AVX-512F for `lane128`.
                unsafe { _mm_storeu_ps(op[h].add(j), lane128(u, h)) };
            }
            j += ROWS;
        }
        while j < rows {
            let mut acc = [_mm512_setzero_ps(); G];
            let mut i = 0;
            while i < hd {
                let k = key(j, i);
                for h in 0..G {
                    // SAFETY: `i + 16 <= hd == q[h].len()`; an unaligned load.
                    let qv = unsafe { _mm512_loadu_ps(q[h].as_ptr().add(i)) };
                    acc[h] = _mm512_fmadd_ps(qv, k, acc[h]);
                }
                i += 16;
            }
            for h in 0..G {
                // SAFETY: `j < rows == out[h].len()`, through the exclusive borrow.
                unsafe { *op[h].add(j) = finish(acc[h]) };
            }
            j += 1;
        }
    }

    /// [`super::super::dot_avx2::weighted_rows_f16`] for `hd % 16 == 0`: the output rows
    /// taken 64 lanes at a time, each piece kept in registers over all value rows (the
    /// same lane-wise FMAs in the same order of rows) and written back once.
    ///
    /// # Safety
    /// The CPU has the target features; the shapes pass
    /// [`super::super::dot_avx2::check_weighted`] (every `out[h]` is `hd` long, every
    /// `p[h]` `rows` long, row `j < rows` of `src` lies inside it), and `hd` passes
    /// [`super::attention_width_ok`].
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    pub unsafe fn weighted_rows_f16<const G: usize>(
        p: [&[f32]; G],
        src: &[half::f16],
        stride: usize,
        offset: usize,
        out: [&mut [f32]; G],
    ) {
        const MAX: usize = 4; // 64 lanes of 16
        let hd = out[0].len();
        let sp = src.as_ptr() as *const u16;
        let op: [*mut f32; G] = out.map(|o| o.as_mut_ptr());
        let mut c0 = 0;
        while c0 < hd {
            let chunks = ((hd - c0) / 16).min(MAX);
            let mut acc = [[_mm512_setzero_ps(); MAX]; G];
            for h in 0..G {
                for c in 0..chunks {
                    // SAFETY: `c0 + 16 * c + 16 <= hd == out[h].len()`; an unaligned load.
                    acc[h][c] = unsafe { _mm512_loadu_ps(op[h].add(c0 + 16 * c)) };
                }
            }
            for j in 0..p[0].len() {
                // SAFETY: `j < rows`, so `j * stride + offset` is inside `src` (the
                // caller's contract).
                let row = unsafe { sp.add(j * stride + offset + c0) };
                for c in 0..chunks {
                    // SAFETY: `c0 + 16 * c + 16 <= hd`: sixteen values inside row `j`; an
                    // unaligned 32-byte load.
                    let x = _mm512_cvtph_ps(unsafe {
                        _mm256_loadu_si256(row.add(16 * c) as *const __m256i)
                    });
                    for h in 0..G {
                        // SAFETY: `j < rows == p[h].len()`.
                        let w = _mm512_set1_ps(unsafe { *p[h].get_unchecked(j) });
                        acc[h][c] = _mm512_fmadd_ps(w, x, acc[h][c]);
                    }
                }
            }
            for h in 0..G {
                for c in 0..chunks {
                    // SAFETY: `c0 + 16 * c + 16 <= hd == out[h].len()`; an unaligned store
                    // through the exclusive borrow `out[h]`.
                    unsafe { _mm512_storeu_ps(op[h].add(c0 + 16 * c), acc[h][c]) };
                }
            }
            c0 += 16 * chunks;
        }
    }
}

fn check_lengths<W, const R: usize, const N: usize>(w: &[&[W]; R], a: &[&[ActBlock]; N]) {
    assert!(
        R == 2 || R == 4,
        "the AVX-512 tiles take 2 or 4 weight rows"
    );
    super::check_tile(w, a);
}

/// `R` (2 or 4) Q4_1 weight rows against `N` Q8_1 activation rows: `out[r][t]`, each
/// bit-identical to [`super::dot_avx2::dot_q4_1_q8_1`] of that row and token.
#[inline]
pub fn dot_q4_1_q8_1_tile<const R: usize, const N: usize>(
    k: Avx512,
    w: [&[BlockQ4_1]; R],
    a: [&[ActBlock]; N],
) -> [[f32; N]; R] {
    let mut t_major = [[0.0f32; R]; N];
    {
        let mut rows = t_major.iter_mut();
        let out = std::array::from_fn(|_| &mut rows.next().expect("N rows")[..]);
        dot_q4_1_q8_1_into(k, w, a, None, out);
    }
    std::array::from_fn(|r| std::array::from_fn(|t| t_major[t][r]))
}

/// [`dot_q4_1_q8_1_tile`] written token by token: `out[t][r]` (`out[t].len() == R`).
/// With `minima`, `minima[t][r]` (the strip pass of [`min_terms`]) stands in for the
/// kernel's own minimum pass: the same bits, without summing them per tile.
#[inline]
pub fn dot_q4_1_q8_1_into<const R: usize, const N: usize>(
    _: Avx512,
    w: [&[BlockQ4_1]; R],
    a: [&[ActBlock]; N],
    minima: Option<[&[f32]; N]>,
    out: [&mut [f32]; N],
) {
    check_lengths(&w, &a);
    assert!(out.iter().all(|o| o.len() == R), "one output per row");
    let out = out.map(|o| o.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the `Avx512` token proves the target features; `check_lengths` asserted
    // `R` is 2 or 4 and the rows' lengths; every `out[t]` holds `R` floats (asserted
    // above), and so does every `minima[t]` (asserted before its kernel call).
    unsafe {
        match minima {
            Some(m) => {
                assert!(m.iter().all(|m| m.len() == R), "one minimum term per row");
                imp::dot_q4_1_q8_1::<R, N, false>(w, a, m.map(|m| m.as_ptr()), out)
            }
            None => imp::dot_q4_1_q8_1::<R, N, true>(w, a, [std::ptr::null(); N], out),
        }
    }
}

/// An even number of consecutive rows of a quantised matrix against `N` tokens, four
/// rows per tile (two for a last pair), with one check of the shapes for the whole span
/// instead of one per tile. `blocks` holds the whole matrix, `nb` blocks a row; token
/// `t`'s results for rows `rows` go to `out[t]` (`rows.len()` long), and for Q4_1 with
/// `minima`, `minima[t]` holds the same rows' minimum terms.
pub struct RowSpan<'a, B, const N: usize> {
    pub blocks: &'a [B],
    pub nb: usize,
    pub rows: std::ops::Range<usize>,
    pub a: [&'a [ActBlock]; N],
    pub out: [&'a mut [f32]; N],
}

impl<B, const N: usize> RowSpan<'_, B, N> {
    fn check(&self) {
        let len = self.rows.len();
        assert!(len.is_multiple_of(2), "row span: an even number of rows");
        assert!(
            self.rows.end * self.nb <= self.blocks.len(),
            "row span: rows past the matrix"
        );
        assert!(
            self.a.iter().all(|r| r.len() >= self.nb),
            "activation row shorter than weight row"
        );
        assert!(
            self.out.iter().all(|o| o.len() == len),
            "one output per row"
        );
    }

    /// Per tile of `R` rows at `r`: the weight rows, and each token's output pointer.
    ///
    /// # Safety
    /// [`RowSpan::check`] passed and `rows.start <= r`, `r + R <= rows.end`.
    #[inline(always)]
    unsafe fn tile<const R: usize>(&mut self, r: usize) -> ([&[B]; R], [*mut f32; N]) {
        let (nb, first) = (self.nb, self.rows.start);
        // SAFETY: `r + i < r + R <= rows.end` and `rows.end * nb <= blocks.len()` (the
        // contract and `check`): row `r + i`'s `nb` blocks lie inside `blocks`.
        let w = std::array::from_fn(|i| unsafe {
            std::slice::from_raw_parts(self.blocks.as_ptr().add((r + i) * nb), nb)
        });
        (
            w,
            // SAFETY: `first <= r` and `r + R <= rows.end` (the contract), and `out[t]`
            // holds `rows.len()` floats (`check`): the offset is inside `out[t]`.
            std::array::from_fn(|t| unsafe { self.out[t].as_mut_ptr().add(r - first) }),
        )
    }
}

/// [`dot_q4_1_q8_1_into`] over a [`RowSpan`].
pub fn dot_q4_1_q8_1_rows<const N: usize>(
    _: Avx512,
    mut span: RowSpan<'_, BlockQ4_1, N>,
    minima: Option<[&[f32]; N]>,
) {
    span.check();
    let (first, end) = (span.rows.start, span.rows.end);
    if let Some(m) = &minima {
        assert!(
            m.iter().all(|m| m.len() == end - first),
            "one minimum term per row"
        );
    }
    let a = span.a;
    let mut r = first;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the `Avx512` token (built only by `Avx512::new` after `available()`) proves
    // the target features; `span.check()` passed, and every tile `r..r + 4` or
    // `r..r + 2` lies inside `first..end`, so its rows hold `nb` blocks each, every
    // `a[t]` at least `nb`, and each output (and, with `minima`, minimum-term) pointer
    // has 4 (or 2) floats of `out[t]` (`minima[t]`, asserted `rows.len()` long above).
    unsafe {
        let mins = |r: usize| -> [*const f32; N] {
            match &minima {
                Some(m) => std::array::from_fn(|t| m[t].as_ptr().add(r - first)),
                None => [std::ptr::null(); N],
            }
        };
        while r + 4 <= end {
            let (w, out) = span.tile::<4>(r);
            match minima {
                Some(_) => imp::dot_q4_1_q8_1::<4, N, false>(w, a, mins(r), out),
                None => imp::dot_q4_1_q8_1::<4, N, true>(w, a, mins(r), out),
            }
            r += 4;
        }
        if r < end {
            let (w, out) = span.tile::<2>(r);
            match minima {
                Some(_) => imp::dot_q4_1_q8_1::<2, N, false>(w, a, mins(r), out),
                None => imp::dot_q4_1_q8_1::<2, N, true>(w, a, mins(r), out),
            }
        }
    }
}

/// [`dot_q8_0_q8_0_into`] over a [`RowSpan`].
pub fn dot_q8_0_q8_0_rows<const N: usize>(_: Avx512, mut span: RowSpan<'_, BlockQ8_0, N>) {
    span.check();
    let (first, end) = (span.rows.start, span.rows.end);
    let a = span.a;
    let mut r = first;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the `Avx512` token (built only by `Avx512::new` after `available()`) proves
    // the target features; `span.check()` passed, and every tile `r..r + 4` or
    // `r..r + 2` lies inside `first..end`, so its rows hold `nb` blocks each, every
    // `a[t]` at least `nb`, and each output pointer has 4 (or 2) floats of `out[t]`.
    unsafe {
        while r + 4 <= end {
            let (w, out) = span.tile::<4>(r);
            imp::dot_q8_0_q8_0::<4, N>(w, a, out);
            r += 4;
        }
        if r < end {
            let (w, out) = span.tile::<2>(r);
            imp::dot_q8_0_q8_0::<2, N>(w, a, out);
        }
    }
}

/// `R` (2 or 4) Q8_0 weight rows against `N` Q8_0 activation rows: `out[r][t]`, each
/// bit-identical to [`super::dot_avx2::dot_q8_0_q8_0`] of that row and token.
#[inline]
pub fn dot_q8_0_q8_0_tile<const R: usize, const N: usize>(
    k: Avx512,
    w: [&[BlockQ8_0]; R],
    a: [&[ActBlock]; N],
) -> [[f32; N]; R] {
    let mut t_major = [[0.0f32; R]; N];
    {
        let mut rows = t_major.iter_mut();
        let out = std::array::from_fn(|_| &mut rows.next().expect("N rows")[..]);
        dot_q8_0_q8_0_into(k, w, a, out);
    }
    std::array::from_fn(|r| std::array::from_fn(|t| t_major[t][r]))
}

/// [`dot_q8_0_q8_0_tile`] written token by token: `out[t][r]` (`out[t].len() == R`).
#[inline]
pub fn dot_q8_0_q8_0_into<const R: usize, const N: usize>(
    _: Avx512,
    w: [&[BlockQ8_0]; R],
    a: [&[ActBlock]; N],
    out: [&mut [f32]; N],
) {
    check_lengths(&w, &a);
    assert!(out.iter().all(|o| o.len() == R), "one output per row");
    let out = out.map(|o| o.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the `Avx512` token proves the target features; `check_lengths` asserted
    // `R` is 2 or 4 and the rows' lengths, and every `out[t]` holds `R` floats (asserted
    // above).
    unsafe {
        imp::dot_q8_0_q8_0(w, a, out)
    }
}

/// The Q4_1 minimum terms of one strip of [`super::MIN_STRIP`] rows for `N` tokens:
/// `out[t][lane] = Σ_b m[lane][b] · s[t][b]` (`mins` is the strip's `[block][16]` slice
/// of [`super::strip_minima`]), the same bits the tile kernels' own minimum pass sums.
#[inline]
pub fn min_terms<const N: usize>(
    _: Avx512,
    mins: &[half::f16],
    a: [&[ActBlock]; N],
) -> [[f32; super::MIN_STRIP]; N] {
    const _: () = assert!(super::MIN_STRIP == 16);
    super::check_strip(mins, &a);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the `Avx512` token proves the target features; `check_strip` asserted
    // every `a[t]` holds at least `mins.len() / 16` blocks.
    unsafe {
        imp::min_terms(mins, a)
    }
}

/// F16/BF16 weight row `w` against the `N` f32 rows `x`, bit-identical to
/// [`super::dot_avx2::dot_half`] (and so to [`super::dot_scalar::dot_half`]).
#[inline]
pub fn dot_half<const N: usize>(_: Avx512, kind: Half, w: &[u16], x: [&[f32]; N]) -> [f32; N] {
    assert!(
        x.iter().all(|r| r.len() >= w.len()),
        "dot_half: row lengths"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the `Avx512` token proves the target features; every `x[t]` is at least as
    // long as `w` (asserted above).
    unsafe {
        match kind {
            Half::F16 => imp::dot_half::<false, N>(w, x),
            Half::Bf16 => imp::dot_half::<true, N>(w, x),
        }
    }
}

/// Whether the AVX-512 attention kernels below take rows of width `hd`.
pub fn attention_width_ok(hd: usize) -> bool {
    hd > 0 && hd.is_multiple_of(16)
}

/// `out[h][j] = scale * (q[h] · row_j)` over f16 rows, bit-identical to
/// [`super::dot_avx2::dot_rows_f16`]; `q[h].len()` must satisfy [`attention_width_ok`].
#[inline]
pub fn dot_rows_f16<const G: usize>(
    _: Avx512,
    q: [&[f32]; G],
    src: &[half::f16],
    stride: usize,
    offset: usize,
    scale: f32,
    out: [&mut [f32]; G],
) {
    let hd = super::dot_avx2::check_scores(&q, src, stride, offset, &out);
    assert!(attention_width_ok(hd), "dot_rows_f16: width {hd}");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the `Avx512` token proves the target features; `check_scores` asserted
    // the shapes and `attention_width_ok` the width the kernel needs.
    unsafe {
        imp::dot_rows_f16(q, src, stride, offset, scale, out)
    }
}

/// `out[h] += Σ_j p[h][j] * row_j` over f16 rows, bit-identical to
/// [`super::dot_avx2::weighted_rows_f16`]; `out[h].len()` must satisfy
/// [`attention_width_ok`].
#[inline]
pub fn weighted_rows_f16<const G: usize>(
    _: Avx512,
    p: [&[f32]; G],
    src: &[half::f16],
    stride: usize,
    offset: usize,
    out: [&mut [f32]; G],
) {
    let hd = super::dot_avx2::check_weighted(&p, src, stride, offset, &out);
    assert!(attention_width_ok(hd), "weighted_rows_f16: width {hd}");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the `Avx512` token proves the target features; `check_weighted` asserted
    // the shapes and `attention_width_ok` the width the kernel needs.
    unsafe {
        imp::weighted_rows_f16(p, src, stride, offset, out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::dot_avx2::{self, Avx2};
    use super::super::{acts, quantize_block_q4_1, QK};
    use super::*;

    use super::super::test_values as values;

    fn act_rows(n: usize, cols: usize, q8_1: bool) -> Vec<Vec<ActBlock>> {
        (0..n)
            .map(|t| {
                values(100 + t as u64, cols, 4.0)
                    .chunks(QK)
                    .map(|c| {
                        if q8_1 {
                            acts::quantize_block_q8_1(c).into()
                        } else {
                            acts::quantize_block_q8_0(c).into()
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn tokens() -> Option<(Avx512, Avx2)> {
        let k = Avx512::new().zip(Avx2::new());
        if k.is_none() {
            eprintln!("skipped: CPU lacks AVX-512 VNNI");
        }
        k
    }

    #[test]
    fn attention_kernels_equal_the_avx2_ones_bit_for_bit() {
        fn check<const G: usize>(k: Avx512, k2: Avx2) {
            for (hd, stride, offset, n) in [
                (64, 192, 64, 13),
                (16, 48, 32, 5),
                (32, 32, 0, 4),
                (256, 512, 256, 11),
                (80, 160, 0, 6),
                (128, 128, 0, 9),
            ] {
                let src: Vec<half::f16> = values(3, n * stride, 2.0)
                    .into_iter()
                    .map(half::f16::from_f32)
                    .collect();
                let qs: Vec<Vec<f32>> = (0..G).map(|h| values(20 + h as u64, hd, 1.5)).collect();
                let q: [&[f32]; G] = std::array::from_fn(|h| &qs[h][..]);
                let mut a = vec![vec![0.0f32; n]; G];
                let mut b = a.clone();
                {
                    let mut it = a.iter_mut();
                    let out = std::array::from_fn(|_| &mut it.next().unwrap()[..]);
                    dot_rows_f16(k, q, &src, stride, offset, 0.125, out);
                    let mut it = b.iter_mut();
                    let out = std::array::from_fn(|_| &mut it.next().unwrap()[..]);
                    dot_avx2::dot_rows_f16(k2, q, &src, stride, offset, 0.125, out);
                }
                assert_eq!(a, b, "scores, {G} heads, hd {hd}");
                let ps: Vec<Vec<f32>> = (0..G).map(|h| values(40 + h as u64, n, 0.5)).collect();
                let p: [&[f32]; G] = std::array::from_fn(|h| &ps[h][..]);
                let mut x = vec![values(50, hd, 1.0); G];
                let mut y = x.clone();
                {
                    let mut it = x.iter_mut();
                    let out = std::array::from_fn(|_| &mut it.next().unwrap()[..]);
                    weighted_rows_f16(k, p, &src, stride, offset, out);
                    let mut it = y.iter_mut();
                    let out = std::array::from_fn(|_| &mut it.next().unwrap()[..]);
                    dot_avx2::weighted_rows_f16(k2, p, &src, stride, offset, out);
                }
                assert_eq!(x, y, "weighted sums, {G} heads, hd {hd}");
            }
        }
        let Some((k, k2)) = tokens() else { return };
        check::<1>(k, k2);
        check::<2>(k, k2);
        check::<3>(k, k2);
        check::<4>(k, k2);
    }

    /// Every token count and row count the driver uses, with the kernel's own minimum
    /// pass and with the strip pass's terms added instead: the AVX2 kernel's bits.
    #[test]
    fn q4_1_tiles_written_token_by_token_equal_the_avx2_kernel_with_either_minima() {
        fn check<const R: usize, const N: usize>(k: Avx512, k2: Avx2) {
            let cols = QK * 7;
            let w: Vec<Vec<_>> = (0..16)
                .map(|r| {
                    values(60 + r, cols, 2.0)
                        .chunks(QK)
                        .map(quantize_block_q4_1)
                        .collect()
                })
                .collect();
            let blocks: Vec<_> = w.iter().flatten().copied().collect();
            let strip = super::super::strip_minima(16, 7, &blocks);
            let a = act_rows(N, cols, true);
            let ar: [&[ActBlock]; N] = std::array::from_fn(|t| &a[t][..]);
            let terms = min_terms(k, &strip, ar);
            for first in [0, 16 - R] {
                let wr: [&[BlockQ4_1]; R] = std::array::from_fn(|i| &w[first + i][..]);
                let mins: Vec<Vec<f32>> = (0..N)
                    .map(|t| terms[t][first..first + R].to_vec())
                    .collect();
                for with_strip in [false, true] {
                    let mut got = vec![vec![f32::NAN; R]; N];
                    {
                        let mut it = got.iter_mut();
                        let out = std::array::from_fn(|_| &mut it.next().unwrap()[..]);
                        let m = with_strip.then(|| std::array::from_fn(|t| &mins[t][..]));
                        dot_q4_1_q8_1_into(k, wr, ar, m, out);
                    }
                    for t in 0..N {
                        for r in 0..R {
                            let want = dot_avx2::dot_q4_1_q8_1(k2, &w[first + r], [&a[t]])[0];
                            assert_eq!(
                                got[t][r].to_bits(),
                                want.to_bits(),
                                "R {R} N {N} row {} token {t} strip {with_strip}",
                                first + r
                            );
                        }
                    }
                }
            }
        }
        let Some((k, k2)) = tokens() else { return };
        check::<4, 1>(k, k2);
        check::<4, 4>(k, k2);
        check::<4, 8>(k, k2);
        check::<2, 1>(k, k2);
        check::<2, 3>(k, k2);
        check::<2, 4>(k, k2);
        check::<2, 8>(k, k2);
    }

    #[test]
    fn q4_1_tiles_equal_the_avx2_kernel_bit_for_bit() {
        let Some((k, k2)) = tokens() else { return };
        let cols = QK * 18;
        let w: Vec<Vec<_>> = (0..4)
            .map(|r| {
                values(r, cols, 2.0)
                    .chunks(QK)
                    .map(quantize_block_q4_1)
                    .collect()
            })
            .collect();
        let a = act_rows(4, cols, true);
        let rows = [&w[0][..], &w[1], &w[2], &w[3]];
        let four = dot_q4_1_q8_1_tile(k, rows, [&a[0][..], &a[1], &a[2], &a[3]]);
        let two = dot_q4_1_q8_1_tile(k, [&w[2][..], &w[3]], [&a[1][..]]);
        for r in 0..4 {
            for t in 0..4 {
                let want = dot_avx2::dot_q4_1_q8_1(k2, &w[r], [&a[t]])[0];
                assert_eq!(four[r][t].to_bits(), want.to_bits(), "row {r} token {t}");
            }
        }
        assert_eq!(two[1][0].to_bits(), four[3][1].to_bits());
    }

    #[test]
    fn q8_0_tiles_equal_the_avx2_kernel_bit_for_bit_including_minus_128() {
        let Some((k, k2)) = tokens() else { return };
        let cols = QK * 7;
        let mut w: Vec<Vec<_>> = (0..4)
            .map(|r| {
                values(10 + r, cols, 2.0)
                    .chunks(QK)
                    .map(acts::quantize_block_q8_0)
                    .collect()
            })
            .collect();
        w[1][0].qs[5] = -128;
        w[2][3].qs = [-128; QK];
        let mut a = act_rows(3, cols, false);
        a[0][2].qs = [127; QK];
        a[2][1].qs = [-127; QK];
        let rows = [&w[0][..], &w[1], &w[2], &w[3]];
        let got = dot_q8_0_q8_0_tile(k, rows, [&a[0][..], &a[1], &a[2]]);
        for r in 0..4 {
            for t in 0..3 {
                let want = dot_avx2::dot_q8_0_q8_0(k2, &w[r], [&a[t]])[0];
                assert_eq!(got[r][t].to_bits(), want.to_bits(), "row {r} token {t}");
            }
        }
    }
}
