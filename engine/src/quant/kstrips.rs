//! K-quant rows re-laid in strips of sixteen for an AVX-512 kernel that keeps one row per
//! 32-bit lane, as [`super::strips`] does for Q4_1 and Q8_0.
//!
//! Why: the row kernel ([`super::kdot_x86`]) unpacks a super-block of one row and runs
//! every token of a tile over it, then reduces each token's sums across the register's
//! lanes, super-block by super-block. Here a register holds sixteen rows: per scale group
//! (16 values) and token, four `vpdpbusd` of the rows' bytes against the token's four
//! broadcast dwords give the sixteen rows' exact group sums, one `vpmulld` scales them,
//! and the super-block's minimum sums are eight `vpdpwssd`; nothing is reduced across
//! lanes. The integer sums are the row kernel's exactly, and each lane's combine is
//! `kquants::combine`'s operations, so every result is bit-identical to the
//! scalar kernel (tests compare every bit).
//!
//! Layout, for strip `s` (rows `16s..16s+16`) and super-block `b`: 64 lines of 64 bytes,
//! byte `4r + j` of line `i` being row `r`'s unsigned value `4i + j` (the high bits
//! already added: one byte per value, twice a Q4_K block's bytes); the group scales as
//! `[group][row]` bytes; the minimum scales as `[pair][row][2]` i16 (a `vpdpwssd` lane's
//! two groups); the rows' `d` and `m`.

use super::dot_avx512::Avx512;
use super::kquants::{KMatrix, KType, Q8KBlock, QK_K};
use super::strips::{Line, STRIP};
use rayon::prelude::*;

/// Most tokens one call takes (sixteen accumulators beside the weights in 32 registers).
pub const TOKENS: usize = 8;

const GROUPS: usize = 16;
const LINES: usize = QK_K / 4;

/// The full strips of a K-quant matrix (rows past the last multiple of [`STRIP`] stay
/// with the row kernels).
#[derive(Clone, Debug, PartialEq)]
pub struct KStrips {
    pub strips: usize,
    /// Super-blocks per row.
    pub nb: usize,
    /// `[strip][block][LINES]`.
    pub qs: Vec<Line>,
    /// `[strip][block][group]`: the sixteen rows' scales of a group.
    pub sc: Vec<[i8; STRIP]>,
    /// `[strip][block][pair]`: row `r`'s minimum scales of groups `2p`, `2p + 1` at
    /// `2r`, `2r + 1`.
    pub mn: Vec<[i16; 2 * STRIP]>,
    /// `[strip][block]`: the rows' `d` and `m`.
    pub d: Vec<[f32; STRIP]>,
    pub m: Vec<[f32; STRIP]>,
}

impl KStrips {
    /// Re-lays the full strips of `w`.
    pub fn new(w: &KMatrix) -> Self {
        let nb = w.cols / QK_K;
        let strips = w.rows / STRIP;
        let n = strips * nb;
        let mut s = KStrips {
            strips,
            nb,
            qs: vec![Line([0; 64]); n * LINES],
            sc: vec![[0; STRIP]; n * GROUPS],
            mn: vec![[0; 2 * STRIP]; n * GROUPS / 2],
            d: vec![[0.0; STRIP]; n],
            m: vec![[0.0; STRIP]; n],
        };
        if n == 0 {
            return s;
        }
        // Strip by strip in parallel: each writes its own chunk of every vector.
        let KStrips {
            qs, sc, mn, d, m, ..
        } = &mut s;
        qs.par_chunks_mut(nb * LINES)
            .zip(sc.par_chunks_mut(nb * GROUPS))
            .zip(mn.par_chunks_mut(nb * GROUPS / 2))
            .zip(d.par_chunks_mut(nb))
            .zip(m.par_chunks_mut(nb))
            .enumerate()
            .for_each(|(st, ((((qs, sc), mn), d), m))| {
                for b in 0..nb {
                    for r in 0..STRIP {
                        let (blocks, hi) = w.row(st * STRIP + r);
                        let blk = &blocks[b];
                        let q = super::kquants::unpack(blk, hi.get(b));
                        for i in 0..LINES {
                            qs[b * LINES + i].0[4 * r..4 * r + 4]
                                .copy_from_slice(&q[4 * i..4 * i + 4]);
                        }
                        for g in 0..GROUPS {
                            sc[b * GROUPS + g][r] = blk.sc[g];
                            mn[b * GROUPS / 2 + g / 2][2 * r + g % 2] = blk.mn[g] as i16;
                        }
                        d[b][r] = blk.d;
                        m[b][r] = blk.m;
                    }
                }
            });
        s
    }

