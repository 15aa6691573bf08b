//! A compute probe: how many int8 multiply-accumulates a second this host's threads reach
//! with the instruction sequence of the engine's lane-order kernels, a reference rate for
//! a batched decode step (every weight read once for the whole batch, so the products and
//! not the memory reads take the time).
//!
//! The lane-order kernels (Q4_1) convert each four-product group of a row to f32 and add
//! it with its own FMA (llama.cpp's order), so that every path gives the same bits: on AVX2 a group of
//! eight rows' four products costs `vpmaddubsw`, `vpmaddwd`, `vcvtdq2ps` and `vfmadd`;
//! AVX-VNNI fuses the first two into one `vpdpbusd`; AVX-512 VNNI does the same on
//! sixteen rows at once. The probe runs exactly that sequence on operands in L1, eight
//! independent accumulators as the strip kernels keep, with nothing else: no nibble
//! unpacking, broadcasts, scale products or memory traffic. So it is a ceiling for the
//! lane-order kernels on this host. The exact-sum kernels (Q8_0, Q4_0/Q5_0/Q5_1 as Q8_0
//! blocks, K-quants) convert and scale once a block, not once per four products, and can
//! pass it: on a Zen 3 host the AVX2 narrow kernel does 80 GMAC/s on one thread, where
//! the probe gave 48–67 a thread in the same session (BENCHMARKS.md, 2026-12-08).

use genie_engine::quant::KernelKind;
use std::time::Instant;

