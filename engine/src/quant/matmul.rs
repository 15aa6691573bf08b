//! `out[t][r] = W[r] · x[t]`: quantised matrix times a batch of activation rows, split
//! across the current rayon pool by row ranges. Each output element is computed by one
//! kernel call whose arithmetic does not depend on the other rows of the batch.

use super::acts::QuantizedActs;
use super::dot_avx2::{self, Avx2};
use super::{dot_scalar, kernel_kind, KernelKind, QMatrix, QK};
use rayon::prelude::*;

/// Tokens processed together against one unpacked weight row.
const TILE: usize = 4;

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (token, row) cells of one output buffer that outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Multiplies `w` (`[rows, cols]`) by every row of `x` (`[n, cols]`), writing `out` (`[n, rows]`).
///
/// Panics if the shapes disagree (a programming error, not an input error).
pub fn matmul(w: &QMatrix, x: &QuantizedActs, out: &mut [f32]) {
    matmul_multi(&[w], x, &mut [out]);
}

/// Several matrices sharing one input (Q/K/V, gate/up) in a single parallel region:
/// `outs[i] = ws[i] · x`. Fewer fork/join points per layer matter when decoding one token.
pub fn matmul_multi(ws: &[&QMatrix], x: &QuantizedActs, outs: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), outs.len(), "matmul: one output per matrix");
    let n = x.rows();
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert_eq!(x.cols(), w.cols(), "matmul: activation width");
        assert_eq!(out.len(), n * w.rows(), "matmul: output size");
    }
    if n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    // Enough chunks to balance threads, few enough to keep scheduling overhead small.
    let target_chunks = if threads == 1 { 1 } else { threads * 4 };
    let avx2 = match kernel_kind() {
        KernelKind::Avx2 => Avx2::new(),
        KernelKind::Scalar => None,
    };
    let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new(); // (matrix, first row, chunk)
    for (i, w) in ws.iter().enumerate() {
        let chunk = w.rows().div_ceil(target_chunks).max(8);
        tasks.extend((0..w.rows()).step_by(chunk).map(|s| (i, s, chunk)));
    }
    let run = |&(i, start, chunk): &(usize, usize, usize)| {
        let w = ws[i];
        let rows = w.rows();
        let end = (start + chunk).min(rows);
        // Rows of one task are walked in groups that stay cache-resident while every token
        // tile streams past them (weights read from memory once per group, not per token).
        let group = (48 * 1024 / w.format().bytes_for(w.cols()).max(1)).clamp(1, chunk);
        let p = ptrs[i];
        let put = |t: usize, r: usize, v: f32| {
            // SAFETY: t < n and r < rows, so the index is in bounds of outs[i]; each
            // (matrix, t, r) cell is written by exactly one task.
            unsafe { *p.get().add(t * rows + r) = v }
        };
        for g in (start..end).step_by(group) {
            let g_end = (g + group).min(end);
            let mut t = 0;
            while t < n {
                let width = if n - t >= TILE { TILE } else { 1 };
                let mut r = g;
                if let (Some(k), QMatrix::Q4_1 { .. } | QMatrix::Q8_0 { .. }) = (avx2, w) {
                    while r + 2 <= g_end {
                        two_rows(k, w, r, x, t, width, &put);
                        r += 2;
                    }
                }
                for r in r..g_end {
                    row_times_tile(w, r, x, t, width, avx2, &put);
                }
                t += width;
            }
        }
    };
    if tasks.len() == 1 || threads == 1 {
        tasks.iter().for_each(run);
    } else {
        tasks.par_iter().for_each(run);
    }
}

/// Rows `r, r + 1` of a quantised `w` against tokens `t0..t0 + width`: two independent
/// accumulation chains per token, the same arithmetic as one row at a time.
fn two_rows(
    k: Avx2,
    w: &QMatrix,
    r: usize,
    x: &QuantizedActs,
    t0: usize,
    width: usize,
    put: &impl Fn(usize, usize, f32),
) {
    let nb = w.cols() / QK;
    let rows = |r: usize| r * nb..(r + 1) * nb;
    let emit = |v: &[[f32; TILE]; 2], t0: usize| {
        for (ri, row) in v.iter().enumerate() {
            row.iter()
                .enumerate()
                .for_each(|(i, v)| put(t0 + i, r + ri, *v));
        }
    };
    match (w, x) {
        (QMatrix::Q4_1 { blocks, .. }, QuantizedActs::Q8_1 { blocks: a, .. }) => {
            let (w0, w1) = (&blocks[rows(r)], &blocks[rows(r + 1)]);
            let arow = |t: usize| &a[rows(t)];
            if width == TILE {
                let v = dot_avx2::dot_q4_1_q8_1_tile(
                    k,
                    [w0, w1],
                    [arow(t0), arow(t0 + 1), arow(t0 + 2), arow(t0 + 3)],
                );
                emit(&v, t0);
            } else {
                for t in t0..t0 + width {
                    let v = dot_avx2::dot_q4_1_q8_1_tile(k, [w0, w1], [arow(t)]);
                    put(t, r, v[0][0]);
                    put(t, r + 1, v[1][0]);
                }
            }
        }
        (QMatrix::Q8_0 { blocks, .. }, QuantizedActs::Q8_0 { blocks: a, .. }) => {
            let (w0, w1) = (&blocks[rows(r)], &blocks[rows(r + 1)]);
            let arow = |t: usize| &a[rows(t)];
            if width == TILE {
                let v = dot_avx2::dot_q8_0_q8_0_tile(
                    k,
                    [w0, w1],
                    [arow(t0), arow(t0 + 1), arow(t0 + 2), arow(t0 + 3)],
                );
                emit(&v, t0);
            } else {
                for t in t0..t0 + width {
                    let v = dot_avx2::dot_q8_0_q8_0_tile(k, [w0, w1], [arow(t)]);
                    put(t, r, v[0][0]);
                    put(t, r + 1, v[1][0]);
                }
            }
        }
        _ => {
            row_times_tile(w, r, x, t0, width, Some(k), put);
            row_times_tile(w, r + 1, x, t0, width, Some(k), put);
        }
    }
}

