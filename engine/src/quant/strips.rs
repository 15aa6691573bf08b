//! Q4_1 rows re-laid in strips of sixteen for an AVX-512 kernel that keeps one row per
//! 32-bit lane, and that kernel.
//!
//! Why: llama.cpp's `vec_dot_q4_1_q8_1` keeps, per (row, token), eight f32 chains — lane
//! `k` adds `fma(d_w·d_a, cvt(Σ_{j<4} q_w[4k+j]·q_a[4k+j]), acc_k)` block after block —
//! and ends with a fixed tree `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))` plus the minimum
//! term. The row-major tiles in [`super::dot_avx512`] hold two (row, token) pairs' eight
//! lanes in one register, so every 64 products cost a `vpdpbusd`, a convert, a multiply
//! (`d_w·d_a`) and an FMA. Here a register holds chain `k` of *sixteen rows* for one
//! token: `vpdpbusd` takes the sixteen rows' bytes `4k..4k+3` against the token's dword
//! `k` broadcast, and one multiply gives the sixteen rows' `d_w·d_a` for all eight
//! chains. Every chain sees the same operations in the same order, the final tree is
//! eight vertical adds instead of shuffles, and a 64-product step costs three
//! instructions instead of four. Tests compare every bit with the row-major kernels.
//!
//! Layout: for strip `s` (rows `16s..16s+16`) and block `b`, four 64-byte lines; byte
//! `4r + j` of line `k'` is row `r`'s `qs[4k' + j]`, so its low nibbles are chain `k'`'s
//! quants and its high nibbles chain `k' + 4`'s (Q8_0: eight lines, line `k'` holding the
//! signed bytes `4k'..4k'+3` of every row). The rows' scales are kept as
//! `[strip][block][row]` f16; the minima are [`super::strip_minima`]'s, the same shape.
//!
//! Q8_0 rows widened from Q4_0/Q5_0 take exact block sums instead of the lane chains
//! ([`dot_q8_0_strip`] with `exact`): the eight `vpdpbusd` of a block go into one integer
//! per row, converted once and scaled by one FMA ([`super::dot_scalar::dot_q8_0_exact`]).

use super::acts::ActBlock;
use super::dot_avx512::Avx512;
use super::{BlockQ4_1, BlockQ8_0, MIN_STRIP, QK};
use half::f16;

/// Rows per strip: one per 32-bit lane of a 512-bit register.
pub const STRIP: usize = 16;
const _: () = assert!(STRIP == MIN_STRIP);

/// Most tokens one strip-kernel call takes (two chains of each in registers).
pub const STRIP_TOKENS: usize = 8;

/// One 64-byte, 64-byte-aligned line of strip quants.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
pub struct Line(pub [u8; 64]);

/// The full strips of a Q4_1 or Q8_0 matrix (rows past the last multiple of [`STRIP`]
/// stay with the row-major kernels).
#[derive(Clone, Debug, PartialEq)]
pub struct Strips {
    /// Full strips.
    pub strips: usize,
    /// Blocks per row.
    pub nb: usize,
    /// Lines per (strip, block): 4 for Q4_1, 8 for Q8_0.
    pub lines: usize,
    /// `[strip][block][lines]` (see the module doc).
    pub qs: Vec<Line>,
    /// `[strip][block][row]` scales.
    pub d: Vec<f16>,
    /// Q8_0 only: every weight lies in -16..=15 (blocks widened from Q4_0 or Q5_0), so
    /// the AVX2 exact-sum kernel may offset them by 16 into unsigned bytes
    /// ([`super::strips_avx2::dot_q8_0_strip_narrow`]).
    pub narrow: bool,
}

impl Strips {
    /// Re-lays the full strips of `rows` row-major Q4_1 rows of `nb` blocks.
    pub fn q4_1(rows: usize, nb: usize, blocks: &[BlockQ4_1]) -> Self {
        Self::build(rows, nb, blocks, 4, |b| b.d, |b, k, r| b.qs[4 * k + r])
    }

    /// Re-lays the full strips of `rows` row-major Q8_0 rows of `nb` blocks.
    pub fn q8_0(rows: usize, nb: usize, blocks: &[BlockQ8_0]) -> Self {
        let mut s = Self::build(
            rows,
            nb,
            blocks,
            8,
            |b| b.d,
            |b, k, r| b.qs[4 * k + r] as u8,
        );
        s.narrow = blocks
            .iter()
            .all(|b| b.qs.iter().all(|q| (-16..=15).contains(q)));
        s
    }

