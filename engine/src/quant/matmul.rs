//! `out[t][r] = W[r] · x[t]`: quantised matrix times a batch of activation rows, split
//! across the current rayon pool by row ranges. Each output element is computed by one
//! kernel call whose arithmetic does not depend on the other rows of the batch.

use super::acts::{ActBlock, QuantizedActs};
use super::dot_avx2::{self, Avx2};
use super::dot_avx512::{self, Avx512};
use super::kquants::{dot_row, KIsa, KMatrix, Q8KBlock};
use super::kstrips::{self, KStrips};
use super::side_fetch::{SideCursor, SideFetch};
use super::strips::{self, Strips, STRIP, STRIP_TOKENS};
use super::strips_avx2::{self, AvxVnni, Ymm};
use super::{dot_scalar, kernel_kind, KernelKind, QMatrix, MIN_STRIP, QK};
use rayon::prelude::*;

/// Tokens processed together against one unpacked weight row.
const TILE: usize = 4;
/// Tokens per tile for the AVX-512 kernels, which have registers for twice as many.
const WIDE_TILE: usize = 8;

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: an `OutPtr` is only a pointer into an output buffer that outlives the tasks
// given it (`matmul_with`/`matmul_tokens` hold its exclusive borrow until `run_tasks`
// returns); tasks write through it only via `Out::cells`, to disjoint (token, row) cells.
unsafe impl Send for OutPtr {}
// SAFETY: shared `&OutPtr`s only copy the pointer out; every write through it goes to
// cells owned by one task alone (see `Out`), so concurrent use does not race.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One matrix's output, a row of `rows` cells per token (`token_rows[t]`), shared by the
/// tasks of a matmul: each task owns the (token, row) cells of its row range, and every
/// cell is written exactly once.
struct Out<'a> {
    token_rows: &'a [OutPtr],
    rows: usize,
}

impl Out<'_> {
    /// Token `t`'s cells for rows `r..r + len`.
    ///
    /// # Safety
    /// No other live slice may cover these cells: the caller owns them (its task's rows)
    /// and holds at most one slice per (token, row range).
    #[allow(clippy::mut_from_ref)]
    unsafe fn cells<'b>(&self, t: usize, r: usize, len: usize) -> &'b mut [f32] {
        assert!(r + len <= self.rows, "matmul: output cell");
        // SAFETY: `token_rows[t]` points at token `t`'s `rows` cells of a live output
        // buffer and `r + len <= rows` (asserted above), so the slice is in bounds; no
        // other live slice covers it (this fn's contract).
        unsafe { std::slice::from_raw_parts_mut(self.token_rows[t].get().add(r), len) }
    }

    /// Writes rows `r..r + v.len()` of token `t`.
    fn put(&self, t: usize, r: usize, v: &[f32]) {
        // SAFETY: the calling task owns these cells and holds no slice of them.
        unsafe { self.cells(t, r, v.len()) }.copy_from_slice(v)
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
    matmul_with(kernels(), ws, x, outs, &SideFetch::new())
}

/// [`matmul_multi`] that also prefetches `side`'s lines, spread over its tasks and their
/// strips: memory the next step needs, fetched while this one computes.
pub fn matmul_multi_fetching(
    ws: &[&QMatrix],
    x: &QuantizedActs,
    outs: &mut [&mut [f32]],
    side: &SideFetch,
) {
    matmul_with(kernels(), ws, x, outs, side)
}

/// [`matmul`] with each token's output row in a buffer of its own (`outs[t]`, `w.rows()`
/// long): the logits of a batch go straight to each sequence's vector.
pub fn matmul_tokens(w: &QMatrix, x: &QuantizedActs, outs: &mut [&mut [f32]]) {
    assert_eq!(outs.len(), x.rows(), "matmul: one output row per token");
    assert!(
        outs.iter().all(|o| o.len() == w.rows()),
        "matmul: output row size"
    );
    let rows: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    run_tasks(kernels(), &[w], x, &[rows], &SideFetch::new());
}

/// The kernels a matmul runs: the row-major AVX2 and AVX-512 tiles (for rows outside
/// full strips, or for every row where `strip` is `None`) and the strip kernel.
#[derive(Clone, Copy, Debug)]
struct Kernels {
    avx2: Option<Avx2>,
    avx512: Option<Avx512>,
    strip: Option<StripKernel>,
}

/// The strip kernel's register width.
#[derive(Clone, Copy, Debug)]
enum StripKernel {
    Zmm(Avx512),
    Ymm(Ymm),
}

impl StripKernel {
    /// Most tokens one strip call takes.
    fn tokens(self) -> usize {
        match self {
            StripKernel::Zmm(_) => STRIP_TOKENS,
            StripKernel::Ymm(_) => strips_avx2::TOKENS,
        }
    }
}

fn kernels() -> Kernels {
    let avx2 = Avx2::new();
    match kernel_kind() {
        KernelKind::Avx512 => Kernels {
            avx2,
            avx512: Avx512::new(),
            strip: Avx512::new().map(StripKernel::Zmm),
        },
        KernelKind::AvxVnni => Kernels {
            avx2,
            avx512: None,
            strip: AvxVnni::new().map(|k| StripKernel::Ymm(Ymm::AvxVnni(k))),
        },
        KernelKind::Avx2 => Kernels {
            avx2,
            avx512: None,
            strip: avx2.map(|k| StripKernel::Ymm(Ymm::Avx2(k))),
        },
        KernelKind::Avx2Rows => Kernels {
            avx2,
            avx512: None,
            strip: None,
        },
        KernelKind::Scalar => Kernels {
            avx2: None,
            avx512: None,
            strip: None,
        },
    }
}

/// [`matmul_multi`] with an explicit kernel choice.
fn matmul_with(
    kernels: Kernels,
    ws: &[&QMatrix],
    x: &QuantizedActs,
    outs: &mut [&mut [f32]],
    side: &SideFetch,
) {
    assert_eq!(ws.len(), outs.len(), "matmul: one output per matrix");
    let n = x.rows();
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert_eq!(x.cols(), w.cols(), "matmul: activation width");
        assert_eq!(out.len(), n * w.rows(), "matmul: output size");
    }
    let targets: Vec<Vec<OutPtr>> = ws
        .iter()
        .zip(outs.iter_mut())
        .map(|(w, o)| {
            (0..n)
                // SAFETY: `t < n` and `o.len() == n * rows` (asserted above), so the
                // offset `t * rows` stays inside `o`.
                .map(|t| OutPtr(unsafe { o.as_mut_ptr().add(t * w.rows()) }))
                .collect()
        })
        .collect();
    run_tasks(kernels, ws, x, &targets, side)
}

