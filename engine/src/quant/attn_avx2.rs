//! AVX2 attention kernels for a block of query rows (the tokens of a prefill block times
//! the query heads that share a KV head): each f16 key or value row is widened once for
//! every row of the block rather than once a token, and the block's accumulators stay in
//! registers across the keys.
//!
//! Each result is computed with the operations, in the order, of the one-token kernels
//! [`dot_avx2::dot_rows_f16`] and [`dot_avx2::weighted_rows_f16`], so a token's output is
//! the same bits whether it is computed alone (decode) or in a block (prefill); the tests
//! check it bit for bit. The kernels take head widths that are a multiple of 16 (every
//! supported family's); the caller keeps the one-token path for others.

use super::dot_avx2::{self, Avx2};

/// Keys a kernel pass takes before moving to the next group of rows: their rows
/// (`KEY_CHUNK * hd * 2` bytes) stay in the L1/L2 caches while every group reads them.
const KEY_CHUNK: usize = 64;

/// True when the block kernels take this head width.
pub fn width_ok(hd: usize) -> bool {
    hd > 0 && hd.is_multiple_of(16)
}

/// `out[r * ostride + j] = scale * (q[r] · row_j)` for every query row `r` and key row
/// `row_j = src[j * stride + offset..][..hd]`, `j < n`: bit-identical to
/// [`dot_avx2::dot_rows_f16`] on each query row.
#[allow(clippy::too_many_arguments)]
pub fn scores(
    _: Avx2,
    q: &[&[f32]],
    src: &[half::f16],
    stride: usize,
    offset: usize,
    scale: f32,
    n: usize,
    out: &mut [f32],
    ostride: usize,
) {
    check(q.iter().map(|q| q.len()), src, stride, offset, n);
    assert!(
        q.is_empty() || ((q.len() - 1) * ostride + n <= out.len() && n <= ostride),
        "attention block scores: output shape"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the token proves AVX2, FMA and F16C; `check` asserted every query row is
    // `hd` long with `hd % 16 == 0` and every key row `j < n` lies inside `src`; the
    // assertion above keeps every write (`r * ostride + j`, `r < q.len()`, `j < n`)
    // inside `out`.
    unsafe {
        imp::scores(q, src, stride, offset, scale, n, out.as_mut_ptr(), ostride)
    }
}

/// `out[r] += Σ_j p[r][j] * row_j` over the f16 rows `row_j` (as in [`scores`]), in
/// order of `j < n`: bit-identical to [`dot_avx2::weighted_rows_f16`] on each row.
pub fn weighted(
    _: Avx2,
    p: &[&[f32]],
    src: &[half::f16],
    stride: usize,
    offset: usize,
    out: &mut [&mut [f32]],
) {
    assert_eq!(p.len(), out.len(), "attention block weighted: rows");
    let n = p.first().map_or(0, |p| p.len());
    assert!(
        p.iter().all(|p| p.len() == n),
        "attention block weighted: probability rows differ in length"
    );
    check(out.iter().map(|o| o.len()), src, stride, offset, n);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the token proves AVX2, FMA and F16C; every `p[r]` is `n` long (asserted),
    // `check` asserted every output row is `hd` long with `hd % 16 == 0` and every value
    // row `j < n` lies inside `src`.
    unsafe {
        imp::weighted(p, src, stride, offset, out)
    }
}

/// The shapes both kernels need: rows of one width `hd` that [`width_ok`] takes, and `n`
/// f16 rows of it inside `src`.
fn check(
    mut widths: impl Iterator<Item = usize>,
    src: &[half::f16],
    stride: usize,
    offset: usize,
    n: usize,
) {
    let Some(hd) = widths.next() else { return };
    assert!(
        width_ok(hd) && widths.all(|w| w == hd),
        "attention block: head width {hd}"
    );
    dot_avx2::check_f16_rows(src, stride, offset, hd, n);
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    /// Four horizontal sums, each as [`super::dot_avx2::hsum`] computes its one:
    /// `((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7))`, lane `h` for `v[h]`.
    ///
    /// # Safety
    /// The CPU has AVX (the callers are kernels with `#[target_feature]` AVX2).
    #[inline(always)]
    unsafe fn hsum4(v: [__m256; 4]) -> __m128 {
        // SAFETY: AVX is this fn's precondition; register operations only.
        unsafe {
            // [a.lo + a.hi | b.lo + b.hi]: s_i = v_i + v_{i+4}.
            let ab = _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(v[0], v[1]),
                _mm256_permute2f128_ps::<0x31>(v[0], v[1]),
            );
            let cd = _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(v[2], v[3]),
                _mm256_permute2f128_ps::<0x31>(v[2], v[3]),
            );
            // t0 = s0 + s2, t1 = s1 + s3: low half [a, a, c, c], high [b, b, d, d].
            let t = _mm256_add_ps(
                _mm256_shuffle_ps::<0b01_00_01_00>(ab, cd),
                _mm256_shuffle_ps::<0b11_10_11_10>(ab, cd),
            );
            // t0 + t1: low half [a, c, ..], high [b, d, ..].
            let r = _mm256_add_ps(
                _mm256_shuffle_ps::<0b10_00_10_00>(t, t),
                _mm256_shuffle_ps::<0b11_01_11_01>(t, t),
            );
            _mm_unpacklo_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps::<1>(r))
        }
    }

    /// # Safety
    /// The CPU has F16C; `p` points at eight f16 values.
    #[inline(always)]
    unsafe fn widen(p: *const u16) -> __m256 {
        // SAFETY: F16C is this fn's precondition; an unaligned 16-byte load of the eight
        // values the caller vouches for.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }

    /// # Safety
    /// The CPU has AVX2, FMA and F16C; every `q[r]` is `hd` long with `hd % 16 == 0`;
    /// rows `j < n` of `src` (`src[j * stride + offset..][..hd]`) lie inside it; `out`
    /// holds `(q.len() - 1) * ostride + n` values and `n <= ostride`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores(
        q: &[&[f32]],
        src: &[half::f16],
        stride: usize,
        offset: usize,
        scale: f32,
        n: usize,
        out: *mut f32,
        ostride: usize,
    ) {
        let Some(hd) = q.first().map(|q| q.len()) else {
            return;
        };
        let sp = src.as_ptr() as *const u16;
        let scale = _mm_set1_ps(scale);
        for j0 in (0..n).step_by(super::KEY_CHUNK) {
            let j1 = (j0 + super::KEY_CHUNK).min(n);
            for r0 in (0..q.len()).step_by(4) {
                let rows = (q.len() - r0).min(4);
                // Past the last row, the group repeats it; those sums are not stored.
                let qp: [*const f32; 4] = std::array::from_fn(|h| q[r0 + h.min(rows - 1)].as_ptr());
                let mut sums = [0.0f32; 4];
                for j in j0..j1 {
                    // SAFETY: `j < n`: row `j` is inside `src` (the caller's contract).
                    let row = unsafe { sp.add(j * stride + offset) };
                    let mut a0 = [_mm256_setzero_ps(); 4];
                    let mut a1 = [_mm256_setzero_ps(); 4];
                    let mut i = 0;
                    while i < hd {
                        // SAFETY: `i + 16 <= hd` (`hd % 16 == 0`): both halves are
                        // inside row `j` and inside every `q` row.
                        unsafe {
                            let (k0, k1) = (widen(row.add(i)), widen(row.add(i + 8)));
                            for h in 0..4 {
                                let p = qp[h].add(i);
                                a0[h] = _mm256_fmadd_ps(_mm256_loadu_ps(p), k0, a0[h]);
                                a1[h] = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), k1, a1[h]);
                            }
                        }
                        i += 16;
                    }
                    let v: [__m256; 4] = std::array::from_fn(|h| _mm256_add_ps(a0[h], a1[h]));
                    // SAFETY: AVX2 is among this fn's target features; `sums` holds four.
                    unsafe {
                        _mm_storeu_ps(sums.as_mut_ptr(), _mm_mul_ps(hsum4(v), scale));
                    }
                    for (h, &s) in sums.iter().enumerate().take(rows) {
                        // SAFETY: `r0 + h < q.len()` and `j < n`: inside `out` (the
                        // caller's contract).
                        unsafe { *out.add((r0 + h) * ostride + j) = s };
                    }
                }
            }
        }
    }

    /// `RB` rows' accumulators for 16 values each, over keys `j0..j1`.
    ///
    /// # Safety
    /// As [`weighted`], for rows `r0..r0 + RB` and values `c..c + 16` of each.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn weighted_group<const RB: usize>(
        p: &[&[f32]],
        sp: *const u16,
        stride: usize,
        offset: usize,
        op: &[*mut f32],
        r0: usize,
        c: usize,
        (j0, j1): (usize, usize),
    ) {
        // SAFETY: the caller's contract: rows `r0..r0 + RB` exist, each output row holds
        // values `c..c + 16`, each `p` row keys `j0..j1`, each `src` row `j < j1` values
        // `offset + c..offset + c + 16`.
        unsafe {
            let mut acc: [[__m256; 2]; RB] = std::array::from_fn(|h| {
                let o = op[r0 + h].add(c);
                [_mm256_loadu_ps(o), _mm256_loadu_ps(o.add(8))]
            });
            let pp: [*const f32; RB] = std::array::from_fn(|h| p[r0 + h].as_ptr());
            for j in j0..j1 {
                let row = sp.add(j * stride + offset + c);
                let (v0, v1) = (widen(row), widen(row.add(8)));
                for h in 0..RB {
                    let w = _mm256_broadcast_ss(&*pp[h].add(j));
                    acc[h][0] = _mm256_fmadd_ps(w, v0, acc[h][0]);
                    acc[h][1] = _mm256_fmadd_ps(w, v1, acc[h][1]);
                }
            }
            for (h, a) in acc.iter().enumerate() {
                let o = op[r0 + h].add(c);
                _mm256_storeu_ps(o, a[0]);
                _mm256_storeu_ps(o.add(8), a[1]);
            }
        }
    }

    /// # Safety
    /// The CPU has AVX2, FMA and F16C; every `p[r]` is `n` long and every `out[r]` `hd`
    /// long with `hd % 16 == 0`; rows `j < n` of `src` lie inside it.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted(
        p: &[&[f32]],
        src: &[half::f16],
        stride: usize,
        offset: usize,
        out: &mut [&mut [f32]],
    ) {
        let (Some(n), Some(hd)) = (p.first().map(|p| p.len()), out.first().map(|o| o.len())) else {
            return;
        };
        let sp = src.as_ptr() as *const u16;
        let op: Vec<*mut f32> = out.iter_mut().map(|o| o.as_mut_ptr()).collect();
        const RB: usize = 6;
        for j0 in (0..n).step_by(super::KEY_CHUNK) {
            let keys = (j0, (j0 + super::KEY_CHUNK).min(n));
            let mut r0 = 0;
            while r0 < p.len() {
                let rows = (p.len() - r0).min(RB);
                for c in (0..hd).step_by(16) {
                    // SAFETY: rows `r0..r0 + rows` exist, `c + 16 <= hd`, keys below
                    // `n`: this fn's contract covers every access.
                    unsafe {
                        match rows {
                            6 => weighted_group::<6>(p, sp, stride, offset, &op, r0, c, keys),
                            5 => weighted_group::<5>(p, sp, stride, offset, &op, r0, c, keys),
                            4 => weighted_group::<4>(p, sp, stride, offset, &op, r0, c, keys),
                            3 => weighted_group::<3>(p, sp, stride, offset, &op, r0, c, keys),
                            2 => weighted_group::<2>(p, sp, stride, offset, &op, r0, c, keys),
                            _ => weighted_group::<1>(p, sp, stride, offset, &op, r0, c, keys),
                        }
                    }
                }
                r0 += rows;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(seed: u32, n: usize) -> Vec<f32> {
        crate::quant::test_values(seed as u64, n, 1.0)
    }

    #[test]
    fn block_kernels_equal_the_one_token_kernels_bit_for_bit() {
        let Some(k) = Avx2::new() else {
            eprintln!("skipped: CPU lacks AVX2/F16C");
            return;
        };
        // Head widths of the families (64, 256), keys across a chunk edge, row counts that
        // leave every remainder of the groups of four and six.
        for (hd, stride, offset, n) in [(64, 192, 64, 150), (256, 256, 0, 70), (16, 48, 32, 5)] {
            let src: Vec<half::f16> = rows(hd as u32, n * stride)
                .into_iter()
                .map(|v| half::f16::from_f32(v * 3.0))
                .collect();
            for r in [1, 2, 3, 5, 7, 13] {
                let qs: Vec<Vec<f32>> = (0..r).map(|h| rows(100 + h as u32, hd)).collect();
                let qr: Vec<&[f32]> = qs.iter().map(|q| &q[..]).collect();
                let ostride = n + 3;
                let mut got = vec![f32::NAN; r * ostride];
                scores(k, &qr, &src, stride, offset, 0.125, n, &mut got, ostride);
                let ps: Vec<Vec<f32>> = (0..r).map(|h| rows(200 + h as u32, n)).collect();
                let pr: Vec<&[f32]> = ps.iter().map(|p| &p[..]).collect();
                let mut acc: Vec<Vec<f32>> = (0..r).map(|h| rows(300 + h as u32, hd)).collect();
                let mut outs: Vec<&mut [f32]> = acc.iter_mut().map(|a| &mut a[..]).collect();
                weighted(k, &pr, &src, stride, offset, &mut outs);
                for h in 0..r {
                    let mut want = vec![0.0f32; n];
                    dot_avx2::dot_rows_f16(
                        k,
                        [&qs[h][..]],
                        &src,
                        stride,
                        offset,
                        0.125,
                        [&mut want[..]],
                    );
                    let got_row: Vec<u32> = got[h * ostride..h * ostride + n]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect();
                    let want_row: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got_row, want_row, "scores hd {hd} rows {r} row {h}");
                    let mut w = rows(300 + h as u32, hd);
                    dot_avx2::weighted_rows_f16(
                        k,
                        [&ps[h][..]],
                        &src,
                        stride,
                        offset,
                        [&mut w[..]],
                    );
                    let a: Vec<u32> = acc[h].iter().map(|v| v.to_bits()).collect();
                    let b: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(a, b, "weighted hd {hd} rows {r} row {h}");
                }
            }
        }
    }
}
