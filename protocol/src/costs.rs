//! Cost curves a worker fits to its own forward passes while it serves, and reports with
//! its status: `ms = c₀·x₀ + c₁·x₁ + c₂·x₂` over three terms the caller chooses (a
//! prefill forward's `[1, tokens, Σ prompt length²]`, a decode step's `[1, batch, Σ
//! context]`; `genie_scheduler::cost_profile` names them). The fit is weighted least
//! squares on relative errors over normal equations whose weights decay with each new
//! measurement, so memory is three by three numbers whatever the traffic, and recent
//! behaviour counts most.
//!
//! A relative error is taken against the curve's own prediction, not against the
//! measurement: a weight of `1 / measured²` favours the fast measurements, so on a noisy
//! host the curve falls below the mean time (5–10 % below on the decode steps of a
//! 2-core host serving under load, BENCHMARKS.md), and times add up to queues.

use serde::{Deserialize, Serialize};

/// The terms of a prefill forward of prompts of `lengths` tokens: `[1, Σ n, Σ n²]` (the
/// square is attention's).
pub fn prefill_terms(lengths: impl IntoIterator<Item = f64>) -> [f64; 3] {
    lengths
        .into_iter()
        .fold([1.0, 0.0, 0.0], |[one, t, t2], n| [one, t + n, t2 + n * n])
}

/// The terms of a decode step of sequences holding `contexts` tokens each: `[1, batch,
/// Σ context]`.
pub fn decode_terms(contexts: impl IntoIterator<Item = f64>) -> [f64; 3] {
    contexts
        .into_iter()
        .fold([1.0, 0.0, 0.0], |[one, b, c], n| [one, b + 1.0, c + n])
}

/// A fitted curve as a worker reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveCurve {
    pub coef: [f64; 3],
    /// Measurements seen (before decay).
    pub points: u64,
    /// Root mean square of the relative error of each measurement's prediction by the
    /// curve as it stood before that measurement (decayed like the fit).
    pub rms_rel_error: f64,
}

/// A curve's time at terms `x`: `coef · x`.
pub fn curve_ms(coef: [f64; 3], x: [f64; 3]) -> f64 {
    (0..3).map(|i| coef[i] * x[i]).sum()
}

impl LiveCurve {
    pub fn ms(&self, x: [f64; 3]) -> f64 {
        curve_ms(self.coef, x)
    }
}

/// A worker's live curves: prefill forwards, decode steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveCosts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<LiveCurve>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode: Option<LiveCurve>,
}

/// Normal equations of a three-term weighted least-squares fit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Normal3 {
    a: [[f64; 3]; 3],
    b: [f64; 3],
}

impl Normal3 {
    /// Adds measurement `y` at terms `x`, weighted `1 / y²`; non-positive or non-finite
    /// times are ignored.
    pub fn add(&mut self, x: [f64; 3], y: f64) {
        self.add_relative_to(x, y, y);
    }

    /// Adds measurement `y` at terms `x`, weighted `1 / scale²`: with `scale` the
    /// prediction at `x`, relative errors count equally and the weight does not depend on
    /// the measurement's own noise (the fit stays at the mean). A non-positive or
    /// non-finite `scale` falls back to `y`.
    pub fn add_relative_to(&mut self, x: [f64; 3], y: f64, scale: f64) {
        if !(y.is_finite() && y > 0.0 && x.iter().all(|v| v.is_finite())) {
            return;
        }
        let s = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            y
        };
        let w = 1.0 / (s * s);
        for i in 0..3 {
            self.b[i] += w * x[i] * y;
            for j in 0..3 {
                self.a[i][j] += w * x[i] * x[j];
            }
        }
    }

    /// Every accumulated weight times `f`.
    pub fn scale(&mut self, f: f64) {
        self.a.iter_mut().flatten().for_each(|v| *v *= f);
        self.b.iter_mut().for_each(|v| *v *= f);
    }

    /// The coefficients over the terms `active` allows; a coefficient that comes out
    /// negative (noise where its term hardly matters) is dropped to zero and the rest
    /// refitted. `None` when the measurements do not separate the terms.
    pub fn solve(&self, mut active: [bool; 3]) -> Option<[f64; 3]> {
        loop {
            let idx: Vec<usize> = (0..3).filter(|&i| active[i]).collect();
            let a: Vec<Vec<f64>> = idx
                .iter()
                .map(|&i| idx.iter().map(|&j| self.a[i][j]).collect())
                .collect();
            let b: Vec<f64> = idx.iter().map(|&i| self.b[i]).collect();
            let sol = solve(a, b)?;
            let mut c = [0.0f64; 3];
            for (k, &i) in idx.iter().enumerate() {
                c[i] = sol[k];
            }
            match idx.iter().copied().find(|&i| c[i] < 0.0) {
                Some(neg) if idx.len() > 1 => active[neg] = false,
                _ => return Some(c),
            }
        }
    }
}

