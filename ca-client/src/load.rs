//! Closed-loop load on a CA host: one caller per CA, each calling `increment` of its own CA
//! again as soon as the last call answered. `ca load` and `spine-bench`'s `ca` workload drive
//! this same loop; each decides only how many CAs, which connections and what to print.
//!
//! ```text
//!  caller i (one task per CA, CA `<prefix><i>-load`, connection i mod connections):
//!      loop until the window ends: call increment ─▶ answer
//!      counted only if the answer arrives inside [start, end] (warm-up turns activate CAs)
//! ```

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::{CaClient, CallError};

/// Latencies are kept in microseconds, up to a minute, to 3 significant digits.
const HIGHEST_MICROS: u64 = 60_000_000;
/// How long a caller waits after a failed call before calling again.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Why a load run could not report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// There was no connection to call through.
    #[error("no connections to call through")]
    NoConnections,
    /// A caller task panicked or was cancelled.
    #[error("a load caller task failed: {0}")]
    Caller(String),
}

/// The measured window: calls answered inside it count.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// When counting starts (after the warm-up).
    pub start: Instant,
    /// When counting ends; no call is sent after it.
    pub end: Instant,
}

impl Window {
    /// A window that opens `warmup` from now and lasts `measured`.
    pub fn after(warmup: Duration, measured: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + measured,
        }
    }

    /// The window's length in seconds.
    pub fn seconds(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }
}

/// What a load run measured inside its window.
#[derive(Debug)]
pub struct LoadReport {
    /// Calls answered successfully inside the window.
    pub turns: u64,
    /// Calls that failed inside the window.
    pub errors: u64,
    /// The first error any caller got, for the log.
    pub first_error: Option<CallError>,
    /// Latency of every counted turn, in microseconds.
    pub latencies: Histogram<u64>,
    /// The window measured.
    pub window: Window,
}

impl LoadReport {
    /// Counted turns per second of the window.
    pub fn per_second(&self) -> f64 {
        self.turns as f64 / self.window.seconds().max(f64::MIN_POSITIVE)
    }

    /// The `q` quantile of the turn latency, in milliseconds (0 without turns).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies.value_at_quantile(q) as f64 / 1000.0
    }

    /// The highest turn latency, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.latencies.max() as f64 / 1000.0
    }
}

/// The name of load CA `i`: `<prefix><i>-load`.
pub fn ca_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}-load")
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)
        .expect("constant bounds: low >= 1, high >= 2 * low, at most 5 digits")
}

/// Runs `cas` callers of `increment` on CAs [`ca_name`]`(prefix, i)` of `app` until
/// `window.end`; caller `i` uses `connections[i % connections.len()]`.
pub async fn run(
    connections: &[CaClient],
    app: &str,
    prefix: &str,
    cas: usize,
    window: Window,
) -> Result<LoadReport, LoadError> {
    run_callers(connections, app, prefix, cas, 1, window).await
}

/// Like [`run`], with `per_ca` closed-loop callers on each CA (a hot CA: its calls arrive while
/// earlier ones wait for their checkpoint); caller `k` calls CA `k / per_ca` through
/// `connections[k % connections.len()]`.
pub async fn run_callers(
    connections: &[CaClient],
    app: &str,
    prefix: &str,
    cas: usize,
    per_ca: usize,
    window: Window,
) -> Result<LoadReport, LoadError> {
    if connections.is_empty() {
        return Err(LoadError::NoConnections);
    }
    let per_ca = per_ca.max(1);
    let Window { start, end } = window;
    let callers: Vec<_> = (0..cas * per_ca)
        .map(|k| {
            let client = connections[k % connections.len()].clone();
            let (app, ca) = (app.to_string(), ca_name(prefix, k / per_ca));
            tokio::spawn(async move {
                let mut latencies = histogram();
                let (mut turns, mut errors, mut first_error) = (0u64, 0u64, None);
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let answer = client.call(&app, &ca, "increment", vec![]).await;
                    let done = Instant::now();
                    let counted = done >= start && done <= end;
                    match answer {
                        Ok(_) if counted => {
                            turns += 1;
                            latencies.saturating_record((done - sent).as_micros() as u64);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if counted {
                                errors += 1;
                                first_error.get_or_insert(e);
                            }
                            tokio::time::sleep(ERROR_PAUSE).await;
                        }
                    }
                }
                (latencies, turns, errors, first_error)
            })
        })
        .collect();
    let mut report = LoadReport {
        turns: 0,
        errors: 0,
        first_error: None,
        latencies: histogram(),
        window,
    };
    for caller in callers {
        let (latencies, turns, errors, first_error) =
            caller.await.map_err(|e| LoadError::Caller(e.to_string()))?;
        report
            .latencies
            .add(&latencies)
            .map_err(|e| LoadError::Caller(format!("merging latencies: {e}")))?;
        report.turns += turns;
        report.errors += errors;
        if report.first_error.is_none() {
            report.first_error = first_error;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_cas_are_named_by_prefix_and_number() {
        assert_eq!(ca_name("load", 7), "load7-load");
    }

    #[tokio::test]
    async fn a_run_needs_a_connection_and_reports_its_window() {
        let window = Window::after(Duration::ZERO, Duration::from_millis(250));
        assert!((window.seconds() - 0.25).abs() < 1e-9);
        let refused = run(&[], "demo-counter", "load", 1, window).await;
        assert!(matches!(refused, Err(LoadError::NoConnections)));
    }
}
