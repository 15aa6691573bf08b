//! AVX2 + FMA + F16C kernels, selected at run time. Every public function takes an
//! [`Avx2`] token, which can only be obtained on a CPU that has those features, so the
//! `unsafe` target-feature calls inside are sound.
//!
//! The multi-token kernels (`N` activation rows against one weight row) unpack each weight
//! block once and reuse it for every token; each token keeps its own accumulator and sees
//! exactly the same sequence of operations as with `N = 1`, so results do not depend on
//! batch composition.

use super::acts::ActBlock;
use super::{BlockQ4_1, BlockQ8_0, Half};

/// Proof that the CPU supports AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

impl Avx2 {
    pub fn new() -> Option<Self> {
        available().then_some(Avx2(()))
    }
}

/// True when this CPU can run the kernels in this module.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The horizontal sum every AVX kernel family shares (the AVX-512 kernels fold to it).
#[cfg(target_arch = "x86_64")]
pub(crate) use imp::hsum;

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::*;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has F16C (the callers are kernels with `#[target_feature]` F16C).
    #[inline(always)]
    unsafe fn f16(v: half::f16) -> f32 {
        // SAFETY: F16C is this fn's precondition; the rest is SSE2, baseline on x86_64.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(v.to_bits() as i32))) }
    }

    /// # Safety
    /// The CPU has AVX (the callers are kernels with `#[target_feature]` AVX2).
    #[inline(always)]
    pub(crate) unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX is this fn's precondition, and implies the SSE3 of `movehdup`;
        // register operations only, no memory access.
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    /// With `MINIMA` false the minimum terms are left out (the caller adds those of
    /// [`min_terms`]).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; every `w[r]` holds `w[0].len()` blocks and every
    /// `a[t]` at least that many ([`super::super::check_tile`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1_q8_1<const R: usize, const N: usize, const MINIMA: bool>(
        w: [&[BlockQ4_1]; R],
        a: [&[ActBlock]; N],
    ) -> [[f32; N]; R] {
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        let mut summs = [[0.0f32; N]; R];
        let lowmask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        for b in 0..w[0].len() {
            let mut bx = [_mm256_setzero_si256(); R];
            let mut dw = [0.0f32; R];
            let mut mw = [0.0f32; R];
            for r in 0..R {
                // SAFETY: `b < w[0].len()`, which every weight row holds (the caller's
                // contract).
                let bw = unsafe { w[r].get_unchecked(b) };
                // d and m are adjacent f16s: widen both with one conversion.
                // SAFETY: `BlockQ4_1` is `repr(C)` with `d` and `m` in its first four
                // bytes; the read is of `*bw` only, unaligned allowed.
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe {
                    std::ptr::read_unaligned(bw as *const BlockQ4_1 as *const i32)
                }));
                dw[r] = _mm_cvtss_f32(dm);
                mw[r] = _mm_cvtss_f32(_mm_movehdup_ps(dm));
                // SAFETY: reads the 16 bytes of `bw.qs` (an unaligned load).
                let packed = unsafe { _mm_loadu_si128(bw.qs.as_ptr() as *const __m128i) };
                let hi = _mm_srli_epi16(packed, 4);
                bx[r] = _mm256_and_si256(_mm256_set_m128i(hi, packed), lowmask);
            }
            for t in 0..N {
                // SAFETY: `b < w[0].len() <= a[t].len()` (the caller's contract).
                let ba = unsafe { a[t].get_unchecked(b) };
                // SAFETY: reads the 32 bytes of `ba.qs` (an unaligned load).
                let by = unsafe { _mm256_loadu_si256(ba.qs.as_ptr() as *const __m256i) };
                for r in 0..R {
                    if MINIMA {
                        summs[r][t] += mw[r] * ba.s;
                    }
                    let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                        _mm256_maddubs_epi16(bx[r], by),
                        ones,
                    ));
                    acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw[r] * ba.d), q, acc[r][t]);
                }
            }
        }
        let mut out = [[0.0f32; N]; R];
        for r in 0..R {
            for t in 0..N {
                // SAFETY: this fn's target features include the AVX `hsum` needs.
                out[r][t] = unsafe { hsum(acc[r][t]) } + summs[r][t];
            }
        }
        out
    }

    /// The minimum terms of one strip of sixteen Q4_1 rows for `N` tokens (two 8-lane
    /// halves): lane `r` of `out[t]` is `Σ_b m[r][b] · s[t][b]`, multiplied then added in
    /// block order from zero, as the tile kernels sum them.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; every `a[t]` holds at least `mins.len() / 16`
    /// blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // acc and out indexed by the same token
    pub unsafe fn min_terms<const N: usize>(
        mins: &[half::f16],
        a: [&[ActBlock]; N],
    ) -> [[f32; 16]; N] {
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        let mp = mins.as_ptr() as *const __m128i;
        for b in 0..mins.len() / 16 {
            // SAFETY: `b < mins.len() / 16`, so the two 8-value (16-byte) halves of block
            // `b`'s sixteen minima lie inside `mins`; unaligned loads.
            let m = unsafe {
                [
                    _mm256_cvtph_ps(_mm_loadu_si128(mp.add(2 * b))),
                    _mm256_cvtph_ps(_mm_loadu_si128(mp.add(2 * b + 1))),
                ]
            };
            for t in 0..N {
                // SAFETY: `b < mins.len() / 16 <= a[t].len()` (the caller's contract).
                let s = _mm256_set1_ps(unsafe { a[t].get_unchecked(b) }.s);
                for h in 0..2 {
                    acc[t][h] = _mm256_add_ps(acc[t][h], _mm256_mul_ps(m[h], s));
                }
            }
        }
        let mut out = [[0.0f32; 16]; N];
        for t in 0..N {
            for h in 0..2 {
                // SAFETY: `8 * h + 8 <= 16`: the store stays inside `out[t]`.
                unsafe { _mm256_storeu_ps(out[t].as_mut_ptr().add(8 * h), acc[t][h]) };
            }
        }
        out
    }

    /// # Safety
    /// The CPU has AVX2, FMA and F16C; every `w[r]` holds `w[0].len()` blocks and every
    /// `a[t]` at least that many ([`super::super::check_tile`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0_q8_0<const R: usize, const N: usize>(
        w: [&[BlockQ8_0]; R],
        a: [&[ActBlock]; N],
    ) -> [[f32; N]; R] {
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        let ones = _mm256_set1_epi16(1);
        for b in 0..w[0].len() {
            let mut x = [_mm256_setzero_si256(); R];
            let mut ax = [_mm256_setzero_si256(); R];
            let mut dw = [0.0f32; R];
            for r in 0..R {
                // SAFETY: `b < w[0].len()`, which every weight row holds (the caller's
                // contract).
                let bw = unsafe { w[r].get_unchecked(b) };
                // SAFETY: this fn's target features include the F16C `f16` needs.
                dw[r] = unsafe { f16(bw.d) };
                // SAFETY: reads the 32 bytes of `bw.qs` (an unaligned load).
                x[r] = unsafe { _mm256_loadu_si256(bw.qs.as_ptr() as *const __m256i) };
                ax[r] = _mm256_sign_epi8(x[r], x[r]);
            }
            for t in 0..N {
                // SAFETY: `b < w[0].len() <= a[t].len()` (the caller's contract).
                let ba = unsafe { a[t].get_unchecked(b) };
                // SAFETY: reads the 32 bytes of `ba.qs` (an unaligned load).
                let y = unsafe { _mm256_loadu_si256(ba.qs.as_ptr() as *const __m256i) };
                for r in 0..R {
                    let sy = _mm256_sign_epi8(y, x[r]);
                    let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                        _mm256_maddubs_epi16(ax[r], sy),
                        ones,
                    ));
                    acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw[r] * ba.d), q, acc[r][t]);
                }
            }
        }
        let mut out = [[0.0f32; N]; R];
        for r in 0..R {
            for t in 0..N {
                // SAFETY: this fn's target features include the AVX `hsum` needs.
                out[r][t] = unsafe { hsum(acc[r][t]) };
            }
        }
        out
    }

    /// [`super::dot_q8_0_exact`]'s kernel.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a.len() >= w.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q8_0_exact(w: &[BlockQ8_0], a: &[ActBlock]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = 0.0f32;
        for (b, bw) in w.iter().enumerate() {
            // SAFETY: `b < w.len() <= a.len()` (this fn's contract).
            let ba = unsafe { a.get_unchecked(b) };
            // SAFETY: 32-byte unaligned loads of the blocks' 32 quants.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_si256(bw.qs.as_ptr() as *const __m256i),
                    _mm256_loadu_si256(ba.qs.as_ptr() as *const __m256i),
                )
            };
            // |w| unsigned against a signed by w: exact, as Q8_0 activations never hold
            // -128 (pairs stay within an i16).
            let p = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)),
                ones,
            );
            let s = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            let isum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<1>(s)));
            acc = (bw.d.to_f32() * ba.d).mul_add(isum as f32, acc);
        }
        acc
    }

    /// `out[j] = scale * (q · rows[j])` for every `hd`-wide row; each dot is computed
    /// exactly as [`dot_f32`] computes it.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `q` is not empty.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows(q: &[f32], rows: &[f32], scale: f32, out: &mut [f32]) {
        let hd = q.len();
        for (o, r) in out.iter_mut().zip(rows.chunks_exact(hd)) {
            // SAFETY: this fn's target features include the AVX and FMA the body needs.
            *o = unsafe { dot_f32_body(q, r) } * scale;
        }
    }

    /// `out += Σ_j p[j] * rows[j]`, in order of `j`, each step as [`axpy_f32`] does it.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `out` is not empty.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_rows(p: &[f32], rows: &[f32], out: &mut [f32]) {
        let hd = out.len();
        for (&w, r) in p.iter().zip(rows.chunks_exact(hd)) {
            // SAFETY: this fn's target features include the AVX and FMA the body needs.
            unsafe { axpy_f32_body(w, r, out) };
        }
    }

    /// `out[h][j] = scale * (q[h] · row_j)` for `G` query rows against the f16 rows
    /// `row_j = src[j * stride + offset..][..hd]`, each row widened once for all `G`;
    /// every product and sum in the order of [`dot_f32_body`] on the widened row.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; the shapes pass [`super::check_scores`]: every
    /// `q[h]` is `hd` long, every `out[h]` `rows` long, and row `j < rows` of `src`
    /// (`src[j * stride + offset..][..hd]`) lies inside `src`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows_f16<const G: usize>(
        q: [&[f32]; G],
        src: &[half::f16],
        stride: usize,
        offset: usize,
        scale: f32,
        out: [&mut [f32]; G],
    ) {
        let hd = q[0].len();
        let sp = src.as_ptr() as *const u16;
        // SAFETY: every call below passes a pointer to eight values of one row, `i + 8 <=
        // hd` into it, so inside `src` (the caller's contract); an unaligned load.
        let widen =
            |p: *const u16| _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) });
        for j in 0..out[0].len() {
            // SAFETY: `j < rows`, so `j * stride + offset` is inside `src` (the caller's
            // contract).
            let row = unsafe { sp.add(j * stride + offset) };
            let mut acc0 = [_mm256_setzero_ps(); G];
            let mut acc1 = [_mm256_setzero_ps(); G];
            let mut i = 0;
            while i + 16 <= hd {
                // SAFETY: `i + 16 <= hd`: both eight-value halves are inside row `j`.
                let (k0, k1) = unsafe { (widen(row.add(i)), widen(row.add(i + 8))) };
                for h in 0..G {
                    // SAFETY: `i + 16 <= hd == q[h].len()`: both loads are inside `q[h]`.
                    unsafe {
                        let qp = q[h].as_ptr().add(i);
                        acc0[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qp), k0, acc0[h]);
                        acc1[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(8)), k1, acc1[h]);
                    }
                }
                i += 16;
            }
            while i + 8 <= hd {
                // SAFETY: `i + 8 <= hd`: eight values inside row `j`.
                let k0 = widen(unsafe { row.add(i) });
                for h in 0..G {
                    // SAFETY: `i + 8 <= hd == q[h].len()`.
                    let qv = unsafe { _mm256_loadu_ps(q[h].as_ptr().add(i)) };
                    acc0[h] = _mm256_fmadd_ps(qv, k0, acc0[h]);
                }
                i += 8;
            }
            for h in 0..G {
                // SAFETY: this fn's target features include the AVX `hsum` needs.
                let mut s = unsafe { hsum(_mm256_add_ps(acc0[h], acc1[h])) };
                for (t, qv) in q[h].iter().enumerate().skip(i) {
                    // SAFETY: `t < q[h].len() == hd`: inside row `j`.
                    s += qv * half::f16::from_bits(unsafe { *row.add(t) }).to_f32();
                }
                // SAFETY: `j < rows == out[h].len()`.
                *unsafe { out[h].get_unchecked_mut(j) } = s * scale;
            }
        }
    }

    /// `out[h] += Σ_j p[h][j] * row_j` over the f16 rows `row_j` (as in
    /// [`dot_rows_f16`]), in order of `j`, each step as [`axpy_f32_body`] does it on the
    /// widened row; each row is widened once for all `G` outputs.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; the shapes pass [`super::check_weighted`]: every
    /// `out[h]` is `hd` long, every `p[h]` `rows` long, and row `j < rows` of `src`
    /// (`src[j * stride + offset..][..hd]`) lies inside `src`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_rows_f16<const G: usize>(
        p: [&[f32]; G],
        src: &[half::f16],
        stride: usize,
        offset: usize,
        out: [&mut [f32]; G],
    ) {
        let hd = out[0].len();
        let sp = src.as_ptr() as *const u16;
        let op: [*mut f32; G] = out.map(|o| o.as_mut_ptr());
        for j in 0..p[0].len() {
            // SAFETY: `j < rows`, so `j * stride + offset` is inside `src` (the caller's
            // contract).
            let row = unsafe { sp.add(j * stride + offset) };
            // SAFETY: `j < rows == p[h].len()`.
            let w: [f32; G] = std::array::from_fn(|h| unsafe { *p[h].get_unchecked(j) });
            let mut i = 0;
            while i + 8 <= hd {
                // SAFETY: `i + 8 <= hd`: eight values inside row `j`; an unaligned load.
                let x = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(row.add(i) as *const __m128i) });
                for h in 0..G {
                    // SAFETY: `i + 8 <= hd == out[h].len()`; `op[h]` comes from the
                    // exclusive borrow `out[h]`, which nothing else uses meanwhile.
                    unsafe {
                        let yp = op[h].add(i);
                        _mm256_storeu_ps(
                            yp,
                            _mm256_fmadd_ps(_mm256_set1_ps(w[h]), x, _mm256_loadu_ps(yp)),
                        );
                    }
                }
                i += 8;
            }
            while i < hd {
                // SAFETY: `i < hd`: inside row `j`.
                let x = half::f16::from_bits(unsafe { *row.add(i) }).to_f32();
                for h in 0..G {
                    // SAFETY: `i < hd == out[h].len()`, through the exclusive borrow.
                    unsafe { *op[h].add(i) += w[h] * x };
                }
                i += 1;
            }
        }
    }

    /// Rows `0..rows` of `width` f16 values, each at `offset` in a `stride`-wide row of
    /// `src`, widened exactly to f32 and written contiguously to `dst`.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; `width > 0` and the shapes pass
    /// [`super::check_f16_rows`] for `dst.len() / width` rows.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn widen_f16_rows(
        src: &[half::f16],
        stride: usize,
        offset: usize,
        width: usize,
        dst: &mut [f32],
    ) {
        let rows = dst.len() / width;
        let (sp, dp) = (src.as_ptr() as *const u16, dst.as_mut_ptr());
        for j in 0..rows {
            // SAFETY: `j < rows`: row `j` of `src` starts inside it (the caller's
            // contract) and `(j + 1) * width <= dst.len()`.
            let (s, d) = unsafe { (sp.add(j * stride + offset), dp.add(j * width)) };
            let mut i = 0;
            while i + 8 <= width {
                // SAFETY: `i + 8 <= width`: eight values inside source row `j` and inside
                // destination row `j`; unaligned load and store.
                unsafe {
                    let h = _mm_loadu_si128(s.add(i) as *const __m128i);
                    _mm256_storeu_ps(d.add(i), _mm256_cvtph_ps(h));
                }
                i += 8;
            }
            while i < width {
                // SAFETY: `i < width`: inside both rows.
                unsafe { *d.add(i) = half::f16::from_bits(*s.add(i)).to_f32() };
                i += 1;
            }
        }
    }

    /// `x` rounded to f16 (ties to even) into `dst[..x.len()]`, eight at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; `dst` is valid for writes of `x.len()` `u16`s.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn narrow_f16(x: &[f32], dst: *mut u16) {
        let n = x.len();
        let p = x.as_ptr();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`: eight values inside `x`, and inside the `n` that
            // `dst` takes (the caller's contract); unaligned load and store.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p.add(i)));
                _mm_storeu_si128(dst.add(i) as *mut __m128i, h);
            }
            i += 8;
        }
        while i < n {
            // SAFETY: `i < n`: inside `x` and `dst`.
            unsafe { *dst.add(i) = half::f16::from_f32(*p.add(i)).to_bits() };
            i += 1;
        }
    }

    /// Every value rounded to the nearest f16 (ties to even) and widened back: the
    /// conversion `half::f16::from_f32` makes, eight at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn round_to_f16(x: &mut [f32]) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n == x.len()`: load and store inside `x`.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p.add(i)));
                _mm256_storeu_ps(p.add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        while i < n {
            // SAFETY: `i < n == x.len()`.
            unsafe { *p.add(i) = half::f16::from_f32(*p.add(i)).to_f32() };
            i += 1;
        }
    }

    /// Four pairs a step: `x·[c c]` and `swap(x)·[s s]`, then `addsub` (even lanes
    /// subtract, odd lanes add), as the scalar rotation rounds and adds.
    ///
    /// # Safety
    /// The CPU has AVX2; `table.len() <= head.len()`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn rope_pairs(head: &mut [f32], table: &[f32]) {
        let n = table.len() / 2 * 2;
        let (x, t) = (head.as_mut_ptr(), table.as_ptr());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n <= table.len() <= head.len()` (the caller's contract):
            // loads and store inside `head` and `table`.
            let (v, cs) = unsafe { (_mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(t.add(i))) };
            let a = _mm256_mul_ps(v, _mm256_moveldup_ps(cs));
            let b = _mm256_mul_ps(_mm256_permute_ps::<0b1011_0001>(v), _mm256_movehdup_ps(cs));
            // SAFETY: as for the loads.
            unsafe { _mm256_storeu_ps(x.add(i), _mm256_addsub_ps(a, b)) };
            i += 8;
        }
        while i < n {
            // SAFETY: `i` and `n` are even and `i < n`, so `i + 1 < n <= table.len() <=
            // head.len()`.
            unsafe {
                let (x0, x1, c, s) = (*x.add(i), *x.add(i + 1), *t.add(i), *t.add(i + 1));
                *x.add(i) = x0 * c - x1 * s;
                *x.add(i + 1) = x0 * s + x1 * c;
            }
            i += 2;
        }
    }

    /// Eight F16 (or, with `BF16`, BF16) values at `p` as f32, exactly.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; `p` points at eight readable values.
    #[inline(always)]
    unsafe fn widen8<const BF16: bool>(p: *const u16) -> __m256 {
        // SAFETY: AVX2 and F16C are this fn's precondition; the 16-byte load is the
        // eight values the caller vouches for.
        unsafe {
            let h = _mm_loadu_si128(p as *const __m128i);
            if BF16 {
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
            } else {
                _mm256_cvtph_ps(h)
            }
        }
    }

    /// One F16/BF16 weight row against `N` f32 rows: per token, [`dot_f32_body`]'s two
    /// chains, tree and tail on the exactly widened weights.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; every `x[t]` holds at least `w.len()` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_half<const BF16: bool, const N: usize>(
        w: &[u16],
        x: [&[f32]; N],
    ) -> [f32; N] {
        let n = w.len();
        let kind = if BF16 { Half::Bf16 } else { Half::F16 };
        let mut out = [0.0f32; N];
        // SAFETY: AVX2/FMA/F16C are this fn's precondition; every load below reads
        // values `i..i + 8` or `i + 8..i + 16` with `i + 8 <= n` or `i + 16 <= n`, inside
        // `w` (length `n`) and every `x[t]` (at least `n`).
        unsafe {
            let mut acc0 = [_mm256_setzero_ps(); N];
            let mut acc1 = [_mm256_setzero_ps(); N];
            let mut i = 0;
            while i + 16 <= n {
                let w0 = widen8::<BF16>(w.as_ptr().add(i));
                let w1 = widen8::<BF16>(w.as_ptr().add(i + 8));
                for t in 0..N {
                    let xp = x[t].as_ptr().add(i);
                    acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp), acc0[t]);
                    acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(8)), acc1[t]);
                }
                i += 16;
            }
            if i + 8 <= n {
                let w0 = widen8::<BF16>(w.as_ptr().add(i));
                for t in 0..N {
                    acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t].as_ptr().add(i)), acc0[t]);
                }
                i += 8;
            }
            for t in 0..N {
                let mut s = hsum(_mm256_add_ps(acc0[t], acc1[t]));
                for k in i..n {
                    s += kind.to_f32(w[k]) * x[t][k];
                }
                out[t] = s;
            }
        }
        out
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: this fn's target features include the AVX and FMA the body needs.
        unsafe { dot_f32_body(a, b) }
    }

    /// # Safety
    /// The CPU has AVX and FMA (the callers are kernels with those target features).
    #[inline(always)]
    unsafe fn dot_f32_body(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: AVX is this fn's precondition.
        let (mut acc0, mut acc1) = unsafe { (_mm256_setzero_ps(), _mm256_setzero_ps()) };
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: AVX and FMA are this fn's precondition; `i + 16 <= n`, the common
            // length, so all four unaligned loads are inside `a` and `b`.
            unsafe {
                acc0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    acc0,
                );
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                    acc1,
                );
            }
            i += 16;
        }
        while i + 8 <= n {
            // SAFETY: as above, with `i + 8 <= n`.
            unsafe {
                acc0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    acc0,
                );
            }
            i += 8;
        }
        // SAFETY: AVX is this fn's precondition (and `hsum`'s).
        let mut s = unsafe { hsum(_mm256_add_ps(acc0, acc1)) };
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
        // SAFETY: this fn's target features include the AVX and FMA the body needs.
        unsafe { axpy_f32_body(alpha, x, y) }
    }

    /// # Safety
    /// The CPU has AVX and FMA (the callers are kernels with those target features).
    #[inline(always)]
    unsafe fn axpy_f32_body(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: AVX is this fn's precondition.
        let va = unsafe { _mm256_set1_ps(alpha) };
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: AVX and FMA are this fn's precondition; `i + 8 <= n`, the common
            // length, so the unaligned loads and the store are inside `x` and `y`.
            unsafe {
                let yp = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(
                    yp,
                    _mm256_fmadd_ps(va, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp)),
                );
            }
            i += 8;
        }
        while i < n {
            y[i] += alpha * x[i];
            i += 1;
        }
    }
}

