//! Latency histograms and their summaries: percentiles, and the percentile curve the chart draws.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, to 3 significant digits.
const HIGHEST_MICROS: u64 = 600_000_000;

/// A latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Self {
        let h = Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)
            .expect("constant bounds: low >= 1, high >= 2 * low, at most 5 digits");
        Latencies(h)
    }

    /// Records one latency (a zero or negative one is recorded as 1 µs).
    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(micros);
    }

    /// Adds every latency of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        // Both have the same bounds; values above them were saturated on record.
        let _ = self.0.add(&other.0);
    }

    /// Adds every latency of a histogram of microseconds made elsewhere (e.g. `ca_client::load`'s);
    /// values above this one's bounds count as its highest.
    pub fn merge_micros(&mut self, other: &Histogram<u64>) {
        for v in other.iter_recorded() {
            let micros = v.value_iterated_to().clamp(1, HIGHEST_MICROS);
            let _ = self.0.record_n(micros, v.count_at_value());
        }
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile in milliseconds (0 when empty).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.median_equivalent(self.0.value_at_quantile(q)) as f64 / 1000.0
    }

    /// The highest latency in milliseconds (0 when empty).
    pub fn max_ms(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.max() as f64 / 1000.0
    }

    /// p50, p90, p99, p99.9, max and the percentile curve.
    pub fn summary(&self) -> Summary {
        Summary {
            count: self.count(),
            p50_ms: round3(self.quantile_ms(0.50)),
            p90_ms: round3(self.quantile_ms(0.90)),
            p99_ms: round3(self.quantile_ms(0.99)),
            p999_ms: round3(self.quantile_ms(0.999)),
            max_ms: round3(self.max_ms()),
            curve: self.curve(),
        }
    }

    /// (percentile, ms) points from the median out to the tail: 0, 50, 75, 87.5, ... up to
    /// 99.99 (each step halves what is left), then the maximum as 100.
    fn curve(&self) -> Vec<(f64, f64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let mut points = vec![(0.0, round3(self.0.min() as f64 / 1000.0))];
        let mut tail = 0.5f64;
        while tail >= 0.0001 {
            let q = 1.0 - tail;
            points.push((round3(q * 100.0), round3(self.quantile_ms(q))));
            tail /= 2.0;
        }
        points.push((100.0, round3(self.max_ms())));
        points
    }
}

/// Rounds to 3 decimals, for tidy JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A latency distribution in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Highest.
    pub max_ms: f64,
    /// (percentile, ms) points for the chart.
    pub curve: Vec<(f64, f64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut l = Latencies::new();
        for i in 1..=1000 {
            l.record(Duration::from_micros(i * 10));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.01, "{s:?}");
        assert_eq!(s.curve.first().map(|p| p.0), Some(0.0));
        assert_eq!(s.curve.last(), Some(&(100.0, s.max_ms)));
        assert!(
            s.curve
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
    }

    #[test]
    fn an_empty_histogram_summarizes_to_zeros() {
        let s = Latencies::new().summary();
        assert_eq!((s.count, s.p99_ms, s.curve.len()), (0, 0.0, 0));
    }
}