    /// Rows covered by full strips.
    pub fn rows(&self) -> usize {
        self.strips * STRIP
    }

    /// Bytes of the strips in memory.
    pub fn memory_bytes(&self) -> usize {
        self.qs.len() * 64
            + self.sc.len() * STRIP
            + self.mn.len() * 4 * STRIP
            + self.d.len() * 8 * STRIP
    }
}

/// (Q6_K, lines, group scales, minimum pairs, `d`, `m`, blocks per row, activations,
/// outputs) of one strip call.
type Args<'a, const N: usize> = (
    bool,
    *const Line,
    *const [i8; STRIP],
    *const [i16; 2 * STRIP],
    *const [f32; STRIP],
    *const [f32; STRIP],
    usize,
    [&'a [Q8KBlock]; N],
    [*mut f32; N],
);

/// Checks one call's shapes (at most `max_tokens` tokens) and points at strip `strip`.
fn args<'a, const N: usize>(
    kind: KType,
    w: &KStrips,
    strip: usize,
    max_tokens: usize,
    a: [&'a [Q8KBlock]; N],
    out: [&mut [f32]; N],
) -> Args<'a, N> {
    assert!(
        (1..=max_tokens).contains(&N),
        "K strip kernel: 1 to {max_tokens} tokens"
    );
    assert!(
        strip < w.strips,
        "K strip kernel: strip {strip} of {}",
        w.strips
    );
    assert!(
        a.iter().all(|r| r.len() >= w.nb),
        "K strip kernel: activation rows"
    );
    assert!(
        out.iter().all(|o| o.len() == STRIP),
        "K strip kernel: one output per row"
    );
    let at = strip * w.nb;
    (
        kind == KType::Q6K,
        w.qs[at * LINES..].as_ptr(),
        w.sc[at * GROUPS..].as_ptr(),
        w.mn[at * GROUPS / 2..].as_ptr(),
        w.d[at..].as_ptr(),
        w.m[at..].as_ptr(),
        w.nb,
        a,
        out.map(|o| o.as_mut_ptr()),
    )
}

/// Strip `strip` of a K-quant matrix of `kind` against `N` (1 to [`TOKENS`]) tokens'
/// Q8_K rows: `out[t][r]` for the strip's sixteen rows, each bit-identical to
/// [`super::kquants::dot_row`] of that row and token.
pub fn dot_strip<const N: usize>(
    _: Avx512,
    kind: KType,
    w: &KStrips,
    strip: usize,
    a: [&[Q8KBlock]; N],
    out: [&mut [f32]; N],
) {
    let args = args(kind, w, strip, TOKENS, a, out);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the `Avx512` token proves the target features; `args` checked `strip <
    // w.strips`, so the strip's `nb` blocks of lines, scales, minima and `d`/`m` lie
    // inside `w`'s vectors (sized by `KStrips::new` for `strips · nb` blocks), every
    // `a[t]` holds at least `nb` blocks and each `out[t]` sixteen floats.
    unsafe {
        imp::strip::<N>(args)
    }
}

/// Most tokens one call of the 256-bit kernel takes.
pub const TOKENS_AVX2: usize = 4;