/// Multiply-accumulates a second that `threads` threads reach together with `kind`'s
/// dot-product step sequence (the best of `reps` timed passes after a warm-up), or
/// `None` for the scalar and row-tile families, which the probe does not model.
pub fn dot_step_rate(kind: KernelKind, threads: usize, reps: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let step = imp::family(kind)?;
        let threads = threads.max(1);
        // 4 KiB of operands: L1-resident, like a strip's lines once loaded.
        let buf: Vec<u8> = (0..4096u32).map(|i| (i * 37 % 251) as u8).collect();
        // Enough passes for a few milliseconds a thread.
        let passes = 32768;
        let mut best = 0.0f64;
        for rep in 0..=reps {
            let t0 = Instant::now();
            let macs: f64 = std::thread::scope(|s| {
                let parts: Vec<_> = (0..threads)
                    .map(|_| s.spawn(|| step(&buf, passes)))
                    .collect();
                parts
                    .into_iter()
                    .map(|p| {
                        let (macs, sink) = p.join().expect("probe thread");
                        std::hint::black_box(sink);
                        macs
                    })
                    .sum()
            });
            let secs = t0.elapsed().as_secs_f64();
            if rep > 0 {
                best = best.max(macs / secs);
            }
        }
        Some(best)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, threads, reps);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::KernelKind;
    use std::arch::x86_64::*;

    /// One thread's run over `buf`, `passes` times: (multiply-accumulates done, a sum
    /// that keeps the work from being elided).
    pub type Step = fn(&[u8], usize) -> (f64, f32);

    pub fn family(kind: KernelKind) -> Option<Step> {
        match kind {
            KernelKind::Avx2 => Some(|b, p| {
                // SAFETY: this family is chosen only where the CPU has AVX2 and FMA.
                unsafe { ymm(b, p) }
            }),
            KernelKind::AvxVnni => Some(|b, p| {
                // SAFETY: this family is chosen only where the CPU has AVX-VNNI.
                unsafe { ymm_vnni(b, p) }
            }),
            KernelKind::Avx512 => Some(|b, p| {
                // SAFETY: this family is chosen only where the CPU has AVX-512 VNNI.
                unsafe { zmm(b, p) }
            }),
            KernelKind::Scalar | KernelKind::Avx2Rows => None,
        }
    }

    /// # Safety
    /// The CPU has AVX2 and FMA (and AVX-VNNI with `VNNI`, which only
    /// [`ymm_vnni`] passes).
    #[inline(always)]
    unsafe fn ymm_body<const VNNI: bool>(buf: &[u8], passes: usize) -> (f64, f32) {
        let vectors = buf.len() / 32 / 8 * 8;
        // SAFETY: AVX2/FMA (and AVX-VNNI where `VNNI`) by the caller; every load reads 32
        // bytes at `32 v`, `v < vectors <= buf.len() / 32` (unaligned loads).
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let zero = _mm256_setzero_si256();
            let a = [
                _mm256_set1_epi32(0x0305_f902),
                _mm256_set1_epi32(0x7f81_0b11),
            ];
            let s = _mm256_set1_ps(1e-3);
            let mut acc = [_mm256_setzero_ps(); 8];
            for _ in 0..passes {
                for v0 in (0..vectors).step_by(8) {
                    for c in 0..8 {
                        let w =
                            _mm256_loadu_si256(buf.as_ptr().add(32 * (v0 + c)) as *const __m256i);
                        let x = if VNNI {
                            _mm256_dpbusd_avx_epi32(zero, w, a[c & 1])
                        } else {
                            _mm256_madd_epi16(_mm256_maddubs_epi16(w, a[c & 1]), ones)
                        };
                        acc[c] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(x), acc[c]);
                    }
                }
            }
            (
                (passes * vectors * 32) as f64,
                lanes(
                    acc.iter()
                        .fold(_mm256_setzero_ps(), |t, &x| _mm256_add_ps(t, x)),
                ),
            )
        }
    }

    #[inline(always)]
    unsafe fn lanes(v: __m256) -> f32 {
        let mut out = [0.0f32; 8];
        // SAFETY: `out` holds eight floats (unaligned store); AVX by the caller.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out.iter().sum()
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn ymm(buf: &[u8], passes: usize) -> (f64, f32) {
        // SAFETY: this function's features are the body's.
        unsafe { ymm_body::<false>(buf, passes) }
    }

    /// # Safety
    /// The CPU has AVX2, FMA and AVX-VNNI.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    unsafe fn ymm_vnni(buf: &[u8], passes: usize) -> (f64, f32) {
        // SAFETY: this function's features are the body's.
        unsafe { ymm_body::<true>(buf, passes) }
    }

    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn zmm(buf: &[u8], passes: usize) -> (f64, f32) {
        let vectors = buf.len() / 64 / 8 * 8;
        // SAFETY: AVX-512 F/BW/VNNI by the caller; every load reads 64 bytes at `64 v`,
        // `v < vectors <= buf.len() / 64` (unaligned loads).
        unsafe {
            let zero = _mm512_setzero_si512();
            let a = [
                _mm512_set1_epi32(0x0305_f902),
                _mm512_set1_epi32(0x7f81_0b11),
            ];
            let s = _mm512_set1_ps(1e-3);
            let mut acc = [_mm512_setzero_ps(); 8];
            for _ in 0..passes {
                for v0 in (0..vectors).step_by(8) {
                    for c in 0..8 {
                        let w = _mm512_loadu_si512(buf.as_ptr().add(64 * (v0 + c)) as *const _);
                        let x = _mm512_dpbusd_epi32(zero, w, a[c & 1]);
                        acc[c] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(x), acc[c]);
                    }
                }
            }
            let t = acc
                .iter()
                .fold(_mm512_setzero_ps(), |t, &x| _mm512_add_ps(t, x));
            ((passes * vectors * 64) as f64, _mm512_reduce_add_ps(t))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_counts_work_on_every_family_this_cpu_has() {
        for kind in [KernelKind::Avx2, KernelKind::AvxVnni, KernelKind::Avx512] {
            let have = match kind {
                KernelKind::Avx2 => genie_engine::quant::dot_avx2::available(),
                KernelKind::AvxVnni => genie_engine::quant::strips_avx2::vnni_available(),
                _ => genie_engine::quant::dot_avx512::available(),
            };
            if !have {
                eprintln!("{}: absent on this CPU, probe not run", kind.isa());
                continue;
            }
            let r = dot_step_rate(kind, 1, 1).expect("a modelled family");
            assert!(r.is_finite() && r > 1e6, "{}: {r} MAC/s", kind.isa());
        }
        assert!(dot_step_rate(KernelKind::Scalar, 1, 1).is_none());
    }
}
