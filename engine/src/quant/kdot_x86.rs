//! The K-quant kernels for AVX2 and AVX-512 VNNI ([`super::kquants`] has the layout and
//! the scalar kernel). Each super-block of a weight row is unpacked once into unsigned
//! bytes in registers, then every token of the tile takes `maddubs` (u8 × i8 pairs) and a
//! multiply-add by the group scales (`madd`, or VNNI's `dpwssd`): exact integer sums, so
//! [`super::kquants::combine`] gives the scalar kernel's bits.

use super::dot_avx2::Avx2;
use super::dot_avx512::Avx512;
use super::kquants::{check_row, combine, HiBits, KBlock, KType, Q8KBlock};

/// One K-quant row against `N` tokens' Q8_K rows, 256-bit.
pub fn dot_avx2<const N: usize>(
    _: Avx2,
    kind: KType,
    w: &[KBlock],
    hi: &[HiBits],
    a: [&[Q8KBlock]; N],
) -> [f32; N] {
    check_row(kind, w, hi, &a);
    // SAFETY: the `Avx2` token (built only by `Avx2::new` after `available()`) proves
    // AVX2 and FMA; `check_row` gave every activation row at least `w.len()` blocks and
    // `hi` the length the format needs.
    unsafe { imp::dot_avx2(kind, w, hi, a) }
}

