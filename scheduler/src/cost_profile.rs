//! Cost profiles: what a forward pass and a KV transfer cost on one kind of hardware for
//! one model, as curves fitted to measurements (`genie profile` writes them) or given as
//! presets for hardware that is not here (H100, A100). Pure data and arithmetic: the fit
//! is ordinary weighted least squares on the curves below, so it is unit-tested and
//! replayable.
//!
//! - Prefill forward: `ms = fixed + per_token · T + per_token2 · Σ nᵢ²`, where `T` is the
//!   batch's prompt tokens and `nᵢ` each sequence's (attention grows with the square of a
//!   sequence's length; the matrices with the batch's tokens).
//! - Decode step: `ms = fixed + per_seq · B + per_context · Σ cᵢ (+ multi_seq when B ≥ 2)`,
//!   where `B` is the batch and `cᵢ` each sequence's context (the matrices stream the
//!   weights once a step; each sequence adds its own matrix-vector work and reads its KV).
//!   The engine multiplies one token by the weights' rows and two or more by strips laid
//!   out for batches, so a step of two sequences costs more than a straight line from
//!   one to sixteen says: `multi_seq` is that step up (fitted where a profile measured
//!   both; 0 for presets and workers' live curves).
//! - KV link: `ms = latency + bytes / bandwidth`.
//!
//! The file format is versioned ([`CostProfile::VERSION`]); a reader refuses another
//! version with a message naming both.

use genie_protocol::costs::{curve_ms, decode_terms, prefill_terms, LiveCurve};
use serde::{Deserialize, Serialize};

/// A model's costs on one kind of hardware.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostProfile {
    /// The file format's version, [`CostProfile::VERSION`].
    pub version: u32,
    /// What the curves describe: the host and its ISA, or a preset's name.
    pub hardware: String,
    /// The model the curves were measured with (file name or preset name).
    pub model: String,
    /// Compute threads of the worker measured (0 where it does not apply).
    pub threads: usize,
    /// Where the curves come from: `measured` (with the command), or `preset`.
    pub source: String,
    pub prefill: PrefillCurve,
    pub decode: DecodeCurve,
    /// KV transfer links, by transport name (`tcp`, `rdma`, `in_process`).
    #[serde(default)]
    pub links: Vec<LinkCurve>,
}

/// A prefill forward's time; see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefillCurve {
    pub fixed_ms: f64,
    pub per_token_ms: f64,
    pub per_token2_ms: f64,
    pub fit: FitQuality,
}

/// A decode step's time; see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeCurve {
    pub fixed_ms: f64,
    pub per_seq_ms: f64,
    pub per_context_ms: f64,
    /// Added to steps of two or more sequences (the batched kernels' step up).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub multi_seq_ms: f64,
    pub fit: FitQuality,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// One KV transfer link's time for a transfer of `bytes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkCurve {
    pub transport: String,
    pub latency_ms: f64,
    pub gbytes_per_s: f64,
    pub fit: FitQuality,
}

/// How well a curve fits the measurements it came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitQuality {
    /// Measurements fitted (0 for a preset).
    pub points: usize,
    /// Root mean square of (predicted − measured) / measured.
    pub rms_rel_error: f64,
    /// The largest |predicted − measured| / measured.
    pub max_rel_error: f64,
}

/// A measured prefill forward: each sequence's prompt tokens, and the time.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefillPoint {
    pub seq_tokens: Vec<usize>,
    pub ms: f64,
}

/// A measured decode step: each sequence's context, and the time.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodePoint {
    pub contexts: Vec<usize>,
    pub ms: f64,
}

/// A measured KV transfer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkPoint {
    pub bytes: usize,
    pub ms: f64,
}

/// Why a profile could not be read or fitted.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error("cost profile version {found}, this build reads version {expected}")]
    Version { found: u32, expected: u32 },
    #[error("cost profile: {0}")]
    Parse(String),
    #[error("cannot fit {what}: {why}")]
    Fit { what: &'static str, why: String },
}

impl CostProfile {
    pub const VERSION: u32 = 1;

