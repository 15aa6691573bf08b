//! `exp` for f32, as softmax and SiLU use it: one algorithm, a scalar reference, an AVX2
//! version (eight values at a time, the table by a gather) and an AVX-512 one (sixteen),
//! all computing the same bits.
//!
//! The algorithm is the table-driven one of modern libms (glibc ≥ 2.28 among them):
//! `x · 32/ln 2 = k + r` with `k` an integer and `|r| ≤ 1/2`, `2^(k/32)` from a 32-entry
//! table of `2^(i/32)` with the exponent of `k / 32` added to its bits, `2^(r/32)` from a
//! cubic, everything in f64 and rounded to f32 once. The reduction and the cubic use fused
//! multiply-adds where glibc's FMA build does, so on such a build the result equals libm's
//! `expf` bit for bit (a test checks millions of inputs); everywhere else it is still one
//! function, so every kernel family gets the same bits from it.

/// `32 / ln 2`.
const INV_LN2_N: f64 = f64::from_bits(0x4047_1547_652b_82fe);
/// `1.5 · 2^52`: adding it rounds to an integer held in the low mantissa bits.
const SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000);
/// The cubic's coefficients for `2^(r/32)`, highest power first.
const C0: f64 = f64::from_bits(0x3ebc_6af8_4b91_2394);
const C1: f64 = f64::from_bits(0x3f2e_bfce_50fa_c4f3);
const C2: f64 = f64::from_bits(0x3f96_2e42_ff0c_52d6);
/// `bits(2^(i/32)) - (i << 47)`: adding `k << 47` gives the bits of `2^(k/32)` for any `k`
/// with `k % 32 == i`.
const TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];
/// `|x| ≥ 88` (or not finite): the top 12 bits of `x` without its sign at least this.
const LARGE_TOP: u32 = 0x42b;
/// Above this `exp` overflows f32 (`log(2^128)`).
const OVERFLOW: f32 = f32::from_bits(0x42b1_7217);
/// Below this `exp` rounds to zero (`log(2^-150)`).
const UNDERFLOW: f32 = f32::from_bits(0xc2cf_f1b4);
/// Below this (and above [`UNDERFLOW`]) the result is the smallest subnormal, as libm
/// returns it (`log(2^-149)`).
const MAY_UNDERFLOW: f32 = f32::from_bits(0xc2ce_8ecf);

/// `e^x`, the reference version.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    if (x.to_bits() >> 20) & 0x7ff >= LARGE_TOP {
        return large(x);
    }
    reduced(x)
}

/// The main path, exact for every finite `x` between [`MAY_UNDERFLOW`] and [`OVERFLOW`].
#[inline(always)]
fn reduced(x: f32) -> f32 {
    let xd = x as f64;
    let shifted = INV_LN2_N.mul_add(xd, SHIFT);
    let ki = shifted.to_bits();
    let kd = shifted - SHIFT;
    let r = INV_LN2_N.mul_add(xd, -kd);
    let s = f64::from_bits(TABLE[(ki % 32) as usize].wrapping_add(ki << 47));
    let z = r.mul_add(C0, C1);
    let r2 = r * r;
    let y = r.mul_add(C2, 1.0);
    (z.mul_add(r2, y) * s) as f32
}

/// `e^x` for `|x| ≥ 88`, infinities and NaN.
#[cold]
fn large(x: f32) -> f32 {
    if x == f32::NEG_INFINITY {
        0.0
    } else if !x.is_finite() {
        x + x
    } else if x > OVERFLOW {
        f32::INFINITY
    } else if x < UNDERFLOW {
        0.0
    } else if x < MAY_UNDERFLOW {
        f32::from_bits(1)
    } else {
        reduced(x)
    }
}

