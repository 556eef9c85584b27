//! Prometheus metrics of the node agent, computed from [`AgentStatus`] when scraped.
//!
//! Only agent-wide figures: an agent follows thousands of maps, so there is no series per map
//! (per-map figures are in `spine-agent status`). Lag is summarized by its maximum over maps.

use prometheus::core::Collector;
use prometheus::{Encoder, Gauge, IntCounter, IntGauge, Registry, TextEncoder};

use crate::AgentStatus;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Prometheus text exposition of `status`, plus the daemon's pin count when there is a daemon.
pub fn render(status: &AgentStatus, daemon_pins: Option<u64>) -> String {
    let max_versions_behind = status
        .per_map
        .iter()
        .map(|m| m.versions_behind)
        .max()
        .unwrap_or(0);
    let max_behind_ms = status
        .per_map
        .iter()
        .map(|m| m.behind_ms)
        .max()
        .unwrap_or(0);
    let mut metrics: Vec<Option<Box<dyn Collector>>> = vec![
        int_gauge("spine_agent_maps", "Maps followed", status.maps as u64),
        int_gauge(
            "spine_agent_pinned_snapshots",
            "Snapshots pinned by readers",
            status.pinned as u64,
        ),
        int_gauge(
            "spine_agent_versions_retained",
            "Versions retained in the maps' windows",
            status.retained as u64,
        ),
        gauge(
            "spine_agent_seconds_since_last_event",
            "Seconds since the last event (update or progress) from the Spine",
            millis_to_secs(status.since_last_event_ms),
        ),
        int_gauge(
            "spine_agent_applied_index",
            "Highest Raft index the agent has seen applied",
            status.applied_index,
        ),
        counter(
            "spine_agent_outages_total",
            "Times the subscription reported the Spine unavailable",
            status.outages,
        ),
        int_gauge(
            "spine_agent_max_versions_behind",
            "Most versions any followed map is behind the Spine",
            max_versions_behind,
        ),
        gauge(
            "spine_agent_max_seconds_behind",
            "Longest any followed map has been behind the Spine, in seconds",
            millis_to_secs(max_behind_ms),
        ),
    ];
    if let Some(pins) = daemon_pins {
        metrics.push(int_gauge(
            "spine_agent_daemon_pins",
            "Pins the daemon holds for its clients",
            pins,
        ));
    }
    let registry = Registry::new();
    for m in metrics.into_iter().flatten() {
        if let Err(e) = registry.register(m) {
            tracing::warn!(error = %e, "metric not registered");
        }
    }
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        return format!("# encoding failed: {e}\n");
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn millis_to_secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

// Names and help texts are constants, so construction cannot fail; a failure would only drop
// the metric (with a warning) rather than the whole exposition.
fn int_gauge(name: &str, help: &str, value: u64) -> Option<Box<dyn Collector>> {
    match IntGauge::new(name, help) {
        Ok(g) => {
            g.set(i64::try_from(value).unwrap_or(i64::MAX));
            Some(Box::new(g))
        }
        Err(e) => invalid(name, e),
    }
}

fn gauge(name: &str, help: &str, value: f64) -> Option<Box<dyn Collector>> {
    match Gauge::new(name, help) {
        Ok(g) => {
            g.set(value);
            Some(Box::new(g))
        }
        Err(e) => invalid(name, e),
    }
}

fn counter(name: &str, help: &str, value: u64) -> Option<Box<dyn Collector>> {
    match IntCounter::new(name, help) {
        Ok(c) => {
            c.inc_by(value);
            Some(Box::new(c))
        }
        Err(e) => invalid(name, e),
    }
}

fn invalid(name: &str, e: prometheus::Error) -> Option<Box<dyn Collector>> {
    tracing::warn!(metric = name, error = %e, "invalid metric");
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MapStatus;

    fn map(name: &str, versions_behind: u64, behind_ms: u64) -> MapStatus {
        MapStatus {
            app: "acme-shop".into(),
            map: name.into(),
            version: Some(7),
            retained: 2,
            pinned: 1,
            leases: 1,
            versions_behind,
            behind_ms,
            updates: 6,
            snapshots: 1,
        }
    }

    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn renders_agent_wide_figures_without_per_map_series() {
        let status = AgentStatus {
            maps: 2,
            pinned: 3,
            retained: 5,
            since_last_event_ms: 1500,
            applied_index: 42,
            outages: 1,
            per_map: vec![
                map("bob-tv-prices", 4, 250),
                map("alice-phone-prices", 1, 2000),
            ],
        };
        let text = render(&status, Some(9));
        let expected = [
            ("spine_agent_maps", 2.0),
            ("spine_agent_pinned_snapshots", 3.0),
            ("spine_agent_versions_retained", 5.0),
            ("spine_agent_seconds_since_last_event", 1.5),
            ("spine_agent_applied_index", 42.0),
            ("spine_agent_outages_total", 1.0),
            ("spine_agent_max_versions_behind", 4.0),
            ("spine_agent_max_seconds_behind", 2.0),
            ("spine_agent_daemon_pins", 9.0),
        ];
        for (name, want) in expected {
            assert_eq!(value(&text, name), Some(want), "{name} in:\n{text}");
        }
        assert!(
            text.contains("# TYPE spine_agent_outages_total counter"),
            "{text}"
        );
        assert!(text.contains("# TYPE spine_agent_maps gauge"), "{text}");
        assert!(
            !text.contains("bob-tv-prices"),
            "per-map series in:\n{text}"
        );

        // No maps, no daemon: zero lag, and no pin count.
        let empty = AgentStatus {
            maps: 0,
            pinned: 0,
            retained: 0,
            since_last_event_ms: 0,
            applied_index: 0,
            outages: 0,
            per_map: vec![],
        };
        let text = render(&empty, None);
        assert_eq!(value(&text, "spine_agent_max_versions_behind"), Some(0.0));
        assert_eq!(value(&text, "spine_agent_max_seconds_behind"), Some(0.0));
        assert!(!text.contains("spine_agent_daemon_pins"), "{text}");
    }
}