/// The parallel body: `targets[i][t]` points at token `t`'s `ws[i].rows()` outputs.
fn run_tasks(
    Kernels {
        avx2,
        avx512,
        strip,
    }: Kernels,
    ws: &[&QMatrix],
    x: &QuantizedActs,
    targets: &[Vec<OutPtr>],
    side: &SideFetch,
) {
    let n = x.rows();
    for (w, t) in ws.iter().zip(targets) {
        assert_eq!(x.cols(), w.cols(), "matmul: activation width");
        assert_eq!(t.len(), n, "matmul: one output row per token");
    }
    if n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    // Enough chunks to balance threads, few enough to keep scheduling overhead small.
    let target_chunks = if threads == 1 { 1 } else { threads * 4 };
    let with_strips = ws.iter().any(|w| strips_of(w, strip).is_some());
    let ua = match x {
        QuantizedActs::Q8_0 { blocks, .. }
            if with_strips && matches!(strip, Some(StripKernel::Zmm(_))) =>
        {
            strips::offset_quants(blocks)
        }
        _ => Vec::new(),
    };
    // The AVX2 kernel of narrow exact-sum strips takes `16 Σ a` of every block.
    let narrow =
        |w: &&QMatrix| matches!(w, QMatrix::Q8_0 { exact: true, strips: Some(s), .. } if s.narrow);
    let sa = match x {
        QuantizedActs::Q8_0 { blocks, .. }
            if matches!(strip, Some(StripKernel::Ymm(_))) && ws.iter().any(narrow) =>
        {
            strips_avx2::offset_sums(blocks)
        }
        _ => Vec::new(),
    };
    // Q8_0 rows widened from Q5_1 add `Σ_b m[r][b] · s[t][b]`: the activations' block
    // sums, once for every such matrix.
    let q5_1 = |w: &&QMatrix| {
        matches!(
            w,
            QMatrix::Q8_0 {
                minima: Some(_),
                ..
            }
        )
    };
    let sums = match x {
        QuantizedActs::Q8_0 { blocks, .. } if ws.iter().any(q5_1) => super::block_sums(blocks),
        _ => Vec::new(),
    };
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new(); // (matrix, first row, end)
    for (i, w) in ws.iter().enumerate() {
        let rows = w.rows();
        if strips_of(w, strip).is_some() || k_strips_of(w, avx2).is_some() {
            // Whole strips per task (a ragged tail rides with the last), in near-equal
            // shares of the strips.
            let units = rows.div_ceil(STRIP);
            let parts = target_chunks.min(units);
            tasks.extend((0..parts).map(|p| {
                let edge = |p: usize| (p * units / parts * STRIP).min(rows);
                (i, edge(p), edge(p + 1))
            }));
        } else {
            let chunk = rows.div_ceil(target_chunks).max(8);
            tasks.extend(
                (0..rows)
                    .step_by(chunk)
                    .map(|s| (i, s, (s + chunk).min(rows))),
            );
        }
    }
    let rows_of = |i: usize, start: usize, end: usize, fetch: &mut SideCursor| {
        let w = ws[i];
        let rows = w.rows();
        let chunk = end - start;
        let strips = strips_of(w, strip);
        // Rows of one task are walked in groups that stay cache-resident while every token
        // tile streams past them (weights read from memory once per group, not per token).
        // A multiple of 4 rows, so the 4-row tiles cover a group without a ragged end (of
        // 16 with strips, so groups start on a strip).
        let fit = 48 * 1024 / w.format().bytes_for(w.cols()).max(1);
        let group = match (strips, k_strips_of(w, avx2)) {
            (Some(_), _) | (_, Some(_)) => (fit / STRIP * STRIP).max(STRIP).min(chunk),
            _ => (fit / 4 * 4).max(fit.min(4)).clamp(1, chunk),
        };
        let out = Out {
            token_rows: &targets[i],
            rows,
        };
        let put = |t: usize, r: usize, v: &[f32]| out.put(t, r, v);
        for g_start in (start..end).step_by(group) {
            let g_end = (g_start + group).min(end);
            // The group's full strips first, with the strip kernel; any rows after the
            // last full strip go on to the row-major tiles below.
            let mut g = g_start;
            if let (Some(k), Some(s)) = (strip, strips) {
                let last = g_end.min(s.rows());
                // The side lines left, spread over the task's strip visits left.
                let visits =
                    (end.min(s.rows()) / STRIP).saturating_sub(g / STRIP) * n.div_ceil(k.tokens());
                let per = fetch.left().div_ceil(visits.max(1));
                let span = g / STRIP..last / STRIP;
                if g < last && strip_span(k, w, s, span, x, (&ua, &sa), &out, fetch, per) {
                    g = last;
                }
            }
            if g == g_end {
                continue;
            }
            if let (QMatrix::Half { data, kind, .. }, QuantizedActs::F32 { data: a, .. }) = (w, x) {
                half_rows((avx512, avx2), *kind, data, g..g_end, a, n, &out);
                continue;
            }
            if let (
                QMatrix::Q8_0 {
                    blocks,
                    exact: true,
                    ..
                },
                QuantizedActs::Q8_0 { blocks: a, .. },
            ) = (w, x)
            {
                // Rows outside full strips, or every row where no strip kernel runs:
                // row by row, AVX2 where the CPU has it (the reference's bits).
                let nb = w.cols() / QK;
                for r in g..g_end {
                    let wr = &blocks[r * nb..(r + 1) * nb];
                    for t in 0..n {
                        let at = &a[t * nb..(t + 1) * nb];
                        let v = match avx2 {
                            Some(k) => dot_avx2::dot_q8_0_exact(k, wr, at),
                            None => dot_scalar::dot_q8_0_exact(wr, at),
                        };
                        out.put(t, r, &[v]);
                    }
                }
                continue;
            }
            if let (QMatrix::K(km), QuantizedActs::Q8K { blocks: a, .. }) = (w, x) {
                let isa = match (avx512, avx2) {
                    (Some(k), _) => KIsa::Avx512(k),
                    (_, Some(k)) => KIsa::Avx2(k),
                    _ => KIsa::Scalar,
                };
                let mut g = g;
                // A batch takes the strip kernel over the group's full strips (one token
                // stays on the row kernel: it reads the nibbles, half the strips' bytes).
                let wide = avx512
                    .map(KStripKernel::Zmm)
                    .or(avx2.map(KStripKernel::Ymm));
                if let (Some(ks), Some(k), true) = (&km.strips, wide, n >= 2) {
                    let last = g_end.min(ks.rows());
                    if g < last {
                        k_strip_span(k, km.kind, ks, g / STRIP..last / STRIP, a, n, &out);
                        g = last;
                    }
                }
                k_rows(isa, km, g..g_end, a, n, &out);
                continue;
            }
            // Batches of tokens take the Q4_1 minimum terms from one strip pass per group
            // (sixteen rows a load) instead of a pass inside every tile.
            let minima = match (w, x) {
                (QMatrix::Q4_1 { minima, .. }, QuantizedActs::Q8_1 { blocks, .. }) if n >= TILE => {
                    let nb = w.cols() / QK;
                    // The strips come from memory: ask for this group's at the start of
                    // a task and for the next group's while this one's tiles run.
                    if g == start {
                        prefetch_minima(minima, nb, g..g_end);
                    }
                    prefetch_minima(minima, nb, g_end..(g_end + group).min(end));
                    match (avx512, avx2) {
                        (Some(k), _) => Some(GroupMinima::new(k, minima, nb, g..g_end, blocks, n)),
                        (None, Some(k)) => {
                            Some(GroupMinima::new(k, minima, nb, g..g_end, blocks, n))
                        }
                        (None, None) => None,
                    }
                }
                _ => None,
            };
            let minima = minima.as_ref();
            let mut t = 0;
            while t < n {
                let width = match n - t {
                    left if left >= WIDE_TILE && avx512.is_some() => WIDE_TILE,
                    left if left >= TILE => TILE,
                    _ => 1,
                };
                let mut r = g;
                if matches!(w, QMatrix::Q4_1 { .. } | QMatrix::Q8_0 { .. }) {
                    if let Some(k) = avx512 {
                        let even = (g_end - g) / 2 * 2;
                        match width {
                            WIDE_TILE => {
                                span_tokens::<WIDE_TILE>(k, w, g..g + even, x, t, minima, &out)
                            }
                            TILE => span_tokens::<TILE>(k, w, g..g + even, x, t, minima, &out),
                            _ => (t..t + width).for_each(|t| {
                                span_tokens::<1>(k, w, g..g + even, x, t, minima, &out)
                            }),
                        }
                        r = g + even;
                    } else if let Some(k) = avx2 {
                        while r + 2 <= g_end {
                            rows_tile::<2>(k, w, r, x, t, width, minima, &out);
                            r += 2;
                        }
                    }
                }
                for r in r..g_end {
                    row_times_tile(w, r, x, t, width, avx2, &put);
                }
                t += width;
            }
        }
        if let QMatrix::Q8_0 {
            minima: Some(m), ..
        } = w
        {
            let nb = w.cols() / QK;
            for t in 0..n {
                // SAFETY: rows `start..end` are this task's, and no other slice of them
                // is live.
                let cells = unsafe { out.cells(t, start, end - start) };
                let st = &sums[t * nb..(t + 1) * nb];
                for (r, c) in (start..end).zip(cells) {
                    let mr = &m[r * nb..(r + 1) * nb];
                    *c += match avx2 {
                        Some(k) => dot_avx2::dot_f32(k, mr, st),
                        None => dot_scalar::dot_f32(mr, st),
                    };
                }
            }
        }
    };
    let parts = tasks.len();
    let run = |(p, &(i, start, end)): (usize, &(usize, usize, usize))| {
        let mut fetch = side.share(p, parts);
        rows_of(i, start, end, &mut fetch);
        fetch.finish();
    };
    if tasks.len() == 1 || threads == 1 {
        tasks.iter().enumerate().for_each(run);
    } else {
        tasks.par_iter().enumerate().for_each(run);
    }
}

