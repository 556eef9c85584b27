//! Prometheus metrics, served as text over HTTP (`GET /metrics`).

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder};

/// Every metric one node exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Proposals made by this node.
    pub proposals: IntCounter,
    /// Seconds from proposal to apply on the proposing node.
    pub commit_latency: Histogram,
    /// Last applied log index.
    pub applied_index: IntGauge,
    /// Open subscription streams.
    pub subscribers: IntGauge,
    /// Log entries a subscriber was behind when it was sent an event.
    pub subscriber_lag: Histogram,
    /// Times a slow subscriber's backlog was replaced by snapshots.
    pub subscriber_resyncs: IntCounter,
    /// Seconds to write (and fsync) one checkpoint of the state machine.
    pub checkpoint_seconds: Histogram,
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    // Names and buckets are constants of this file: a failure is a bug caught by every test run.
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new(node_id: u64) -> Self {
        let registry = Registry::new_custom(
            Some("spine".into()),
            Some(std::iter::once(("node".to_string(), node_id.to_string())).collect()),
        )
        .unwrap_or_default();
        let counter = |name: &str, help: &str| {
            IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"))
        };
        let gauge = |name: &str, help: &str| {
            IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"))
        };
        let m = Self {
            proposals: counter("proposals_total", "Proposals made by this node"),
            commit_latency: histogram(
                "commit_latency_seconds",
                "Seconds from proposal to apply on the proposing node",
                prometheus::exponential_buckets(0.0001, 2.0, 18).unwrap_or_default(),
            ),
            applied_index: gauge("applied_index", "Last applied Raft log index"),
            subscribers: gauge("subscribers", "Open subscription streams"),
            subscriber_lag: histogram(
                "subscriber_lag_entries",
                "Log entries a subscriber was behind when sent an event",
                prometheus::exponential_buckets(1.0, 4.0, 10).unwrap_or_default(),
            ),
            subscriber_resyncs: counter(
                "subscriber_resyncs_total",
                "Slow subscribers whose backlog was replaced by snapshots",
            ),
            checkpoint_seconds: histogram(
                "checkpoint_seconds",
                "Seconds to write and fsync one checkpoint of the state machine",
                prometheus::exponential_buckets(0.0001, 2.0, 18).unwrap_or_default(),
            ),
            registry,
        };
        for c in [
            Box::new(m.proposals.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.commit_latency.clone()),
            Box::new(m.applied_index.clone()),
            Box::new(m.subscribers.clone()),
            Box::new(m.subscriber_lag.clone()),
            Box::new(m.subscriber_resyncs.clone()),
            Box::new(m.checkpoint_seconds.clone()),
        ] {
            if let Err(e) = m.registry.register(c) {
                tracing::warn!(error = %e, "metric not registered");
            }
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