    fn build<B>(
        rows: usize,
        nb: usize,
        blocks: &[B],
        lines: usize,
        scale: impl Fn(&B) -> f16,
        byte: impl Fn(&B, usize, usize) -> u8,
    ) -> Self {
        assert_eq!(blocks.len(), rows * nb, "strips: block count");
        let strips = rows / STRIP;
        let mut qs = vec![Line([0; 64]); strips * nb * lines];
        let mut d = vec![f16::ZERO; strips * nb * STRIP];
        for s in 0..strips {
            for b in 0..nb {
                let at = s * nb + b;
                for r in 0..STRIP {
                    let block = &blocks[(s * STRIP + r) * nb + b];
                    d[at * STRIP + r] = scale(block);
                    for k in 0..lines {
                        for j in 0..4 {
                            qs[at * lines + k].0[4 * r + j] = byte(block, k, j);
                        }
                    }
                }
            }
        }
        Strips {
            strips,
            nb,
            lines,
            qs,
            d,
            narrow: false,
        }
    }

    /// Rows covered by full strips.
    pub fn rows(&self) -> usize {
        self.strips * STRIP
    }

    /// Checks one kernel call's shapes (`lines` per block: 4 for Q4_1, 8 for Q8_0; at
    /// most `max_tokens` tokens, the kernel's registers); the strip's first (block) index.
    pub(super) fn check<const N: usize>(
        &self,
        lines: usize,
        max_tokens: usize,
        strip: usize,
        a: &[&[ActBlock]; N],
        out: &[&mut [f32]; N],
    ) -> usize {
        assert_eq!(self.lines, lines, "strip kernel: strips of another format");
        assert!(
            (1..=max_tokens).contains(&N),
            "strip kernel: 1 to {max_tokens} tokens"
        );
        assert!(
            strip < self.strips,
            "strip kernel: strip {strip} of {}",
            self.strips
        );
        assert!(
            a.iter().all(|r| r.len() >= self.nb),
            "activation row shorter than weight row"
        );
        assert!(
            out.iter().all(|o| o.len() == STRIP),
            "one output per strip row"
        );
        strip * self.nb
    }
}

