//! The suite's results: every measurement, the comparison table (Markdown), the goals, JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Summary;

/// A system under test. Workloads compare pairs: Spine with etcd, and (the `ca` workload) the
/// CA host on the Spine with Caf.js.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// etcd.
    Etcd,
    /// Spine.
    Spine,
    /// Caf.js (caf_core on node, checkpointing in Redis).
    Cafjs,
    /// The CA runtime's `ca-host`, checkpointing in the Spine.
    CaHost,
}

impl System {
    /// Every system.
    pub const ALL: [System; 4] = [System::Etcd, System::Spine, System::Cafjs, System::CaHost];

    /// The system's name for people.
    pub fn name(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::Spine => "Spine",
            System::Cafjs => "Caf.js",
            System::CaHost => "CA host",
        }
    }

    /// The name `--systems` takes.
    pub fn flag(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::Spine => "spine",
            System::Cafjs => "cafjs",
            System::CaHost => "ca-host",
        }
    }
}

/// The (peer, ours) pair a workload compares.
pub fn pair(workload: &str) -> (System, System) {
    match workload {
        "ca" => (System::Cafjs, System::CaHost),
        "notify" => (System::Spine, System::CaHost),
        _ => (System::Etcd, System::Spine),
    }
}

/// Whether more or less of a figure is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// More is better (throughput).
    Higher,
    /// Less is better (latency, time, memory).
    Lower,
}

/// One figure a workload reports, as the table shows it.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Key in [`Measurement::figures`].
    pub key: &'static str,
    /// Column text.
    pub label: &'static str,
    /// Direction.
    pub better: Better,
}

/// One workload, one parameter, one system.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// Workload name.
    pub workload: &'static str,
    /// Parameter in words ("256 writers").
    pub parameter: String,
    /// System.
    pub system: System,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Figures by key.
    pub figures: BTreeMap<&'static str, f64>,
    /// The latency distribution, for workloads that have one.
    pub latency: Option<Summary>,
    /// Anything else worth keeping (counts, CPU seconds, paths taken).
    pub details: serde_json::Value,
    /// Wall time of the whole measurement, set-up included.
    pub wall_seconds: f64,
}

/// A goal from the issue, checked against the figures.
#[derive(Clone, Debug, Serialize)]
pub struct GoalCheck {
    /// The goal in words.
    pub goal: String,
    /// Whether the figures meet it (`None`: not measured).
    pub met: Option<bool>,
    /// The figures it was judged on.
    pub evidence: String,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct SuiteReport {
    /// Machine, versions and settings.
    pub setup: BTreeMap<&'static str, String>,
    /// Every measurement, in the order taken.
    pub measurements: Vec<Measurement>,
    /// The goals of issue 6.
    pub goals: Vec<GoalCheck>,
    /// Wall time of the suite.
    pub total_seconds: f64,
}

const fn m(key: &'static str, label: &'static str, better: Better) -> Metric {
    Metric { key, label, better }
}

const WRITE: &[Metric] = &[
    m("writes_per_s", "throughput, writes/s", Better::Higher),
    m("p50_ms", "latency p50, ms", Better::Lower),
    m("p99_ms", "latency p99, ms", Better::Lower),
    m(
        "server_cpu_us_per_write",
        "server CPU per write, µs",
        Better::Lower,
    ),
];
const PROPAGATION: &[Metric] = &[
    m("p50_ms", "ack → visible p50, ms", Better::Lower),
    m("p99_ms", "ack → visible p99, ms", Better::Lower),
    m("max_ms", "ack → visible max, ms", Better::Lower),
    m("sent_p50_ms", "write sent → visible p50, ms", Better::Lower),
    m("sent_p99_ms", "write sent → visible p99, ms", Better::Lower),
];
const FAN_OUT: &[Metric] = &[
    m(
        "all_delivered_s",
        "burst start → all have all, s",
        Better::Lower,
    ),
    m(
        "burst_write_s",
        "burst writes acknowledged, s",
        Better::Lower,
    ),
    m(
        "server_bytes_per_subscription",
        "server RSS per subscription, bytes",
        Better::Lower,
    ),
];
const WRITE_BATCH: &[Metric] = &[
    m("updates_per_s", "throughput, updates/s", Better::Higher),
    m("p50_ms", "batch latency p50, ms", Better::Lower),
    m("p99_ms", "batch latency p99, ms", Better::Lower),
    m(
        "server_cpu_us_per_update",
        "server CPU per update, µs",
        Better::Lower,
    ),
];
const CA: &[Metric] = &[
    m("turns_per_s", "checkpointed turns/s", Better::Higher),
    m("p50_ms", "turn latency p50, ms", Better::Lower),
    m("p99_ms", "turn latency p99, ms", Better::Lower),
    m(
        "server_cpu_us_per_turn",
        "server CPU per turn, µs",
        Better::Lower,
    ),
];
const NOTIFY: &[Metric] = &[
    m("p50_ms", "committed → received p50, ms", Better::Lower),
    m("p99_ms", "committed → received p99, ms", Better::Lower),
    m("max_ms", "committed → received max, ms", Better::Lower),
    m("sent_p50_ms", "sent → received p50, ms", Better::Lower),
    m("sent_p99_ms", "sent → received p99, ms", Better::Lower),
];
const CATCH_UP: &[Metric] = &[
    m("catch_up_s", "reconnect → current, s", Better::Lower),
    m(
        "write_phase_writes_per_s",
        "writes/s while away",
        Better::Higher,
    ),
];

/// The metrics each workload's rows show.
pub fn metrics(workload: &str) -> &'static [Metric] {
    match workload {
        "write" => WRITE,
        "write-batch" => WRITE_BATCH,
        "ca" => CA,
        "propagation" => PROPAGATION,
        "fan-out" => FAN_OUT,
        "catch-up" => CATCH_UP,
        "notify" => NOTIFY,
        _ => &[],
    }
}