macro_rules! dispatch {
    ($name:ident) => {{
        #[cfg(target_arch = "x86_64")]
        {
            imp::$name
        }
    }};
}

/// `R` Q4_1 weight rows against `N` Q8_1 activation rows: `out[r][t]`.
#[inline]
pub fn dot_q4_1_q8_1_tile<const R: usize, const N: usize>(
    _: Avx2,
    w: [&[BlockQ4_1]; R],
    a: [&[ActBlock]; N],
) -> [[f32; N]; R] {
    super::check_tile(&w, &a);
    // SAFETY: the `Avx2` token (built only by `Avx2::new` after `available()`) proves
    // AVX2, FMA and F16C; `check_tile` gave every weight row one length and every
    // activation row at least that many blocks.
    unsafe { imp::dot_q4_1_q8_1::<R, N, true>(w, a) }
}

/// [`dot_q4_1_q8_1_tile`] without the minimum terms: `out[r][t] + min_terms(..)[t][r]` is
/// bit-identical to the full tile's `out[r][t]`.
#[inline]
pub fn dot_q4_1_q8_1_tile_dots<const R: usize, const N: usize>(
    _: Avx2,
    w: [&[BlockQ4_1]; R],
    a: [&[ActBlock]; N],
) -> [[f32; N]; R] {
    super::check_tile(&w, &a);
    // SAFETY: the `Avx2` token (built only by `Avx2::new` after `available()`) proves
    // AVX2, FMA and F16C; `check_tile` gave every weight row one length and every
    // activation row at least that many blocks.
    unsafe { imp::dot_q4_1_q8_1::<R, N, false>(w, a) }
}