/// Strip `strip` of a Q4_1 `w` (with `mins`, the matrix's [`super::strip_minima`])
/// against `N` (1 to [`STRIP_TOKENS`]) tokens: `out[t][r]` for the strip's sixteen rows,
/// each bit-identical to [`super::dot_avx2::dot_q4_1_q8_1`] of that row and token.
#[inline]
pub fn dot_q4_1_strip<const N: usize>(
    _: Avx512,
    w: &Strips,
    mins: &[f16],
    strip: usize,
    a: [&[ActBlock]; N],
    out: [&mut [f32]; N],
) {
    let at = w.check(4, STRIP_TOKENS, strip, &a, &out);
    assert!(mins.len() >= (at + w.nb) * STRIP, "strip kernel: minima");
    if w.nb == 0 {
        // Rows of no elements: empty sums.
        out.into_iter().for_each(|o| o.fill(0.0));
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the `Avx512` token proves the target features; `strip < w.strips` and the
    // strips are of Q4_1 (`w.check`), so the strip's `4 nb` lines and `16 nb` scales lie
    // inside `w.qs` and `w.d`, and its `16 nb` minima inside `mins` (asserted above);
    // every `a[t]` holds at least `nb` blocks, each `out[t]` sixteen floats, and `nb > 0`
    // (all checked above).
    unsafe {
        imp::strip::<N, false>(
            w.qs.as_ptr().add(at * 4),
            w.d.as_ptr().add(at * STRIP),
            mins.as_ptr().add(at * STRIP),
            [std::ptr::null(); N],
            w.nb,
            a,
            out.map(|o| o.as_mut_ptr()),
        )
    }
}

/// Strip `strip` of a Q8_0 `w` against `N` (1 to [`STRIP_TOKENS`]) tokens, `ua[t]`
/// being token `t`'s [`offset_quants`]: `out[t][r]`, each bit-identical to
/// [`super::dot_avx2::dot_q8_0_q8_0`] of that row and token, or with `exact` (blocks
/// widened from Q4_0/Q5_0) to [`super::dot_scalar::dot_q8_0_exact`]: a block is then
/// eight `vpdpbusd` into one integer sum per row, one convert and one FMA.
#[inline]
pub fn dot_q8_0_strip<const N: usize>(
    _: Avx512,
    w: &Strips,
    strip: usize,
    a: [&[ActBlock]; N],
    ua: [&[[u8; QK]]; N],
    exact: bool,
    out: [&mut [f32]; N],
) {
    let at = w.check(8, STRIP_TOKENS, strip, &a, &out);
    assert!(
        ua.iter().all(|c| c.len() >= w.nb),
        "strip kernel: offset activations"
    );
    if w.nb == 0 {
        out.into_iter().for_each(|o| o.fill(0.0));
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the `Avx512` token proves the target features; `strip < w.strips` and the
    // strips are of Q8_0 (`w.check`), so the strip's `8 nb` lines and `16 nb` scales lie
    // inside `w.qs` and `w.d`; every `a[t]` and `ua[t]` holds at least `nb` blocks, each
    // `out[t]` sixteen floats, and `nb > 0` (all checked above).
    unsafe {
        let (qs, d) = (w.qs.as_ptr().add(at * 8), w.d.as_ptr().add(at * STRIP));
        let (ua, out) = (ua.map(|c| c.as_ptr()), out.map(|o| o.as_mut_ptr()));
        if exact {
            imp::strip_exact::<N>(qs, d, ua, w.nb, a, out)
        } else {
            imp::strip::<N, true>(qs, d, std::ptr::null(), ua, w.nb, a, out)
        }
    }
}

/// Q8_0 activation quants plus 128, as unsigned bytes (`vpdpbusd` takes one operand
/// unsigned): what the Q8_0 strip kernel multiplies the signed weights by.
pub fn offset_quants(a: &[ActBlock]) -> Vec<[u8; QK]> {
    a.iter().map(|b| b.qs.map(|q| (q as u8) ^ 0x80)).collect()
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
mod imp {
    use super::*;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// A hint to fetch the line at `p` (which may lie past the data: a prefetch never
    /// faults).
    #[inline(always)]
    fn prefetch<T>(p: *const T) {
        // SAFETY: `_mm_prefetch` needs only SSE, part of the x86_64 baseline; it is a
        // hint that never dereferences or faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) };
    }

    /// Blocks whose `d_w·d_a` products are formed ahead of the chains that use them.
    const CHUNK: usize = 32;

    /// One strip of exact-sum Q8_0 rows against `N` tokens: per block, `-128 Σ w` of every
    /// row (shared by the tokens), then per token eight `vpdpbusd` of the offset
    /// activations in two chains, their exact sum converted, and one FMA by `d_w·d_a`.
    ///
    /// # Safety
    /// The CPU has the features; `qs` and `d` point at one strip's `8 nb` lines and
    /// `16 nb` scales, each `ua[t]` at `nb` blocks of offset quants; each `a[t]` holds
    /// `nb` blocks and each `out[t]` sixteen floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn strip_exact<const N: usize>(
        qs: *const Line,
        d: *const f16,
        ua: [*const [u8; QK]; N],
        nb: usize,
        a: [&[ActBlock]; N],
        out: [*mut f32; N],
    ) {
        let offset = _mm512_set1_epi8(-128i8);
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            let w: [__m512i; 8] = std::array::from_fn(|k| {
                prefetch(qs.wrapping_add(8 * (nb + b) + k));
                // SAFETY: `b < nb` and `k < 8`: line `8 b + k` is among the strip's `8 nb`
                // at `qs` (the caller's contract); `Line` is 64-byte aligned.
                unsafe { _mm512_load_si512(qs.add(8 * b + k) as *const __m512i) }
            });
            // Each lane starts at -128 · Σ w of its row's block, so adding the offset
            // activations' products ends at the exact Σ w·a.
            let (mut c0, mut c1) = (zero, zero);
            for k in (0..8).step_by(2) {
                c0 = _mm512_dpbusd_epi32(c0, offset, w[k]);
                c1 = _mm512_dpbusd_epi32(c1, offset, w[k + 1]);
            }
            let start = _mm512_sub_epi32(zero, _mm512_add_epi32(c0, c1));
            if b % 2 == 0 {
                prefetch(d.wrapping_add(STRIP * (nb + b)));
            }
            // SAFETY: `b < nb`: block `b`'s sixteen scales lie inside the strip's `16 nb`
            // at `d` (the caller's contract); an unaligned 32-byte load.
            let dw =
                _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(d.add(STRIP * b) as *const __m256i) });
            for t in 0..N {
                // SAFETY: `b < nb`: `ua[t]` points at `nb` blocks of 32 bytes (the
                // caller's contract).
                let q = unsafe { (*ua[t].add(b)).as_ptr() as *const i32 };
                let word = |k: usize| {
                    // SAFETY: `k < 8`: dword `k` of the block's 32 bytes; unaligned.
                    _mm512_set1_epi32(unsafe { std::ptr::read_unaligned(q.add(k)) })
                };
                let (mut s0, mut s1) = (start, zero);
                for k in (0..8).step_by(2) {
                    s0 = _mm512_dpbusd_epi32(s0, word(k), w[k]);
                    s1 = _mm512_dpbusd_epi32(s1, word(k + 1), w[k + 1]);
                }
                let x = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                // SAFETY: `b < nb <= a[t].len()` (the caller's contract).
                let da = _mm512_set1_ps(unsafe { a[t].get_unchecked(b) }.d);
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), x, acc[t]);
            }
        }
        for t in 0..N {
            // SAFETY: `out[t]` points at sixteen floats (the caller's contract).
            unsafe { _mm512_storeu_ps(out[t], acc[t]) };
        }
    }

    /// One strip against `N` tokens; `Q8` picks the format (Q8_0 lines and `ua`, or
    /// Q4_1 lines and `mins`).
    ///
    /// # Safety
    /// The CPU has the features; `nb > 0`; `qs` and `d` point at one strip's `lines · nb`
    /// lines and `16 nb` scales, and for Q4_1 `mins` at its `16 nb` minima, for Q8_0
    /// each `ua[t]` at `nb` blocks of offset quants; each `a[t]` holds `nb` blocks and each `out[t]`
    /// sixteen floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn strip<const N: usize, const Q8: bool>(
        qs: *const Line,
        d: *const f16,
        mins: *const f16,
        ua: [*const [u8; QK]; N],
        nb: usize,
        a: [&[ActBlock]; N],
        out: [*mut f32; N],
    ) {
        let lines = if Q8 { 8 } else { 4 };
        let lowmask = _mm512_set1_epi8(0x0f);
        let offset = _mm512_set1_epi8(-128i8);
        // Chain k of every token, kept here between chunks (written by the first).
        let mut chains: [[MaybeUninit<__m512>; N]; 8] = [[MaybeUninit::uninit(); N]; 8];
        let mut summ = [_mm512_setzero_ps(); N];
        let mut scales: [[MaybeUninit<__m512>; N]; CHUNK] = [[MaybeUninit::uninit(); N]; CHUNK];
        let mut c0 = 0;
        while c0 < nb {
            let len = (nb - c0).min(CHUNK);
            // d_w·d_a of each (block, token), sixteen rows at once; for Q4_1 the minimum
            // terms (mul then add, block order) on the way.
            for i in 0..len {
                let b = c0 + i;
                if b % 2 == 0 {
                    // The next strip's scales and minima (two blocks a line).
                    prefetch(d.wrapping_add(STRIP * (nb + b)));
                    if !Q8 {
                        prefetch(mins.wrapping_add(STRIP * (nb + b)));
                    }
                }
                // SAFETY: `b < nb`: block `b`'s sixteen scales (32 bytes) lie inside the
                // strip's `16 nb` at `d` (the caller's contract); an unaligned load.
                let dw = _mm512_cvtph_ps(unsafe {
                    _mm256_loadu_si256(d.add(STRIP * b) as *const __m256i)
                });
                for t in 0..N {
                    // SAFETY: `b < nb <= a[t].len()` (the caller's contract).
                    let ab = unsafe { a[t].get_unchecked(b) };
                    scales[i][t].write(_mm512_mul_ps(dw, _mm512_set1_ps(ab.d)));
                }
                if !Q8 {
                    // SAFETY: Q4_1: `mins` points at the strip's `16 nb` minima (the
                    // caller's contract) and `b < nb`; an unaligned 32-byte load.
                    let mw = _mm512_cvtph_ps(unsafe {
                        _mm256_loadu_si256(mins.add(STRIP * b) as *const __m256i)
                    });
                    for t in 0..N {
                        // SAFETY: `b < nb <= a[t].len()` (the caller's contract).
                        let s = _mm512_set1_ps(unsafe { a[t].get_unchecked(b) }.s);
                        summ[t] = _mm512_add_ps(summ[t], _mm512_mul_ps(mw, s));
                    }
                }
            }
            // Chains k and k + 4 of `G` values of k in one pass (a Q4_1 line's low and
            // high nibbles, or two Q8_0 lines): for one or two tokens, several chain pairs
            // a pass, so enough FMA chains run at once to hide their latency (each chain
            // adds its blocks in order).
            let g = match N {
                1 => 4,
                2 => 2,
                _ => 1,
            };
            for k0 in (0..4).step_by(g) {
                // Only this pass's 2·G·N accumulators are set: a whole zeroed array
                // became a memset a pass.
                let mut acc: [[MaybeUninit<__m512>; N]; 8] = [[MaybeUninit::uninit(); N]; 8];
                for k in k0..k0 + g {
                    if c0 > 0 {
                        // The first chunk's pass wrote chains `k` and `k + 4` of every token.
                        acc[k] = chains[k];
                        acc[k + 4] = chains[k + 4];
                    } else {
                        acc[k] = [MaybeUninit::new(_mm512_setzero_ps()); N];
                        acc[k + 4] = [MaybeUninit::new(_mm512_setzero_ps()); N];
                    }
                }
                for i in 0..len {
                    let b = c0 + i;
                    for k in k0..k0 + g {
                        // The next strip's lines of this (block, pass): streamed in while
                        // this strip computes, so the next call finds them in cache.
                        prefetch(qs.wrapping_add(lines * (nb + b) + k));
                        // Q8_0: the weights are signed, the activations offset by 128; each
                        // lane starts at -128 · Σ w of its four bytes, so it ends at the
                        // exact Σ w·a. (Q4_1 lanes start at zero.)
                        let zero = _mm512_setzero_si512();
                        let (mut zl, mut zh) = (zero, zero);
                        let (wl, wh) = if Q8 {
                            prefetch(qs.wrapping_add(lines * (nb + b) + k + 4));
                            // SAFETY: `b < nb` and `k + 4 < 8 == lines`: lines `lines * b + k`
                            // and `+ 4` are among the strip's `lines · nb` at `qs` (the
                            // caller's contract); `Line` is 64-byte aligned, as the aligned
                            // load needs.
                            let (wl, wh) = unsafe {
                                (
                                    _mm512_load_si512(qs.add(lines * b + k) as *const __m512i),
                                    _mm512_load_si512(qs.add(lines * b + k + 4) as *const __m512i),
                                )
                            };
                            zl = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, wl));
                            zh = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, wh));
                            (wl, wh)
                        } else {
                            // SAFETY: `b < nb` and `k < 4 == lines`: inside the strip's lines
                            // (the caller's contract); `Line` is 64-byte aligned.
                            let line = unsafe {
                                _mm512_load_si512(qs.add(lines * b + k) as *const __m512i)
                            };
                            (
                                _mm512_and_si512(line, lowmask),
                                _mm512_and_si512(_mm512_srli_epi16::<4>(line), lowmask),
                            )
                        };
                        for t in 0..N {
                            // SAFETY: `b < nb`, and for Q8_0 `ua[t]` points at `nb` blocks of
                            // offset quants, for Q4_1 `a[t]` holds `nb` blocks (the caller's
                            // contract): `q` points at one block's 32 quant bytes.
                            let q = unsafe {
                                if Q8 {
                                    (*ua[t].add(b)).as_ptr() as *const i32
                                } else {
                                    a[t].get_unchecked(b).qs.as_ptr() as *const i32
                                }
                            };
                            // SAFETY: `k + 4 < 8`: both dwords are inside those 32 bytes;
                            // unaligned reads.
                            let (al, ah) = unsafe {
                                (
                                    _mm512_set1_epi32(std::ptr::read_unaligned(q.add(k))),
                                    _mm512_set1_epi32(std::ptr::read_unaligned(q.add(k + 4))),
                                )
                            };
                            // vpdpbusd takes its first operand unsigned: the nibbles (Q4_1) or
                            // the offset activations against the signed weights (Q8_0).
                            let (xl, xh) = if Q8 {
                                (
                                    _mm512_dpbusd_epi32(zl, al, wl),
                                    _mm512_dpbusd_epi32(zh, ah, wh),
                                )
                            } else {
                                (
                                    _mm512_dpbusd_epi32(zl, wl, al),
                                    _mm512_dpbusd_epi32(zh, wh, ah),
                                )
                            };
                            let xl = _mm512_cvtepi32_ps(xl);
                            let xh = _mm512_cvtepi32_ps(xh);
                            // SAFETY: `i < len`: the scale pass above wrote `scales[i][t]`.
                            let s = unsafe { scales[i][t].assume_init() };
                            // SAFETY: `k` and `k + 4` are this pass's chains, set above.
                            let (l, h) =
                                unsafe { (acc[k][t].assume_init(), acc[k + 4][t].assume_init()) };
                            acc[k][t].write(_mm512_fmadd_ps(s, xl, l));
                            acc[k + 4][t].write(_mm512_fmadd_ps(s, xh, h));
                        }
                    }
                }
                chains[k0..k0 + g].copy_from_slice(&acc[k0..k0 + g]);
                chains[k0 + 4..k0 + 4 + g].copy_from_slice(&acc[k0 + 4..k0 + 4 + g]);
            }
            c0 += len;
        }
        for t in 0..N {
            // SAFETY: `nb > 0` (the caller's contract), so the first chunk wrote every
            // chain.
            let c = |k: usize| unsafe { chains[k][t].assume_init() };
            let sum = _mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(c(0), c(4)), _mm512_add_ps(c(2), c(6))),
                _mm512_add_ps(_mm512_add_ps(c(1), c(5)), _mm512_add_ps(c(3), c(7))),
            );
            // llama.cpp adds the Q4_1 minimum term after the tree; Q8_0 has none.
            let v = if Q8 { sum } else { _mm512_add_ps(sum, summ[t]) };
            // SAFETY: `out[t]` points at sixteen floats (the caller's contract).
            unsafe { _mm512_storeu_ps(out[t], v) };
        }
    }
}