/// Gaussian elimination with partial pivoting; `None` for an empty or singular system.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    if n == 0 {
        return None;
    }
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        let scale = a.iter().map(|r| r[col].abs()).fold(0.0f64, f64::max);
        let p = a[piv][col].abs();
        if p.is_nan() || p <= 1e-12 * scale {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        let (top, rest) = a.split_at_mut(col + 1);
        let pivot = &top[col];
        for (r, row) in rest.iter_mut().enumerate() {
            let f = row[col] / pivot[col];
            for (x, p) in row[col..].iter_mut().zip(&pivot[col..]) {
                *x -= f * p;
            }
            b[col + 1 + r] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

/// A curve refitted with every measurement, older ones decaying.
#[derive(Debug, Clone, Copy)]
pub struct OnlineFit {
    eq: Normal3,
    /// Each measurement multiplies the weight of all before it by this.
    keep: f64,
    points: u64,
    err2: f64,
    err_weight: f64,
    curve: Option<[f64; 3]>,
}

impl OnlineFit {
    /// Measurements before the curve is reported (three terms need a few distinct ones;
    /// a prefill worker sees one a batch, so few).
    pub const MIN_POINTS: u64 = 4;

    /// A fit whose measurements lose half their weight after `half_life` newer ones.
    pub fn new(half_life: f64) -> Self {
        OnlineFit {
            eq: Normal3::default(),
            keep: 0.5f64.powf(1.0 / half_life.max(1.0)),
            points: 0,
            err2: 0.0,
            err_weight: 0.0,
            curve: None,
        }
    }

    pub fn observe(&mut self, x: [f64; 3], ms: f64) {
        if !(ms.is_finite() && ms > 0.0) {
            return;
        }
        let pred = self.curve.map(|c| curve_ms(c, x));
        if let Some(pred) = pred {
            let e = (pred - ms) / ms;
            self.err2 = self.err2 * self.keep + e * e;
            self.err_weight = self.err_weight * self.keep + 1.0;
        }
        self.eq.scale(self.keep);
        // Weighted by the curve's prediction once there is one (the module doc says why).
        self.eq.add_relative_to(x, ms, pred.unwrap_or(ms));
        self.points += 1;
        // Until the terms separate, the constant alone (a curve that is the mean).
        self.curve = self
            .eq
            .solve([true; 3])
            .or_else(|| self.eq.solve([true, false, false]));
    }

    /// The current curve, once [`Self::MIN_POINTS`] measurements came in.
    pub fn curve(&self) -> Option<LiveCurve> {
        let coef = self.curve.filter(|_| self.points >= Self::MIN_POINTS)?;
        Some(LiveCurve {
            coef,
            points: self.points,
            rms_rel_error: if self.err_weight > 0.0 {
                (self.err2 / self.err_weight).sqrt()
            } else {
                0.0
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_online_fit_finds_the_curve_and_follows_a_change() {
        let mut f = OnlineFit::new(50.0);
        let truth = |x: [f64; 3]| 4.0 + 2.0 * x[1] + 0.01 * x[2];
        let shapes = [
            (1.0, 64.0),
            (4.0, 256.0),
            (16.0, 1024.0),
            (8.0, 4096.0),
            (2.0, 900.0),
        ];
        for i in 0..3 {
            let (b, c) = shapes[i % shapes.len()];
            f.observe([1.0, b, c], truth([1.0, b, c]));
        }
        assert!(f.curve().is_none(), "fewer than MIN_POINTS measurements");
        for i in 3..200 {
            let (b, c) = shapes[i % shapes.len()];
            f.observe([1.0, b, c], truth([1.0, b, c]));
        }
        let c = f.curve().unwrap();
        assert!(
            (c.coef[0] - 4.0).abs() < 1e-6 && (c.coef[1] - 2.0).abs() < 1e-6,
            "{c:?}"
        );
        // The early predictions (before the terms separated) have decayed away.
        assert!(c.rms_rel_error < 0.1 && c.points == 200, "{c:?}");
        // The hardware slows by half: within a few half-lives the curve says so.
        for i in 0..300 {
            let (b, c) = shapes[i % shapes.len()];
            f.observe([1.0, b, c], 1.5 * truth([1.0, b, c]));
        }
        let c = f.curve().unwrap();
        assert!(
            (c.ms([1.0, 4.0, 256.0]) / truth([1.0, 4.0, 256.0]) - 1.5).abs() < 0.02,
            "{c:?}"
        );
        // Garbage is ignored, not fitted.
        let before = f.curve();
        f.observe([1.0, 4.0, 256.0], f64::NAN);
        f.observe([1.0, 4.0, 256.0], -3.0);
        assert_eq!(f.curve(), before);
    }

    #[test]
    fn one_repeated_shape_gives_its_mean_not_a_wild_extrapolation() {
        let mut f = OnlineFit::new(20.0);
        for i in 0..20 {
            f.observe([1.0, 16.0, 1024.0], 40.0 + (i % 2) as f64);
        }
        let c = f.curve().unwrap();
        assert!((c.ms([1.0, 16.0, 1024.0]) - 40.5).abs() < 1.0, "{c:?}");
        assert!(c.coef.iter().all(|v| *v >= 0.0));
    }

    #[test]
    fn under_noise_the_curve_is_the_mean_time_not_the_fast_times() {
        // Each shape's time scattered by factors of mean 1 (a shared host's noise).
        let truth = |x: [f64; 3]| 4.0 + 2.0 * x[1] + 0.01 * x[2];
        let shapes = [
            (1.0, 200.0),
            (2.0, 500.0),
            (4.0, 1000.0),
            (8.0, 3000.0),
            (3.0, 90.0),
        ];
        let noise = [0.7, 1.0, 1.3];
        let mut online = OnlineFit::new(10_000.0);
        let mut by_measurement = Normal3::default();
        for i in 0..600 {
            let (b, c) = shapes[i % shapes.len()];
            let x = [1.0, b, c];
            let ms = truth(x) * noise[i % noise.len()];
            online.observe(x, ms);
            by_measurement.add(x, ms);
        }
        let old = by_measurement.solve([true; 3]).unwrap();
        let new = online.curve().unwrap();
        for (b, c) in shapes {
            let x = [1.0, b, c];
            let r = new.ms(x) / truth(x);
            assert!((r - 1.0).abs() < 0.02, "{b} {c}: {r} {new:?}");
            // Weighted by each measurement instead, the curve sits 12 % under the mean.
            let r_old = curve_ms(old, x) / truth(x);
            assert!(r_old < 0.9, "{b} {c}: {r_old}");
        }
    }

    #[test]
    fn live_costs_travel_as_json_and_absent_fields_read_as_none() {
        let c = LiveCosts {
            decode: Some(LiveCurve {
                coef: [1.0, 2.0, 0.5],
                points: 9,
                rms_rel_error: 0.1,
            }),
            prefill: None,
        };
        let v = serde_json::to_value(c).unwrap();
        assert!(v.get("prefill").is_none());
        assert_eq!(serde_json::from_value::<LiveCosts>(v).unwrap(), c);
        assert_eq!(
            serde_json::from_str::<LiveCosts>("{}").unwrap(),
            LiveCosts::default()
        );
    }
}
