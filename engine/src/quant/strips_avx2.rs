//! The strip kernel in 256-bit registers, for CPUs without AVX-512: AVX2
//! (`vpmaddubsw` + `vpmaddwd`) and, where the CPU has it, AVX-VNNI (`vpdpbusd` on ymm,
//! one instruction for the same four-product sums).
//!
//! It reads the same 16-row strips as the AVX-512 kernel ([`super::strips`]): each
//! 64-byte line is two 32-byte halves of eight rows, and a ymm register holds chain `k`
//! of eight rows, one row per 32-bit lane. Per block and token, the eight rows' `d_w·d_a`
//! take one multiply for all eight chains, and a chain step is `maddubs`, `madd`
//! (or one `vpdpbusd`), convert and FMA for 32 products of eight rows; the row-major
//! tiles in [`super::dot_avx2`] spend those four plus a scalar multiply and a broadcast
//! on 32 products of one row, and end with a horizontal sum per (row, token) where this
//! ends with vertical adds. Every lane sees llama.cpp's AVX2 operations in llama.cpp's
//! order, so each result is bit-identical to [`super::dot_avx2::dot_q4_1_q8_1`] and
//! [`super::dot_avx2::dot_q8_0_q8_0`] (tests compare every bit).
//!
//! Q8_0 weights are signed: as llama.cpp's AVX2 `vec_dot_q8_0_q8_0` does, the unsigned
//! operand is `|w|` and the activations take `w`'s sign (`vpsignb`), exact because Q8_0
//! activations never hold -128.
//!
//! Exact-sum strips whose weights all lie in -16..=15 (blocks widened from Q4_0 or Q5_0,
//! [`Strips::narrow`]) skip that trick: the weights offset by 16 are unsigned bytes below
//! 32, four `maddubs` of them add in 16 bits without overflow, and `16 Σ a` per block
//! ([`offset_sums`]) is subtracted from the exact integer sum before its one convert and
//! FMA ([`dot_q8_0_strip_narrow`]). That is 17 vector operations a block and token where
//! the sign trick takes 32; the result keeps the reference's bits.

use super::acts::ActBlock;
use super::dot_avx2::Avx2;
use super::strips::{Line, Strips, STRIP};
use half::f16;

/// Most tokens one call takes: two chains of each in registers, with the weights and
/// broadcasts beside them in sixteen ymm registers.
pub const TOKENS: usize = 4;

/// Proof that the CPU has AVX-VNNI (the VEX-encoded 256-bit `vpdpbusd` of Alder Lake,
/// Sapphire Rapids and Zen 5) beside AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug)]
pub struct AvxVnni(());

impl AvxVnni {
    pub fn new() -> Option<Self> {
        vnni_available().then_some(AvxVnni(()))
    }
}

/// True when this CPU has AVX-VNNI and the AVX2 kernels' features.
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::dot_avx2::available() && is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which 256-bit instructions sum the products.
#[derive(Clone, Copy, Debug)]
pub enum Ymm {
    Avx2(Avx2),
    AvxVnni(AvxVnni),
}