/// The Q4_1 minimum terms of one strip of [`super::MIN_STRIP`] rows for `N` tokens:
/// `out[t][lane] = Σ_b m[lane][b] · s[t][b]` (`mins` is the strip's `[block][16]` slice
/// of [`super::strip_minima`]), the same bits the tile kernels' own minimum pass sums.
#[inline]
pub fn min_terms<const N: usize>(
    _: Avx2,
    mins: &[half::f16],
    a: [&[ActBlock]; N],
) -> [[f32; super::MIN_STRIP]; N] {
    const _: () = assert!(super::MIN_STRIP == 16);
    super::check_strip(mins, &a);
    // SAFETY: the `Avx2` token proves AVX2, FMA and F16C; `check_strip` asserted every
    // `a[t]` holds at least `mins.len() / 16` blocks.
    unsafe { imp::min_terms(mins, a) }
}

/// One Q4_1 weight row against `N` Q8_1 activation rows.
#[inline]
pub fn dot_q4_1_q8_1<const N: usize>(k: Avx2, w: &[BlockQ4_1], a: [&[ActBlock]; N]) -> [f32; N] {
    dot_q4_1_q8_1_tile::<1, N>(k, [w], a)[0]
}

/// `R` Q8_0 weight rows against `N` Q8_0 activation rows: `out[r][t]`.
#[inline]
pub fn dot_q8_0_q8_0_tile<const R: usize, const N: usize>(
    _: Avx2,
    w: [&[BlockQ8_0]; R],
    a: [&[ActBlock]; N],
) -> [[f32; N]; R] {
    super::check_tile(&w, &a);
    // SAFETY: the `Avx2` token proves AVX2, FMA and F16C; `check_tile` gave every weight
    // row one length and every activation row at least that many blocks.
    unsafe { dispatch!(dot_q8_0_q8_0)(w, a) }
}

