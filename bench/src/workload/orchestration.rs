//! `spine-bench orchestration`: the CA runtime's timers and CloudEvents (issue 16), each beside
//! a peer measured in the same run on the same machine.
//!
//! ```text
//!  Spine ×3, one ca-host (sink: the fleet), the book-summary fleet in this process (no faults)
//!  events: N orchestrations at once ─▶ events ingested → handled → emitted per second, and
//!          per step: the fleet posts an answer ─▶ the next command (or notif) reaches it
//!     peer: N counter CAs called in closed loops over gRPC (plain checkpointed turns)
//!  timers: C CAs × T timers (all pending), due over a spread; the CAs deactivate (idle) and
//!          are woken by the host's wake index ─▶ lateness = fired − due, p50/p99
//!     peer: the same number of tokio timers (sleep_until) in this process, same spread
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use spine_tests::fleet::Fleet;

use crate::cluster::{CaHostTarget, SpineTarget};
use crate::stats::{Latencies, round3};

/// The shape of a run.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Concurrent orchestrations.
    pub orchestrations: usize,
    /// CAs with timers.
    pub timer_cas: usize,
    /// Timers per CA.
    pub timers_per_ca: usize,
    /// When the first timer is due, after all are set.
    pub timer_lead: Duration,
    /// Over how long the timers are due.
    pub timer_spread: Duration,
    /// Seconds of the counter peer.
    pub peer_seconds: f64,
    /// The host's idle timeout (CAs deactivate before their timers).
    pub idle: Duration,
}

impl Shape {
    /// The full run.
    pub fn full() -> Self {
        Self {
            orchestrations: 1000,
            timer_cas: 10_000,
            timers_per_ca: 10,
            timer_lead: Duration::from_secs(20),
            timer_spread: Duration::from_secs(60),
            peer_seconds: 10.0,
            idle: Duration::from_secs(5),
        }
    }

    /// Seconds, for CI.
    pub fn smoke() -> Self {
        Self {
            orchestrations: 10,
            timer_cas: 20,
            timers_per_ca: 10,
            timer_lead: Duration::from_secs(2),
            timer_spread: Duration::from_secs(2),
            peer_seconds: 0.5,
            idle: Duration::from_secs(1),
        }
    }
}