/// Rows `rows` of an F16/BF16 matrix against all `n` f32 tokens of `a`, in token tiles
/// as wide as the CPU takes (every width gives the same bits).
#[allow(clippy::too_many_arguments)]
fn half_rows(
    (avx512, avx2): (Option<Avx512>, Option<Avx2>),
    kind: super::Half,
    data: &[u16],
    rows: std::ops::Range<usize>,
    a: &[f32],
    n: usize,
    out: &Out<'_>,
) {
    let cols = a.len() / n;
    let x = |t: usize| &a[t * cols..(t + 1) * cols];
    for r in rows {
        let wr = &data[r * cols..(r + 1) * cols];
        let mut t = 0;
        while t < n {
            let left = n - t;
            let width = match (avx512, avx2) {
                (Some(k), _) if left >= WIDE_TILE => {
                    let v = dot_avx512::dot_half::<WIDE_TILE>(
                        k,
                        kind,
                        wr,
                        std::array::from_fn(|i| x(t + i)),
                    );
                    v.iter()
                        .enumerate()
                        .for_each(|(i, v)| out.put(t + i, r, &[*v]));
                    WIDE_TILE
                }
                (_, Some(k)) if left >= TILE => {
                    let v =
                        dot_avx2::dot_half::<TILE>(k, kind, wr, std::array::from_fn(|i| x(t + i)));
                    v.iter()
                        .enumerate()
                        .for_each(|(i, v)| out.put(t + i, r, &[*v]));
                    TILE
                }
                (Some(k), _) => {
                    out.put(t, r, &dot_avx512::dot_half::<1>(k, kind, wr, [x(t)]));
                    1
                }
                (None, Some(k)) => {
                    out.put(t, r, &dot_avx2::dot_half::<1>(k, kind, wr, [x(t)]));
                    1
                }
                (None, None) => {
                    out.put(t, r, &[dot_scalar::dot_half(kind, wr, x(t))]);
                    1
                }
            };
            t += width;
        }
    }
}