/// One Q8_0 weight row against `N` Q8_0 activation rows.
#[inline]
pub fn dot_q8_0_q8_0<const N: usize>(k: Avx2, w: &[BlockQ8_0], a: [&[ActBlock]; N]) -> [f32; N] {
    dot_q8_0_q8_0_tile::<1, N>(k, [w], a)[0]
}

/// One Q8_0 row with exact block sums (blocks widened from Q4_0/Q5_0) against one Q8_0
/// activation row, bit-identical to [`super::dot_scalar::dot_q8_0_exact`]: each block's
/// products summed exactly in integers (llama.cpp's sign trick, `maddubs` + `madd`, a
/// horizontal sum), then one FMA. The kernel for rows outside full strips and for hosts
/// that run no strip kernel.
#[inline]
pub fn dot_q8_0_exact(_: Avx2, w: &[BlockQ8_0], a: &[ActBlock]) -> f32 {
    assert!(a.len() >= w.len(), "activation row shorter than weight row");
    // SAFETY: the `Avx2` token proves AVX2, FMA and F16C; `a` holds at least `w.len()`
    // blocks (asserted above).
    unsafe { dispatch!(dot_q8_0_exact)(w, a) }
}

/// `out[j] = scale * (q · rows[j])` over `q.len()`-wide rows (bit-identical to
/// calling [`dot_f32`] per row).
#[inline]
pub fn dot_rows(_: Avx2, q: &[f32], rows: &[f32], scale: f32, out: &mut [f32]) {
    assert!(
        !q.is_empty() && rows.len() >= out.len() * q.len(),
        "dot_rows: shapes"
    );
    // SAFETY: the token proves AVX2+FMA; `q` is not empty (asserted above), and the
    // kernel reads only whole `q.len()`-wide rows of `rows`.
    unsafe { dispatch!(dot_rows)(q, rows, scale, out) }
}

