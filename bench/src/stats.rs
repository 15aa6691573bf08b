//! The statistics every bench reports with.

/// The median of `v` (the upper middle for an even count); NaN for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The median of the ratios `a[i] / b[i]` of runs taken side by side (round by round), so
/// a shared host's drift between rounds cancels.
pub fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_paired_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(Vec::new()).is_nan());
        assert_eq!(median_ratio(&[2.0, 9.0, 4.0], &[1.0, 3.0, 1.0]), 3.0);
    }
}
