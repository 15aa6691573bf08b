//! The forward pass in float64, the whole sequence at once: RMS norm, Q/K/V projections,
//! rotary embeddings, causal grouped-query attention with a softmax, the output
//! projection, the gated feed-forward, residual sums, the final norm and the head, then a
//! log-softmax. Llama: SwiGLU, RoPE on adjacent pairs. Gemma 3: embeddings scaled by
//! √hidden, per-head q/k norms, norms after attention and after the feed-forward, GELU
//! (tanh form), RoPE on split halves, sliding-window layers with their own RoPE base.
//! Matrix rows are spread over threads; every sum runs in order in f64.

use crate::config::{Arch, RefConfig};
use crate::weights::{Matrix, Weights};
use rayon::prelude::*;

type Rows = Vec<Vec<f64>>;

fn dot(w: &[f32], x: &[f64]) -> f64 {
    w.iter().zip(x).map(|(&a, &b)| a as f64 * b).sum()
}

/// `m · x` for every row `x` of `xs`.
fn matmul(m: &Matrix, xs: &[Vec<f64>]) -> Rows {
    let by_row: Rows = (0..m.rows)
        .into_par_iter()
        .map(|r| {
            let w = m.row(r);
            xs.iter().map(|x| dot(w, x)).collect()
        })
        .collect();
    (0..xs.len())
        .map(|t| by_row.iter().map(|col| col[t]).collect())
        .collect()
}

fn rms_norm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let scale = 1.0 / (ms + eps).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, &g)| v * scale * g as f64)
        .collect()
}

fn norm_rows(rows: &[Vec<f64>], w: &[f32], eps: f64) -> Rows {
    rows.iter().map(|r| rms_norm(r, w, eps)).collect()
}

/// `rows` normed by `w` when the layer has that norm.
fn maybe_norm(rows: Rows, w: Option<&Vec<f32>>, eps: f64) -> Rows {
    match w {
        Some(w) => norm_rows(&rows, w, eps),
        None => rows,
    }
}

/// RMS norm of each `hd`-wide head of `row`, in place.
fn head_norm(row: &mut [f64], hd: usize, w: &[f32], eps: f64) {
    for head in row.chunks_exact_mut(hd) {
        let n = rms_norm(head, w, eps);
        head.copy_from_slice(&n);
    }
}

/// How a layer rotates: the base, positions divided by `linear`, and each frequency's
/// angle divided by its factor where the file gives them.
struct Rope<'a> {
    base: f64,
    linear: f64,
    factors: Option<&'a [f32]>,
}

/// Rotates pairs of each head's first `rope_dim` values by the position: adjacent pairs
/// `(2i, 2i+1)` (llama), or `(i, i + rope_dim/2)` (NEOX: Gemma, Qwen).
fn rope(row: &mut [f64], head_dim: usize, rope_dim: usize, r: &Rope, pos: usize, neox: bool) {
    let half = rope_dim / 2;
    for head in row.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let factor = r.factors.map_or(1.0, |f| f[i] as f64);
            let theta =
                pos as f64 / r.linear * r.base.powf(-2.0 * i as f64 / rope_dim as f64) / factor;
            let (s, c) = theta.sin_cos();
            let (a, b) = if neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// GELU in its tanh form (Gemma's `gelu_pytorch_tanh`).
fn gelu_tanh(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
}

fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    logits.iter().map(|l| l - lse).collect()
}