    /// Reads a profile from its JSON text, refusing other versions.
    pub fn from_json(text: &str) -> Result<Self, ProfileError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ProfileError::Parse(e.to_string()))?;
        let found = v.get("version").and_then(|v| v.as_u64()).ok_or_else(|| {
            ProfileError::Parse("no `version` field (a cost profile starts with one)".into())
        })?;
        if found != Self::VERSION as u64 {
            return Err(ProfileError::Version {
                found: found as u32,
                expected: Self::VERSION,
            });
        }
        serde_json::from_value(v).map_err(|e| ProfileError::Parse(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a cost profile serialises")
    }

    /// The link of `transport`, if the profile has one.
    pub fn link(&self, transport: &str) -> Option<&LinkCurve> {
        self.links.iter().find(|l| l.transport == transport)
    }

    /// Presets in this format for hardware that is not here, for SmolLM2-135M-class
    /// models in f16/bf16 weights: the batch-1 decode step is the weights' bytes over the
    /// card's sustained memory bandwidth, prefill the model's FLOPs over its sustained
    /// dense FLOP/s (the `inventory` presets' figures), the attention terms from the
    /// model's shape. A profile measured on the user's own cards replaces them.
    pub fn preset(name: &str) -> Option<Self> {
        // (sustained TFLOP/s, memory GB/s, NVLink-class link GB/s)
        let (tflops, gbps, link) = match name.to_ascii_lowercase().as_str() {
            "h100" => (495.0, 2680.0, 50.0),
            "a100" => (156.0, 1630.0, 25.0),
            _ => return None,
        };
        // SmolLM2-135M: 2 · 135 M FLOPs a token, 270 MB of f16 weights, 30 layers of
        // 3 KV heads x 64 (KV 23 KB a token), attention 2 · 30 · 9 · 64 · 2 FLOPs per
        // (token, key) pair, half of the square a sequence.
        let flops = 2.0 * 135e6;
        let weights = 270e6;
        let attn_flops_pair = 2.0 * 30.0 * 9.0 * 64.0 * 2.0;
        let kv_bytes_token = 30.0 * 2.0 * 3.0 * 64.0 * 2.0;
        let ms = |flop: f64| flop / (tflops * 1e12) * 1e3;
        Some(CostProfile {
            version: Self::VERSION,
            hardware: name.to_ascii_uppercase(),
            model: "SmolLM2-135M (f16)".into(),
            threads: 0,
            source: "preset".into(),
            prefill: PrefillCurve {
                fixed_ms: weights / (gbps * 1e9) * 1e3,
                per_token_ms: ms(flops),
                per_token2_ms: ms(attn_flops_pair) / 2.0,
                fit: FitQuality::default(),
            },
            decode: DecodeCurve {
                fixed_ms: weights / (gbps * 1e9) * 1e3,
                per_seq_ms: ms(flops),
                per_context_ms: kv_bytes_token / (gbps * 1e9) * 1e3,
                multi_seq_ms: 0.0,
                fit: FitQuality::default(),
            },
            links: vec![LinkCurve {
                transport: "rdma".into(),
                latency_ms: 0.01,
                gbytes_per_s: link,
                fit: FitQuality::default(),
            }],
        })
    }
}

impl PrefillCurve {
    /// Predicted ms of one prefill forward of sequences of `seq_tokens` tokens.
    pub fn ms(&self, seq_tokens: &[usize]) -> f64 {
        self.as_live()
            .ms(prefill_terms(seq_tokens.iter().map(|&n| n as f64)))
    }

    /// The least-squares curve through `points` (relative errors weighted equally).
    pub fn fit(points: &[PrefillPoint]) -> Result<Self, ProfileError> {
        let rows: Vec<([f64; 3], f64)> = points
            .iter()
            .map(|p| (prefill_terms(p.seq_tokens.iter().map(|&n| n as f64)), p.ms))
            .collect();
        let (c, fit) = fit_n::<3>("prefill", &rows)?;
        Ok(Self::with(c, fit))
    }

    fn with([fixed_ms, per_token_ms, per_token2_ms]: [f64; 3], fit: FitQuality) -> Self {
        PrefillCurve {
            fixed_ms,
            per_token_ms,
            per_token2_ms,
            fit,
        }
    }

    /// The curve in the form workers report theirs, to predict with in their place.
    pub fn as_live(&self) -> LiveCurve {
        live(
            [self.fixed_ms, self.per_token_ms, self.per_token2_ms],
            self.fit,
        )
    }