/// Test cases shared by the strip kernels of both register widths: weights and
/// activations of known shapes, and the cell-by-cell comparison with the row kernels.
#[cfg(test)]
pub(super) mod tests {
    use super::super::acts::QuantizedActs;
    use super::super::dot_avx2::{self, Avx2};
    use super::super::{quantize_block_q4_1, strip_minima, BlockQ8_0, WeightFormat, QK};
    use super::*;

    /// Values in `[-scale / 2, scale / 2)`.
    fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        super::super::test_values(seed, n, scale / 2.0)
    }

    /// Row counts and blocks per row: one chunk, several chunks with a ragged last one,
    /// a ragged row tail.
    pub(crate) const SHAPES: [(usize, usize); 4] = [(16, 1), (32, 18), (48, 48), (37, 70)];

    /// A Q4_1 matrix of `rows` rows of `nb` blocks with its strips and minima, and `N`
    /// tokens of Q8_1 activations.
    pub(crate) struct Q4Case<const N: usize> {
        pub w: Vec<BlockQ4_1>,
        pub strips: Strips,
        pub mins: Vec<f16>,
        pub acts: Vec<Vec<ActBlock>>,
    }

    impl<const N: usize> Q4Case<N> {
        pub(crate) fn new(rows: usize, nb: usize) -> Self {
            let cols = nb * QK;
            let w: Vec<BlockQ4_1> = values(3, rows * cols, 2.0)
                .chunks_exact(QK)
                .map(quantize_block_q4_1)
                .collect();
            let acts = (0..N)
                .map(|t| {
                    match QuantizedActs::new(
                        WeightFormat::Q4_1,
                        cols,
                        &values(100 + t as u64, cols, 6.0),
                    ) {
                        QuantizedActs::Q8_1 { blocks, .. } => blocks,
                        _ => unreachable!("Q4_1 takes Q8_1 activations"),
                    }
                })
                .collect();
            Q4Case {
                strips: Strips::q4_1(rows, nb, &w),
                mins: strip_minima(rows, nb, &w),
                w,
                acts,
            }
        }

        /// Every strip through `kernel`, each cell's bits against the AVX2 row kernel.
        pub(crate) fn check(
            &self,
            k2: Avx2,
            kernel: impl Fn(usize, [&[ActBlock]; N], [&mut [f32]; N]),
            what: &str,
        ) {
            let nb = self.strips.nb;
            each_cell::<N>(
                self.strips.strips,
                |s, out| kernel(s, std::array::from_fn(|t| &self.acts[t][..]), out),
                |row, t| {
                    dot_avx2::dot_q4_1_q8_1(
                        k2,
                        &self.w[row * nb..(row + 1) * nb],
                        [&self.acts[t][..]],
                    )[0]
                },
                what,
            );
        }
    }

    /// A Q8_0 matrix with its strips and `N` tokens of Q8_0 activations: weights over all
    /// of -128..=127 (zero included), activations over -127..=127, all that Q8_0
    /// quantisation gives (llama.cpp's AVX2 sign trick, which the AVX2 kernel keeps,
    /// differs from the exact product only for -128 times -128).
    pub(crate) struct Q8Case<const N: usize> {
        pub w: Vec<BlockQ8_0>,
        pub strips: Strips,
        pub acts: Vec<Vec<ActBlock>>,
    }

    impl<const N: usize> Q8Case<N> {
        pub(crate) fn new(rows: usize, nb: usize) -> Self {
            fn bytes(seed: u64, n: usize, min: i8) -> Vec<i8> {
                values(seed, n, 1.0)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match i % 17 {
                        0 => min,
                        1 => 127,
                        2 => 0,
                        _ => ((v + 0.5) * 254.99 - 127.0) as i8,
                    })
                    .collect()
            }
            let scales = values(5, rows * nb + N * nb, 0.02);
            let wq = bytes(6, rows * nb * QK, -128);
            let w: Vec<BlockQ8_0> = (0..rows * nb)
                .map(|i| BlockQ8_0 {
                    d: f16::from_f32(scales[i]),
                    qs: std::array::from_fn(|j| wq[i * QK + j]),
                })
                .collect();
            let aq = bytes(7, N * nb * QK, -127);
            let acts = (0..N)
                .map(|t| {
                    (0..nb)
                        .map(|b| ActBlock {
                            d: f16::from_f32(scales[rows * nb + t * nb + b]).to_f32(),
                            s: 0.0,
                            qs: std::array::from_fn(|j| aq[(t * nb + b) * QK + j]),
                        })
                        .collect()
                })
                .collect();
            Q8Case {
                strips: Strips::q8_0(rows, nb, &w),
                w,
                acts,
            }
        }

        /// As [`Q8Case::new`], with every weight in -16..=15 (the extremes included) as in
        /// blocks widened from Q5_0, and activations over -127..=127.
        pub(crate) fn narrow(rows: usize, nb: usize) -> Self {
            let mut c = Self::new(rows, nb);
            for (i, b) in c.w.iter_mut().enumerate() {
                for (j, q) in b.qs.iter_mut().enumerate() {
                    *q = match (i + j) % 11 {
                        0 => -16,
                        1 => 15,
                        _ => (*q as i32).rem_euclid(32) as i8 - 16,
                    };
                }
            }
            c.strips = Strips::q8_0(rows, nb, &c.w);
            c
        }

        /// Every strip through `kernel`, each cell's bits against `want` of the cell's
        /// weight row and activation row.
        fn check_with(
            &self,
            kernel: impl Fn(usize, [&[ActBlock]; N], [&mut [f32]; N]),
            want: impl Fn(&[BlockQ8_0], &[ActBlock]) -> f32,
            what: &str,
        ) {
            let nb = self.strips.nb;
            each_cell::<N>(
                self.strips.strips,
                |s, out| kernel(s, std::array::from_fn(|t| &self.acts[t][..]), out),
                |row, t| want(&self.w[row * nb..(row + 1) * nb], &self.acts[t][..]),
                what,
            );
        }

        /// Every strip through `kernel`, each cell's bits against the AVX2 row kernel.
        pub(crate) fn check(
            &self,
            k2: Avx2,
            kernel: impl Fn(usize, [&[ActBlock]; N], [&mut [f32]; N]),
            what: &str,
        ) {
            self.check_with(kernel, |w, a| dot_avx2::dot_q8_0_q8_0(k2, w, [a])[0], what);
        }

        /// Every strip through `kernel`, each cell's bits against the exact-sum reference
        /// kernel, and that kernel against the exact product within one rounding a block.
        pub(crate) fn check_exact(
            &self,
            kernel: impl Fn(usize, [&[ActBlock]; N], [&mut [f32]; N]),
            what: &str,
        ) {
            self.check_with(
                kernel,
                |w, a| {
                    let v = super::super::dot_scalar::dot_q8_0_exact(w, a);
                    let exact: f64 = w
                        .iter()
                        .zip(a)
                        .map(|(bw, ba)| {
                            let isum: i64 = bw
                                .qs
                                .iter()
                                .zip(&ba.qs)
                                .map(|(&x, &y)| x as i64 * y as i64)
                                .sum();
                            bw.d.to_f64() * ba.d as f64 * isum as f64
                        })
                        .sum();
                    let scale: f64 = w
                        .iter()
                        .zip(a)
                        .map(|(bw, ba)| (bw.d.to_f64() * ba.d as f64).abs() * 32.0 * 127.0 * 128.0)
                        .sum();
                    assert!(
                        (v as f64 - exact).abs() <= 1e-6 * scale,
                        "{what}: {v} vs {exact}"
                    );
                    v
                },
                what,
            );
        }
    }

    /// Runs `kernel` on every strip and compares each (token, row) cell's bits with
    /// `want(row, token)`.
    fn each_cell<const N: usize>(
        strips: usize,
        kernel: impl Fn(usize, [&mut [f32]; N]),
        want: impl Fn(usize, usize) -> f32,
        what: &str,
    ) {
        for s in 0..strips {
            let mut out = [[0.0f32; STRIP]; N];
            {
                let mut o = out.iter_mut();
                kernel(s, std::array::from_fn(|_| &mut o.next().unwrap()[..]));
            }
            for (t, cells) in out.iter().enumerate() {
                for (r, got) in cells.iter().enumerate() {
                    let w = want(s * STRIP + r, t);
                    assert_eq!(
                        got.to_bits(),
                        w.to_bits(),
                        "{what} strip {s} row {r} token {t}"
                    );
                }
            }
        }
    }

    #[test]
    fn strip_kernel_equals_the_avx2_kernel_bit_for_bit() {
        let (Some(k), Some(k2)) = (Avx512::new(), Avx2::new()) else {
            eprintln!("no AVX-512 VNNI here: strip kernel not tested");
            return;
        };
        fn check<const N: usize>(k: Avx512, k2: Avx2, rows: usize, nb: usize) {
            let c = Q4Case::<N>::new(rows, nb);
            c.check(
                k2,
                |s, a, out| dot_q4_1_strip::<N>(k, &c.strips, &c.mins, s, a, out),
                &format!("N={N} nb={nb}"),
            );
        }
        for (rows, nb) in SHAPES {
            check::<1>(k, k2, rows, nb);
            check::<2>(k, k2, rows, nb);
            check::<3>(k, k2, rows, nb);
            check::<8>(k, k2, rows, nb);
        }
    }

    #[test]
    fn q8_0_strip_kernel_equals_the_avx2_kernel_bit_for_bit_over_the_full_byte_range() {
        let (Some(k), Some(k2)) = (Avx512::new(), Avx2::new()) else {
            eprintln!("no AVX-512 VNNI here: strip kernel not tested");
            return;
        };
        fn check<const N: usize>(k: Avx512, k2: Avx2, rows: usize, nb: usize) {
            let c = Q8Case::<N>::new(rows, nb);
            let ua: Vec<Vec<[u8; QK]>> = c.acts.iter().map(|a| offset_quants(a)).collect();
            c.check(
                k2,
                |s, a, out| {
                    let u = std::array::from_fn(|t| &ua[t][..]);
                    dot_q8_0_strip::<N>(k, &c.strips, s, a, u, false, out)
                },
                &format!("N={N} nb={nb}"),
            );
        }
        for (rows, nb) in SHAPES {
            check::<1>(k, k2, rows, nb);
            check::<2>(k, k2, rows, nb);
            check::<5>(k, k2, rows, nb);
            check::<8>(k, k2, rows, nb);
        }
    }

    #[test]
    fn exact_q8_0_strip_kernel_equals_the_reference_bit_for_bit_over_the_full_byte_range() {
        let Some(k) = Avx512::new() else {
            eprintln!("no AVX-512 VNNI here: exact-sum strip kernel not tested");
            return;
        };
        fn check<const N: usize>(k: Avx512, rows: usize, nb: usize) {
            let c = Q8Case::<N>::new(rows, nb);
            let ua: Vec<Vec<[u8; QK]>> = c.acts.iter().map(|a| offset_quants(a)).collect();
            c.check_exact(
                |s, a, out| {
                    let u = std::array::from_fn(|t| &ua[t][..]);
                    dot_q8_0_strip::<N>(k, &c.strips, s, a, u, true, out)
                },
                &format!("N={N} nb={nb}"),
            );
        }
        for (rows, nb) in SHAPES {
            check::<1>(k, rows, nb);
            check::<3>(k, rows, nb);
            check::<8>(k, rows, nb);
        }
    }

    #[test]
    fn layout_puts_row_bytes_in_their_lanes() {
        let w: Vec<BlockQ4_1> = (0..32)
            .map(|i| BlockQ4_1 {
                d: f16::from_f32(i as f32),
                m: f16::ZERO,
                qs: std::array::from_fn(|j| (i * 16 + j) as u8),
            })
            .collect();
        let s = Strips::q4_1(32, 1, &w);
        assert_eq!(s.strips, 2);
        assert_eq!(s.qs[4 + 2].0[4 * 3 + 1], (19 * 16 + 9) as u8); // strip 1 row 3 qs[9]
        assert_eq!(s.d[STRIP + 5], f16::from_f32(21.0));
    }
}