/// One K-quant row against `N` tokens' Q8_K rows, 512-bit with VNNI.
pub fn dot_avx512<const N: usize>(
    _: Avx512,
    kind: KType,
    w: &[KBlock],
    hi: &[HiBits],
    a: [&[Q8KBlock]; N],
) -> [f32; N] {
    check_row(kind, w, hi, &a);
    // SAFETY: the `Avx512` token proves AVX-512 F/BW/VNNI with AVX2 and FMA; shapes as
    // in `dot_avx2`.
    unsafe { imp::dot_avx512(kind, w, hi, a) }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::*;
    use std::arch::x86_64::*;

    /// Byte shuffles of the sixteen group scales: chunk `e` of 32 values covers groups
    /// `2e` and `2e + 1`, whose scales fill the eight 16-bit lanes each of its pair sums.
    const SCALE_PICK: [[u8; 16]; 8] = {
        let mut m = [[0u8; 16]; 8];
        let mut e = 0;
        while e < 8 {
            let mut i = 0;
            while i < 16 {
                m[e][i] = (2 * e + i / 8) as u8;
                i += 1;
            }
            e += 1;
        }
        m
    };

    #[inline(always)]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        // SAFETY: the callers run with AVX2 (their contract).
        unsafe {
            let x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let x = _mm_add_epi32(x, _mm_shuffle_epi32::<0b01_00_11_10>(x));
            let x = _mm_add_epi32(x, _mm_shuffle_epi32::<0b10_11_00_01>(x));
            _mm_cvtsi128_si32(x)
        }
    }

    /// The sums of the eight lanes of each of four vectors.
    #[inline(always)]
    unsafe fn hsum4(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> [i32; 4] {
        // SAFETY: the callers run with AVX2 (their contract).
        unsafe {
            let ab = _mm256_hadd_epi32(a, b);
            let cd = _mm256_hadd_epi32(c, d);
            let abcd = _mm256_hadd_epi32(ab, cd);
            let r = _mm_add_epi32(
                _mm256_castsi256_si128(abcd),
                _mm256_extracti128_si256::<1>(abcd),
            );
            let mut out = [0i32; 4];
            _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, r);
            out
        }
    }

    /// The sums of the eight lanes of each of eight vectors, lane `t` for vector `t`
    /// (exact integer sums: any order gives the same totals).
    #[inline(always)]
    unsafe fn hsum8(v: [__m256i; 8]) -> __m256i {
        // SAFETY: the callers run with AVX2 (their contract); register operations only.
        unsafe {
            let a = _mm256_hadd_epi32(v[0], v[1]);
            let b = _mm256_hadd_epi32(v[2], v[3]);
            let c = _mm256_hadd_epi32(v[4], v[5]);
            let d = _mm256_hadd_epi32(v[6], v[7]);
            let e = _mm256_hadd_epi32(a, b);
            let f = _mm256_hadd_epi32(c, d);
            _mm256_add_epi32(
                _mm256_permute2x128_si256::<0x20>(e, f),
                _mm256_permute2x128_si256::<0x31>(e, f),
            )
        }
    }

    /// [`combine`] for eight tokens at once, lane `t` for token `t`: the same multiplies
    /// and fused multiply-adds per lane, so the same bits as eight scalar calls.
    #[inline(always)]
    unsafe fn combine8(
        kind: KType,
        w: &KBlock,
        da: __m256,
        isum: __m256i,
        msum: __m256i,
        acc: __m256,
    ) -> __m256 {
        // SAFETY: the callers run with AVX2 and FMA (their contract); register operations
        // only.
        unsafe {
            let dd = _mm256_mul_ps(_mm256_set1_ps(w.d), da);
            match kind {
                KType::Q6K => {
                    let i = _mm256_sub_epi32(isum, _mm256_slli_epi32::<5>(msum));
                    _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(i), acc)
                }
                _ => {
                    // −(m · da) exactly: the product's sign bit flipped.
                    let md =
                        _mm256_xor_ps(_mm256_mul_ps(_mm256_set1_ps(w.m), da), _mm256_set1_ps(-0.0));
                    let x = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(isum), acc);
                    _mm256_fmadd_ps(md, _mm256_cvtepi32_ps(msum), x)
                }
            }
        }
    }

    /// The activation scales of block `b` of eight tokens.
    #[inline(always)]
    unsafe fn scales8<const N: usize>(a: &[&[Q8KBlock]; N], b: usize) -> __m256 {
        // SAFETY: the callers run with AVX (their contract); `N == 8` there.
        unsafe {
            _mm256_setr_ps(
                a[0][b].d, a[1][b].d, a[2][b].d, a[3][b].d, a[4][b].d, a[5][b].d, a[6][b].d,
                a[7][b].d,
            )
        }
    }

    /// The `Σ_g mn[g] · bsum[g]` lanes of block `b` of token `t`, before the lane sum.
    #[inline(always)]
    unsafe fn min_lanes(mn16: __m256i, ab: &Q8KBlock) -> __m256i {
        // SAFETY: `bsums` is 16 i16 values, 32 bytes; the callers run with AVX2.
        unsafe {
            _mm256_madd_epi16(
                mn16,
                _mm256_loadu_si256(ab.bsums.as_ptr() as *const __m256i),
            )
        }
    }

    /// Scale pick `e` as a 16-byte shuffle mask.
    #[inline(always)]
    unsafe fn pick(e: usize) -> __m128i {
        // SAFETY: reading 16 bytes of a 16-byte constant.
        unsafe { _mm_loadu_si128(SCALE_PICK[e].as_ptr() as *const __m128i) }
    }

    /// `Σ_g mn[g] · bsum[g]` of one block and one token.
    #[inline(always)]
    unsafe fn min_sum(mn16: __m256i, ab: &Q8KBlock) -> i32 {
        // SAFETY: the callers run with AVX2 (their contract).
        unsafe { hsum_i32(min_lanes(mn16, ab)) }
    }

    /// One K-quant row against `N` tokens, 256-bit.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; every `a[t]` is at least `w.len()` blocks and `hi` is
    /// empty (Q4_K) or `w.len()` long.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2<const N: usize>(
        kind: KType,
        w: &[KBlock],
        hi: &[HiBits],
        a: [&[Q8KBlock]; N],
    ) -> [f32; N] {
        let mut acc = [0.0f32; N];
        // Eight tokens' results, lane `t` for token `t` (used where `N == 8`).
        let mut acc8 = _mm256_setzero_ps();
        let m4 = _mm256_set1_epi8(0x0f);
        let m2 = _mm256_set1_epi8(3);
        for (b, blk) in w.iter().enumerate() {
            let mut q = [_mm256_setzero_si256(); 8];
            // SAFETY: the CPU has the enabled features (this fn's contract); of the loads,
            // `lo` is 128 bytes, a `HiBits` 64, `sc`/`mn` 16, an activation block's `qs`
            // 256, and each load stays inside its array.
            unsafe {
                for c in 0..4 {
                    let lo = _mm256_loadu_si256(blk.lo.as_ptr().add(32 * c) as *const __m256i);
                    q[2 * c] = _mm256_and_si256(lo, m4);
                    q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(lo), m4);
                }
                if let Some(h) = hi.get(b) {
                    for half in 0..2 {
                        let hb = _mm256_loadu_si256(h.as_ptr().add(32 * half) as *const __m256i);
                        let parts = [
                            hb,
                            _mm256_srli_epi16::<2>(hb),
                            _mm256_srli_epi16::<4>(hb),
                            _mm256_srli_epi16::<6>(hb),
                        ];
                        for (k, p) in parts.into_iter().enumerate() {
                            let bits = _mm256_slli_epi16::<4>(_mm256_and_si256(p, m2));
                            q[4 * half + k] = _mm256_or_si256(q[4 * half + k], bits);
                        }
                    }
                }
                let scb = _mm_loadu_si128(blk.sc.as_ptr() as *const __m128i);
                let mn16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.mn.as_ptr() as *const __m128i));
                let mut s = [_mm256_setzero_si256(); N];
                for (e, qe) in q.iter().enumerate() {
                    let scv = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scb, pick(e)));
                    for (st, at) in s.iter_mut().zip(&a) {
                        let av =
                            _mm256_loadu_si256(at[b].qs.as_ptr().add(32 * e) as *const __m256i);
                        let pairs = _mm256_maddubs_epi16(*qe, av);
                        *st = _mm256_add_epi32(*st, _mm256_madd_epi16(pairs, scv));
                    }
                }
                if N == 8 {
                    let s8: [__m256i; 8] = std::array::from_fn(|i| s[i]);
                    let m8: [__m256i; 8] = std::array::from_fn(|i| min_lanes(mn16, &a[i][b]));
                    acc8 = combine8(kind, blk, scales8(&a, b), hsum8(s8), hsum8(m8), acc8);
                    continue;
                }
                // The integer sums of four tokens at a time (exact, so any order).
                let mut t = 0;
                while t + 4 <= N {
                    let m: [__m256i; 4] = std::array::from_fn(|i| min_lanes(mn16, &a[t + i][b]));
                    let is = hsum4(s[t], s[t + 1], s[t + 2], s[t + 3]);
                    let ms = hsum4(m[0], m[1], m[2], m[3]);
                    for i in 0..4 {
                        let ab = &a[t + i][b];
                        acc[t + i] = combine(kind, blk, ab.d, is[i], ms[i], acc[t + i]);
                    }
                    t += 4;
                }
                for t in t..N {
                    let ab = &a[t][b];
                    acc[t] = combine(kind, blk, ab.d, hsum_i32(s[t]), min_sum(mn16, ab), acc[t]);
                }
            }
        }
        if N == 8 {
            // SAFETY: eight floats into `acc`, `N == 8` long; an unaligned store.
            unsafe { _mm256_storeu_ps(acc.as_mut_ptr(), acc8) };
        }
        acc
    }

    /// One K-quant row against `N` tokens, 512-bit with VNNI's `dpwssd`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA, AVX-512 F/BW and VNNI; shapes as for [`dot_avx2`].
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_avx512<const N: usize>(
        kind: KType,
        w: &[KBlock],
        hi: &[HiBits],
        a: [&[Q8KBlock]; N],
    ) -> [f32; N] {
        let mut acc = [0.0f32; N];
        // Eight tokens' results, lane `t` for token `t` (used where `N == 8`).
        let mut acc8 = _mm256_setzero_ps();
        let m4 = _mm512_set1_epi8(0x0f);
        let m2 = _mm512_set1_epi8(3);
        for (b, blk) in w.iter().enumerate() {
            let mut q = [_mm512_setzero_si512(); 4];
            // SAFETY: the CPU has the enabled features (this fn's contract); each load
            // stays inside its array, as in `dot_avx2`.
            unsafe {
                for (c, qc) in q.iter_mut().enumerate() {
                    // Values 64c..64c + 31 are the low nibbles, 64c + 32.. the high ones.
                    let lo = _mm256_loadu_si256(blk.lo.as_ptr().add(32 * c) as *const __m256i);
                    let both = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(lo),
                        _mm256_srli_epi16::<4>(lo),
                    );
                    *qc = _mm512_and_si512(both, m4);
                }
                if let Some(h) = hi.get(b) {
                    for (c, qc) in q.iter_mut().enumerate() {
                        // Chunk c's values sit at shifts 4(c % 2) and 4(c % 2) + 2 of
                        // half c / 2 of the high bits.
                        let hb = _mm256_loadu_si256(h.as_ptr().add(32 * (c / 2)) as *const __m256i);
                        let (x, y) = if c % 2 == 0 {
                            (hb, _mm256_srli_epi16::<2>(hb))
                        } else {
                            (_mm256_srli_epi16::<4>(hb), _mm256_srli_epi16::<6>(hb))
                        };
                        let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(x), y);
                        let bits = _mm512_slli_epi16::<4>(_mm512_and_si512(both, m2));
                        *qc = _mm512_or_si512(*qc, bits);
                    }
                }
                let scb = _mm_loadu_si128(blk.sc.as_ptr() as *const __m128i);
                let mn16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.mn.as_ptr() as *const __m128i));
                let mut s = [_mm512_setzero_si512(); N];
                for (c, qc) in q.iter().enumerate() {
                    let scv = _mm512_cvtepi8_epi16(_mm256_set_m128i(
                        _mm_shuffle_epi8(scb, pick(2 * c + 1)),
                        _mm_shuffle_epi8(scb, pick(2 * c)),
                    ));
                    for (st, at) in s.iter_mut().zip(&a) {
                        let av = _mm512_loadu_si512(at[b].qs.as_ptr().add(64 * c) as *const _);
                        *st = _mm512_dpwssd_epi32(*st, _mm512_maddubs_epi16(*qc, av), scv);
                    }
                }
                if N == 8 {
                    // Each token's 512-bit sums folded to 256 bits (exact), then all
                    // eight reduced and combined together.
                    let s8: [__m256i; 8] = std::array::from_fn(|i| {
                        _mm256_add_epi32(
                            _mm512_castsi512_si256(s[i]),
                            _mm512_extracti64x4_epi64::<1>(s[i]),
                        )
                    });
                    let m8: [__m256i; 8] = std::array::from_fn(|i| min_lanes(mn16, &a[i][b]));
                    acc8 = combine8(kind, blk, scales8(&a, b), hsum8(s8), hsum8(m8), acc8);
                    continue;
                }
                for t in 0..N {
                    let ab = &a[t][b];
                    let isum = _mm512_reduce_add_epi32(s[t]);
                    acc[t] = combine(kind, blk, ab.d, isum, min_sum(mn16, ab), acc[t]);
                }
            }
        }
        if N == 8 {
            // SAFETY: eight floats into `acc`, `N == 8` long; an unaligned store.
            unsafe { _mm256_storeu_ps(acc.as_mut_ptr(), acc8) };
        }
        acc
    }
}