    /// A worker's live curve as a profile's.
    pub fn from_live(c: &LiveCurve) -> Self {
        Self::with(c.coef, fit_of(c))
    }
}

impl DecodeCurve {
    /// Predicted ms of one decode step of sequences with `contexts` tokens of context.
    pub fn ms(&self, contexts: &[usize]) -> f64 {
        self.step_ms(decode_terms(contexts.iter().map(|&n| n as f64)))
    }

    /// Predicted ms of a decode step with terms `x` ([`decode_terms`]).
    pub fn step_ms(&self, x: [f64; 3]) -> f64 {
        let multi = if x[1] >= 2.0 { self.multi_seq_ms } else { 0.0 };
        self.as_live().ms(x) + multi
    }

    /// The least-squares curve through `points` (relative errors weighted equally). Where
    /// there are steps of one sequence and at least three of two or more, the line is
    /// fitted to the latter and the one-sequence steps set the fixed cost under it (the
    /// step up is `multi_seq_ms`); else one line through all.
    pub fn fit(points: &[DecodePoint]) -> Result<Self, ProfileError> {
        let rows: Vec<([f64; 3], f64)> = points
            .iter()
            .map(|p| (decode_terms(p.contexts.iter().map(|&n| n as f64)), p.ms))
            .collect();
        if let Some(curve) = Self::fit_step(&rows)? {
            return Ok(curve);
        }
        let (c, fit) = fit_n::<3>("decode", &rows)?;
        Ok(Self::with(c, fit))
    }

    /// The line through the batched steps with the one-sequence steps' fixed cost under
    /// it; `None` where the rows do not have both kinds, or where the step would come out
    /// negative (a term the measurements contradict is dropped, as `fit_n` drops negative
    /// ones).
    fn fit_step(rows: &[([f64; 3], f64)]) -> Result<Option<Self>, ProfileError> {
        let (single, multi): (Vec<_>, Vec<_>) = rows.iter().partition(|(x, _)| x[1] < 2.0);
        if single.is_empty() || multi.len() < 3 {
            return Ok(None);
        }
        let (c, _) = fit_n::<3>("decode", &multi)?;
        // The fixed cost of one-sequence steps given the batched line's slopes: the
        // weighted mean (relative errors) of what each leaves over the slopes.
        let (mut num, mut den) = (0.0, 0.0);
        for (x, y) in &single {
            let rest = y - c[1] * x[1] - c[2] * x[2];
            num += rest / (y * y);
            den += 1.0 / (y * y);
        }
        let fixed = num / den;
        if fixed > c[0] {
            return Ok(None);
        }
        let mut curve = Self::with([fixed, c[1], c[2]], FitQuality::default());
        curve.multi_seq_ms = c[0] - fixed;
        curve.fit = quality(rows, |x| curve.step_ms(x));
        Ok(Some(curve))
    }

    fn with([fixed_ms, per_seq_ms, per_context_ms]: [f64; 3], fit: FitQuality) -> Self {
        DecodeCurve {
            fixed_ms,
            per_seq_ms,
            per_context_ms,
            multi_seq_ms: 0.0,
            fit,
        }
    }

    /// The curve in the form workers report theirs (without `multi_seq_ms`, which live
    /// curves do not have).
    pub fn as_live(&self) -> LiveCurve {
        live(
            [self.fixed_ms, self.per_seq_ms, self.per_context_ms],
            self.fit,
        )
    }

    /// The curve as a live one for steps of `batch` sequences: the step up for two or
    /// more folded into the fixed cost where it applies.
    pub fn live_at(&self, batch: usize) -> LiveCurve {
        let mut c = self.as_live();
        if batch >= 2 {
            c.coef[0] += self.multi_seq_ms;
        }
        c
    }

    pub fn from_live(c: &LiveCurve) -> Self {
        Self::with(c.coef, fit_of(c))
    }
}

fn live(coef: [f64; 3], fit: FitQuality) -> LiveCurve {
    LiveCurve {
        coef,
        points: fit.points as u64,
        rms_rel_error: fit.rms_rel_error,
    }
}