/// `x[i] = e^(x[i] - sub)` for every element.
pub fn exp_sub_in_place(x: &mut [f32], sub: f32) {
    match family() {
        #[cfg(target_arch = "x86_64")]
        Family::Avx512 => {
            // SAFETY: the AVX-512 kernel family is chosen only where
            // `dot_avx512::available()` detected AVX-512F and (through
            // `dot_avx2::available()`) FMA on this CPU.
            unsafe { avx512::exp_sub_in_place(x, sub) }
        }
        #[cfg(target_arch = "x86_64")]
        Family::Fma => {
            // SAFETY: the AVX2 kernel family is chosen only where `dot_avx2::available()`
            // detected AVX2 and FMA (with F16C) on this CPU.
            unsafe { fma::exp_sub_in_place(x, sub) }
        }
        Family::Scalar => x.iter_mut().for_each(|v| *v = expf(*v - sub)),
    }
}

/// `gate[i] = gate[i] / (1 + e^(-gate[i])) * up[i]`: SiLU of the gate times the up
/// projection, in f32 in that order.
pub fn silu_mul_in_place(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: lengths");
    match family() {
        #[cfg(target_arch = "x86_64")]
        Family::Avx512 => {
            // SAFETY: AVX-512F and FMA were detected, as in `exp_sub_in_place`; the
            // lengths are equal (asserted above), as the kernel needs.
            unsafe { avx512::silu_mul_in_place(gate, up) }
        }
        #[cfg(target_arch = "x86_64")]
        Family::Fma => {
            // SAFETY: AVX2 and FMA were detected, as in `exp_sub_in_place`; the lengths
            // are equal (asserted above), as the kernel needs.
            unsafe { fma::silu_mul_in_place(gate, up) }
        }
        Family::Scalar => silu_scalar(gate, up),
    }
}

