//! The workloads, each written once per system over the shared load generator
//! ([`crate::load`]) so that both get the same writes, payloads and connection layout; the `ca`
//! workload drives the CA host with `ca_client::load` and Caf.js with `bench/cafjs/load.js`.

pub mod ca;
pub mod catchup;
pub mod fanout;
pub mod notify;
pub mod orchestration;
pub mod propagation;
pub mod write;
pub mod write_batch;

use std::collections::BTreeMap;

use crate::stats::Summary;

/// What one workload run on one system measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Figures by key (see [`crate::report::metrics`]).
    pub figures: BTreeMap<&'static str, f64>,
    /// The latency distribution, when the workload has one.
    pub latency: Option<Summary>,
    /// Other facts worth keeping in the JSON.
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Outcome {
    /// Sets a figure.
    pub fn figure(&mut self, key: &'static str, value: f64) -> &mut Self {
        self.figures.insert(key, crate::stats::round3(value));
        self
    }

    /// Sets a detail.
    pub fn detail(&mut self, key: &str, value: impl Into<serde_json::Value>) -> &mut Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// Sets the latency distribution and its p50/p99/max figures.
    pub fn latency(&mut self, summary: Summary) -> &mut Self {
        self.figure("p50_ms", summary.p50_ms)
            .figure("p99_ms", summary.p99_ms)
            .figure("max_ms", summary.max_ms);
        self.latency = Some(summary);
        self
    }
}