/// A live curve's fit (its rms error is of predictions made before each measurement; no
/// max is kept).
fn fit_of(c: &LiveCurve) -> FitQuality {
    FitQuality {
        points: c.points as usize,
        rms_rel_error: c.rms_rel_error,
        max_rel_error: 0.0,
    }
}

impl LinkCurve {
    pub fn ms(&self, bytes: usize) -> f64 {
        self.latency_ms + bytes as f64 / (self.gbytes_per_s * 1e9) * 1e3
    }

    pub fn fit(transport: &str, points: &[LinkPoint]) -> Result<Self, ProfileError> {
        let rows: Vec<([f64; 3], f64)> = points
            .iter()
            .map(|p| ([1.0, p.bytes as f64, 0.0], p.ms))
            .collect();
        let (c, fit) = fit_n::<2>("link", &rows)?;
        if c[1] <= 0.0 {
            return Err(ProfileError::Fit {
                what: "link",
                why: "time does not grow with bytes".into(),
            });
        }
        Ok(LinkCurve {
            transport: transport.into(),
            latency_ms: c[0],
            gbytes_per_s: 1.0 / (c[1] * 1e9) * 1e3,
            fit,
        })
    }
}

impl std::fmt::Display for FitQuality {
    /// `N points, rms error R %, max M %` (the max only where it was measured).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} points, rms error {:.1} %",
            self.points,
            self.rms_rel_error * 100.0
        )?;
        if self.max_rel_error > 0.0 {
            write!(f, ", max {:.1} %", self.max_rel_error * 100.0)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for PrefillCurve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "prefill ms = {:.3} + {:.5} x tokens + {:.3e} x sum of squared prompt lengths ({})",
            self.fixed_ms, self.per_token_ms, self.per_token2_ms, self.fit
        )
    }
}

impl std::fmt::Display for DecodeCurve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "decode step ms = {:.3} + {:.4} x batch + {:.3e} x total context",
            self.fixed_ms, self.per_seq_ms, self.per_context_ms
        )?;
        if self.multi_seq_ms != 0.0 {
            write!(f, " + {:.3} with two or more sequences", self.multi_seq_ms)?;
        }
        write!(f, " ({})", self.fit)
    }
}

/// Weighted least squares on the first `N` terms of each row, so that relative errors
/// count equally: first each row weighted by `1 / y²`, then, three times, by `1 / ŷ²` of
/// the curve before (a measurement's own noise then does not set its weight, which would
/// pull the curve under the mean time; `genie_protocol::costs` says more). Coefficients
/// that come out negative (noise where a term hardly matters) are dropped to zero and the
/// rest refitted (`genie_protocol::costs::Normal3`, the workers' online fit's arithmetic).
fn fit_n<const N: usize>(
    what: &'static str,
    rows: &[([f64; 3], f64)],
) -> Result<([f64; 3], FitQuality), ProfileError> {
    if rows.len() < N {
        return Err(ProfileError::Fit {
            what,
            why: format!("{} measurements for {N} coefficients", rows.len()),
        });
    }
    if let Some((_, y)) = rows.iter().find(|(_, y)| !(y.is_finite() && *y > 0.0)) {
        return Err(ProfileError::Fit {
            what,
            why: format!("a measured time of {y} ms"),
        });
    }
    let mut c: Option<[f64; 3]> = None;
    for _ in 0..4 {
        let mut eq = genie_protocol::costs::Normal3::default();
        for (x, y) in rows {
            eq.add_relative_to(*x, *y, c.map_or(*y, |c| curve_ms(c, *x)));
        }
        c = Some(
            eq.solve(std::array::from_fn(|i| i < N))
                .ok_or_else(|| ProfileError::Fit {
                    what,
                    why: "the measurements do not separate the terms (vary the sizes)".into(),
                })?,
        );
    }
    let c = c.expect("fitted");
    Ok((c, quality(rows, |x| curve_ms(c, x))))
}

