//! An SVG chart of the latency distributions: one panel per workload and parameter, a percentile
//! curve per system (x: percentile on a tail-stretching scale, y: milliseconds on a log scale).

use std::fmt::Write as _;

use crate::report::{SuiteReport, System};

const PANEL_W: f64 = 470.0;
const PANEL_H: f64 = 300.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 42.0;
const COLUMNS: usize = 2;
/// x position of the maximum, past 99.99 (4 on the `-log10(1 - p)` scale).
const X_MAX: f64 = 4.4;

fn color(system: System) -> &'static str {
    match system {
        System::Etcd => "#d1495b",
        System::Spine => "#00798c",
        System::Cafjs => "#edae49",
        System::CaHost => "#30638e",
    }
}

/// `-log10(1 - p/100)`, so 90 → 1, 99 → 2, 99.9 → 3; 100 (the maximum) is drawn at [`X_MAX`].
fn x_of(percentile: f64) -> f64 {
    if percentile >= 100.0 {
        X_MAX
    } else {
        (-(1.0 - percentile / 100.0).log10()).clamp(0.0, 4.0)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart, or `None` when no measurement has a latency distribution.
pub fn svg(report: &SuiteReport) -> Option<String> {
    let panels: Vec<(&str, String)> = report
        .rows()
        .into_iter()
        .filter(|(w, p)| {
            System::ALL.iter().any(|s| {
                report
                    .find(w, p, *s)
                    .and_then(|m| m.latency.as_ref())
                    .is_some_and(|l| !l.curve.is_empty())
            })
        })
        .collect();
    if panels.is_empty() {
        return None;
    }
    let rows = panels.len().div_ceil(COLUMNS);
    let width = PANEL_W * COLUMNS as f64;
    let height = PANEL_H * rows as f64 + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="12" y="22" font-size="15" font-weight="bold">Latency distributions: Spine vs etcd, CA host vs Caf.js (percentile curves, log scale)</text>"#
    );
    for (i, (workload, parameter)) in panels.iter().enumerate() {
        let ox = (i % COLUMNS) as f64 * PANEL_W;
        let oy = 40.0 + (i / COLUMNS) as f64 * PANEL_H;
        panel(&mut out, report, workload, parameter, ox, oy);
    }
    out.push_str("</svg>\n");
    Some(out)
}

fn panel(
    out: &mut String,
    report: &SuiteReport,
    workload: &str,
    parameter: &str,
    ox: f64,
    oy: f64,
) {
    let curves: Vec<(System, &Vec<(f64, f64)>)> = System::ALL
        .into_iter()
        .filter_map(|s| {
            let m = report.find(workload, parameter, s)?;
            Some((s, &m.latency.as_ref()?.curve))
        })
        .collect();
    let values = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1.max(0.001)));
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo_decade = lo.log10().floor();
    let hi_decade = hi.log10().ceil().max(lo_decade + 1.0);
    let plot_w = PANEL_W - LEFT - RIGHT;
    let plot_h = PANEL_H - TOP - BOTTOM;
    let px = |p: f64| ox + LEFT + x_of(p) / X_MAX * plot_w;
    let py = |ms: f64| {
        let t = (ms.max(0.001).log10() - lo_decade) / (hi_decade - lo_decade);
        oy + TOP + (1.0 - t) * plot_h
    };
    let title = match workload {
        "write" => format!("write latency, {parameter}"),
        "propagation" => format!("propagation (ack → visible), {parameter}"),
        "write-batch" => format!("batch latency, {parameter}"),
        "ca" => format!("turn latency, {parameter}"),
        _ => format!("{workload}, {parameter}"),
    };
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        ox + LEFT,
        oy + TOP - 12.0,
        escape(&title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{}" y="{}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##,
        ox + LEFT,
        oy + TOP
    );
    // Decades on y.
    let mut d = lo_decade;
    while d <= hi_decade {
        let ms = 10f64.powf(d);
        let y = py(ms);
        let label = if d < 0.0 {
            format!("{ms:.*}", (-d) as usize)
        } else {
            format!("{ms:.0}")
        };
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            ox + LEFT,
            ox + LEFT + plot_w,
            ox + LEFT - 5.0,
            y + 4.0
        );
        d += 1.0;
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" transform="rotate(-90 {} {})" text-anchor="middle">ms</text>"#,
        ox + 14.0,
        oy + TOP + plot_h / 2.0,
        ox + 14.0,
        oy + TOP + plot_h / 2.0
    );
    for (p, label) in [
        (0.0, "0"),
        (50.0, "50"),
        (90.0, "90"),
        (99.0, "99"),
        (99.9, "99.9"),
        (99.99, "99.99"),
        (100.0, "max"),
    ] {
        let x = px(p);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#e6e6e6"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            oy + TOP,
            oy + TOP + plot_h,
            oy + TOP + plot_h + 14.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        ox + LEFT + plot_w / 2.0,
        oy + TOP + plot_h + 30.0
    );
    for (k, (system, curve)) in curves.iter().enumerate() {
        let points: Vec<String> = curve
            .iter()
            .map(|(p, ms)| format!("{:.1},{:.1}", px(*p), py(*ms)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            color(*system),
            points.join(" ")
        );
        let ly = oy + TOP + 14.0 + 15.0 * k as f64;
        let lx = ox + LEFT + 10.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            ly - 4.0,
            lx + 18.0,
            ly - 4.0,
            color(*system),
            lx + 23.0,
            ly,
            system.name()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::Measurement;
    use crate::stats::Latencies;

    #[test]
    fn the_chart_has_a_curve_per_system_and_panel() {
        let mut l = Latencies::new();
        for i in 1..=100 {
            l.record(std::time::Duration::from_micros(i * 100));
        }
        let m = |system| Measurement {
            workload: "write",
            parameter: "16 writers".into(),
            system,
            error: None,
            figures: BTreeMap::new(),
            latency: Some(l.summary()),
            details: serde_json::Value::Null,
            wall_seconds: 1.0,
        };
        let report = SuiteReport {
            setup: BTreeMap::new(),
            measurements: vec![m(System::Etcd), m(System::Spine)],
            goals: Vec::new(),
            total_seconds: 1.0,
        };
        let svg = svg(&report).unwrap_or_default();
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("write latency, 16 writers"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!((x_of(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(x_of(100.0), X_MAX);
    }
}