/// `out += Σ_j p[j] * rows[j]` over `out.len()`-wide rows (bit-identical to calling
/// [`axpy_f32`] per row in order).
#[inline]
pub fn weighted_rows(_: Avx2, p: &[f32], rows: &[f32], out: &mut [f32]) {
    assert!(
        !out.is_empty() && rows.len() >= p.len() * out.len(),
        "weighted_rows: shapes"
    );
    // SAFETY: the token proves AVX2+FMA; `out` is not empty (asserted above), and the
    // kernel reads only whole `out.len()`-wide rows of `rows`.
    unsafe { dispatch!(weighted_rows)(p, rows, out) }
}

pub(super) fn check_f16_rows(
    src: &[half::f16],
    stride: usize,
    offset: usize,
    width: usize,
    rows: usize,
) {
    assert!(
        width > 0
            && offset + width <= stride
            && (rows == 0 || (rows - 1) * stride + offset + width <= src.len()),
        "f16 rows: shapes"
    );
}

/// The shapes [`dot_rows_f16`] needs (shared with the AVX-512 kernels); returns `hd`.
pub(super) fn check_scores(
    q: &[&[f32]],
    src: &[half::f16],
    stride: usize,
    offset: usize,
    out: &[&mut [f32]],
) -> usize {
    let (hd, rows) = (q[0].len(), out[0].len());
    assert!(
        q.iter().all(|q| q.len() == hd) && out.iter().all(|o| o.len() == rows),
        "dot_rows_f16: shapes"
    );
    check_f16_rows(src, stride, offset, hd, rows);
    hd
}