#[inline(always)]
fn silu_scalar(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + expf(-*g)) * u;
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Family {
    Scalar,
    /// Eight lanes in AVX2 with hardware FMA (the AVX2 kernel family).
    #[cfg(target_arch = "x86_64")]
    Fma,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn family() -> Family {
    use crate::quant::{kernel_kind, KernelKind};
    match kernel_kind() {
        KernelKind::Scalar => Family::Scalar,
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2Rows | KernelKind::Avx2 | KernelKind::AvxVnni => Family::Fma,
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512 => Family::Avx512,
        #[allow(unreachable_patterns)]
        _ => Family::Scalar,
    }
}

#[cfg(target_arch = "x86_64")]
mod fma {
    use super::*;
    use std::arch::x86_64::*;

    /// Four lanes of the reference's main path, from f64 `xd`: the table entry by a
    /// gather (`ki % 32`, eight bytes apart).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA (the callers are kernels with those target features).
    #[inline(always)]
    unsafe fn exp4(xd: __m256d) -> __m128 {
        // SAFETY: AVX2 and FMA are this fn's precondition; the one memory access is the
        // gather from `TABLE`, whose indices `ki & 31` are below its 32 entries.
        unsafe {
            let inv = _mm256_set1_pd(INV_LN2_N);
            let shift = _mm256_set1_pd(SHIFT);
            let shifted = _mm256_fmadd_pd(inv, xd, shift);
            let ki = _mm256_castpd_si256(shifted);
            let kd = _mm256_sub_pd(shifted, shift);
            let r = _mm256_fmsub_pd(inv, xd, kd);
            let i = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
            let t = _mm256_i64gather_epi64::<8>(TABLE.as_ptr() as *const i64, i);
            let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
            let z = _mm256_fmadd_pd(r, _mm256_set1_pd(C0), _mm256_set1_pd(C1));
            let r2 = _mm256_mul_pd(r, r);
            let y = _mm256_fmadd_pd(r, _mm256_set1_pd(C2), _mm256_set1_pd(1.0));
            let y = _mm256_fmadd_pd(z, r2, y);
            _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
        }
    }

    /// Eight `e^x`; lanes with `|x| ≥ 88` (rare) are redone by the reference.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA (the callers are kernels with those target features).
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        // SAFETY: AVX2 and FMA are this fn's precondition (and `exp4`'s); the only memory
        // accesses are eight-float stores and a load of the local arrays `xs` and `ys`.
        unsafe {
            let lo = exp4(_mm256_cvtps_pd(_mm256_castps256_ps128(x)));
            let hi = exp4(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)));
            let mut y = _mm256_set_m128(hi, lo);
            let top = _mm256_and_si256(
                _mm256_srli_epi32::<20>(_mm256_castps_si256(x)),
                _mm256_set1_epi32(0x7ff),
            );
            let large = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(
                top,
                _mm256_set1_epi32(LARGE_TOP as i32 - 1),
            )));
            if large != 0 {
                let mut xs = [0.0f32; 8];
                let mut ys = [0.0f32; 8];
                _mm256_storeu_ps(xs.as_mut_ptr(), x);
                _mm256_storeu_ps(ys.as_mut_ptr(), y);
                for i in 0..8 {
                    if large & (1 << i) != 0 {
                        ys[i] = super::large(xs[i]);
                    }
                }
                y = _mm256_loadu_ps(ys.as_ptr());
            }
            y
        }
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sub_in_place(x: &mut [f32], sub: f32) {
        let s = _mm256_set1_ps(sub);
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` is a chunk of exactly eight floats: the unaligned load and store
            // stay inside it; the target features include what `exp8` needs.
            unsafe {
                let v = _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), s);
                _mm256_storeu_ps(c.as_mut_ptr(), exp8(v));
            }
        }
        chunks
            .into_remainder()
            .iter_mut()
            .for_each(|v| *v = super::expf(*v - sub));
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; `up` is at least as long as `gate`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul_in_place(gate: &mut [f32], up: &[f32]) {
        let one = _mm256_set1_ps(1.0);
        let n = gate.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: `i + 8 <= n <= gate.len() <= up.len()` (the last by this fn's
            // contract): the unaligned loads and the store stay inside `gate` and `up`;
            // the target features include what `exp8` needs.
            unsafe {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                let u = _mm256_loadu_ps(up.as_ptr().add(i));
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
                let v = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
                _mm256_storeu_ps(gate.as_mut_ptr().add(i), v);
            }
        }
        super::silu_scalar(&mut gate[n..], &up[n..]);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// Eight lanes of the reference's main path, from f64 `xd`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA (the callers are kernels with those target features).
    #[inline(always)]
    unsafe fn exp8(xd: __m512d, table: &[__m512i; 4]) -> __m256 {
        // SAFETY: AVX-512F and FMA are this fn's precondition; register operations only,
        // no memory access.
        unsafe {
            let inv = _mm512_set1_pd(INV_LN2_N);
            let shift = _mm512_set1_pd(SHIFT);
            let shifted = _mm512_fmadd_pd(inv, xd, shift);
            let ki = _mm512_castpd_si512(shifted);
            let kd = _mm512_sub_pd(shifted, shift);
            let r = _mm512_fmsub_pd(inv, xd, kd);
            // Table entry ki % 32: entries 0-15 and 16-31 by the low four bits, then bit 4.
            let lo = _mm512_permutex2var_epi64(table[0], ki, table[1]);
            let hi = _mm512_permutex2var_epi64(table[2], ki, table[3]);
            let upper = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(16));
            let t = _mm512_mask_blend_epi64(upper, lo, hi);
            let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
            let z = _mm512_fmadd_pd(r, _mm512_set1_pd(C0), _mm512_set1_pd(C1));
            let r2 = _mm512_mul_pd(r, r);
            let y = _mm512_fmadd_pd(r, _mm512_set1_pd(C2), _mm512_set1_pd(1.0));
            let y = _mm512_fmadd_pd(z, r2, y);
            _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
        }
    }

    /// # Safety
    /// The CPU has AVX-512F (the callers are kernels with that target feature).
    #[inline(always)]
    unsafe fn load_table() -> [__m512i; 4] {
        // `TABLE` is a const of plain integers, so the borrow `as_ptr` takes is promoted
        // to a static: the pointer stays valid.
        let p = TABLE.as_ptr() as *const __m512i;
        // SAFETY: AVX-512F is this fn's precondition; `TABLE` is 32 u64s (256 bytes), and
        // the four unaligned 64-byte loads cover exactly those.
        unsafe {
            [
                _mm512_loadu_si512(p),
                _mm512_loadu_si512(p.add(1)),
                _mm512_loadu_si512(p.add(2)),
                _mm512_loadu_si512(p.add(3)),
            ]
        }
    }

    /// Sixteen `e^x`; lanes with `|x| ≥ 88` (rare) are redone by the reference.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA (the callers are kernels with those target features).
    #[inline(always)]
    unsafe fn exp16(x: __m512, table: &[__m512i; 4]) -> __m512 {
        // SAFETY: AVX-512F and FMA are this fn's precondition (and `exp8`'s); the only
        // memory accesses are 16-float stores and a load of the local arrays `xs` and
        // `ys`, sixteen floats each.
        unsafe {
            let lo = exp8(_mm512_cvtps_pd(_mm512_castps512_ps256(x)), table);
            let hi = exp8(
                _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                    _mm512_castps_pd(x),
                ))),
                table,
            );
            let mut y = _mm512_insertf64x4::<1>(
                _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
                _mm256_castps_pd(hi),
            );
            let top = _mm512_and_si512(
                _mm512_srli_epi32::<20>(_mm512_castps_si512(x)),
                _mm512_set1_epi32(0x7ff),
            );
            let large = _mm512_cmpge_epu32_mask(top, _mm512_set1_epi32(LARGE_TOP as i32));
            if large != 0 {
                let mut xs = [0.0f32; 16];
                let mut ys = [0.0f32; 16];
                _mm512_storeu_ps(xs.as_mut_ptr(), x);
                _mm512_storeu_ps(ys.as_mut_ptr(), _mm512_castpd_ps(y));
                for i in 0..16 {
                    if large & (1 << i) != 0 {
                        ys[i] = super::large(xs[i]);
                    }
                }
                y = _mm512_castps_pd(_mm512_loadu_ps(ys.as_ptr()));
            }
            _mm512_castpd_ps(y)
        }
    }

    /// # Safety
    /// The CPU has AVX-512F and FMA.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn exp_sub_in_place(x: &mut [f32], sub: f32) {
        // SAFETY: this fn's target features include the AVX-512F `load_table` needs.
        let table = unsafe { load_table() };
        let s = _mm512_set1_ps(sub);
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            // SAFETY: `c` is a chunk of exactly sixteen floats: the unaligned load and
            // store stay inside it; the target features include what `exp16` needs.
            unsafe {
                let v = _mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), s);
                _mm512_storeu_ps(c.as_mut_ptr(), exp16(v, &table));
            }
        }
        chunks
            .into_remainder()
            .iter_mut()
            .for_each(|v| *v = super::expf(*v - sub));
    }

    /// # Safety
    /// The CPU has AVX-512F and FMA; `up` is at least as long as `gate`.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn silu_mul_in_place(gate: &mut [f32], up: &[f32]) {
        // SAFETY: this fn's target features include the AVX-512F `load_table` needs.
        let table = unsafe { load_table() };
        let one = _mm512_set1_ps(1.0);
        let n = gate.len() / 16 * 16;
        for i in (0..n).step_by(16) {
            // SAFETY: `i + 16 <= n <= gate.len() <= up.len()` (the last by this fn's
            // contract): the unaligned loads and the store stay inside `gate` and `up`;
            // the target features include what `exp16` needs.
            unsafe {
                let g = _mm512_loadu_ps(gate.as_ptr().add(i));
                let u = _mm512_loadu_ps(up.as_ptr().add(i));
                let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g), &table);
                let v = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
                _mm512_storeu_ps(gate.as_mut_ptr().add(i), v);
            }
        }
        super::silu_scalar(&mut gate[n..], &up[n..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 4099th bit pattern (a million inputs across all exponents, both signs, NaNs
    /// included) plus the edges of each special range.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (0..=u32::MAX / 4099)
            .map(|i| f32::from_bits(i * 4099))
            .collect();
        for e in [OVERFLOW, UNDERFLOW, MAY_UNDERFLOW, 88.0, -88.0] {
            for d in -3i32..=3 {
                v.push(f32::from_bits((e.to_bits() as i32 + d) as u32));
            }
        }
        v.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            -f32::from_bits(1),
            1.0,
            -1.0,
            0.5,
            -0.5,
        ]);
        v
    }

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn the_reference_is_libm_expf_to_the_bit_on_glibc_with_fma_and_within_one_ulp_elsewhere() {
        let exact = cfg!(all(target_env = "gnu", target_arch = "x86_64"))
            && std::arch::is_x86_feature_detected!("fma");
        let mut differ = 0;
        for x in inputs() {
            let (a, b) = (expf(x), x.exp());
            if !same(a, b) {
                differ += 1;
                let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
                assert!(!exact && ulps <= 1, "expf({x:e}) = {a:e}, libm {b:e}");
            }
        }
        eprintln!("{differ} inputs differ from libm by one ulp");
    }

    /// The implementations this CPU can run, each as (name, exp_sub, silu_mul).
    #[allow(clippy::type_complexity)]
    fn implementations() -> Vec<(&'static str, fn(&mut [f32], f32), fn(&mut [f32], &[f32]))> {
        let mut v: Vec<(&'static str, fn(&mut [f32], f32), fn(&mut [f32], &[f32]))> = vec![(
            "scalar",
            |x, s| x.iter_mut().for_each(|v| *v = expf(*v - s)),
            silu_scalar,
        )];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push((
                    "avx2",
                    // SAFETY: AVX2 and FMA were detected just above, on this CPU.
                    |x, s| unsafe { fma::exp_sub_in_place(x, s) },
                    // SAFETY: AVX2 and FMA were detected just above; the test calls
                    // `silu_mul` only with `up` as long as `gate`, as the kernel needs.
                    |g, u| unsafe { fma::silu_mul_in_place(g, u) },
                ));
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push((
                    "avx512",
                    // SAFETY: AVX-512F and FMA were detected just above, on this CPU.
                    |x, s| unsafe { avx512::exp_sub_in_place(x, s) },
                    // SAFETY: AVX-512F and FMA were detected just above; the test calls
                    // `silu_mul` only with `up` as long as `gate`, as the kernel needs.
                    |g, u| unsafe { avx512::silu_mul_in_place(g, u) },
                ));
            } else {
                eprintln!("AVX-512 absent: its exp not compared here");
            }
        }
        v.push(("dispatched", exp_sub_in_place, silu_mul_in_place));
        v
    }

    #[test]
    fn every_implementation_gives_the_reference_bits() {
        let xs = inputs();
        let up: Vec<f32> = (0..xs.len()).map(|i| 1.0 + (i % 7) as f32 / 8.0).collect();
        for (name, exp_sub, silu_mul) in implementations() {
            for sub in [0.0f32, 3.5, -7.25] {
                let mut got = xs.clone();
                exp_sub(&mut got, sub);
                for (x, g) in xs.iter().zip(&got) {
                    assert!(same(*g, expf(x - sub)), "{name}: e^({x:e} - {sub}) = {g:e}");
                }
            }
            // Odd lengths: the vector loop's tail goes through the reference.
            let mut got = xs[..xs.len() - 5].to_vec();
            silu_mul(&mut got, &up[..xs.len() - 5]);
            for ((x, u), g) in xs.iter().zip(&up).zip(&got) {
                let want = x / (1.0 + expf(-x)) * u;
                assert!(
                    same(*g, want),
                    "{name}: silu({x:e}) * {u} = {g:e}, want {want:e}"
                );
            }
        }
    }

    /// All 2^32 inputs against libm and the dispatched version (about a minute):
    /// `cargo test --release -p genie-engine --lib expf -- --ignored`.
    #[test]
    #[ignore]
    fn exhaustive_against_libm() {
        let mut buf = vec![0.0f32; 1 << 16];
        for hi in 0..=u16::MAX as u32 {
            for (lo, v) in buf.iter_mut().enumerate() {
                *v = f32::from_bits(hi << 16 | lo as u32);
            }
            let xs = buf.clone();
            exp_sub_in_place(&mut buf, 0.0);
            for (x, g) in xs.iter().zip(&buf) {
                assert!(same(*g, x.exp()), "e^{x:e} = {g:e}, libm {:e}", x.exp());
            }
        }
    }
}