/// Causal attention of every position over those up to it (the last `window` of them in
/// a sliding-window layer).
fn attention(c: &RefConfig, q: &Rows, k: &Rows, v: &Rows, window: Option<usize>) -> Rows {
    let hd = c.head_dim;
    let group = c.n_heads / c.n_kv_heads;
    let scale = 1.0 / (hd as f64).sqrt();
    (0..q.len())
        .into_par_iter()
        .map(|t| {
            let first = window.map_or(0, |w| (t + 1).saturating_sub(w));
            let mut out = vec![0.0; c.n_heads * hd];
            for h in 0..c.n_heads {
                let kvh = h / group;
                let qh = &q[t][h * hd..][..hd];
                let scores: Vec<f64> = (first..=t)
                    .map(|s| {
                        let ks = &k[s][kvh * hd..][..hd];
                        qh.iter().zip(ks).map(|(a, b)| a * b).sum::<f64>() * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                let o = &mut out[h * hd..][..hd];
                for (j, p) in e.iter().enumerate() {
                    let vs = &v[first + j][kvh * hd..][..hd];
                    for (oi, vi) in o.iter_mut().zip(vs) {
                        *oi += p / z * vi;
                    }
                }
            }
            out
        })
        .collect()
}

fn add(x: &mut Rows, y: &Rows) {
    for (xr, yr) in x.iter_mut().zip(y) {
        xr.iter_mut().zip(yr).for_each(|(a, b)| *a += b);
    }
}

pub(crate) fn run(c: &RefConfig, w: &Weights, tokens: &[u32], from: usize) -> Rows {
    let gemma = c.arch == Arch::Gemma3;
    let embed_scale = if gemma { (c.hidden as f64).sqrt() } else { 1.0 };
    let mut x: Rows = tokens
        .iter()
        .map(|&t| {
            w.embd
                .row(t as usize)
                .iter()
                .map(|&v| v as f64 * embed_scale)
                .collect()
        })
        .collect();
    for (l, layer) in w.layers.iter().enumerate() {
        let local = c.is_local(l);
        // Gemma's local layers rotate with their own base and no scaling.
        let rot = if local {
            Rope {
                base: c.rope_base_local,
                linear: 1.0,
                factors: None,
            }
        } else {
            Rope {
                base: c.rope_base,
                linear: c.rope_linear_factor,
                factors: w.rope_freqs.as_deref(),
            }
        };
        let h = norm_rows(&x, &layer.attn_norm, c.rms_eps);
        let mut q = matmul(&layer.wq, &h);
        let mut k = matmul(&layer.wk, &h);
        let mut v = matmul(&layer.wv, &h);
        for (rows, bias) in [
            (&mut q, &layer.bq),
            (&mut k, &layer.bk),
            (&mut v, &layer.bv),
        ] {
            if let Some(b) = bias {
                for r in rows.iter_mut() {
                    r.iter_mut().zip(b).for_each(|(x, &y)| *x += y as f64);
                }
            }
        }
        for (pos, (qr, kr)) in q.iter_mut().zip(k.iter_mut()).enumerate() {
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                head_norm(qr, c.head_dim, qn, c.rms_eps);
                head_norm(kr, c.head_dim, kn, c.rms_eps);
            }
            rope(qr, c.head_dim, c.rope_dim, &rot, pos, c.arch.neox());
            rope(kr, c.head_dim, c.rope_dim, &rot, pos, c.arch.neox());
        }
        let window = if local { c.sliding_window } else { None };
        let a = attention(c, &q, &k, &v, window);
        let o = maybe_norm(
            matmul(&layer.wo, &a),
            layer.post_attn_norm.as_ref(),
            c.rms_eps,
        );
        add(&mut x, &o);
        let h = norm_rows(&x, &layer.ffn_norm, c.rms_eps);
        let g = matmul(&layer.gate, &h);
        let u = matmul(&layer.up, &h);
        let act: Rows = g
            .iter()
            .zip(&u)
            .map(|(gr, ur)| {
                gr.iter()
                    .zip(ur)
                    .map(|(&a, &b)| if gemma { gelu_tanh(a) * b } else { silu(a) * b })
                    .collect()
            })
            .collect();
        let d = maybe_norm(
            matmul(&layer.down, &act),
            layer.post_ffw_norm.as_ref(),
            c.rms_eps,
        );
        add(&mut x, &d);
    }
    let tail = norm_rows(&x[from.min(x.len())..], &w.out_norm, c.rms_eps);
    matmul(w.head(), &tail)
        .iter()
        .map(|l| log_softmax(l))
        .collect()
}