/// The shapes [`weighted_rows_f16`] needs (shared with the AVX-512 kernels); returns `hd`.
pub(super) fn check_weighted(
    p: &[&[f32]],
    src: &[half::f16],
    stride: usize,
    offset: usize,
    out: &[&mut [f32]],
) -> usize {
    let (hd, rows) = (out[0].len(), p[0].len());
    assert!(
        p.iter().all(|p| p.len() == rows) && out.iter().all(|o| o.len() == hd),
        "weighted_rows_f16: shapes"
    );
    check_f16_rows(src, stride, offset, hd, rows);
    hd
}

/// `out[h][j] = scale * (q[h] · row_j)` for `G` query rows against f16 rows
/// `row_j = src[j * stride + offset..][..q[h].len()]`, `j < out[h].len()`: bit-identical to
/// widening each row to f32 and calling [`dot_rows`] per query row.
#[inline]
pub fn dot_rows_f16<const G: usize>(
    _: Avx2,
    q: [&[f32]; G],
    src: &[half::f16],
    stride: usize,
    offset: usize,
    scale: f32,
    out: [&mut [f32]; G],
) {
    check_scores(&q, src, stride, offset, &out);
    // SAFETY: the token proves AVX2+FMA+F16C; `check_scores` asserted the shapes the
    // kernel needs: every read is inside `src` and `q`, every write inside `out`.
    unsafe { dispatch!(dot_rows_f16)(q, src, stride, offset, scale, out) }
}

/// `out[h] += Σ_j p[h][j] * row_j` over f16 rows (as in [`dot_rows_f16`]), bit-identical
/// to widening each row and calling [`weighted_rows`] per output.
#[inline]
pub fn weighted_rows_f16<const G: usize>(
    _: Avx2,
    p: [&[f32]; G],
    src: &[half::f16],
    stride: usize,
    offset: usize,
    out: [&mut [f32]; G],
) {
    check_weighted(&p, src, stride, offset, &out);
    // SAFETY: the token proves AVX2+FMA+F16C; `check_weighted` asserted the shapes the
    // kernel needs: every read is inside `src` and `p`, every write inside `out`.
    unsafe { dispatch!(weighted_rows_f16)(p, src, stride, offset, out) }
}

/// Widens `dst.len() / width` rows of `width` f16 values (row `j` at
/// `src[j * stride + offset..]`) to f32, contiguously into `dst`; exact, as `f16::to_f32`.
#[inline]
pub fn widen_f16_rows(
    _: Avx2,
    src: &[half::f16],
    stride: usize,
    offset: usize,
    width: usize,
    dst: &mut [f32],
) {
    check_f16_rows(src, stride, offset, width, dst.len() / width.max(1));
    // SAFETY: the token proves AVX2+F16C; `check_f16_rows` asserted `width > 0` and that
    // every row read is inside `src`; the writes are the `dst.len() / width` whole rows
    // of `dst`.
    unsafe { dispatch!(widen_f16_rows)(src, stride, offset, width, dst) }
}

/// Appends `x` rounded to f16 to `dst`, as `half::f16::from_f32` rounds.
#[inline]
pub fn extend_f16(_: Avx2, dst: &mut Vec<half::f16>, x: &[f32]) {
    dst.reserve(x.len());
    let len = dst.len();
    // SAFETY: the token proves AVX2+F16C; `reserve` made room for `x.len()` more values,
    // all of which the kernel writes before the length grows over them (f16 is plain bits).
    unsafe {
        dispatch!(narrow_f16)(x, dst.as_mut_ptr().add(len) as *mut u16);
        dst.set_len(len + x.len());
    }
}

/// Writes `x` rounded to f16 into `dst` (as long as `x`), as `half::f16::from_f32` rounds.
#[inline]
pub fn store_f16(_: Avx2, dst: &mut [half::f16], x: &[f32]) {
    assert_eq!(dst.len(), x.len(), "store_f16: lengths differ");
    // SAFETY: the token proves AVX2+F16C; `dst` holds `x.len()` values (asserted), all
    // of which the kernel may write (f16 is plain bits).
    unsafe { dispatch!(narrow_f16)(x, dst.as_mut_ptr() as *mut u16) }
}