/// How well `predict` fits `rows`: the rms and the largest of the relative errors.
fn quality(rows: &[([f64; 3], f64)], predict: impl Fn([f64; 3]) -> f64) -> FitQuality {
    let errs: Vec<f64> = rows.iter().map(|(x, y)| (predict(*x) - y) / y).collect();
    FitQuality {
        points: rows.len(),
        rms_rel_error: (errs.iter().map(|e| e * e).sum::<f64>() / errs.len() as f64).sqrt(),
        max_rel_error: errs.iter().fold(0.0f64, |m, e| m.max(e.abs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_recover_the_curves_that_made_the_points() {
        let truth = PrefillCurve {
            fixed_ms: 3.0,
            per_token_ms: 1.8,
            per_token2_ms: 0.0004,
            fit: FitQuality::default(),
        };
        let shapes: Vec<Vec<usize>> = vec![
            vec![16],
            vec![64],
            vec![256],
            vec![1024],
            vec![64; 4],
            vec![256; 4],
        ];
        let points: Vec<PrefillPoint> = shapes
            .iter()
            .map(|s| PrefillPoint {
                seq_tokens: s.clone(),
                ms: truth.ms(s),
            })
            .collect();
        let got = PrefillCurve::fit(&points).unwrap();
        assert!((got.fixed_ms - 3.0).abs() < 1e-6, "{got:?}");
        assert!((got.per_token_ms - 1.8).abs() < 1e-9, "{got:?}");
        assert!((got.per_token2_ms - 0.0004).abs() < 1e-12, "{got:?}");
        assert!(got.fit.rms_rel_error < 1e-9 && got.fit.points == 6);

        // Decode with 5 % noise alternating in sign: the fit's error says so.
        let d = DecodeCurve {
            fixed_ms: 7.0,
            per_seq_ms: 0.9,
            per_context_ms: 0.002,
            multi_seq_ms: 0.0,
            fit: FitQuality::default(),
        };
        let points: Vec<DecodePoint> = [(1, 64), (4, 64), (16, 64), (1, 512), (4, 512), (16, 512)]
            .iter()
            .enumerate()
            .map(|(i, &(b, c))| {
                let ctx = vec![c; b];
                let noise = if i % 2 == 0 { 1.05 } else { 0.95 };
                DecodePoint {
                    ms: d.ms(&ctx) * noise,
                    contexts: ctx,
                }
            })
            .collect();
        let got = DecodeCurve::fit(&points).unwrap();
        assert!((got.fixed_ms - 7.0).abs() < 0.7, "{got:?}");
        assert!(
            got.fit.rms_rel_error > 0.02 && got.fit.rms_rel_error < 0.06,
            "{got:?}"
        );
        assert!(got.fit.max_rel_error < 0.1);

        // Steps of two or more sequences a step up from one (the batched kernels): the
        // fit finds the step and the line under it, where one line through all misses
        // the batch-4 points by a tenth.
        let d = DecodeCurve {
            fixed_ms: 2.4,
            per_seq_ms: 1.6,
            per_context_ms: 0.005,
            multi_seq_ms: 4.0,
            fit: FitQuality::default(),
        };
        let points: Vec<DecodePoint> = [(1, 64), (4, 64), (16, 64), (1, 512), (4, 512), (16, 512)]
            .iter()
            .map(|&(b, c)| DecodePoint {
                ms: d.ms(&vec![c; b]),
                contexts: vec![c; b],
            })
            .collect();
        assert!((d.ms(&[64, 64]) - d.ms(&[64]) - (4.0 + 1.6 + 0.32)).abs() < 1e-9);
        let got = DecodeCurve::fit(&points).unwrap();
        for (g, t) in [
            (got.fixed_ms, 2.4),
            (got.per_seq_ms, 1.6),
            (got.per_context_ms, 0.005),
            (got.multi_seq_ms, 4.0),
        ] {
            assert!((g - t).abs() < 1e-6, "{got:?}");
        }
        assert!(got.fit.rms_rel_error < 1e-9, "{got:?}");
        let rows: Vec<([f64; 3], f64)> = points
            .iter()
            .map(|p| (decode_terms(p.contexts.iter().map(|&n| n as f64)), p.ms))
            .collect();
        let (_, one_line) = fit_n::<3>("decode", &rows).unwrap();
        assert!(one_line.max_rel_error > 0.1, "{one_line:?}");
        // As a live curve (the gateway's prediction where a worker has fitted none) the
        // step is in the fixed cost for batches of two or more, and only there.
        for ctx in [vec![64], vec![64, 512], vec![512; 16]] {
            let x = decode_terms(ctx.iter().map(|&n| n as f64));
            assert!(
                (got.live_at(ctx.len()).ms(x) - d.ms(&ctx)).abs() < 1e-6,
                "{ctx:?}"
            );
        }
        // A profile's file without the field reads as no step.
        let mut j: serde_json::Value = serde_json::to_value(got).unwrap();
        j.as_object_mut().unwrap().remove("multi_seq_ms");
        let back: DecodeCurve = serde_json::from_value(j).unwrap();
        assert_eq!(back.multi_seq_ms, 0.0);

        let l = LinkCurve::fit(
            "tcp",
            &[
                LinkPoint {
                    bytes: 1_000,
                    ms: 0.2 + 1e-3,
                },
                LinkPoint {
                    bytes: 10_000_000,
                    ms: 0.2 + 10.0,
                },
            ],
        )
        .unwrap();
        assert!(
            (l.gbytes_per_s - 1.0).abs() < 1e-6 && (l.latency_ms - 0.2).abs() < 1e-6,
            "{l:?}"
        );
    }

    #[test]
    fn a_term_the_measurements_contradict_is_dropped_not_negative() {
        // Times that fall slightly with context: the context term goes to zero.
        let points: Vec<DecodePoint> =
            [(1, 64, 10.0), (1, 512, 9.9), (8, 64, 17.0), (8, 512, 16.9)]
                .iter()
                .map(|&(b, c, ms)| DecodePoint {
                    contexts: vec![c; b],
                    ms,
                })
                .collect();
        let got = DecodeCurve::fit(&points).unwrap();
        assert_eq!(got.per_context_ms, 0.0);
        assert!(got.per_seq_ms > 0.0 && got.fixed_ms > 0.0);
    }

    #[test]
    fn bad_measurements_and_other_versions_are_refused_with_the_reason() {
        let one = [PrefillPoint {
            seq_tokens: vec![16],
            ms: 4.0,
        }];
        assert!(matches!(
            PrefillCurve::fit(&one),
            Err(ProfileError::Fit {
                what: "prefill",
                ..
            })
        ));
        let same: Vec<PrefillPoint> = (0..4)
            .map(|_| PrefillPoint {
                seq_tokens: vec![64],
                ms: 10.0,
            })
            .collect();
        let e = PrefillCurve::fit(&same).unwrap_err().to_string();
        assert!(e.contains("vary the sizes"), "{e}");
        let bad = [
            PrefillPoint {
                seq_tokens: vec![16],
                ms: 1.0,
            },
            PrefillPoint {
                seq_tokens: vec![64],
                ms: f64::NAN,
            },
            PrefillPoint {
                seq_tokens: vec![256],
                ms: 9.0,
            },
        ];
        assert!(PrefillCurve::fit(&bad)
            .unwrap_err()
            .to_string()
            .contains("NaN"));

        let p = CostProfile::preset("h100").unwrap();
        let text = p.to_json();
        let back = CostProfile::from_json(&text).unwrap();
        assert_eq!((&back.hardware, back.links.len()), (&p.hardware, 1));
        assert!((back.prefill.per_token2_ms / p.prefill.per_token2_ms - 1.0).abs() < 1e-12);
        let v2 = text.replacen("\"version\": 1", "\"version\": 2", 1);
        assert_eq!(
            CostProfile::from_json(&v2).unwrap_err(),
            ProfileError::Version {
                found: 2,
                expected: 1
            }
        );
        assert!(CostProfile::from_json("{}")
            .unwrap_err()
            .to_string()
            .contains("version"));
        assert!(CostProfile::preset("tpu").is_none());
    }

    #[test]
    fn presets_order_the_cards_and_grow_with_the_work() {
        let (h, a) = (
            CostProfile::preset("H100").unwrap(),
            CostProfile::preset("a100").unwrap(),
        );
        assert!(h.decode.ms(&[512; 16]) < a.decode.ms(&[512; 16]));
        assert!(h.prefill.ms(&[2048]) < a.prefill.ms(&[2048]));
        assert!(h.prefill.ms(&[2048]) > h.prefill.ms(&[1024]) * 2.0 - h.prefill.fixed_ms);
        assert!(h.decode.ms(&[4096; 8]) > h.decode.ms(&[64; 8]));
        assert!(h.link("rdma").unwrap().ms(1 << 30) > 10.0);
    }
}