/// Rows `rows` of a K-quant matrix against all `n` tokens of `a`, in token tiles as wide
/// as `isa` takes (every width gives the same bits).
fn k_rows(
    isa: KIsa,
    w: &KMatrix,
    rows: std::ops::Range<usize>,
    a: &[Q8KBlock],
    n: usize,
    out: &Out<'_>,
) {
    let nb = w.cols / super::kquants::QK_K;
    let arow = |t: usize| &a[t * nb..(t + 1) * nb];
    let mut t = 0;
    while t < n {
        let width = if n - t >= isa.tile() { isa.tile() } else { 1 };
        for r in rows.clone() {
            match width {
                8 => k_tile::<8>(isa, w, r, arow, t, out),
                4 => k_tile::<4>(isa, w, r, arow, t, out),
                _ => k_tile::<1>(isa, w, r, arow, t, out),
            }
        }
        t += width;
    }
}

/// `w`'s K-quant strips, where a strip kernel runs.
fn k_strips_of(w: &QMatrix, avx2: Option<Avx2>) -> Option<&KStrips> {
    match (w, avx2) {
        (QMatrix::K(km), Some(_)) => km.strips.as_ref(),
        _ => None,
    }
}

/// The K-quant strip kernel's register width.
#[derive(Clone, Copy)]
enum KStripKernel {
    Zmm(Avx512),
    Ymm(Avx2),
}

impl KStripKernel {
    fn tokens(self) -> usize {
        match self {
            KStripKernel::Zmm(_) => kstrips::TOKENS,
            KStripKernel::Ymm(_) => kstrips::TOKENS_AVX2,
        }
    }
}

/// Strips `strips` of a K-quant matrix against all `n` tokens of `a`, up to
/// [`kstrips::TOKENS`] tokens a call (every width gives the same bits).
fn k_strip_span(
    k: KStripKernel,
    kind: super::kquants::KType,
    s: &KStrips,
    strips: std::ops::Range<usize>,
    a: &[Q8KBlock],
    n: usize,
    out: &Out<'_>,
) {
    fn tile<const N: usize>(
        k: KStripKernel,
        kind: super::kquants::KType,
        s: &KStrips,
        strips: std::ops::Range<usize>,
        a: &[Q8KBlock],
        t0: usize,
        out: &Out<'_>,
    ) {
        let nb = s.nb;
        let acts = std::array::from_fn(|t| &a[(t0 + t) * nb..(t0 + t + 1) * nb]);
        for strip in strips {
            // SAFETY: the strip's (token, row) cells belong to this task alone (see
            // `Out`), and the N tokens are distinct, so the N slices do not overlap.
            let cells = std::array::from_fn(|t| unsafe { out.cells(t0 + t, strip * STRIP, STRIP) });
            match k {
                KStripKernel::Zmm(k) => kstrips::dot_strip::<N>(k, kind, s, strip, acts, cells),
                KStripKernel::Ymm(k) => {
                    kstrips::dot_strip_avx2::<N>(k, kind, s, strip, acts, cells)
                }
            }
        }
    }
    let mut t = 0;
    while t < n {
        let width = (n - t).min(k.tokens());
        let r = strips.clone();
        match width {
            8 => tile::<8>(k, kind, s, r, a, t, out),
            7 => tile::<7>(k, kind, s, r, a, t, out),
            6 => tile::<6>(k, kind, s, r, a, t, out),
            5 => tile::<5>(k, kind, s, r, a, t, out),
            4 => tile::<4>(k, kind, s, r, a, t, out),
            3 => tile::<3>(k, kind, s, r, a, t, out),
            2 => tile::<2>(k, kind, s, r, a, t, out),
            _ => tile::<1>(k, kind, s, r, a, t, out),
        }
        t += width;
    }
}

/// Row `r` of a K-quant matrix against tokens `t0..t0 + N`.
fn k_tile<'a, const N: usize>(
    isa: KIsa,
    w: &KMatrix,
    r: usize,
    arow: impl Fn(usize) -> &'a [Q8KBlock],
    t0: usize,
    out: &Out<'_>,
) {
    let (blocks, hi) = w.row(r);
    let v: [f32; N] = dot_row(
        isa,
        w.kind,
        blocks,
        hi,
        std::array::from_fn(|i| arow(t0 + i)),
    );
    v.iter()
        .enumerate()
        .for_each(|(i, v)| out.put(t0 + i, r, &[*v]));
}

/// `w`'s strip copy, where a strip kernel runs and the matrix has one.
fn strips_of(w: &QMatrix, strip: Option<StripKernel>) -> Option<&Strips> {
    match (w, strip) {
        (QMatrix::Q4_1 { strips, .. } | QMatrix::Q8_0 { strips, .. }, Some(_)) => strips.as_ref(),
        _ => None,
    }
}