/// [`dot_strip`] in 256-bit registers, half a strip (eight rows) at a time: a group's four
/// dwords of eight rows take `maddubs` in pairs (each pair's sums stay within an i16:
/// values below 64 against bytes), and `madd` by the rows' scales repeated in both i16
/// halves of a lane scales and sums them into the row's i32: the same integer sums.
pub fn dot_strip_avx2<const N: usize>(
    _: super::dot_avx2::Avx2,
    kind: KType,
    w: &KStrips,
    strip: usize,
    a: [&[Q8KBlock]; N],
    out: [&mut [f32]; N],
) {
    let args = args(kind, w, strip, TOKENS_AVX2, a, out);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the `Avx2` token proves AVX2 and FMA; the shapes as for `dot_strip`,
    // checked by `args`.
    unsafe {
        imp::strip_avx2::<N>(args)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
mod imp {
    use super::*;
    use std::arch::x86_64::*;

    /// One strip against `N` tokens.
    ///
    /// # Safety
    /// The CPU has the features; the pointers of `Args` point at one strip's `nb` blocks
    /// of lines, group scales, minimum pairs, `d` and `m`; each `a[t]` holds `nb` blocks
    /// and each `out[t]` sixteen floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn strip<const N: usize>((q6, qs, sc, mn, d, m, nb, a, out): Args<'_, N>) {
        // SAFETY: every intrinsic is AVX-512 F/BW/VNNI (this fn's features); the memory
        // accesses stay inside the strip's blocks and the activation blocks (the
        // caller's contract), as each comment says.
        unsafe {
            let zero = _mm512_setzero_si512();
            let mut acc = [_mm512_setzero_ps(); N];
            for b in 0..nb {
                let mut isum = [zero; N];
                for g in 0..GROUPS {
                    // Group `g`'s four lines of block `b`: line `LINES b + 4g + k`;
                    // `Line` is 64-byte aligned.
                    let w: [__m512i; 4] = std::array::from_fn(|k| {
                        _mm512_load_si512(qs.add(LINES * b + 4 * g + k) as *const __m512i)
                    });
                    // The sixteen rows' scales of the group, widened to i32.
                    let s = _mm512_cvtepi8_epi32(_mm_loadu_si128(
                        sc.add(GROUPS * b + g) as *const __m128i
                    ));
                    for t in 0..N {
                        // Values 16g..16g + 16 of token t's block `b` (`b < nb <=
                        // a[t].len()`): four unaligned dwords.
                        let p = a[t].get_unchecked(b).qs.as_ptr().add(16 * g) as *const i32;
                        let x = |k: usize| _mm512_set1_epi32(std::ptr::read_unaligned(p.add(k)));
                        let dot = _mm512_dpbusd_epi32(zero, w[0], x(0));
                        let dot = _mm512_dpbusd_epi32(dot, w[1], x(1));
                        let dot = _mm512_dpbusd_epi32(dot, w[2], x(2));
                        let dot = _mm512_dpbusd_epi32(dot, w[3], x(3));
                        isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(dot, s));
                    }
                }
                // The rows' `d` and `m` of block `b` (sixteen floats each, unaligned).
                let dv = _mm512_loadu_ps(d.add(b) as *const f32);
                let mv = _mm512_loadu_ps(m.add(b) as *const f32);
                let pairs: [__m512i; GROUPS / 2] = std::array::from_fn(|p| {
                    _mm512_loadu_si512(mn.add(GROUPS / 2 * b + p) as *const _)
                });
                for t in 0..N {
                    let ab = a[t].get_unchecked(b);
                    // Token t's group sums, two a dword (`bsums` is 16 i16).
                    let bs = ab.bsums.as_ptr() as *const i32;
                    let mut msum = zero;
                    for (p, mp) in pairs.iter().enumerate() {
                        let pair = _mm512_set1_epi32(std::ptr::read_unaligned(bs.add(p)));
                        msum = _mm512_dpwssd_epi32(msum, *mp, pair);
                    }
                    // `combine`, lane by lane.
                    let da = _mm512_set1_ps(ab.d);
                    let dd = _mm512_mul_ps(dv, da);
                    acc[t] = if q6 {
                        let i = _mm512_sub_epi32(isum[t], _mm512_slli_epi32::<5>(msum));
                        _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(i), acc[t])
                    } else {
                        let md = _mm512_xor_ps(_mm512_mul_ps(mv, da), _mm512_set1_ps(-0.0));
                        let x = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(isum[t]), acc[t]);
                        _mm512_fmadd_ps(md, _mm512_cvtepi32_ps(msum), x)
                    };
                }
            }
            for t in 0..N {
                // `out[t]` points at sixteen floats.
                _mm512_storeu_ps(out[t], acc[t]);
            }
        }
    }

    /// [`super::dot_strip_avx2`]'s kernel.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the pointers as for [`strip`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn strip_avx2<const N: usize>((q6, qs, sc, mn, d, m, nb, a, out): Args<'_, N>) {
        // SAFETY: every intrinsic is AVX2/FMA (this fn's features); the memory accesses
        // stay inside the strip's blocks and the activation blocks (the caller's
        // contract), as each comment says.
        unsafe {
            let zero = _mm256_setzero_si256();
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); N];
                for b in 0..nb {
                    let mut isum = [zero; N];
                    for g in 0..GROUPS {
                        // Half `h` (rows 8h..8h + 8) of group `g`'s four lines; `Line` is
                        // 64-byte aligned, so the half is 32-byte aligned.
                        let w: [__m256i; 4] = std::array::from_fn(|k| {
                            let line = qs.add(LINES * b + 4 * g + k) as *const u8;
                            _mm256_load_si256(line.add(32 * h) as *const __m256i)
                        });
                        // The eight rows' scales in both i16 halves of their lanes (8
                        // bytes of the group's sixteen, unaligned).
                        let s = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            (sc.add(GROUPS * b + g) as *const i8).add(8 * h) as *const __m128i,
                        ));
                        let s = _mm256_or_si256(
                            _mm256_and_si256(s, _mm256_set1_epi32(0xffff)),
                            _mm256_slli_epi32::<16>(s),
                        );
                        for t in 0..N {
                            // Values 16g..16g + 16 of token t's block `b` (`b < nb <=
                            // a[t].len()`): four unaligned dwords.
                            let p = a[t].get_unchecked(b).qs.as_ptr().add(16 * g) as *const i32;
                            let x = |k: usize| {
                                _mm256_maddubs_epi16(
                                    w[k],
                                    _mm256_set1_epi32(std::ptr::read_unaligned(p.add(k))),
                                )
                            };
                            let lo = _mm256_add_epi16(x(0), x(1));
                            let hi = _mm256_add_epi16(x(2), x(3));
                            let sum = _mm256_add_epi32(
                                _mm256_madd_epi16(lo, s),
                                _mm256_madd_epi16(hi, s),
                            );
                            isum[t] = _mm256_add_epi32(isum[t], sum);
                        }
                    }
                    // Rows 8h..8h + 8 of block `b`'s `d` and `m` (unaligned).
                    let dv = _mm256_loadu_ps((d.add(b) as *const f32).add(8 * h));
                    let mv = _mm256_loadu_ps((m.add(b) as *const f32).add(8 * h));
                    let pairs: [__m256i; GROUPS / 2] = std::array::from_fn(|p| {
                        _mm256_loadu_si256((mn.add(GROUPS / 2 * b + p) as *const i16).add(16 * h)
                            as *const __m256i)
                    });
                    for t in 0..N {
                        let ab = a[t].get_unchecked(b);
                        let bs = ab.bsums.as_ptr() as *const i32;
                        let mut msum = zero;
                        for (p, mp) in pairs.iter().enumerate() {
                            let pair = _mm256_set1_epi32(std::ptr::read_unaligned(bs.add(p)));
                            msum = _mm256_add_epi32(msum, _mm256_madd_epi16(*mp, pair));
                        }
                        let da = _mm256_set1_ps(ab.d);
                        let dd = _mm256_mul_ps(dv, da);
                        acc[t] = if q6 {
                            let i = _mm256_sub_epi32(isum[t], _mm256_slli_epi32::<5>(msum));
                            _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(i), acc[t])
                        } else {
                            let md = _mm256_xor_ps(_mm256_mul_ps(mv, da), _mm256_set1_ps(-0.0));
                            let x = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(isum[t]), acc[t]);
                            _mm256_fmadd_ps(md, _mm256_cvtepi32_ps(msum), x)
                        };
                    }
                }
                for t in 0..N {
                    // `out[t]` points at sixteen floats; rows 8h..8h + 8.
                    _mm256_storeu_ps(out[t].add(8 * h), acc[t]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::kquants::{dot_row, quantize_q8k, KIsa};
    use super::*;

    /// Every strip of random K-quant rows of each type through `kernel`, each (row,
    /// token) cell's bits against the scalar row kernel.
    #[allow(clippy::needless_range_loop)]
    fn check<const N: usize>(
        rows: usize,
        nb: usize,
        kernel: impl Fn(KType, &KStrips, usize, [&[Q8KBlock]; N], [&mut [f32]; N]),
    ) {
        let cols = nb * QK_K;
        for kind in [KType::Q4K, KType::Q5K, KType::Q6K] {
            let bytes = super::super::kquants::tests::random_bytes(kind, rows * nb, 17 + N as u64);
            let w = KMatrix::from_bytes(kind, rows, cols, &bytes);
            let s = KStrips::new(&w);
            let acts: Vec<Vec<Q8KBlock>> = (0..N)
                .map(|t| quantize_q8k(&super::super::test_values(300 + t as u64, cols, 3.0)))
                .collect();
            for strip in 0..s.strips {
                let mut out = [[0.0f32; STRIP]; N];
                {
                    let mut it = out.iter_mut();
                    let o = std::array::from_fn(|_| &mut it.next().unwrap()[..]);
                    kernel(kind, &s, strip, std::array::from_fn(|t| &acts[t][..]), o);
                }
                for r in 0..STRIP {
                    let (blocks, hi) = w.row(strip * STRIP + r);
                    for t in 0..N {
                        let want = dot_row(KIsa::Scalar, kind, blocks, hi, [&acts[t][..]])[0];
                        assert_eq!(
                            out[t][r].to_bits(),
                            want.to_bits(),
                            "{kind:?} N={N} strip {strip} row {r} token {t}: {} vs {want}",
                            out[t][r]
                        );
                    }
                }
            }
        }
    }

    const SHAPES: [(usize, usize); 3] = [(16, 1), (37, 3), (32, 6)];

    #[test]
    fn k_strips_equal_the_scalar_kernel_bit_for_bit() {
        let Some(k) = Avx512::new() else {
            eprintln!("no AVX-512 VNNI here: K strip kernel not tested");
            return;
        };
        for (rows, nb) in SHAPES {
            check::<1>(rows, nb, |kind, s, i, a, o| dot_strip(k, kind, s, i, a, o));
            check::<3>(rows, nb, |kind, s, i, a, o| dot_strip(k, kind, s, i, a, o));
            check::<8>(rows, nb, |kind, s, i, a, o| dot_strip(k, kind, s, i, a, o));
        }
    }

    #[test]
    fn k_strips_in_256_bit_registers_equal_the_scalar_kernel_bit_for_bit() {
        let Some(k) = super::super::dot_avx2::Avx2::new() else {
            eprintln!("skipped: CPU lacks AVX2");
            return;
        };
        for (rows, nb) in SHAPES {
            check::<1>(rows, nb, |kind, s, i, a, o| {
                dot_strip_avx2(k, kind, s, i, a, o)
            });
            check::<2>(rows, nb, |kind, s, i, a, o| {
                dot_strip_avx2(k, kind, s, i, a, o)
            });
            check::<4>(rows, nb, |kind, s, i, a, o| {
                dot_strip_avx2(k, kind, s, i, a, o)
            });
        }
    }
}
