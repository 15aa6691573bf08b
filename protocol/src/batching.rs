//! The workers' batching rule, a pure function that the workers and the serving
//! simulator (`genie_scheduler::serve_sim`) share, so what the simulator predicts batches
//! as the workers do.
//!
//! A step (a decode worker's forward) or a batch (a prefill worker's) takes queued prompts
//! first come, first served: the next prompt joins while the step stays under its sequence
//! limit and within its prompt-token cap. The first prompt of a step always joins (a
//! prompt longer than the cap runs alone rather than never). A decode step beside running
//! sequences takes prompt tokens only up to its chunk (chunked prefill): the prompt cut
//! there goes on in the next step.

/// The limits of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepLimits {
    /// Most sequences in a step, running and prefilling together (`usize::MAX` for a
    /// prefill worker, which has no running sequences).
    pub max_seqs: usize,
    /// Most prompt tokens in a step, unless its first prompt alone is longer.
    pub max_prompt_tokens: usize,
    /// While sequences are running, most prompt tokens a step computes, a prompt cut
    /// where they run out (`decode.prefill_chunk_tokens`; 0: prompts whole).
    pub chunk_tokens: usize,
}

impl StepLimits {
    /// Whether a step that runs `running` sequences and already takes `taken` prompts of
    /// `tokens` tokens in all also takes the next prompt, of `n` tokens.
    pub fn takes(self, running: usize, taken: usize, tokens: usize, n: usize) -> bool {
        running + taken < self.max_seqs
            && (taken == 0 || tokens.saturating_add(n) <= self.max_prompt_tokens)
    }

    /// How many more prompt tokens a step that runs `running` sequences and already
    /// computes `tokens` prompt tokens may take of the next prompt: unbounded
    /// (`usize::MAX`) with nothing running or no chunk, else what is left of the chunk
    /// (0: none).
    pub fn room(self, running: usize, tokens: usize) -> usize {
        match self.chunk_tokens {
            0 => usize::MAX,
            _ if running == 0 => usize::MAX,
            c => c.saturating_sub(tokens),
        }
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
            chunk_tokens: 0,
        };
        // A lone prompt over the cap still runs.
        assert!(l.takes(0, 0, 0, 500));
        assert!(l.takes(2, 1, 60, 40));
        assert!(!l.takes(2, 1, 60, 41));
        // The sequence limit counts running sequences too.
        assert!(!l.takes(3, 1, 10, 1));
        assert!(!l.takes(4, 0, 0, 1));
    }

    #[test]
    fn a_chunk_bounds_a_step_only_beside_running_sequences() {
        let l = StepLimits {
            max_seqs: 4,
            max_prompt_tokens: 100,
            chunk_tokens: 32,
        };
        // Nothing running: prompts whole.
        assert_eq!(l.room(0, 0), usize::MAX);
        assert_eq!(l.room(0, 500), usize::MAX);
        // Beside running sequences: what is left of the chunk.
        assert_eq!(l.room(2, 0), 32);
        assert_eq!(l.room(2, 20), 12);
        assert_eq!(l.room(2, 32), 0);
        let whole = StepLimits {
            chunk_tokens: 0,
            ..l
        };
        assert_eq!(whole.room(2, 20), usize::MAX);
    }
}