fn number(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() >= 1000.0 {
        let s = format!("{:.0}", x);
        // Thousands separators for readability.
        let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

impl SuiteReport {
    /// The measurement of `system` for one workload and parameter.
    pub fn find(&self, workload: &str, parameter: &str, system: System) -> Option<&Measurement> {
        self.measurements
            .iter()
            .find(|m| m.workload == workload && m.parameter == parameter && m.system == system)
    }

    /// A figure of one measurement, if it succeeded and has it.
    pub fn figure(
        &self,
        workload: &str,
        parameter: &str,
        system: System,
        key: &str,
    ) -> Option<f64> {
        self.find(workload, parameter, system)
            .filter(|m| m.error.is_none())
            .and_then(|m| m.figures.get(key).copied())
    }

    /// (workload, parameter) pairs in the order first measured.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows: Vec<(&'static str, String)> = Vec::new();
        for m in &self.measurements {
            if !rows
                .iter()
                .any(|(w, p)| *w == m.workload && *p == m.parameter)
            {
                rows.push((m.workload, m.parameter.clone()));
            }
        }
        rows
    }

    /// Whether any measurement failed.
    pub fn failed(&self) -> bool {
        self.measurements.iter().any(|m| m.error.is_some())
    }

    /// The comparison tables: one per pair of systems (Spine and etcd; CA host and Caf.js), one
    /// row per workload, parameter and figure.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (peer, ours) in [
            (System::Etcd, System::Spine),
            (System::Cafjs, System::CaHost),
            (System::Spine, System::CaHost),
        ] {
            let rows: Vec<(&'static str, String)> = self
                .rows()
                .into_iter()
                .filter(|(w, _)| pair(w) == (peer, ours))
                .collect();
            if rows.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push('\n');
            }
            let (p, o) = (peer.name(), ours.name());
            let _ = writeln!(
                out,
                "| workload | parameter | figure | better | {p} | {o} | {o} ÷ {p} |\n\
                 |---|---|---|---|---:|---:|---:|"
            );
            for (workload, parameter) in rows {
                self.table_rows(&mut out, workload, &parameter, peer, ours);
            }
        }
        out
    }

    fn table_rows(
        &self,
        out: &mut String,
        workload: &str,
        parameter: &str,
        peer: System,
        ours: System,
    ) {
        for metric in metrics(workload) {
            let cell = |system| match self.find(workload, parameter, system) {
                Some(m) if m.error.is_some() => "error".to_string(),
                Some(m) => m
                    .figures
                    .get(metric.key)
                    .map_or_else(|| "n/a".into(), |v| number(*v)),
                None => "-".into(),
            };
            let ratio = match (
                self.figure(workload, parameter, peer, metric.key),
                self.figure(workload, parameter, ours, metric.key),
            ) {
                (Some(e), Some(s)) if e > 0.0 => format!("{:.2}", s / e),
                _ => "-".into(),
            };
            let better = match metric.better {
                Better::Higher => "higher",
                Better::Lower => "lower",
            };
            let _ = writeln!(
                out,
                "| {workload} | {parameter} | {} | {better} | {} | {} | {ratio} |",
                metric.label,
                cell(peer),
                cell(ours)
            );
        }
    }

    /// The whole Markdown report.
    pub fn markdown(&self) -> String {
        let mut out =
            String::from("# Spine vs etcd, CA host vs Caf.js: side-by-side benchmark\n\n");
        for (k, v) in &self.setup {
            let _ = writeln!(out, "- **{k}**: {v}");
        }
        let _ = writeln!(out, "- **suite wall time**: {:.0} s\n", self.total_seconds);
        out.push_str(&self.table());
        out.push_str("\n## Goals (issues 6, 11 and 13)\n\n");
        for g in &self.goals {
            let mark = match g.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            };
            let _ = writeln!(out, "- **{mark}**: {} — {}", g.goal, g.evidence);
        }
        let errors: Vec<&Measurement> = self
            .measurements
            .iter()
            .filter(|m| m.error.is_some())
            .collect();
        if !errors.is_empty() {
            out.push_str("\n## Errors\n\n");
            for m in errors {
                let _ = writeln!(
                    out,
                    "- {} {} on {}: {}",
                    m.workload,
                    m.parameter,
                    m.system.name(),
                    m.error.as_deref().unwrap_or_default()
                );
            }
        }
        out.push_str("\n## Wall time per measurement (set-up included)\n\n");
        for m in &self.measurements {
            let _ = writeln!(
                out,
                "- {} {} on {}: {:.1} s",
                m.workload,
                m.parameter,
                m.system.name(),
                m.wall_seconds
            );
        }
        out
    }
}

