//! Prometheus metrics of a CA host, served as text over HTTP (`GET /metrics`).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric a host exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Turns by outcome: `committed`, or the error code of the turn.
    pub turns: IntCounterVec,
    /// Seconds from a call's arrival to its reply (its checkpoint committed).
    pub turn_seconds: Histogram,
    /// Seconds one `UpdateBatch` took.
    pub commit_seconds: Histogram,
    /// Updates (CA checkpoints) per `UpdateBatch`.
    pub batch_size: Histogram,
    /// Turns per checkpoint of one CA (turns run while the previous checkpoint was in flight).
    pub turns_per_checkpoint: Histogram,
    /// Active CAs.
    pub active: IntGauge,
    /// Calls queued or running in activations.
    pub queued: IntGauge,
    /// Intents being carried out.
    pub pending_intents: IntGauge,
    /// Intents given up after too many failures.
    pub parked_intents: IntCounter,
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    // Names and buckets are constants of this file: a failure is a bug caught by every test run.
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("ca".into()), None).unwrap_or_default();
        let gauge = |name: &str, help: &str| {
            IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"))
        };
        let seconds = prometheus::exponential_buckets(0.0001, 2.0, 18).unwrap_or_default();
        let counts = prometheus::exponential_buckets(1.0, 2.0, 14).unwrap_or_default();
        let m = Self {
            turns: IntCounterVec::new(Opts::new("turns_total", "Turns by outcome"), &["outcome"])
                .unwrap_or_else(|e| panic!("metric turns_total: {e}")),
            turn_seconds: histogram(
                "turn_seconds",
                "Seconds from a call's arrival to its reply",
                seconds.clone(),
            ),
            commit_seconds: histogram("commit_seconds", "Seconds one UpdateBatch took", seconds),
            batch_size: histogram("batch_size", "Checkpoints per UpdateBatch", counts.clone()),
            turns_per_checkpoint: histogram(
                "turns_per_checkpoint",
                "Turns per checkpoint of one CA",
                counts,
            ),
            active: gauge("active", "Active CAs"),
            queued: gauge("queued_calls", "Calls queued or running in activations"),
            pending_intents: gauge("pending_intents", "Intents being carried out"),
            parked_intents: IntCounter::new(
                "parked_intents_total",
                "Intents given up after too many failures",
            )
            .unwrap_or_else(|e| panic!("metric parked_intents_total: {e}")),
            registry,
        };
        for c in [
            Box::new(m.turns.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.turn_seconds.clone()),
            Box::new(m.commit_seconds.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.turns_per_checkpoint.clone()),
            Box::new(m.active.clone()),
            Box::new(m.queued.clone()),
            Box::new(m.pending_intents.clone()),
            Box::new(m.parked_intents.clone()),
        ] {
            if let Err(e) = m.registry.register(c) {
                tracing::warn!(error = %e, "metric not registered");
            }
        }
        m
    }

    /// Counts one turn's outcome.
    pub fn turn(&self, outcome: &str) {
        self.turns.with_label_values(&[outcome]).inc();
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
