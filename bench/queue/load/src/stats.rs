//! Latency summaries: nearest-rank percentiles, mean and maximum of a set of
//! durations, in milliseconds.

use std::time::Duration;

/// p50, p99, mean and max of one latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`; all zero when there are none.
    pub fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        if ms.is_empty() {
            return Summary {
                p50: 0.0,
                p99: 0.0,
                mean: 0.0,
                max: 0.0,
            };
        }
        Summary {
            p50: percentile(&ms, 50.0),
            p99: percentile(&ms, 99.0),
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
            max: ms[ms.len() - 1],
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "p50": round3(self.p50),
            "p99": round3(self.p99),
            "mean": round3(self.mean),
            "max": round3(self.max),
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty `values`: the smallest value
/// with at least `p` % of the values at or below it (the same rule as
/// `bench/queue/bullmq.mjs`).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to microseconds when the value is in milliseconds.
pub fn round3(value: f64) -> f64 {
    (value * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let summary = Summary::of(&samples);
        assert_eq!(summary.p50, 50.0);
        assert_eq!(summary.p99, 99.0);
        assert_eq!(summary.max, 100.0);
        assert!((summary.mean - 50.5).abs() < 1e-9);
        let one = Summary::of(&[Duration::from_millis(3)]);
        assert_eq!((one.p50, one.p99), (3.0, 3.0));
        assert_eq!(Summary::of(&[]).p99, 0.0);
    }
}
