//! Results of a suite run (per item, per runner, every sample) and their rendering:
//! ratio tables with geomean and median ratio per runner, and JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats::{Summary, geomean, human};
use crate::table::Table;

/// Every sample of a suite run, in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SuiteReport {
    /// `polybench` or `sqlite`.
    pub suite: String,
    /// What was run, e.g. `LARGE, 5 runs`.
    pub setting: String,
    /// Items (kernels, tests) in display order.
    pub items: Vec<String>,
    /// Runner names; the first is the baseline (native).
    pub runners: Vec<String>,
    /// samples[item][runner] = seconds of each run.
    pub samples: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// Runners that were not measured, and why.
    pub skipped: Vec<(String, String)>,
}

impl SuiteReport {
    /// Drops a runner that failed, keeping why.
    pub fn drop_runner(&mut self, runner: &str, why: String) {
        self.runners.retain(|r| r != runner);
        for per_runner in self.samples.values_mut() {
            per_runner.remove(runner);
        }
        self.skipped.push((runner.to_owned(), why));
    }

    /// Passes a runner's result through, except that a failed peer is dropped (with its
    /// reason) and gives `Ok(None)`; a failure of native or Tern stays an error.
    ///
    /// # Errors
    /// `result`'s error when `runner` is not a peer.
    pub fn tolerate_peer<T>(
        &mut self,
        runner: &crate::runner::Runner,
        result: anyhow::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) if runner.is_peer() => {
                self.drop_runner(&runner.name, format!("failed: {e:#}"));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn push(&mut self, item: &str, runner: &str, seconds: f64) {
        self.samples
            .entry(item.to_owned())
            .or_default()
            .entry(runner.to_owned())
            .or_default()
            .push(seconds);
    }

    fn summary(&self, item: &str, runner: &str) -> Option<Summary> {
        let s = self.samples.get(item)?.get(runner)?;
        let d: Vec<std::time::Duration> = s
            .iter()
            .map(|v| std::time::Duration::from_secs_f64(v.max(0.0)))
            .collect();
        Summary::of(&d)
    }

    /// Median time of `runner` over the baseline's, for one item; `None` when either is
    /// zero (a test too short for its timer's resolution says nothing about speed).
    pub fn ratio(&self, item: &str, runner: &str) -> Option<f64> {
        let base = self.summary(item, self.runners.first()?)?.median;
        let r = self.summary(item, runner)?.median;
        (base > 0.0 && r > 0.0).then(|| r / base)
    }

    /// Geometric mean and median of the per-item ratios of `runner`.
    pub fn aggregate(&self, runner: &str) -> Option<(f64, f64)> {
        let mut ratios: Vec<f64> = self
            .items
            .iter()
            .filter_map(|i| self.ratio(i, runner))
            .collect();
        if ratios.is_empty() {
            return None;
        }
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        let median = if n % 2 == 1 {
            ratios[n / 2]
        } else {
            (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
        };
        Some((geomean(&ratios)?, median))
    }

    /// One row per item: the baseline's median time, then each runner's ratio to it with
    /// its spread ((p90 - p10) / median); geomean and median ratio on the last lines.
    pub fn render(&self) -> String {
        let Some(base) = self.runners.first() else {
            return String::new();
        };
        let mut header = vec!["item".to_owned(), format!("{base} (median)")];
        header.extend(self.runners.iter().skip(1).cloned());
        let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut t = Table::new(&header_refs);
        for item in &self.items {
            let mut row = vec![item.clone()];
            row.push(self.summary(item, base).map_or("-".into(), |s| {
                format!("{} ±{:.0}%", human(s.median), spread(&s))
            }));
            for r in self.runners.iter().skip(1) {
                row.push(match (self.ratio(item, r), self.summary(item, r)) {
                    (Some(x), Some(s)) => format!("{x:.3} ±{:.0}%", spread(&s)),
                    _ => "-".into(),
                });
            }
            t.row(row);
        }
        for (label, pick) in [("geomean", 0), ("median", 1)] {
            let mut row = vec![format!("**{label}**"), "1.000".into()];
            for r in self.runners.iter().skip(1) {
                row.push(self.aggregate(r).map_or("-".into(), |a| {
                    format!("**{:.3}**", if pick == 0 { a.0 } else { a.1 })
                }));
            }
            t.row(row);
        }
        let mut out = format!(
            "{} ({}): time relative to {base}, lower is better\n\n",
            self.suite, self.setting
        );
        out.push_str(&t.markdown());
        for (name, why) in &self.skipped {
            out.push_str(&format!("skipped: {name}: {why}\n"));
        }
        out
    }
}

fn spread(s: &Summary) -> f64 {
    if s.median > 0.0 {
        100.0 * (s.p90 - s.p10) / s.median
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> SuiteReport {
        let mut r = SuiteReport {
            suite: "t".into(),
            setting: "s".into(),
            items: vec!["a".into(), "b".into()],
            runners: vec!["native".into(), "wasm".into()],
            ..SuiteReport::default()
        };
        for (item, native, wasm) in [("a", 1.0, 2.0), ("b", 2.0, 1.0)] {
            for _ in 0..3 {
                r.push(item, "native", native);
                r.push(item, "wasm", wasm);
            }
        }
        r
    }

    /// Ratios are medians over the baseline's; the geomean of 2 and 0.5 is 1.
    #[test]
    fn ratios_and_aggregates() {
        let mut r = report();
        r.items.push("too-short".into());
        r.push("too-short", "native", 0.001);
        r.push("too-short", "wasm", 0.0);
        assert_eq!(r.ratio("too-short", "wasm"), None);
        assert_eq!(r.ratio("a", "wasm"), Some(2.0));
        assert_eq!(r.ratio("b", "wasm"), Some(0.5));
        let (g, m) = r.aggregate("wasm").expect("ratios");
        assert!((g - 1.0).abs() < 1e-12);
        assert!((m - 1.25).abs() < 1e-12);
        let text = r.render();
        assert!(text.contains("| a "), "{text}");
        assert!(text.contains("2.000"), "{text}");
        assert!(text.contains("**1.000**"), "{text}");
    }
}