/// Rounds every value to the nearest f16 and back, as `half::f16::from_f32(v).to_f32()`.
#[inline]
pub fn round_to_f16(_: Avx2, x: &mut [f32]) {
    // SAFETY: the token proves AVX2+F16C; the kernel stays inside `x`.
    unsafe { dispatch!(round_to_f16)(x) }
}

/// Rotates the first `table.len() / 2` pairs of `head` by the flattened `[cos, sin]`
/// pairs of `table`, bit-identical to the scalar rotation (`x0·c − x1·s`, `x0·s + x1·c`,
/// products rounded, then added: `addsub` pairs them the same way).
#[inline]
pub fn rope_pairs(_: Avx2, head: &mut [f32], table: &[f32]) {
    assert!(table.len() <= head.len(), "rope: table wider than the head");
    // SAFETY: the token proves AVX2; `table.len() <= head.len()` (asserted above), and
    // the kernel stays inside `table.len()` values of both.
    unsafe { dispatch!(rope_pairs)(head, table) }
}

/// f32 dot product over the common length.
#[inline]
pub fn dot_f32(_: Avx2, a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: the token proves AVX2+FMA; the kernel reads only the common length.
    unsafe { dispatch!(dot_f32)(a, b) }
}

/// F16/BF16 weight row `w` against the `N` f32 rows `x`: each result the bits of
/// [`super::dot_scalar::dot_half`].
#[inline]
pub fn dot_half<const N: usize>(_: Avx2, kind: Half, w: &[u16], x: [&[f32]; N]) -> [f32; N] {
    assert!(
        x.iter().all(|r| r.len() >= w.len()),
        "dot_half: row lengths"
    );
    // SAFETY: the token proves AVX2, FMA and F16C; every `x[t]` is at least as long as
    // `w` (asserted above).
    unsafe {
        match kind {
            Half::F16 => imp::dot_half::<false, N>(w, x),
            Half::Bf16 => imp::dot_half::<true, N>(w, x),
        }
    }
}

/// `y += alpha * x` over the common length.
#[inline]
pub fn axpy_f32(_: Avx2, alpha: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: the token proves AVX2+FMA; the kernel reads and writes only the common
    // length of `x` and `y`.
    unsafe { dispatch!(axpy_f32)(alpha, x, y) }
}