/// Strips `strips` of `w` (its copy `s`) against every token of the batch, up to
/// [`StripKernel::tokens`] tokens a call: the weights of the span stay in cache while the
/// token tiles pass. `ua` holds the Q8_0 activations' [`strips::offset_quants`] (the
/// AVX-512 kernel's operand) and `sa` their [`strips_avx2::offset_sums`] (the AVX2
/// narrow kernel's), each empty where no kernel takes it. `per` of `fetch`'s lines are
/// issued after each strip. False (nothing done) when `x` is not in the format `w` takes.
#[allow(clippy::too_many_arguments)]
fn strip_span(
    k: StripKernel,
    w: &QMatrix,
    s: &Strips,
    strips: std::ops::Range<usize>,
    x: &QuantizedActs,
    (ua, sa): (&[[u8; QK]], &[i32]),
    out: &Out<'_>,
    fetch: &mut SideCursor,
    per: usize,
) -> bool {
    let a = match (w, x) {
        (QMatrix::Q4_1 { .. }, QuantizedActs::Q8_1 { blocks, .. })
        | (QMatrix::Q8_0 { .. }, QuantizedActs::Q8_0 { blocks, .. }) => blocks,
        _ => return false,
    };
    #[allow(clippy::too_many_arguments)]
    fn tile<const N: usize>(
        k: StripKernel,
        w: &QMatrix,
        s: &Strips,
        strips: std::ops::Range<usize>,
        a: &[ActBlock],
        (ua, sa): (&[[u8; QK]], &[i32]),
        t0: usize,
        out: &Out<'_>,
        fetch: &mut SideCursor,
        per: usize,
    ) {
        let nb = s.nb;
        let span = |t: usize| (t0 + t) * nb..(t0 + t + 1) * nb;
        let acts = std::array::from_fn(|t| &a[span(t)]);
        for strip in strips {
            // SAFETY: the strip's (token, row) cells belong to this task alone (see
            // `Out`), and the N tokens are distinct, so the N slices do not overlap.
            let cells = std::array::from_fn(|t| unsafe { out.cells(t0 + t, strip * STRIP, STRIP) });
            match (w, k) {
                (QMatrix::Q4_1 { minima, .. }, StripKernel::Zmm(k)) => {
                    strips::dot_q4_1_strip::<N>(k, s, minima, strip, acts, cells)
                }
                (QMatrix::Q4_1 { minima, .. }, StripKernel::Ymm(k)) => {
                    strips_avx2::dot_q4_1_strip::<N>(k, s, minima, strip, acts, cells)
                }
                (QMatrix::Q8_0 { exact, .. }, StripKernel::Zmm(k)) => strips::dot_q8_0_strip::<N>(
                    k,
                    s,
                    strip,
                    acts,
                    std::array::from_fn(|t| &ua[span(t)]),
                    *exact,
                    cells,
                ),
                (QMatrix::Q8_0 { exact: true, .. }, StripKernel::Ymm(k))
                    if s.narrow && !sa.is_empty() =>
                {
                    let sums = std::array::from_fn(|t| &sa[span(t)]);
                    strips_avx2::dot_q8_0_strip_narrow::<N>(k, s, strip, acts, sums, cells)
                }
                (QMatrix::Q8_0 { exact, .. }, StripKernel::Ymm(k)) => {
                    strips_avx2::dot_q8_0_strip::<N>(k, s, strip, acts, *exact, cells)
                }
                _ => unreachable!("strips are of Q4_1 or Q8_0 matrices"),
            }
            fetch.issue(per);
        }
    }
    let n = a.len() / s.nb.max(1);
    let mut t = 0;
    while t < n {
        let width = (n - t).min(k.tokens());
        let r = strips.clone();
        match width {
            8 => tile::<8>(k, w, s, r, a, (ua, sa), t, out, fetch, per),
            7 => tile::<7>(k, w, s, r, a, (ua, sa), t, out, fetch, per),
            6 => tile::<6>(k, w, s, r, a, (ua, sa), t, out, fetch, per),
            5 => tile::<5>(k, w, s, r, a, (ua, sa), t, out, fetch, per),
            4 => tile::<4>(k, w, s, r, a, (ua, sa), t, out, fetch, per),
            3 => tile::<3>(k, w, s, r, a, (ua, sa), t, out, fetch, per),
            2 => tile::<2>(k, w, s, r, a, (ua, sa), t, out, fetch, per),
            _ => tile::<1>(k, w, s, r, a, (ua, sa), t, out, fetch, per),
        }
        t += width;
    }
    true
}

/// The Q4_1 minimum terms `Σ_b m[r][b] · s[t][b]` of rows `first..first + rows` for every
/// token of a batch, `terms[t * rows + (r - first)]`: the sums a tile kernel's own minimum
/// pass computes, bit for bit, so `dots + term` is the full kernel's result.
struct GroupMinima {
    first: usize,
    rows: usize,
    terms: Vec<f32>,
}

/// Prefetches the transposed minima strips that cover `rows`.
fn prefetch_minima(minima: &[half::f16], nb: usize, rows: std::ops::Range<usize>) {
    if rows.is_empty() {
        return;
    }
    let strip_len = nb * MIN_STRIP;
    let span =
        &minima[rows.start / MIN_STRIP * strip_len..rows.end.div_ceil(MIN_STRIP) * strip_len];
    #[cfg(target_arch = "x86_64")]
    for line in span.chunks(32) {
        // SAFETY: a prefetch of an address inside `minima`; it never faults.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr() as *const i8
            )
        };
    }
}

impl GroupMinima {
    fn new<K: StripMinima>(
        k: K,
        minima: &[half::f16],
        nb: usize,
        rows: std::ops::Range<usize>,
        a: &[ActBlock],
        n: usize,
    ) -> Self {
        let (first, len) = (rows.start, rows.len());
        let mut terms = vec![0.0f32; n * len];
        let arow = |t: usize| &a[t * nb..(t + 1) * nb];
        for strip in first / MIN_STRIP..(rows.end).div_ceil(MIN_STRIP) {
            let mins = &minima[strip * nb * MIN_STRIP..(strip + 1) * nb * MIN_STRIP];
            // The strip's rows that fall in this group.
            let lo = (strip * MIN_STRIP).max(first);
            let hi = ((strip + 1) * MIN_STRIP).min(rows.end);
            let mut store = |t: usize, v: &[f32; MIN_STRIP]| {
                terms[t * len + lo - first..t * len + hi - first]
                    .copy_from_slice(&v[lo - strip * MIN_STRIP..hi - strip * MIN_STRIP]);
            };
            let mut t = 0;
            while t < n {
                let step = if n - t >= K::MIN_TOKENS {
                    K::MIN_TOKENS
                } else {
                    1
                };
                if step == 8 {
                    let v = k.min_terms::<8>(mins, std::array::from_fn(|i| arow(t + i)));
                    v.iter().enumerate().for_each(|(i, v)| store(t + i, v));
                } else if step == 4 {
                    let v = k.min_terms::<4>(mins, std::array::from_fn(|i| arow(t + i)));
                    v.iter().enumerate().for_each(|(i, v)| store(t + i, v));
                } else {
                    store(t, &k.min_terms::<1>(mins, [arow(t)])[0]);
                }
                t += step;
            }
        }
        GroupMinima {
            first,
            rows: len,
            terms,
        }
    }

    /// Token `t`'s terms for rows `r..r + len`.
    fn of(&self, t: usize, r: usize, len: usize) -> &[f32] {
        let at = t * self.rows + r - self.first;
        &self.terms[at..at + len]
    }
}

/// The strip pass of the Q4_1 minimum terms, in both SIMD families.
trait StripMinima: Copy {
    /// Tokens per call of [`StripMinima::min_terms`] that fit the family's registers.
    const MIN_TOKENS: usize;
    /// The minimum terms of one strip of [`MIN_STRIP`] rows.
    fn min_terms<const N: usize>(
        self,
        mins: &[half::f16],
        a: [&[ActBlock]; N],
    ) -> [[f32; MIN_STRIP]; N];
}

impl StripMinima for Avx2 {
    const MIN_TOKENS: usize = 4;
    fn min_terms<const N: usize>(
        self,
        mins: &[half::f16],
        a: [&[ActBlock]; N],
    ) -> [[f32; MIN_STRIP]; N] {
        dot_avx2::min_terms(self, mins, a)
    }
}