/// Runs both parts; returns the figures (also printed as a table).
pub async fn run(shape: Shape, dir: &Path) -> anyhow::Result<Value> {
    eprintln!("starting 3 Spine nodes, the fleet and a CA host ...");
    let mut spine = SpineTarget::start(dir).await?;
    let fleet = Fleet::start_with("127.0.0.1:0", None, false).await?;
    let extra = vec![
        "--sink".to_string(),
        format!("demo-books={}", fleet.sink()),
        "--idle-ms".to_string(),
        shape.idle.as_millis().to_string(),
        // The timer CAs are inactive until a delayed call is due: demo-timers' default pulse
        // (every second) would keep each of them busy.
        "--pulse".to_string(),
        "demo-timers=0".to_string(),
    ];
    let host = CaHostTarget::start_with(&spine, &dir.join("host"), &extra).await?;
    fleet.set_ingress(&format!("http://{}", host.http));
    let result = async {
        eprintln!("{} orchestrations ...", shape.orchestrations);
        let events = events(&fleet, shape).await?;
        eprintln!("counter turns at {} CAs (the peer) ...", shape.orchestrations);
        let peer = counter_peer(&host, shape).await?;
        let timers = timers(&host, shape).await?;
        eprintln!("as many tokio timers (the peer) ...");
        let timer_peer = tokio_timers(shape).await;
        anyhow::Ok(json!({"events": events, "counter_peer": peer, "timers": timers, "tokio_timers": timer_peer}))
    }
    .await;
    if result.is_err() {
        // The data directory goes with this process: what the host said is shown now.
        let log = std::fs::read_to_string(dir.join("host").join("host.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("the CA host's log, last lines:");
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
    }
    spine.procs.stop().await;
    let figures = result?;
    print_table(&figures, shape);
    Ok(figures)
}

async fn events(fleet: &Fleet, shape: Shape) -> anyhow::Result<Value> {
    let n = shape.orchestrations;
    let run = format!("{:x}", rand::random::<u32>());
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let fleet = fleet.clone();
            let ca = format!("o{run}-book{i}");
            async move { fleet.start_orchestration(&ca, "Dune").await }
        })
        .buffer_unordered(200)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let deadline = Duration::from_secs(60 + n as u64 / 5);
    loop {
        let done = fleet.with_log(|log| {
            log.events
                .iter()
                .filter(|r| r.ty == "notif.book.done" && r.applied)
                .count()
        });
        if done >= n {
            break;
        }
        if started.elapsed() > deadline {
            bail!("only {done} of {n} orchestrations finished in {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Per step: from the fleet's post of an event (a start or an answer) to the command or
    // notification it caused arriving at the fleet.
    let mut steps = Latencies::new();
    let (ingested, emitted) = fleet.with_log(|log| {
        let mut posted: BTreeMap<&str, Vec<Instant>> = BTreeMap::new();
        for (subject, at) in &log.posted {
            posted.entry(subject.as_str()).or_default().push(*at);
        }
        for r in log.events.iter().filter(|r| r.applied) {
            if let Some(cause) = posted
                .get(r.subject.as_str())
                .and_then(|p| p.iter().filter(|t| **t <= r.at).max())
            {
                steps.record(r.at - *cause);
            }
        }
        (
            log.posted.len(),
            log.events.iter().filter(|r| r.applied).count(),
        )
    });
    let s = steps.summary();
    Ok(json!({
        "orchestrations": n,
        "seconds": round3(seconds),
        "events_ingested": ingested,
        "events_emitted": emitted,
        "events_per_s": round3((ingested + emitted) as f64 / 2.0 / seconds),
        "step_p50_ms": s.p50_ms,
        "step_p99_ms": s.p99_ms,
        "step_max_ms": s.max_ms,
    }))
}

async fn counter_peer(host: &CaHostTarget, shape: Shape) -> anyhow::Result<Value> {
    let cas = shape.orchestrations;
    let mut connections = Vec::new();
    for _ in 0..12.min(cas).max(1) {
        connections.push(host.client().await?);
    }
    let prefix = format!("p{:x}", rand::random::<u32>());
    let window = ca_client::load::Window::after(
        Duration::from_secs_f64(shape.peer_seconds / 4.0),
        Duration::from_secs_f64(shape.peer_seconds),
    );
    let report = ca_client::load::run(&connections, "demo-counter", &prefix, cas, window).await?;
    let mut latencies = Latencies::new();
    latencies.merge_micros(&report.latencies);
    let s = latencies.summary();
    Ok(json!({
        "cas": cas,
        "turns_per_s": round3(report.turns as f64 / window.seconds()),
        "turn_p50_ms": s.p50_ms,
        "turn_p99_ms": s.p99_ms,
        "errors": report.errors,
    }))
}

async fn timers(host: &CaHostTarget, shape: Shape) -> anyhow::Result<Value> {
    let client = host.client().await?;
    let run = format!("t{:x}", rand::random::<u32>());
    let per = shape.timers_per_ca as u64;
    let lead = shape.timer_lead.as_millis() as u64;
    let spread = shape.timer_spread.as_millis() as u64;
    let set_started = Instant::now();
    let total = shape.timer_cas as u64 * per;
    eprintln!(
        "setting {total} timers on {} CAs (the first due in {:?}) ...",
        shape.timer_cas, shape.timer_lead
    );
    let set = std::sync::atomic::AtomicUsize::new(0);
    let set = &set;
    // Each CA's timers are spread over the whole window, interleaved with the others'.
    futures::stream::iter(0..shape.timer_cas)
        .map(|i| {
            let client = client.clone();
            let ca = format!("{run}-clock{i}");
            let offset = spread / per.max(1) * i as u64 / shape.timer_cas.max(1) as u64;
            async move {
                client
                    .call(
                        "demo-timers",
                        &ca,
                        "remind_many",
                        vec![json!(per), json!(lead + offset), json!(spread)],
                    )
                    .await
                    .with_context(|| format!("setting the timers of {ca}"))
            }
        })
        .buffer_unordered(200)
        .try_for_each(|_| async move {
            let n = set.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n % 1_000 == 0 {
                eprintln!(
                    "  {n} CAs set, {:.1} s",
                    set_started.elapsed().as_secs_f64()
                );
            }
            Ok(())
        })
        .await?;
    let set_seconds = set_started.elapsed().as_secs_f64();
    // All set before the first is due? Otherwise the figure measures the setting, not timers.
    let pending_all = set_started.elapsed() < shape.timer_lead;
    eprintln!("waiting for the timers to fire ...");
    tokio::time::sleep(shape.timer_lead + shape.timer_spread).await;
    let mut lateness = Latencies::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending: Vec<usize> = (0..shape.timer_cas).collect();
    while !pending.is_empty() {
        let answers: Vec<(usize, Value)> = futures::stream::iter(pending.clone())
            .map(|i| {
                let client = client.clone();
                let ca = format!("{run}-clock{i}");
                async move {
                    let r = client.call("demo-timers", &ca, "lateness", vec![]).await;
                    (i, r.map(|r| r.result).unwrap_or(Value::Null))
                }
            })
            .buffer_unordered(200)
            .collect()
            .await;
        pending.clear();
        for (i, answer) in answers {
            if answer["tallied"].as_u64() != Some(per) {
                pending.push(i);
                continue;
            }
            for (ms, n) in answer["lateness"].as_object().into_iter().flatten() {
                let ms: u64 = ms.parse().unwrap_or(0);
                for _ in 0..n.as_u64().unwrap_or(0) {
                    lateness.record(Duration::from_millis(ms.max(1)));
                }
            }
        }
        if !pending.is_empty() {
            if Instant::now() > deadline {
                bail!("{} CAs' timers did not all fire", pending.len());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let s = lateness.summary();
    Ok(json!({
        "timers": total,
        "cas": shape.timer_cas,
        "set_seconds": round3(set_seconds),
        "all_pending_before_the_first_was_due": pending_all,
        "late_p50_ms": s.p50_ms,
        "late_p99_ms": s.p99_ms,
        "late_max_ms": s.max_ms,
    }))
}

async fn tokio_timers(shape: Shape) -> Value {
    let total = shape.timer_cas * shape.timers_per_ca;
    let spread = shape.timer_spread.as_secs_f64();
    let start = tokio::time::Instant::now() + shape.timer_lead.min(Duration::from_secs(2));
    let tasks: Vec<_> = (0..total)
        .map(|i| {
            let due = start + Duration::from_secs_f64(spread * i as f64 / total.max(1) as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(due).await;
                tokio::time::Instant::now() - due
            })
        })
        .collect();
    let mut lateness = Latencies::new();
    for t in tasks {
        if let Ok(late) = t.await {
            lateness.record(late);
        }
    }
    let s = lateness.summary();
    json!({"timers": total, "late_p50_ms": s.p50_ms, "late_p99_ms": s.p99_ms, "late_max_ms": s.max_ms})
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

fn print_table(f: &Value, shape: Shape) {
    let g = |path: &[&str]| path.iter().fold(f, |v, k| &v[*k]).as_f64().unwrap_or(0.0);
    println!("| figure | CA runtime | peer | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| {} orchestrations: events/s (ingested → handled → emitted) vs counter turns/s ({} CAs) | {} | {} | {} |",
        shape.orchestrations,
        shape.orchestrations,
        g(&["events", "events_per_s"]),
        g(&["counter_peer", "turns_per_s"]),
        ratio(
            g(&["events", "events_per_s"]),
            g(&["counter_peer", "turns_per_s"])
        )
    );
    println!(
        "| p99 per orchestration step vs counter turn p99, ms | {} | {} | {} |",
        g(&["events", "step_p99_ms"]),
        g(&["counter_peer", "turn_p99_ms"]),
        ratio(
            g(&["events", "step_p99_ms"]),
            g(&["counter_peer", "turn_p99_ms"])
        )
    );
    println!(
        "| {} pending timers: firing lateness p99 vs tokio timers, ms | {} | {} | {} |",
        g(&["timers", "timers"]),
        g(&["timers", "late_p99_ms"]),
        g(&["tokio_timers", "late_p99_ms"]),
        ratio(
            g(&["timers", "late_p99_ms"]),
            g(&["tokio_timers", "late_p99_ms"])
        )
    );
    println!(
        "| lateness p50, ms | {} | {} | {} |",
        g(&["timers", "late_p50_ms"]),
        g(&["tokio_timers", "late_p50_ms"]),
        ratio(
            g(&["timers", "late_p50_ms"]),
            g(&["tokio_timers", "late_p50_ms"])
        )
    );
}