/// Strip `strip` of a Q4_1 `w` (with `mins`, the matrix's [`super::strip_minima`])
/// against `N` (1 to [`TOKENS`]) tokens: `out[t][r]` for the strip's sixteen rows, each
/// bit-identical to [`super::dot_avx2::dot_q4_1_q8_1`] of that row and token.
#[inline]
pub fn dot_q4_1_strip<const N: usize>(
    k: Ymm,
    w: &Strips,
    mins: &[f16],
    strip: usize,
    a: [&[ActBlock]; N],
    out: [&mut [f32]; N],
) {
    let at = w.check(4, TOKENS, strip, &a, &out);
    assert!(mins.len() >= (at + w.nb) * STRIP, "strip kernel: minima");
    if w.nb == 0 {
        out.into_iter().for_each(|o| o.fill(0.0));
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the token proves the target features; `strip < w.strips` and the strips
    // are of Q4_1 (`Strips::check`), so the strip's `4 nb` lines and `16 nb` scales lie inside
    // `w.qs` and `w.d`, and its `16 nb` minima inside `mins` (asserted above); every
    // `a[t]` holds at least `nb` blocks, each `out[t]` sixteen floats, and `nb > 0`.
    unsafe {
        let args = (
            w.qs.as_ptr().add(at * 4),
            w.d.as_ptr().add(at * STRIP),
            mins.as_ptr().add(at * STRIP),
            w.nb,
            a,
            out.map(|o| o.as_mut_ptr()),
        );
        match k {
            Ymm::Avx2(_) => imp::avx2::<N, false>(args),
            Ymm::AvxVnni(_) => imp::vnni::<N, false>(args),
        }
    }
}

/// Strip `strip` of a Q8_0 `w` against `N` (1 to [`TOKENS`]) tokens: `out[t][r]`, each
/// bit-identical to [`super::dot_avx2::dot_q8_0_q8_0`] of that row and token, or with
/// `exact` (blocks widened from Q4_0/Q5_0) to [`super::dot_scalar::dot_q8_0_exact`].
#[inline]
pub fn dot_q8_0_strip<const N: usize>(
    k: Ymm,
    w: &Strips,
    strip: usize,
    a: [&[ActBlock]; N],
    exact: bool,
    out: [&mut [f32]; N],
) {
    let at = w.check(8, TOKENS, strip, &a, &out);
    if w.nb == 0 {
        out.into_iter().for_each(|o| o.fill(0.0));
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as for Q4_1, with the strip's `8 nb` lines (`Strips::check` saw Q8_0 strips); the
    // minima pointer is not read for Q8_0.
    unsafe {
        let args = q8_args(w, at, a, out);
        match (k, exact) {
            (Ymm::Avx2(_), false) => imp::avx2::<N, true>(args),
            (Ymm::AvxVnni(_), false) => imp::vnni::<N, true>(args),
            (Ymm::Avx2(_), true) => imp::avx2_exact::<N>(args),
            (Ymm::AvxVnni(_), true) => imp::vnni_exact::<N>(args),
        }
    }
}

/// A Q8_0 strip call's kernel arguments: the strip whose first block is `at`; no minima.
#[cfg(target_arch = "x86_64")]
fn q8_args<'a, const N: usize>(
    w: &Strips,
    at: usize,
    a: [&'a [ActBlock]; N],
    out: [&mut [f32]; N],
) -> imp::Args<'a, N> {
    (
        w.qs[at * 8..].as_ptr(),
        w.d[at * STRIP..].as_ptr(),
        std::ptr::null(),
        w.nb,
        a,
        out.map(|o| o.as_mut_ptr()),
    )
}

/// `16 Σ a` of each activation block: the correction the narrow kernel
/// ([`dot_q8_0_strip_narrow`]) subtracts from its offset sums.
pub fn offset_sums(a: &[ActBlock]) -> Vec<i32> {
    a.iter()
        .map(|b| 16 * b.qs.iter().map(|&q| q as i32).sum::<i32>())
        .collect()
}

/// Strip `strip` of an exact-sum Q8_0 `w` whose weights all lie in -16..=15
/// ([`Strips::narrow`]: blocks widened from Q4_0 or Q5_0) against `N` (1 to [`TOKENS`])
/// tokens, `sums[t]` holding [`offset_sums`] of `a[t]`: `out[t][r]`, each bit-identical to
/// [`super::dot_scalar::dot_q8_0_exact`] of that row and token.
///
/// The weights offset by 16 are unsigned bytes below 32, so `maddubs` takes them as they
/// are (no sign trick on the activations) and four of its pair sums add in 16 bits
/// without overflow (4 · 2 · 31 · 128 < 2^15); the block's integer sum less `16 Σ a` is
/// the exact `Σ w a`, then one convert and one FMA as the reference.
#[inline]
pub fn dot_q8_0_strip_narrow<const N: usize>(
    k: Ymm,
    w: &Strips,
    strip: usize,
    a: [&[ActBlock]; N],
    sums: [&[i32]; N],
    out: [&mut [f32]; N],
) {
    let at = w.check(8, TOKENS, strip, &a, &out);
    assert!(w.narrow, "narrow strip kernel: weights outside -16..=15");
    assert!(
        sums.iter().all(|s| s.len() >= w.nb),
        "narrow strip kernel: one offset sum a block"
    );
    if w.nb == 0 {
        out.into_iter().for_each(|o| o.fill(0.0));
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as for `dot_q8_0_strip`; each `sums[t]` holds at least `nb` values (asserted
    // above).
    unsafe {
        let args = q8_args(w, at, a, out);
        let sums = sums.map(|s| s.as_ptr());
        match k {
            Ymm::Avx2(_) => imp::avx2_narrow::<N>(args, sums),
            Ymm::AvxVnni(_) => imp::vnni_narrow::<N>(args, sums),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
mod imp {
    use super::*;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// (lines, scales, minima, blocks per row, activations, outputs) of one strip call.
    pub type Args<'a, const N: usize> = (
        *const Line,
        *const f16,
        *const f16,
        usize,
        [&'a [ActBlock]; N],
        [*mut f32; N],
    );

    /// Blocks whose `d_w·d_a` products are formed ahead of the chains that use them.
    const CHUNK: usize = 32;

    #[inline(always)]
    fn prefetch<T>(p: *const T) {
        // SAFETY: `_mm_prefetch` needs only SSE (x86_64 baseline); a hint that never
        // dereferences or faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) };
    }

    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `nb > 0`; `qs` and `d` point at one strip's
    /// `lines · nb` lines and `16 nb` scales (4 lines for Q4_1, 8 for Q8_0), for Q4_1
    /// `mins` at its `16 nb` minima; each `a[t]` holds `nb` blocks and each `out[t]`
    /// sixteen floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn avx2<const N: usize, const Q8: bool>(args: Args<'_, N>) {
        // SAFETY: this fn's contract is the body's, and its features are the body's.
        unsafe { body::<N, Q8, false>(args) }
    }

    /// # Safety
    /// As [`avx2`], and the CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub unsafe fn vnni<const N: usize, const Q8: bool>(args: Args<'_, N>) {
        // SAFETY: as above, with AVX-VNNI for `VNNI = true`.
        unsafe { body::<N, Q8, true>(args) }
    }

    /// # Safety
    /// [`avx2`]'s contract for Q8_0 strips.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn avx2_exact<const N: usize>(args: Args<'_, N>) {
        // SAFETY: this fn's contract is the body's (no offset sums read unless narrow),
        // and its features are the body's.
        unsafe { exact::<N, false, false>(args, [std::ptr::null(); N]) }
    }

    /// # Safety
    /// As [`avx2_exact`], and the CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub unsafe fn vnni_exact<const N: usize>(args: Args<'_, N>) {
        // SAFETY: as above, with AVX-VNNI for `VNNI = true`.
        unsafe { exact::<N, true, false>(args, [std::ptr::null(); N]) }
    }

    /// # Safety
    /// [`avx2`]'s contract for narrow Q8_0 strips; each `sums[t]` points at `nb` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn avx2_narrow<const N: usize>(args: Args<'_, N>, sums: [*const i32; N]) {
        // SAFETY: this fn's contract is the body's, and its features are the body's.
        unsafe { exact::<N, false, true>(args, sums) }
    }

    /// # Safety
    /// As [`avx2_narrow`], and the CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub unsafe fn vnni_narrow<const N: usize>(args: Args<'_, N>, sums: [*const i32; N]) {
        // SAFETY: as above, with AVX-VNNI for `VNNI = true`.
        unsafe { exact::<N, true, true>(args, sums) }
    }

    /// Exact-sum Q8_0 rows, half a strip (eight rows) at a time: per block and token, the
    /// products of eight rows summed into one integer per row (`maddubs` + `madd`, or
    /// `vpdpbusd`), then one convert and one FMA by `d_w·d_a`, as
    /// [`super::super::dot_scalar::dot_q8_0_exact`]. The unsigned operand is `|w|`, with
    /// the activations signed by `w` (the sign trick), or with `NARROW` (weights in
    /// -16..=15) `w + 16`: then four `maddubs` add in 16 bits (at most 4 · 2 · 31 · 128 =
    /// 31744) before one `madd` widens them, and `sums[t]`'s `16 Σ a` of the block is
    /// subtracted, which gives the same integer.
    ///
    /// Registers: the weights are walked a line (or, narrow, four lines) at a time, each
    /// used by every token before the next is loaded, so the tokens' integer sums and
    /// float accumulators (2 N) stay in registers beside them. Holding all eight lines
    /// and their unsigned forms at once, as this kernel first did, spilled a quarter of
    /// its operands to the stack at four tokens: 1.29x a batch-16 Gemma 3 step's head
    /// rate (Zen 3, in-process A/B).
    ///
    /// # Safety
    /// [`avx2`]'s contract for Q8_0 strips; with `VNNI`, the CPU has AVX-VNNI; with
    /// `NARROW`, every weight of the strip is in -16..=15 and each `sums[t]` points at `nb`
    /// values. Inlined into the target-feature wrappers above.
    #[inline(always)]
    unsafe fn exact<const N: usize, const VNNI: bool, const NARROW: bool>(
        (qs, d, _, nb, a, out): Args<'_, N>,
        sums: [*const i32; N],
    ) {
        // SAFETY: every intrinsic here is AVX2/FMA/F16C, or AVX-VNNI where `VNNI` (the
        // callers' features); the memory accesses are justified one by one below.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let sixteen = _mm256_set1_epi8(16);
            let zero = _mm256_setzero_si256();
            // Half `h` of line `8 b + k`: inside the strip's `8 nb` lines for `b < nb`,
            // `k < 8`; `Line` is 64-byte aligned, so the half is 32-byte aligned.
            let line = |b: usize, k: usize, h: usize| {
                _mm256_load_si256((qs.add(8 * b + k) as *const u8).add(32 * h) as *const __m256i)
            };
            // Dword `k` of token `t`'s block `b`: `b < nb <= a[t].len()`, `k < 8` of the
            // block's 32 quant bytes; an unaligned read, broadcast.
            let act = |t: usize, b: usize, k: usize| {
                let q = a[t].get_unchecked(b).qs.as_ptr() as *const i32;
                _mm256_set1_epi32(std::ptr::read_unaligned(q.add(k)))
            };
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); N];
                for b in 0..nb {
                    if h == 1 {
                        // The next strip's lines and scales, while the second half runs
                        // on this one's (in L1 from the first half).
                        for k in 0..8 {
                            prefetch(qs.wrapping_add(8 * (nb + b) + k));
                        }
                        if b % 4 == 0 {
                            prefetch(d.wrapping_add(STRIP * (nb + b)));
                        }
                    }
                    let mut s = [zero; N];
                    if NARROW {
                        for k0 in [0, 4] {
                            // Narrow weights offset by 16 lie in 0..32 (`Strips::narrow`).
                            let u: [__m256i; 4] = std::array::from_fn(|j| {
                                _mm256_add_epi8(line(b, k0 + j, h), sixteen)
                            });
                            for t in 0..N {
                                let x = |j: usize| act(t, b, k0 + j);
                                s[t] = if VNNI {
                                    // Two chains of two, then one add into the sum: a
                                    // `vpdpbusd` waits on its accumulator (about five
                                    // cycles), so a chain of eight a block would bound a
                                    // one-token call.
                                    let two = |j: usize| {
                                        _mm256_dpbusd_avx_epi32(
                                            _mm256_dpbusd_avx_epi32(zero, u[j], x(j)),
                                            u[j + 1],
                                            x(j + 1),
                                        )
                                    };
                                    _mm256_add_epi32(s[t], _mm256_add_epi32(two(0), two(2)))
                                } else {
                                    let p = |j: usize| _mm256_maddubs_epi16(u[j], x(j));
                                    let four = _mm256_add_epi16(
                                        _mm256_add_epi16(p(0), p(1)),
                                        _mm256_add_epi16(p(2), p(3)),
                                    );
                                    _mm256_add_epi32(s[t], _mm256_madd_epi16(four, ones))
                                };
                            }
                        }
                    } else {
                        for k in 0..8 {
                            let w = line(b, k, h);
                            // |w| read unsigned (-128 becomes 128; activations never hold
                            // -128, so the signed products are exact).
                            let u = _mm256_sign_epi8(w, w);
                            for t in 0..N {
                                let x = _mm256_sign_epi8(act(t, b, k), w);
                                s[t] = if VNNI {
                                    // From zero, then added: the sum's chain is of
                                    // one-cycle adds, not of `vpdpbusd` (see above).
                                    _mm256_add_epi32(s[t], _mm256_dpbusd_avx_epi32(zero, u, x))
                                } else {
                                    _mm256_add_epi32(
                                        s[t],
                                        _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), ones),
                                    )
                                };
                            }
                        }
                    }
                    // Rows `8h..8h + 8` of block `b`'s sixteen scales: inside the strip's
                    // `16 nb`; unaligned.
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(
                        d.add(STRIP * b + 8 * h) as *const __m128i
                    ));
                    for t in 0..N {
                        let st = if NARROW {
                            // `b < nb`: `sums[t]` holds `nb` values (the caller's contract).
                            _mm256_sub_epi32(s[t], _mm256_set1_epi32(*sums[t].add(b)))
                        } else {
                            s[t]
                        };
                        let ab = a[t].get_unchecked(b);
                        acc[t] = _mm256_fmadd_ps(
                            _mm256_mul_ps(dw, _mm256_set1_ps(ab.d)),
                            _mm256_cvtepi32_ps(st),
                            acc[t],
                        );
                    }
                }
                for t in 0..N {
                    // `out[t]` points at sixteen floats; rows `8h..8h + 8`; unaligned.
                    _mm256_storeu_ps(out[t].add(8 * h), acc[t]);
                }
            }
        }
    }

    /// # Safety
    /// [`avx2`]'s contract; with `VNNI`, the CPU has AVX-VNNI. Inlined into the two
    /// target-feature wrappers above, which give it its instructions.
    #[inline(always)]
    unsafe fn body<const N: usize, const Q8: bool, const VNNI: bool>(
        (qs, d, mins, nb, a, out): Args<'_, N>,
    ) {
        // SAFETY: every intrinsic here is AVX2/FMA/F16C, or AVX-VNNI where `VNNI` (the
        // callers' features); the memory accesses are justified one by one below.
        unsafe {
            let lines = if Q8 { 8 } else { 4 };
            let lowmask = _mm256_set1_epi8(0x0f);
            let ones = _mm256_set1_epi16(1);
            let zero = _mm256_setzero_si256();
            let mut scales: [[MaybeUninit<__m256>; N]; CHUNK] = [[MaybeUninit::uninit(); N]; CHUNK];
            // The two halves of the strip (rows 0-7, then 8-15) one after the other: the
            // second finds the strip's lines in L1, and fetches the next strip's.
            for h in 0..2 {
                let mut chains: [[MaybeUninit<__m256>; N]; 8] = [[MaybeUninit::uninit(); N]; 8];
                let mut summ = [_mm256_setzero_ps(); N];
                let mut c0 = 0;
                while c0 < nb {
                    let len = (nb - c0).min(CHUNK);
                    for i in 0..len {
                        let b = c0 + i;
                        if h == 1 && b % 4 == 0 {
                            // The next strip's scales and minima (four blocks a line).
                            prefetch(d.wrapping_add(STRIP * (nb + b)));
                            if !Q8 {
                                prefetch(mins.wrapping_add(STRIP * (nb + b)));
                            }
                        }
                        // `b < nb`: rows `8h..8h + 8` of block `b`'s sixteen scales lie
                        // inside the strip's `16 nb` (the caller's contract); unaligned.
                        let dw = _mm256_cvtph_ps(_mm_loadu_si128(
                            d.add(STRIP * b + 8 * h) as *const __m128i
                        ));
                        for t in 0..N {
                            // `b < nb <= a[t].len()` (the caller's contract).
                            let ab = a[t].get_unchecked(b);
                            scales[i][t].write(_mm256_mul_ps(dw, _mm256_set1_ps(ab.d)));
                        }
                        if !Q8 {
                            // Q4_1: `mins` holds the strip's `16 nb` minima.
                            let mw = _mm256_cvtph_ps(_mm_loadu_si128(
                                mins.add(STRIP * b + 8 * h) as *const __m128i
                            ));
                            for t in 0..N {
                                let s = _mm256_set1_ps(a[t].get_unchecked(b).s);
                                summ[t] = _mm256_add_ps(summ[t], _mm256_mul_ps(mw, s));
                            }
                        }
                    }
                    // Chains k and k + 4 of `G` values of k in one pass (a Q4_1 line's
                    // low and high nibbles, or two Q8_0 lines): 2·G·N accumulators, eight
                    // for every N, so enough FMA chains run at once to hide their latency
                    // (each chain's blocks must be added in order) without spilling.
                    let g = match N {
                        1 => 4,
                        2 => 2,
                        _ => 1,
                    };
                    for k0 in (0..4).step_by(g) {
                        // Only this pass's 2·G·N accumulators are set (a whole zeroed
                        // array became a memset a pass, a few per cent of a batched step).
                        let mut acc: [[MaybeUninit<__m256>; N]; 8] =
                            [[MaybeUninit::uninit(); N]; 8];
                        for k in k0..k0 + g {
                            if c0 > 0 {
                                // The first chunk's pass wrote these chains.
                                acc[k] = chains[k];
                                acc[k + 4] = chains[k + 4];
                            } else {
                                acc[k] = [MaybeUninit::new(_mm256_setzero_ps()); N];
                                acc[k + 4] = [MaybeUninit::new(_mm256_setzero_ps()); N];
                            }
                        }
                        for i in 0..len {
                            let b = c0 + i;
                            for k in k0..k0 + g {
                                if h == 1 {
                                    prefetch(qs.wrapping_add(lines * (nb + b) + k));
                                    if Q8 {
                                        prefetch(qs.wrapping_add(lines * (nb + b) + k + 4));
                                    }
                                }
                                // Half `h` of line `lines * b + j`, `j < lines`: inside
                                // the strip's lines; `Line` is 64-byte aligned, so the
                                // half is 32-byte aligned as the aligned load needs.
                                let half =
                                    |j: usize| (qs.add(lines * b + j) as *const u8).add(32 * h);
                                let (wl, wh) = if Q8 {
                                    (
                                        _mm256_load_si256(half(k) as *const __m256i),
                                        _mm256_load_si256(half(k + 4) as *const __m256i),
                                    )
                                } else {
                                    let line = _mm256_load_si256(half(k) as *const __m256i);
                                    (
                                        _mm256_and_si256(line, lowmask),
                                        _mm256_and_si256(_mm256_srli_epi16::<4>(line), lowmask),
                                    )
                                };
                                // The unsigned operand: the nibbles, or |w| (llama.cpp's
                                // sign trick; -128 becomes 128 read unsigned).
                                let (ul, uh) = if Q8 {
                                    (_mm256_sign_epi8(wl, wl), _mm256_sign_epi8(wh, wh))
                                } else {
                                    (wl, wh)
                                };
                                for t in 0..N {
                                    // `b < nb <= a[t].len()`; dwords `k` and `k + 4` of
                                    // the block's 32 quant bytes; unaligned reads.
                                    let q = a[t].get_unchecked(b).qs.as_ptr() as *const i32;
                                    let mut al =
                                        _mm256_set1_epi32(std::ptr::read_unaligned(q.add(k)));
                                    let mut ah =
                                        _mm256_set1_epi32(std::ptr::read_unaligned(q.add(k + 4)));
                                    if Q8 {
                                        al = _mm256_sign_epi8(al, wl);
                                        ah = _mm256_sign_epi8(ah, wh);
                                    }
                                    let (xl, xh) = if VNNI {
                                        (
                                            _mm256_dpbusd_avx_epi32(zero, ul, al),
                                            _mm256_dpbusd_avx_epi32(zero, uh, ah),
                                        )
                                    } else {
                                        (
                                            _mm256_madd_epi16(_mm256_maddubs_epi16(ul, al), ones),
                                            _mm256_madd_epi16(_mm256_maddubs_epi16(uh, ah), ones),
                                        )
                                    };
                                    // `i < len`: the scale pass above wrote `scales[i][t]`.
                                    let s = scales[i][t].assume_init();
                                    // `k` and `k + 4` are this pass's chains, set above.
                                    let (l, h) =
                                        (acc[k][t].assume_init(), acc[k + 4][t].assume_init());
                                    acc[k][t].write(_mm256_fmadd_ps(s, _mm256_cvtepi32_ps(xl), l));
                                    acc[k + 4][t].write(_mm256_fmadd_ps(
                                        s,
                                        _mm256_cvtepi32_ps(xh),
                                        h,
                                    ));
                                }
                            }
                        }
                        chains[k0..k0 + g].copy_from_slice(&acc[k0..k0 + g]);
                        chains[k0 + 4..k0 + 4 + g].copy_from_slice(&acc[k0 + 4..k0 + 4 + g]);
                    }
                    c0 += len;
                }
                for t in 0..N {
                    // `nb > 0`: the first chunk wrote every chain.
                    let c = |k: usize| chains[k][t].assume_init();
                    // The row kernels' horizontal sum, lane by lane:
                    // ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), then the minimum term.
                    let sum = _mm256_add_ps(
                        _mm256_add_ps(_mm256_add_ps(c(0), c(4)), _mm256_add_ps(c(2), c(6))),
                        _mm256_add_ps(_mm256_add_ps(c(1), c(5)), _mm256_add_ps(c(3), c(7))),
                    );
                    let v = if Q8 { sum } else { _mm256_add_ps(sum, summ[t]) };
                    // `out[t]` points at sixteen floats; this half's eight.
                    _mm256_storeu_ps(out[t].add(8 * h), v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::strips::tests::{Q4Case, Q8Case, SHAPES};
    use super::*;

    /// The instruction sets this CPU can run (a message for each it cannot).
    fn families() -> Vec<Ymm> {
        let mut v = Vec::new();
        match Avx2::new() {
            Some(k) => v.push(Ymm::Avx2(k)),
            None => eprintln!("skipped: CPU lacks AVX2"),
        }
        match AvxVnni::new() {
            Some(k) => v.push(Ymm::AvxVnni(k)),
            None => eprintln!("AVX-VNNI absent on this CPU: its strip kernel not tested here"),
        }
        v
    }

    #[test]
    fn q4_1_strip_equals_the_row_kernel_bit_for_bit() {
        let Some(k2) = Avx2::new() else {
            eprintln!("skipped: CPU lacks AVX2");
            return;
        };
        fn check<const N: usize>(k: Ymm, k2: Avx2, rows: usize, nb: usize) {
            let c = Q4Case::<N>::new(rows, nb);
            c.check(
                k2,
                |s, a, out| dot_q4_1_strip::<N>(k, &c.strips, &c.mins, s, a, out),
                &format!("{k:?} N={N} nb={nb}"),
            );
        }
        for k in families() {
            for (rows, nb) in SHAPES {
                check::<1>(k, k2, rows, nb);
                check::<2>(k, k2, rows, nb);
                check::<3>(k, k2, rows, nb);
                check::<4>(k, k2, rows, nb);
            }
        }
    }

    #[test]
    fn q8_0_strip_equals_the_row_kernel_bit_for_bit_over_the_full_byte_range() {
        let Some(k2) = Avx2::new() else {
            eprintln!("skipped: CPU lacks AVX2");
            return;
        };
        fn check<const N: usize>(k: Ymm, k2: Avx2, rows: usize, nb: usize) {
            let c = Q8Case::<N>::new(rows, nb);
            c.check(
                k2,
                |s, a, out| dot_q8_0_strip::<N>(k, &c.strips, s, a, false, out),
                &format!("{k:?} N={N} nb={nb}"),
            );
        }
        for k in families() {
            for (rows, nb) in SHAPES {
                check::<1>(k, k2, rows, nb);
                check::<2>(k, k2, rows, nb);
                check::<3>(k, k2, rows, nb);
                check::<4>(k, k2, rows, nb);
            }
        }
    }

    #[test]
    fn narrow_q8_0_strip_equals_the_exact_reference_bit_for_bit() {
        if Avx2::new().is_none() {
            eprintln!("skipped: CPU lacks AVX2");
            return;
        }
        fn check<const N: usize>(k: Ymm, rows: usize, nb: usize) {
            let c = Q8Case::<N>::narrow(rows, nb);
            assert!(c.strips.narrow, "widened weights are narrow");
            let sums: Vec<Vec<i32>> = c.acts.iter().map(|a| offset_sums(a)).collect();
            c.check_exact(
                |s, a, out| {
                    let sums = std::array::from_fn(|t| &sums[t][..]);
                    dot_q8_0_strip_narrow::<N>(k, &c.strips, s, a, sums, out)
                },
                &format!("{k:?} N={N} nb={nb}"),
            );
        }
        assert!(!Q8Case::<1>::new(32, 2).strips.narrow, "full-range weights");
        for k in families() {
            for (rows, nb) in SHAPES {
                check::<1>(k, rows, nb);
                check::<2>(k, rows, nb);
                check::<3>(k, rows, nb);
                check::<4>(k, rows, nb);
            }
        }
    }

    #[test]
    fn exact_q8_0_strip_equals_the_reference_bit_for_bit_over_the_full_byte_range() {
        if Avx2::new().is_none() {
            eprintln!("skipped: CPU lacks AVX2");
            return;
        }
        fn check<const N: usize>(k: Ymm, rows: usize, nb: usize) {
            let c = Q8Case::<N>::new(rows, nb);
            c.check_exact(
                |s, a, out| dot_q8_0_strip::<N>(k, &c.strips, s, a, true, out),
                &format!("{k:?} N={N} nb={nb}"),
            );
        }
        for k in families() {
            for (rows, nb) in SHAPES {
                check::<1>(k, rows, nb);
                check::<2>(k, rows, nb);
                check::<4>(k, rows, nb);
            }
        }
    }
}