/// Judges the goals of issue 6 against `report`'s figures; `writers`/`subscribers` name the
/// parameters the goals are about.
pub fn check_goals(report: &SuiteReport) -> Vec<GoalCheck> {
    let mut goals = Vec::new();
    let both = |workload: &str, parameter: &str, key: &str| {
        (
            report.figure(workload, parameter, System::Etcd, key),
            report.figure(workload, parameter, System::Spine, key),
        )
    };
    for writers in ["256 writers", "1000 writers"] {
        let (e, s) = both("write", writers, "writes_per_s");
        goals.push(GoalCheck {
            goal: format!("write throughput at {writers}: Spine ≥ 3× etcd"),
            met: e.zip(s).map(|(e, s)| s >= 3.0 * e),
            evidence: match e.zip(s) {
                Some((e, s)) => format!(
                    "Spine {} writes/s, etcd {} writes/s ({:.2}×)",
                    number(s),
                    number(e),
                    s / e.max(f64::MIN_POSITIVE)
                ),
                None => "no figures".into(),
            },
        });
        let (e, s) = both("write", writers, "p99_ms");
        goals.push(GoalCheck {
            goal: format!("write p99 latency at {writers}: Spine ≤ etcd"),
            met: e.zip(s).map(|(e, s)| s <= e),
            evidence: match e.zip(s) {
                Some((e, s)) => format!("Spine {} ms, etcd {} ms", number(s), number(e)),
                None => "no figures".into(),
            },
        });
    }
    let mut subscriber_params: Vec<String> = report
        .rows()
        .into_iter()
        .filter(|(w, _)| *w == "propagation")
        .map(|(_, p)| p)
        .collect();
    subscriber_params.dedup();
    for p in subscriber_params {
        let (e, s) = both("propagation", &p, "p99_ms");
        goals.push(GoalCheck {
            goal: format!("propagation p99 at {p}: Spine ≤ etcd and < 5 ms"),
            met: e.zip(s).map(|(e, s)| s <= e && s < 5.0),
            evidence: match e.zip(s) {
                Some((e, s)) => format!("Spine {} ms, etcd {} ms", number(s), number(e)),
                None => "no figures".into(),
            },
        });
    }
    let catch_ups: Vec<&Measurement> = report
        .measurements
        .iter()
        .filter(|m| m.workload == "catch-up" && m.system == System::Spine)
        .collect();
    goals.push(GoalCheck {
        goal: "catch-up never fails on Spine (no compaction error)".into(),
        met: (!catch_ups.is_empty()).then(|| catch_ups.iter().all(|m| m.error.is_none())),
        evidence: catch_ups
            .iter()
            .map(|m| match &m.error {
                None => format!("{}: current again, no error", m.parameter),
                Some(e) => format!("{}: {e}", m.parameter),
            })
            .collect::<Vec<_>>()
            .join("; "),
    });
    batch_and_ca_goals(report, &mut goals);
    goals
}