#[cfg(test)]
mod tests {
    use super::super::{acts, dot_scalar, quantize_block_q4_1, QK};
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn rows(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n).map(|_| lcg(&mut s) * 3.0).collect()
    }

    #[test]
    fn q4_1_matches_scalar_for_every_batch_width() {
        let Some(k) = Avx2::new() else {
            eprintln!("skipped: CPU lacks AVX2/FMA/F16C");
            return;
        };
        let cols = QK * 18;
        let w: Vec<_> = rows(1, cols).chunks(QK).map(quantize_block_q4_1).collect();
        let a: Vec<Vec<acts::ActBlock>> = (0..4)
            .map(|t| {
                rows(10 + t, cols)
                    .chunks(QK)
                    .map(|c| acts::quantize_block_q8_1(c).into())
                    .collect()
            })
            .collect();
        let four = dot_q4_1_q8_1(k, &w, [&a[0], &a[1], &a[2], &a[3]]);
        let w2: Vec<_> = rows(2, cols).chunks(QK).map(quantize_block_q4_1).collect();
        let tile = dot_q4_1_q8_1_tile(k, [&w2, &w], [&a[0], &a[1], &a[2], &a[3]]);
        assert_eq!(
            tile[1].map(f32::to_bits),
            four.map(f32::to_bits),
            "row tiling changed the result"
        );
        let other = dot_q4_1_q8_1(k, &w2, [&a[2]])[0];
        assert_eq!(tile[0][2].to_bits(), other.to_bits());
        for t in 0..4 {
            let one = dot_q4_1_q8_1(k, &w, [&a[t]])[0];
            let reference = dot_scalar::dot_q4_1_q8_1(&w, &a[t]);
            assert_eq!(
                one.to_bits(),
                four[t].to_bits(),
                "batch width changed the result"
            );
            assert_eq!(
                one.to_bits(),
                reference.to_bits(),
                "{one} vs scalar {reference}"
            );
        }
    }

    #[test]
    fn q8_0_matches_scalar_including_minus_128() {
        let Some(k) = Avx2::new() else {
            eprintln!("skipped: CPU lacks AVX2/FMA/F16C");
            return;
        };
        let cols = QK * 5;
        let mut w: Vec<_> = rows(3, cols)
            .chunks(QK)
            .map(acts::quantize_block_q8_0)
            .collect();
        w[0].qs[3] = -128;
        let a: Vec<acts::ActBlock> = rows(4, cols)
            .chunks(QK)
            .map(|c| acts::quantize_block_q8_0(c).into())
            .collect();
        let got = dot_q8_0_q8_0(k, &w, [&a, &a])[1];
        let reference = dot_scalar::dot_q8_0_q8_0(&w, &a);
        assert_eq!(got.to_bits(), reference.to_bits(), "{got} vs {reference}");
        let tile = dot_q8_0_q8_0_tile(k, [&w, &w], [&a]);
        assert_eq!(
            tile[1][0].to_bits(),
            got.to_bits(),
            "row tiling changed the result"
        );
    }

    #[test]
    fn exact_q8_0_matches_scalar_over_the_full_byte_range() {
        let Some(k) = Avx2::new() else {
            eprintln!("skipped: CPU lacks AVX2/FMA/F16C");
            return;
        };
        let cols = QK * 9;
        let mut w: Vec<_> = rows(5, cols)
            .chunks(QK)
            .map(acts::quantize_block_q8_0)
            .collect();
        // Extremes of every pair: -128 and 127 weights against ±127 activations.
        w[0].qs = std::array::from_fn(|i| if i % 2 == 0 { -128 } else { 127 });
        w[1].qs = [-128; QK];
        let mut a: Vec<acts::ActBlock> = rows(6, cols)
            .chunks(QK)
            .map(|c| acts::quantize_block_q8_0(c).into())
            .collect();
        a[0].qs = std::array::from_fn(|i| if i % 3 == 0 { -127 } else { 127 });
        a[1].qs = [-127; QK];
        let got = dot_q8_0_exact(k, &w, &a);
        let reference = dot_scalar::dot_q8_0_exact(&w, &a);
        assert_eq!(got.to_bits(), reference.to_bits(), "{got} vs {reference}");
    }

    #[test]
    fn f16_rows_widen_exactly() {
        let Some(k) = Avx2::new() else {
            eprintln!("skipped: CPU lacks AVX2/F16C");
            return;
        };
        let src: Vec<half::f16> = rows(11, 7 * 30)
            .into_iter()
            .map(half::f16::from_f32)
            .collect();
        for (offset, width) in [(0, 30), (3, 19), (10, 8), (5, 1)] {
            let mut dst = vec![0.0f32; 7 * width];
            widen_f16_rows(k, &src, 30, offset, width, &mut dst);
            for j in 0..7 {
                for i in 0..width {
                    assert_eq!(dst[j * width + i], src[j * 30 + offset + i].to_f32());
                }
            }
        }
    }

    #[test]
    fn fused_f16_attention_kernels_equal_widen_then_f32_bit_for_bit() {
        let Some(k) = Avx2::new() else {
            eprintln!("skipped: CPU lacks AVX2/F16C");
            return;
        };
        // hd 64 (the model's), and widths that take the 8-wide and scalar tails.
        for (hd, stride, offset) in [(64, 192, 64), (27, 40, 13), (8, 8, 0)] {
            let n = 9;
            let src: Vec<half::f16> = rows(21, n * stride)
                .into_iter()
                .map(half::f16::from_f32)
                .collect();
            let mut wide = vec![0.0f32; n * hd];
            widen_f16_rows(k, &src, stride, offset, hd, &mut wide);
            let qs: Vec<Vec<f32>> = (0..3).map(|h| rows(30 + h, hd)).collect();
            let mut fused = vec![vec![0.0f32; n]; 3];
            let [a, b, c] = &mut fused[..] else {
                unreachable!()
            };
            dot_rows_f16(
                k,
                [&qs[0][..], &qs[1], &qs[2]],
                &src,
                stride,
                offset,
                0.125,
                [a, b, c],
            );
            let ps: Vec<Vec<f32>> = (0..3).map(|h| rows(40 + h, n)).collect();
            let mut acc_f = vec![rows(50, hd); 3];
            let [x, y, z] = &mut acc_f[..] else {
                unreachable!()
            };
            weighted_rows_f16(
                k,
                [&ps[0][..], &ps[1], &ps[2]],
                &src,
                stride,
                offset,
                [x, y, z],
            );
            for h in 0..3 {
                let mut want = vec![0.0f32; n];
                dot_rows(k, &qs[h], &wide, 0.125, &mut want);
                assert_eq!(fused[h], want, "dot hd {hd} head {h}");
                let mut acc = rows(50, hd);
                weighted_rows(k, &ps[h], &wide, &mut acc);
                assert_eq!(acc_f[h], acc, "weighted hd {hd} head {h}");
            }
        }
    }

    #[test]
    fn f16_rounding_equals_the_half_crate() {
        let Some(k) = Avx2::new() else {
            eprintln!("skipped: CPU lacks AVX2/F16C");
            return;
        };
        let mut x = rows(61, 1001);
        // Ties, subnormals, overflow, zero signs.
        x.extend([
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            1e-6,
            -3e-7,
            70000.0,
            -0.0,
            0.0,
        ]);
        let want: Vec<u32> = x
            .iter()
            .map(|v| half::f16::from_f32(*v).to_f32().to_bits())
            .collect();
        let mut narrowed = vec![half::f16::from_f32(9.0)];
        extend_f16(k, &mut narrowed, &x);
        assert_eq!(narrowed[0].to_f32(), 9.0);
        let narrowed: Vec<u32> = narrowed[1..].iter().map(|h| h.to_f32().to_bits()).collect();
        assert_eq!(narrowed, want);
        round_to_f16(k, &mut x);
        assert_eq!(x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
    }

    #[test]
    fn f32_kernels_match_scalar_on_odd_lengths() {
        let Some(k) = Avx2::new() else {
            eprintln!("skipped: CPU lacks AVX2/FMA");
            return;
        };
        for n in [1, 7, 8, 15, 16, 17, 64, 100] {
            let a = rows(5, n);
            let b = rows(6, n);
            assert_eq!(
                dot_f32(k, &a, &b).to_bits(),
                dot_scalar::dot_f32(&a, &b).to_bits(),
                "n={n}"
            );
            let mut y1 = rows(7, n);
            let mut y2 = y1.clone();
            axpy_f32(k, 0.3, &a, &mut y1);
            dot_scalar::axpy_f32(0.3, &a, &mut y2);
            for (p, q) in y1.iter().zip(&y2) {
                assert_eq!(p.to_bits(), q.to_bits(), "axpy n={n}");
            }
            let mut many = vec![0.0f32; 3];
            let rows3: Vec<f32> = [a.clone(), b.clone(), a.clone()].concat();
            dot_rows(k, &b, &rows3, 0.5, &mut many);
            assert_eq!(many[1].to_bits(), (dot_f32(k, &b, &b) * 0.5).to_bits());
            let mut w1 = rows(9, n);
            let mut w2 = w1.clone();
            weighted_rows(k, &[0.25, -1.5, 2.0], &rows3, &mut w1);
            for (i, p) in [0.25f32, -1.5, 2.0].iter().enumerate() {
                axpy_f32(k, *p, &rows3[i * n..(i + 1) * n], &mut w2);
            }
            assert_eq!(w1, w2);
        }
    }
}