impl StripMinima for Avx512 {
    const MIN_TOKENS: usize = 8;
    fn min_terms<const N: usize>(
        self,
        mins: &[half::f16],
        a: [&[ActBlock]; N],
    ) -> [[f32; MIN_STRIP]; N] {
        dot_avx512::min_terms(self, mins, a)
    }
}

/// Rows `rows` (an even number) of a quantised `w` against the `N` tokens `t0..t0 + N`
/// with the AVX-512 kernels, one call for the whole span.
fn span_tokens<const N: usize>(
    k: Avx512,
    w: &QMatrix,
    rows: std::ops::Range<usize>,
    x: &QuantizedActs,
    t0: usize,
    minima: Option<&GroupMinima>,
    out: &Out<'_>,
) {
    let nb = w.cols() / QK;
    let len = rows.len();
    // SAFETY: the span's (token, row) cells belong to this task alone (see `Out`), and
    // the N tokens are distinct, so the N slices do not overlap.
    let cells: [&mut [f32]; N] =
        std::array::from_fn(|i| unsafe { out.cells(t0 + i, rows.start, len) });
    match (w, x) {
        (QMatrix::Q4_1 { blocks, .. }, QuantizedActs::Q8_1 { blocks: a, .. }) => {
            dot_avx512::dot_q4_1_q8_1_rows(
                k,
                dot_avx512::RowSpan {
                    blocks,
                    nb,
                    rows: rows.clone(),
                    a: std::array::from_fn(|i| &a[(t0 + i) * nb..(t0 + i + 1) * nb]),
                    out: cells,
                },
                minima.map(|m| std::array::from_fn(|i| m.of(t0 + i, rows.start, len))),
            )
        }
        (QMatrix::Q8_0 { blocks, .. }, QuantizedActs::Q8_0 { blocks: a, .. }) => {
            dot_avx512::dot_q8_0_q8_0_rows(
                k,
                dot_avx512::RowSpan {
                    blocks,
                    nb,
                    rows,
                    a: std::array::from_fn(|i| &a[(t0 + i) * nb..(t0 + i + 1) * nb]),
                    out: cells,
                },
            )
        }
        // Activations of another format: the per-row path reports the mismatch.
        _ => rows.for_each(|r| row_times_tile(w, r, x, t0, N, None, &|t, r, v| out.put(t, r, v))),
    }
}

/// Rows `r..r + R` of a quantised `w` against tokens `t0..t0 + width` (`width` is 1 or
/// [`TILE`]) with the AVX2 tiles: `R` independent accumulation chains per token, the same
/// arithmetic as one row at a time.
#[allow(clippy::too_many_arguments)]
fn rows_tile<const R: usize>(
    k: Avx2,
    w: &QMatrix,
    r: usize,
    x: &QuantizedActs,
    t0: usize,
    width: usize,
    minima: Option<&GroupMinima>,
    out: &Out<'_>,
) {
    match width {
        TILE => rows_tokens::<R, TILE>(k, w, r, x, t0, minima, out),
        _ => (t0..t0 + width).for_each(|t| rows_tokens::<R, 1>(k, w, r, x, t, minima, out)),
    }
}

/// Rows `r..r + R` against exactly the `N` tokens `t0..t0 + N`; with `minima`, the strip
/// pass's terms are added in place of the tile's own minimum pass (the same bits).
fn rows_tokens<const R: usize, const N: usize>(
    k: Avx2,
    w: &QMatrix,
    r: usize,
    x: &QuantizedActs,
    t0: usize,
    minima: Option<&GroupMinima>,
    out: &Out<'_>,
) {
    let nb = w.cols() / QK;
    let span = |r: usize| r * nb..(r + 1) * nb;
    let v: [[f32; N]; R] = match (w, x) {
        (QMatrix::Q4_1 { blocks, .. }, QuantizedActs::Q8_1 { blocks: a, .. }) => {
            let wr = std::array::from_fn(|i| &blocks[span(r + i)]);
            let ar = std::array::from_fn(|i| &a[span(t0 + i)]);
            match minima {
                Some(m) => {
                    let mut v = dot_avx2::dot_q4_1_q8_1_tile_dots(k, wr, ar);
                    for (ri, row) in v.iter_mut().enumerate() {
                        for (i, d) in row.iter_mut().enumerate() {
                            *d += m.of(t0 + i, r + ri, 1)[0];
                        }
                    }
                    v
                }
                None => dot_avx2::dot_q4_1_q8_1_tile(k, wr, ar),
            }
        }
        (QMatrix::Q8_0 { blocks, .. }, QuantizedActs::Q8_0 { blocks: a, .. }) => {
            dot_avx2::dot_q8_0_q8_0_tile(
                k,
                std::array::from_fn(|i| &blocks[span(r + i)]),
                std::array::from_fn(|i| &a[span(t0 + i)]),
            )
        }
        // Activations of another format: the per-row path reports the mismatch.
        _ => {
            return (r..r + R)
                .for_each(|r| row_times_tile(w, r, x, t0, N, Some(k), &|t, r, v| out.put(t, r, v)))
        }
    };
    // Token by token: the tile's R rows are contiguous in each token's output row.
    (0..N).for_each(|i| out.put(t0 + i, r, &std::array::from_fn::<f32, R, _>(|ri| v[ri][i])));
}

