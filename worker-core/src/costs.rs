//! The cost curves a worker fits to its own forward passes while it serves (online
//! calibration): each prefill forward and each decode step is timed and fed to a
//! decaying least-squares fit, and the curves go out with the worker's status, so the
//! gateway predicts with what this hardware does now rather than with a preset.

use genie_protocol::costs::{decode_terms, prefill_terms, LiveCosts, OnlineFit};
use std::sync::Mutex;

/// Measurements after which an older one counts half: prefill forwards come one a batch,
/// decode steps one per generated token of the whole batch, so a decode curve needs many
/// more to average over the same stretch of traffic.
const PREFILL_HALF_LIFE: f64 = 128.0;
const DECODE_HALF_LIFE: f64 = 2048.0;

/// A worker's two live fits, shared between its compute thread and its status reports.
#[derive(Debug)]
pub struct CostTracker {
    prefill: Mutex<OnlineFit>,
    decode: Mutex<OnlineFit>,
}

impl Default for CostTracker {
    fn default() -> Self {
        CostTracker {
            prefill: Mutex::new(OnlineFit::new(PREFILL_HALF_LIFE)),
            decode: Mutex::new(OnlineFit::new(DECODE_HALF_LIFE)),
        }
    }
}

fn lock(m: &Mutex<OnlineFit>) -> std::sync::MutexGuard<'_, OnlineFit> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CostTracker {
    /// A prefill forward of prompts of `seq_tokens` new tokens each took `ms`
    /// ([`prefill_terms`]).
    pub fn prefill(&self, seq_tokens: impl IntoIterator<Item = usize>, ms: f64) {
        let x = prefill_terms(seq_tokens.into_iter().map(|n| n as f64));
        if x[1] > 0.0 {
            lock(&self.prefill).observe(x, ms);
        }
    }

    /// A decode step of sequences holding `contexts` tokens each took `ms`
    /// ([`decode_terms`]).
    pub fn decode(&self, contexts: impl IntoIterator<Item = usize>, ms: f64) {
        let x = decode_terms(contexts.into_iter().map(|n| n as f64));
        if x[1] > 0.0 {
            lock(&self.decode).observe(x, ms);
        }
    }

    /// The curves fitted so far, for the status report (`None` before any has enough
    /// measurements).
    pub fn report(&self) -> Option<LiveCosts> {
        let c = LiveCosts {
            prefill: lock(&self.prefill).curve(),
            decode: lock(&self.decode).curve(),
        };
        (c.prefill.is_some() || c.decode.is_some()).then_some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracker_reports_once_it_has_measurements_of_varied_work() {
        let t = CostTracker::default();
        assert!(t.report().is_none());
        for i in 0..12 {
            let n = 16 << (i % 4);
            t.prefill([n], 3.0 + 1.5 * n as f64);
            let batch = 1 + i % 5;
            t.decode(vec![100 + 10 * i; batch], 5.0 + 2.0 * batch as f64);
        }
        // Empty forwards are no measurement.
        t.prefill([], 9.0);
        t.decode([], 9.0);
        let r = t.report().unwrap();
        let (p, d) = (r.prefill.unwrap(), r.decode.unwrap());
        assert_eq!((p.points, d.points), (12, 12));
        assert!((p.ms([1.0, 64.0, 4096.0]) - 99.0).abs() < 0.5, "{p:?}");
        assert!((d.ms([1.0, 3.0, 360.0]) - 11.0).abs() < 0.5, "{d:?}");
    }
}