/// Row `r` of `w` against tokens `t0..t0 + width` (`width` is 1 or [`TILE`]).
fn row_times_tile(
    w: &QMatrix,
    r: usize,
    x: &QuantizedActs,
    t0: usize,
    width: usize,
    avx2: Option<Avx2>,
    put: &impl Fn(usize, usize, f32),
) {
    let cols = w.cols();
    let nb = cols / QK;
    match (w, x) {
        (QMatrix::Q4_1 { blocks, .. }, QuantizedActs::Q8_1 { blocks: a, .. }) => {
            let wr = &blocks[r * nb..(r + 1) * nb];
            let arow = |t: usize| &a[t * nb..(t + 1) * nb];
            match (avx2, width) {
                (Some(k), TILE) => {
                    let v = dot_avx2::dot_q4_1_q8_1(
                        k,
                        wr,
                        [arow(t0), arow(t0 + 1), arow(t0 + 2), arow(t0 + 3)],
                    );
                    v.into_iter()
                        .enumerate()
                        .for_each(|(i, v)| put(t0 + i, r, v));
                }
                (Some(k), _) => (t0..t0 + width)
                    .for_each(|t| put(t, r, dot_avx2::dot_q4_1_q8_1(k, wr, [arow(t)])[0])),
                (None, _) => {
                    (t0..t0 + width).for_each(|t| put(t, r, dot_scalar::dot_q4_1_q8_1(wr, arow(t))))
                }
            }
        }
        (QMatrix::Q8_0 { blocks, .. }, QuantizedActs::Q8_0 { blocks: a, .. }) => {
            let wr = &blocks[r * nb..(r + 1) * nb];
            let arow = |t: usize| &a[t * nb..(t + 1) * nb];
            match (avx2, width) {
                (Some(k), TILE) => {
                    let v = dot_avx2::dot_q8_0_q8_0(
                        k,
                        wr,
                        [arow(t0), arow(t0 + 1), arow(t0 + 2), arow(t0 + 3)],
                    );
                    v.into_iter()
                        .enumerate()
                        .for_each(|(i, v)| put(t0 + i, r, v));
                }
                (Some(k), _) => (t0..t0 + width)
                    .for_each(|t| put(t, r, dot_avx2::dot_q8_0_q8_0(k, wr, [arow(t)])[0])),
                (None, _) => {
                    (t0..t0 + width).for_each(|t| put(t, r, dot_scalar::dot_q8_0_q8_0(wr, arow(t))))
                }
            }
        }
        (QMatrix::F32 { data, .. }, QuantizedActs::F32 { data: a, .. }) => {
            let wr = &data[r * cols..(r + 1) * cols];
            for t in t0..t0 + width {
                let xr = &a[t * cols..(t + 1) * cols];
                let v = match avx2 {
                    Some(k) => dot_avx2::dot_f32(k, wr, xr),
                    None => dot_scalar::dot_f32(wr, xr),
                };
                put(t, r, v);
            }
        }
        (w, _) => panic!(
            "matmul: activations were quantised for another format than {}",
            w.format().name()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::WeightFormat;
    use super::*;

    fn data(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn quantised_matmul_approximates_f32_and_ignores_batch_composition() {
        let (rows, cols, n) = (37, 64, 7);
        let wf = data(1, rows * cols);
        let xf = data(2, n * cols);
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0, WeightFormat::F32] {
            let w = QMatrix::quantize(format, rows, cols, &wf);
            let x = QuantizedActs::for_weight(&w, &xf);
            let mut out = vec![0.0; n * rows];
            matmul(&w, &x, &mut out);
            for t in 0..n {
                let single = QuantizedActs::for_weight(&w, &xf[t * cols..(t + 1) * cols]);
                let mut one = vec![0.0; rows];
                matmul(&w, &single, &mut one);
                assert_eq!(
                    &out[t * rows..(t + 1) * rows],
                    &one[..],
                    "{format:?} token {t}"
                );
                for r in 0..rows {
                    let exact: f32 = (0..cols).map(|c| wf[r * cols + c] * xf[t * cols + c]).sum();
                    let tol = match format {
                        WeightFormat::F32 => 1e-4,
                        WeightFormat::Q8_0 => 0.02,
                        WeightFormat::Q4_1 => 0.2,
                    };
                    assert!((out[t * rows + r] - exact).abs() < tol, "{format:?} {r}");
                }
            }
        }
    }
}
