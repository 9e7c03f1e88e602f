//! Summaries of timing samples: median and the 10th and 90th percentiles.

use std::time::Duration;

use serde::Serialize;

/// A summary of one runner's samples, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub min: f64,
}

impl Summary {
    /// Summarises samples; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
        s.sort_by(f64::total_cmp);
        Some(Summary {
            n: s.len(),
            median: quantile(&s, 0.5),
            p10: quantile(&s, 0.1),
            p90: quantile(&s, 0.9),
            min: s[0],
        })
    }
}

/// Linear-interpolated quantile of sorted, non-empty data.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Geometric mean of positive ratios; `None` for an empty slice.
pub fn geomean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some((values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp())
}

/// Formats seconds with a unit that keeps three significant digits: `812 µs`, `3.91 ms`.
pub fn human(seconds: f64) -> String {
    let (v, unit) = if seconds >= 1.0 {
        (seconds, "s")
    } else if seconds >= 1e-3 {
        (seconds * 1e3, "ms")
    } else if seconds >= 1e-6 {
        (seconds * 1e6, "µs")
    } else {
        (seconds * 1e9, "ns")
    };
    if v >= 100.0 {
        format!("{v:.0} {unit}")
    } else if v >= 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.2} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        let ms = |v: u64| Duration::from_millis(v);
        let s = Summary::of(&[ms(5), ms(1), ms(3), ms(2), ms(4)]).expect("samples");
        assert_eq!(s.n, 5);
        assert!((s.median - 0.003).abs() < 1e-12);
        assert!((s.p10 - 0.0014).abs() < 1e-12);
        assert!((s.min - 0.001).abs() < 1e-12);
        let even = Summary::of(&[ms(1), ms(2)]).expect("samples");
        assert!((even.median - 0.0015).abs() < 1e-12);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn geomean_of_ratios() {
        let g = geomean(&[1.0, 4.0]).expect("values");
        assert!((g - 2.0).abs() < 1e-12);
        assert!(geomean(&[]).is_none());
    }

    #[test]
    fn human_units() {
        assert_eq!(human(0.00391), "3.91 ms");
        assert_eq!(human(0.000812), "812 µs");
        assert_eq!(human(0.0000456), "45.6 µs");
        assert_eq!(human(2.5), "2.50 s");
    }
}