/// Issue 11's batched checkpoints and issue 13's CA goals, for the parameters measured.
fn batch_and_ca_goals(report: &SuiteReport, goals: &mut Vec<GoalCheck>) {
    let params = |workload: &str| -> Vec<String> {
        report
            .rows()
            .into_iter()
            .filter(|(w, _)| *w == workload)
            .map(|(_, p)| p)
            .collect()
    };
    for p in params("write-batch") {
        let s = report.figure("write-batch", &p, System::Spine, "updates_per_s");
        goals.push(GoalCheck {
            goal: format!("batched updates at {p}: Spine ≥ 20,000 updates/s"),
            met: s.map(|s| s >= 20_000.0),
            evidence: s.map_or_else(
                || "no figures".into(),
                |s| format!("Spine {} updates/s", number(s)),
            ),
        });
    }
    let ca = |p: &str, system, key| report.figure("ca", p, system, key);
    for p in params("ca") {
        let (peer, ours) = (
            ca(&p, System::Cafjs, "turns_per_s"),
            ca(&p, System::CaHost, "turns_per_s"),
        );
        if p.contains("hot") {
            goals.push(GoalCheck {
                goal: format!("a single hot CA ({p}): CA host ≥ 2,000 turns/s"),
                met: ours.map(|h| h >= 2_000.0),
                evidence: match (ours, peer) {
                    (Some(h), Some(c)) => format!(
                        "CA host {} turns/s, Caf.js {} turns/s",
                        number(h),
                        number(c)
                    ),
                    (Some(h), None) => format!("CA host {} turns/s", number(h)),
                    _ => "no figures".into(),
                },
            });
        } else if p != "1 CA" {
            goals.push(GoalCheck {
                goal: format!("checkpointed turns/s at {p}: CA host ≥ 20× Caf.js"),
                met: peer.zip(ours).map(|(c, h)| h >= 20.0 * c),
                evidence: match peer.zip(ours) {
                    Some((c, h)) => format!(
                        "CA host {} turns/s, Caf.js {} turns/s ({:.1}×)",
                        number(h),
                        number(c),
                        h / c.max(f64::MIN_POSITIVE)
                    ),
                    None => "no figures for both".into(),
                },
            });
        }
        let (peer, ours) = (
            ca(&p, System::Cafjs, "server_cpu_us_per_turn"),
            ca(&p, System::CaHost, "server_cpu_us_per_turn"),
        );
        goals.push(GoalCheck {
            goal: format!("server CPU per turn at {p}: CA host ≤ 1/10 of Caf.js's"),
            met: peer.zip(ours).map(|(c, h)| h * 10.0 <= c),
            evidence: match peer.zip(ours) {
                Some((c, h)) => format!("CA host {} µs, Caf.js {} µs", number(h), number(c)),
                None => "no figures for both".into(),
            },
        });
        if p == "1000 CAs" {
            let p99 = ca(&p, System::CaHost, "p99_ms");
            goals.push(GoalCheck {
                goal: "turn latency p99 at 1000 CAs: CA host ≤ 50 ms".into(),
                met: p99.map(|v| v <= 50.0),
                evidence: p99.map_or_else(
                    || "no figures".into(),
                    |v| format!("CA host {} ms", number(v)),
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(system: System, writes: f64, p99: f64) -> Measurement {
        Measurement {
            workload: "write",
            parameter: "256 writers".into(),
            system,
            error: None,
            figures: BTreeMap::from([("writes_per_s", writes), ("p99_ms", p99)]),
            latency: None,
            details: serde_json::Value::Null,
            wall_seconds: 1.0,
        }
    }

    #[test]
    fn the_table_compares_the_systems_row_by_row() {
        let mut report = SuiteReport {
            setup: BTreeMap::new(),
            measurements: vec![
                measurement(System::Etcd, 1000.0, 20.0),
                measurement(System::Spine, 4000.0, 10.0),
            ],
            goals: Vec::new(),
            total_seconds: 2.0,
        };
        let table = report.table();
        assert!(
            table.contains(
                "| write | 256 writers | throughput, writes/s | higher | 1,000 | 4,000 | 4.00 |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| latency p99, ms | lower | 20.0 | 10.0 | 0.50 |"),
            "{table}"
        );
        report.goals = check_goals(&report);
        let met: Vec<Option<bool>> = report.goals.iter().map(|g| g.met).collect();
        // 256 writers: throughput and p99 met; 1000 writers unmeasured; catch-up unmeasured.
        assert_eq!(met, [Some(true), Some(true), None, None, None]);
        report.measurements[1].error = Some("boom".into());
        assert!(report.failed());
        assert!(report.table().contains("| 1,000 | error | - |"));
        assert!(
            report
                .markdown()
                .contains("write 256 writers on Spine: boom")
        );
    }

    #[test]
    fn the_ca_workload_has_its_own_table_and_goals() {
        let ca = |system, turns: f64, cpu: f64| Measurement {
            workload: "ca",
            parameter: "100 CAs".into(),
            system,
            error: None,
            figures: BTreeMap::from([("turns_per_s", turns), ("server_cpu_us_per_turn", cpu)]),
            latency: None,
            details: serde_json::Value::Null,
            wall_seconds: 1.0,
        };
        let mut report = SuiteReport {
            setup: BTreeMap::new(),
            measurements: vec![
                measurement(System::Etcd, 1000.0, 20.0),
                ca(System::Cafjs, 1000.0, 600.0),
                ca(System::CaHost, 25_000.0, 80.0),
            ],
            goals: Vec::new(),
            total_seconds: 2.0,
        };
        let table = report.table();
        assert!(
            table.contains("| etcd | Spine | Spine ÷ etcd |")
                && table.contains("| Caf.js | CA host | CA host ÷ Caf.js |"),
            "{table}"
        );
        assert!(
            table.contains(
                "| ca | 100 CAs | checkpointed turns/s | higher | 1,000 | 25,000 | 25.00 |"
            ),
            "{table}"
        );
        report.goals = check_goals(&report);
        let ca_goals: Vec<(&str, Option<bool>)> = report
            .goals
            .iter()
            .filter(|g| g.goal.contains("100 CAs"))
            .map(|g| (g.goal.as_str(), g.met))
            .collect();
        assert_eq!(
            ca_goals,
            [
                (
                    "checkpointed turns/s at 100 CAs: CA host ≥ 20× Caf.js",
                    Some(true)
                ),
                (
                    "server CPU per turn at 100 CAs: CA host ≤ 1/10 of Caf.js's",
                    Some(false)
                ),
            ]
        );
    }

    #[test]
    fn numbers_are_rounded_for_people() {
        assert_eq!(number(1234567.8), "1,234,568");
        assert_eq!(number(123.4), "123");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1.234), "1.23");
        assert_eq!(number(0.01234), "0.012");
    }
}
