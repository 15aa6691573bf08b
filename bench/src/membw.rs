//! A STREAM-like read probe: how many bytes per second this host's threads read from
//! memory, the bound of a one-token decode step (every weight read once per token).

use std::time::Instant;

/// Bytes per second that `threads` threads reach reading a `bytes`-long buffer (each its
/// share, summed so the loads are not elided), the best of `reps` passes after one
/// warm-up pass. Use a buffer several times the last-level cache.
pub fn read_bandwidth(bytes: usize, threads: usize, reps: usize) -> f64 {
    let words = (bytes / 8).max(threads.max(1) * 64);
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = threads.max(1);
    let share = words.div_ceil(threads);
    let mut best = 0.0f64;
    for rep in 0..=reps {
        let t0 = Instant::now();
        let total = std::thread::scope(|s| {
            let parts: Vec<_> = buf.chunks(share).map(|c| s.spawn(move || sum(c))).collect();
            parts
                .into_iter()
                .map(|p| p.join().expect("probe thread"))
                .fold(0u64, u64::wrapping_add)
        });
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(total);
        if rep > 0 {
            best = best.max((words * 8) as f64 / secs);
        }
    }
    best
}

fn sum(c: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected on this CPU just above.
        return unsafe { sum_avx2(c) };
    }
    c.iter().fold(0u64, |a, &v| a.wrapping_add(v))
}

/// Four 256-bit accumulators, so the loop is bound by loads rather than by adds.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(c: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let chunks = c.chunks_exact(16);
    let rest = chunks.remainder();
    for ch in chunks {
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: `ch` holds 16 u64s: words `4i..4i + 4` are inside it (unaligned load).
            let v = unsafe { _mm256_loadu_si256(ch.as_ptr().add(4 * i) as *const __m256i) };
            *a = _mm256_add_epi64(*a, v);
        }
    }
    let mut lanes = [0u64; 4];
    let all = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    // SAFETY: `lanes` is 32 bytes long; an unaligned store.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, all) };
    lanes
        .iter()
        .chain(rest)
        .fold(0u64, |a, &v| a.wrapping_add(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_reads_every_word() {
        let v: Vec<u64> = (1..=1001).collect();
        assert_eq!(sum(&v), 1001 * 1002 / 2);
        assert!(read_bandwidth(1 << 20, 2, 1) > 0.0);
    }
}
