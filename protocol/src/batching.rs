//! The workers' batching rule, a pure function that the workers and the serving
//! simulator (`genie_scheduler::serve_sim`) share, so what the simulator predicts batches
//! as the workers do.
//!
//! A step (a decode worker's forward) or a batch (a prefill worker's) takes queued prompts
//! first come, first served: the next prompt joins while the step stays under its sequence
//! limit and within its prompt-token cap. The first prompt of a step always joins (a
//! prompt longer than the cap runs alone rather than never). Prompts run whole: there is
//! no chunked prefill.

/// The limits of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepLimits {
    /// Most sequences in a step, running and prefilling together (`usize::MAX` for a
    /// prefill worker, which has no running sequences).
    pub max_seqs: usize,
    /// Most prompt tokens in a step, unless its first prompt alone is longer.
    pub max_prompt_tokens: usize,
}

impl StepLimits {
    /// Whether a step that runs `running` sequences and already takes `taken` prompts of
    /// `tokens` tokens in all also takes the next prompt, of `n` tokens.
    pub fn takes(self, running: usize, taken: usize, tokens: usize, n: usize) -> bool {
        running + taken < self.max_seqs
            && (taken == 0 || tokens.saturating_add(n) <= self.max_prompt_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_prompt_always_joins_later_ones_within_both_limits() {
        let l = StepLimits {
            max_seqs: 4,
            max_prompt_tokens: 100,
        };
        // A lone prompt over the cap still runs.
        assert!(l.takes(0, 0, 0, 500));
        assert!(l.takes(2, 1, 60, 40));
        assert!(!l.takes(2, 1, 60, 41));
        // The sequence limit counts running sequences too.
        assert!(!l.takes(3, 1, 10, 1));
        assert!(!l.takes(4, 0, 0, 1));
    }
}
