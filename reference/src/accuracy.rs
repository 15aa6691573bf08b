//! How close a candidate's next-token distributions come to the reference's (pure):
//! teacher-forced on the same tokens, the share of positions where both rank the same
//! token first (top-1 agreement) and the mean |Δ log-probability| of the token that was
//! chosen there.

/// One position as the candidate (the engine, llama.cpp) scored it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// The candidate's most likely token.
    pub top: u32,
    /// The token the sequence holds next.
    pub chosen: u32,
    /// The candidate's log-probability of `chosen`.
    pub chosen_logprob: f64,
}

/// Agreement over a set of positions.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Agreement {
    pub positions: usize,
    /// Positions where the candidate's top token is the reference's.
    pub top1_agree: usize,
    /// Σ |candidate − reference| log-probability of the chosen token.
    pub abs_dlogprob_sum: f64,
    pub abs_dlogprob_max: f64,
}

impl Agreement {
    pub fn top1(&self) -> f64 {
        self.top1_agree as f64 / self.positions.max(1) as f64
    }

    pub fn mean_abs_dlogprob(&self) -> f64 {
        self.abs_dlogprob_sum / self.positions.max(1) as f64
    }

    /// Adds the positions of `candidate` against the reference's rows (log-probabilities
    /// over the vocabulary, one a position, in the same order).
    pub fn add(&mut self, candidate: &[Scored], reference: &[Vec<f64>]) {
        for (c, r) in candidate.iter().zip(reference) {
            let top = argmax(r);
            self.positions += 1;
            self.top1_agree += usize::from(top == c.top);
            let d = (c.chosen_logprob - r[c.chosen as usize]).abs();
            self.abs_dlogprob_sum += d;
            self.abs_dlogprob_max = self.abs_dlogprob_max.max(d);
        }
    }
}

/// The index of the largest value (the lowest among equals).
pub fn argmax<T: PartialOrd + Copy>(xs: &[T]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_counts_top_tokens_and_averages_the_chosen_tokens_error() {
        let reference = vec![vec![-0.1, -2.0, -3.0], vec![-2.0, -0.2, -3.0]];
        let candidate = [
            Scored {
                top: 0,
                chosen: 0,
                chosen_logprob: -0.2,
            },
            Scored {
                top: 2,
                chosen: 1,
                chosen_logprob: -0.5,
            },
        ];
        let mut a = Agreement::default();
        a.add(&candidate, &reference);
        assert_eq!((a.positions, a.top1_agree), (2, 1));
        assert!((a.mean_abs_dlogprob() - 0.2).abs() < 1e-12);
        assert!((a.abs_dlogprob_max - 0.3).abs() < 1e-12);
        assert_eq!(a.top1(), 0.5);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}
