//! The llama forward pass in float64, the whole sequence at once: RMS norm, Q/K/V
//! projections, rotary embeddings on adjacent pairs (GGUF's llama layout), causal
//! grouped-query attention with a softmax, the output projection, a SwiGLU feed-forward,
//! residual sums, the final norm and the head, then a log-softmax. Matrix rows are spread
//! over threads; every sum runs in order in f64.

use crate::config::RefConfig;
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

/// Rotates the adjacent pairs of each head's first `rope_dim` values by the position.
fn rope(row: &mut [f64], head_dim: usize, rope_dim: usize, base: f64, pos: usize) {
    for head in row.chunks_exact_mut(head_dim) {
        for i in 0..rope_dim / 2 {
            let theta = pos as f64 * base.powf(-2.0 * i as f64 / rope_dim as f64);
            let (s, c) = theta.sin_cos();
            let (x0, x1) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = x0 * c - x1 * s;
            head[2 * i + 1] = x0 * s + x1 * c;
        }
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    logits.iter().map(|l| l - lse).collect()
}

/// Causal attention of every position over those up to it.
fn attention(c: &RefConfig, q: &Rows, k: &Rows, v: &Rows) -> Rows {
    let hd = c.head_dim;
    let group = c.n_heads / c.n_kv_heads;
    let scale = 1.0 / (hd as f64).sqrt();
    (0..q.len())
        .into_par_iter()
        .map(|t| {
            let mut out = vec![0.0; c.n_heads * hd];
            for h in 0..c.n_heads {
                let kvh = h / group;
                let qh = &q[t][h * hd..][..hd];
                let scores: Vec<f64> = (0..=t)
                    .map(|s| {
                        let ks = &k[s][kvh * hd..][..hd];
                        qh.iter().zip(ks).map(|(a, b)| a * b).sum::<f64>() * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                let o = &mut out[h * hd..][..hd];
                for (s, p) in e.iter().enumerate() {
                    let vs = &v[s][kvh * hd..][..hd];
                    for (oi, vi) in o.iter_mut().zip(vs) {
                        *oi += p / z * vi;
                    }
                }
            }
            out
        })
        .collect()
}

pub(crate) fn run(c: &RefConfig, w: &Weights, tokens: &[u32], from: usize) -> Rows {
    let mut x: Rows = tokens
        .iter()
        .map(|&t| w.embd.row(t as usize).iter().map(|&v| v as f64).collect())
        .collect();
    for layer in &w.layers {
        let h: Rows = x
            .iter()
            .map(|r| rms_norm(r, &layer.attn_norm, c.rms_eps))
            .collect();
        let mut q = matmul(&layer.wq, &h);
        let mut k = matmul(&layer.wk, &h);
        let v = matmul(&layer.wv, &h);
        for (pos, (qr, kr)) in q.iter_mut().zip(k.iter_mut()).enumerate() {
            rope(qr, c.head_dim, c.rope_dim, c.rope_base, pos);
            rope(kr, c.head_dim, c.rope_dim, c.rope_base, pos);
        }
        let a = attention(c, &q, &k, &v);
        let o = matmul(&layer.wo, &a);
        for (xr, or) in x.iter_mut().zip(&o) {
            xr.iter_mut().zip(or).for_each(|(xi, oi)| *xi += oi);
        }
        let h: Rows = x
            .iter()
            .map(|r| rms_norm(r, &layer.ffn_norm, c.rms_eps))
            .collect();
        let g = matmul(&layer.gate, &h);
        let u = matmul(&layer.up, &h);
        let act: Rows = g
            .iter()
            .zip(&u)
            .map(|(gr, ur)| gr.iter().zip(ur).map(|(&a, &b)| silu(a) * b).collect())
            .collect();
        let d = matmul(&layer.down, &act);
        for (xr, dr) in x.iter_mut().zip(&d) {
            xr.iter_mut().zip(dr).for_each(|(xi, di)| *xi += di);
        }
    }
    let tail: Rows = x[from.min(x.len())..]
        .iter()
        .map(|r| rms_norm(r, &w.out_norm, c.rms_eps))
        .collect();
    matmul(w.head(), &tail)
        .iter()
        .map(|l| log_softmax(l))
        .collect()
}