/// Row `r` of `w` against tokens `t0..t0 + width` (`width` is 1 or [`TILE`]).
fn row_times_tile(
    w: &QMatrix,
    r: usize,
    x: &QuantizedActs,
    t0: usize,
    width: usize,
    avx2: Option<Avx2>,
    put: &impl Fn(usize, usize, &[f32]),
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
                        .for_each(|(i, v)| put(t0 + i, r, &[v]));
                }
                (Some(k), _) => (t0..t0 + width)
                    .for_each(|t| put(t, r, &dot_avx2::dot_q4_1_q8_1(k, wr, [arow(t)]))),
                (None, _) => (t0..t0 + width)
                    .for_each(|t| put(t, r, &[dot_scalar::dot_q4_1_q8_1(wr, arow(t))])),
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
                        .for_each(|(i, v)| put(t0 + i, r, &[v]));
                }
                (Some(k), _) => (t0..t0 + width)
                    .for_each(|t| put(t, r, &dot_avx2::dot_q8_0_q8_0(k, wr, [arow(t)]))),
                (None, _) => (t0..t0 + width)
                    .for_each(|t| put(t, r, &[dot_scalar::dot_q8_0_q8_0(wr, arow(t))])),
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
                put(t, r, &[v]);
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
    use super::super::{BlockQ8_0, WeightFormat};
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
    fn exact_sum_q8_0_matmul_gives_the_reference_bits_in_strips_and_tail_rows() {
        // 37 rows: two full strips and a ragged tail; batches that cover every tile width.
        // Full-range weights, then weights in -16..=15 as widened Q5_0 blocks hold (the
        // narrow AVX2 strip kernel's).
        let (rows, cols) = (37, 8 * QK);
        let full = QMatrix::quantize(WeightFormat::Q8_0, rows, cols, &data(5, rows * cols));
        let QMatrix::Q8_0 { blocks, .. } = &full else {
            unreachable!("a Q8_0 matrix")
        };
        let narrow: Vec<_> = blocks
            .iter()
            .map(|b| BlockQ8_0 {
                d: b.d,
                qs: b.qs.map(|q| q / 8),
            })
            .collect();
        let narrow = QMatrix::q8_0(rows, cols, narrow);
        for w in [full, narrow] {
            check_exact(&w.with_exact_block_sums(), rows, cols);
        }
    }

    fn check_exact(w: &QMatrix, rows: usize, cols: usize) {
        let QMatrix::Q8_0 { blocks, exact, .. } = w else {
            unreachable!("a Q8_0 matrix")
        };
        assert!(exact);
        let nb = cols / QK;
        for n in [1, 3, 8, 13] {
            let xf = data(6 + n as u64, n * cols);
            let x = QuantizedActs::for_weight(w, &xf);
            let QuantizedActs::Q8_0 { blocks: a, .. } = &x else {
                unreachable!("Q8_0 activations")
            };
            let mut out = vec![0.0; n * rows];
            matmul(w, &x, &mut out);
            for t in 0..n {
                for r in 0..rows {
                    let want = dot_scalar::dot_q8_0_exact(
                        &blocks[r * nb..(r + 1) * nb],
                        &a[t * nb..(t + 1) * nb],
                    );
                    assert_eq!(
                        out[t * rows + r].to_bits(),
                        want.to_bits(),
                        "{n} tokens: row {r} token {t}"
                    );
                }
            }
        }
    }

    #[test]
    fn k_quant_matmul_approximates_f32_and_ignores_batch_composition() {
        use super::super::kquants::KType;
        let (rows, cols, n) = (21, 512, 11);
        let wf = data(3, rows * cols);
        let xf = data(4, n * cols);
        for kind in [KType::Q4K, KType::Q5K, KType::Q6K] {
            let w = QMatrix::quantize(WeightFormat::K(kind), rows, cols, &wf);
            let x = QuantizedActs::for_weight(&w, &xf);
            let mut out = vec![0.0; n * rows];
            matmul(&w, &x, &mut out);
            let mut row = vec![0.0f32; cols];
            for t in 0..n {
                let single = QuantizedActs::for_weight(&w, &xf[t * cols..(t + 1) * cols]);
                let mut one = vec![0.0; rows];
                matmul(&w, &single, &mut one);
                assert_eq!(
                    &out[t * rows..(t + 1) * rows],
                    &one[..],
                    "{kind:?} token {t}"
                );
                for r in 0..rows {
                    w.dequantize_row(r, &mut row);
                    let exact: f32 = (0..cols).map(|c| wf[r * cols + c] * xf[t * cols + c]).sum();
                    let deq: f32 = (0..cols).map(|c| row[c] * xf[t * cols + c]).sum();
                    // Against the dequantised weights only the activations' rounding is
                    // left; against the f32 weights, the format's too.
                    assert!(
                        (out[t * rows + r] - deq).abs() < 0.08,
                        "{kind:?} {r}: {deq} {}",
                        out[t * rows + r]
                    );
                    // About four standard deviations of each format's rounding here.
                    let tol = match kind {
                        KType::Q4K => 0.5,
                        KType::Q5K => 0.25,
                        KType::Q6K => 0.12,
                    };
                    assert!(
                        (out[t * rows + r] - exact).abs() < tol,
                        "{kind:?} {r}: {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantised_matmul_approximates_f32_and_ignores_batch_composition() {
        let (rows, cols, n) = (37, 64, 7);
        let wf = data(1, rows * cols);
        let xf = data(2, n * cols);
        use super::super::Half;
        let matrices = [
            (QMatrix::quantize(WeightFormat::Q4_1, rows, cols, &wf), 0.2),
            (QMatrix::quantize(WeightFormat::Q8_0, rows, cols, &wf), 0.02),
            (q5_1(rows, cols, &wf), 0.1),
            (QMatrix::quantize(WeightFormat::F32, rows, cols, &wf), 1e-4),
            (
                QMatrix::quantize(WeightFormat::Half(Half::F16), rows, cols, &wf),
                2e-3,
            ),
            (
                QMatrix::quantize(WeightFormat::Half(Half::Bf16), rows, cols, &wf),
                1e-2,
            ),
        ];
        for (w, tol) in matrices {
            let format = w.format();
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
                    let got = out[t * rows + r];
                    assert!(
                        (got - exact).abs() < tol,
                        "{format:?} {r}: {got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn q5_1_matmul_is_the_formats_dot_product() {
        // `Σ_b d_w·d_a·Σ q_w q_a + m_w·s_a` over the dequantised weights' blocks (the
        // format's own arithmetic, in f64) against the kernels' f32.
        let (rows, cols, n) = (21, 160, 5);
        let wf = data(9, rows * cols);
        let xf = data(10, n * cols);
        let w = q5_1(rows, cols, &wf);
        let x = QuantizedActs::for_weight(&w, &xf);
        let mut out = vec![0.0; n * rows];
        matmul(&w, &x, &mut out);
        let (
            QMatrix::Q8_0 {
                blocks,
                minima: Some(m),
                ..
            },
            QuantizedActs::Q8_0 { blocks: a, .. },
        ) = (&w, &x)
        else {
            unreachable!("Q5_1 runs as Q8_0 with minima")
        };
        let nb = cols / QK;
        for t in 0..n {
            for r in 0..rows {
                let want: f64 = (0..nb)
                    .map(|b| {
                        let (bw, ba) = (&blocks[r * nb + b], &a[t * nb + b]);
                        let dot: i32 = bw
                            .qs
                            .iter()
                            .zip(&ba.qs)
                            .map(|(&p, &q)| p as i32 * q as i32)
                            .sum();
                        let sum: i32 = ba.qs.iter().map(|&q| q as i32).sum();
                        bw.d.to_f32() as f64 * ba.d as f64 * dot as f64
                            + m[r * nb + b] as f64 * ba.d as f64 * sum as f64
                    })
                    .sum();
                let got = out[t * rows + r] as f64;
                assert!(
                    (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "{r} {t}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn half_matrices_give_the_f32_kernels_bits_on_their_widened_values() {
        use super::super::Half;
        // Widths with 16-value steps, an 8-value step and a tail; every token tile.
        for (cols, n) in [(75, 13), (40, 9), (16, 4), (7, 3)] {
            let rows = 11;
            let wf = data(cols as u64, rows * cols);
            let xf = data(3, n * cols);
            for kind in [Half::F16, Half::Bf16] {
                let half = QMatrix::quantize(WeightFormat::Half(kind), rows, cols, &wf);
                let mut widened = vec![0.0; rows * cols];
                for (r, row) in widened.chunks_exact_mut(cols).enumerate() {
                    half.dequantize_row(r, row);
                }
                let f32m = QMatrix::quantize(WeightFormat::F32, rows, cols, &widened);
                let run = |w: &QMatrix| {
                    let mut out = vec![0.0f32; n * rows];
                    matmul(w, &QuantizedActs::for_weight(w, &xf), &mut out);
                    out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                assert_eq!(run(&half), run(&f32m), "{kind:?} {cols} cols, {n} tokens");
            }
        }
    }

    /// `values` as a Q5_1 matrix quantised by candle (as [`crate::gguf`] loads one).
    fn q5_1(rows: usize, cols: usize, values: &[f32]) -> QMatrix {
        use candle_core::quantized::{GgmlDType, QTensor};
        let t = candle_core::Tensor::from_slice(values, (rows, cols), &candle_core::Device::Cpu)
            .unwrap();
        let bytes = QTensor::quantize(&t, GgmlDType::Q5_1)
            .unwrap()
            .data()
            .unwrap()
            .to_vec();
        QMatrix::q5_1(rows, cols, &bytes).unwrap()
    }

    /// `w` with its strip copy, whatever this process's kernel family (so every strip
    /// kernel can run on it).
    fn with_strips(w: QMatrix) -> QMatrix {
        match w {
            QMatrix::Q4_1 {
                rows,
                cols,
                blocks,
                minima,
                ..
            } => QMatrix::Q4_1 {
                strips: Some(Strips::q4_1(rows, cols / QK, &blocks)),
                rows,
                cols,
                blocks,
                minima,
            },
            QMatrix::Q8_0 {
                rows,
                cols,
                blocks,
                exact,
                minima,
                ..
            } => QMatrix::Q8_0 {
                strips: Some(Strips::q8_0(rows, cols / QK, &blocks)),
                rows,
                cols,
                blocks,
                exact,
                minima,
            },
            w => w,
        }
    }

    #[test]
    fn every_kernel_family_gives_the_same_bits_on_ragged_shapes() {
        // Row counts that leave 1-3 rows after the 4-row tiles and after the last full
        // strip, token counts that leave 1-3 tokens after the 8- and 4-token tiles:
        // every path of the driver is taken.
        let Some(k2) = Avx2::new() else {
            eprintln!("skipped: CPU lacks AVX2");
            return;
        };
        let none = Kernels {
            avx2: None,
            avx512: None,
            strip: None,
        };
        let rows_only = Kernels {
            avx2: Some(k2),
            ..none
        };
        let mut families = vec![(
            "AVX2 strips",
            Kernels {
                strip: Some(StripKernel::Ymm(Ymm::Avx2(k2))),
                ..rows_only
            },
        )];
        match AvxVnni::new() {
            Some(k) => families.push((
                "AVX-VNNI strips",
                Kernels {
                    strip: Some(StripKernel::Ymm(Ymm::AvxVnni(k))),
                    ..rows_only
                },
            )),
            None => eprintln!("AVX-VNNI absent on this CPU: its strips not compared here"),
        }
        match Avx512::new() {
            Some(k) => {
                families.push((
                    "AVX-512 tiles",
                    Kernels {
                        avx512: Some(k),
                        ..rows_only
                    },
                ));
                families.push((
                    "AVX-512 strips",
                    Kernels {
                        avx512: Some(k),
                        strip: Some(StripKernel::Zmm(k)),
                        ..rows_only
                    },
                ));
            }
            None => eprintln!("AVX-512 VNNI absent on this CPU: its kernels not compared here"),
        }
        for (rows, n) in [
            (37, 7),
            (64, 16),
            (130, 5),
            (9, 1),
            (6, 3),
            (20, 13),
            (50, 9),
        ] {
            use super::super::kquants::KType;
            use super::super::Half;
            // `None`: Q5_1, read from candle's bytes.
            for (format, cols) in [
                (Some(WeightFormat::Q4_1), 96),
                (Some(WeightFormat::Q8_0), 96),
                (None, 96),
                (Some(WeightFormat::Half(Half::F16)), 75),
                (Some(WeightFormat::Half(Half::Bf16)), 40),
                (Some(WeightFormat::K(KType::Q4K)), 512),
                (Some(WeightFormat::K(KType::Q5K)), 256),
                (Some(WeightFormat::K(KType::Q6K)), 512),
            ] {
                let wf = data(rows as u64, rows * cols);
                let xf = data(7 + n as u64, n * cols);
                let w = with_strips(match format {
                    Some(format) => QMatrix::quantize(format, rows, cols, &wf),
                    None => q5_1(rows, cols, &wf),
                });
                let x = QuantizedActs::for_weight(&w, &xf);
                let run = |kernels| {
                    let mut out = vec![0.0f32; n * rows];
                    matmul_with(kernels, &[&w], &x, &mut [&mut out], &SideFetch::new());
                    out
                };
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let avx2 = bits(&run(rows_only));
                assert_eq!(
                    bits(&run(none)),
                    avx2,
                    "scalar, {format:?} {rows}x{cols}, {n} tokens"
                );
                for (name, k) in &families {
                    assert_eq!(
                        bits(&run(*k)),
                        avx2,
                        "{name}, {format:?} {rows}x{cols}, {n} tokens"
                    );
                }
            }
        }
    }
}
