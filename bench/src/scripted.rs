//! `spine-bench scripted`: scripted apps (issue 15) on one `ca-host` beside the same app in Rust,
//! in the same run.
//!
//! ```text
//!  Spine (3 nodes) + ca-host ─▶ publish examples/counter as acme-counter
//!  turns:   N CAs of demo-counter (Rust) and N of acme-counter (Rhai), `increment` in closed
//!           loops (ca_client::load), runs alternating which goes first ─▶ turns/s, ratio
//!  upgrade: M CAs of acme-counter activated; one message each ([increment, version], 100 in
//!           flight) before the publish (the peer), publish version 2, one message each after
//!           the acknowledgement: latency (send → reply) and whether it ran version 2
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ca_client::load::{self as ca_load, Window};
use ca_client::{CaClient, MethodCall};
use clap::Args;
use futures::StreamExt;

use crate::cluster::{CaHostTarget, SpineTarget};
use crate::load::CONNECTIONS;
use crate::stats::Latencies;

const SCRIPTED: &str = "acme-counter";
const RUST: &str = "demo-counter";

/// `spine-bench scripted` arguments.
#[derive(Args, Debug)]
pub struct ScriptedArgs {
    /// Tiny parameters (seconds), for CI.
    #[arg(long)]
    pub smoke: bool,
    /// CAs per throughput run [full: 1000; smoke: 4].
    #[arg(long)]
    pub cas: Option<usize>,
    /// Seconds measured per throughput run [full: 20; smoke: 0.5].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Seconds of calls before measuring [full: 3; smoke: 0.2].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Throughput runs per app, alternating which app goes first [full: 2; smoke: 1].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Active CAs when version 2 is published [full: 10000; smoke: 20].
    #[arg(long)]
    pub upgrade_cas: Option<usize>,
    /// Where report.md goes.
    #[arg(long, default_value = "bench-results/scripted")]
    pub out: PathBuf,
}

struct Params {
    cas: usize,
    seconds: f64,
    warmup: f64,
    rounds: usize,
    upgrade_cas: usize,
}

impl Params {
    fn of(a: &ScriptedArgs) -> Self {
        let (cas, seconds, warmup, rounds, upgrade) = if a.smoke {
            (4, 0.5, 0.2, 1, 20)
        } else {
            (1000, 20.0, 3.0, 2, 10_000)
        };
        Self {
            cas: a.cas.unwrap_or(cas),
            seconds: a.seconds.unwrap_or(seconds),
            warmup: a.warmup.unwrap_or(warmup),
            rounds: a.rounds.unwrap_or(rounds).max(1),
            upgrade_cas: a.upgrade_cas.unwrap_or(upgrade).max(1),
        }
    }
}

/// Runs the benchmark and prints (and writes) its report.
pub async fn run(args: ScriptedArgs) -> anyhow::Result<std::process::ExitCode> {
    let p = Params::of(&args);
    let tmp = tempfile::tempdir()?;
    let spine = SpineTarget::start(tmp.path()).await?;
    let host = CaHostTarget::start(&spine, &tmp.path().join("ca-host")).await?;
    let access = spine.access(0);
    let client = access.client.build()?;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/counter");
    let v1 = code_map::Package::from_dir(&examples)?;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    client.publish_app(&v1, now()).await?;
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS.min(p.cas.max(p.upgrade_cas)).max(1) {
        connections.push(host.client().await?);
    }
    let load_before = loadavg();

    // Turns/s, side by side.
    let mut rows = Vec::new();
    for round in 0..p.rounds {
        let order = if round % 2 == 0 {
            [RUST, SCRIPTED]
        } else {
            [SCRIPTED, RUST]
        };
        for app in order {
            let prefix = format!("t{round}{}", if app == RUST { "r" } else { "s" });
            first_turns(&connections, app, &prefix, p.cas).await?;
            let window = Window::after(
                Duration::from_secs_f64(p.warmup),
                Duration::from_secs_f64(p.seconds),
            );
            eprintln!("  {app}: {} CAs, {} s", p.cas, p.seconds);
            let report = ca_load::run(&connections, app, &prefix, p.cas, window).await?;
            if report.turns == 0 {
                bail!("{app}: no turn answered ({:?})", report.first_error);
            }
            rows.push((
                app,
                round,
                report.per_second(),
                report.quantile_ms(0.5),
                report.quantile_ms(0.99),
                report.errors,
            ));
        }
    }
    let mean = |app: &str| {
        let v: Vec<f64> = rows.iter().filter(|r| r.0 == app).map(|r| r.2).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let ratio = mean(SCRIPTED) / mean(RUST).max(f64::MIN_POSITIVE);

    // Publish → every active CA on the new version.
    let upgrade = upgrade(&client, &connections, &v1, p.upgrade_cas, now).await?;
    let load_after = loadavg();

    let mut md =
        String::from("# Scripted apps: the counter in Rhai beside the counter in Rust\n\n");
    md.push_str(&format!(
        "One `ca-host` (debug/release as built: {}) on a 3-node Spine, {} cores; load average before {load_before}, after {load_after}.\n\n",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    md.push_str(&format!(
        "## Checkpointed turns/s, {} CAs, {} s per run\n\n| app | run | turns/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|\n",
        p.cas, p.seconds
    ));
    for (app, round, tps, p50, p99, errors) in &rows {
        md.push_str(&format!(
            "| {app} | {round} | {tps:.0} | {p50:.2} | {p99:.2} | {errors} |\n"
        ));
    }
    md.push_str(&format!(
        "\nScripted ÷ Rust turns/s: **{ratio:.2}** (goal ≥ 0.5: {})\n\n",
        if ratio >= 0.5 { "met" } else { "MISSED" }
    ));
    md.push_str(&upgrade.markdown(p.upgrade_cas));
    println!("{md}");
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("report.md");
    std::fs::write(&path, &md)?;
    eprintln!("wrote {}", path.display());
    drop(host);
    Ok(std::process::ExitCode::SUCCESS)
}

/// Calls every CA once (activating it), 100 at a time.
async fn first_turns(
    connections: &[CaClient],
    app: &str,
    prefix: &str,
    cas: usize,
) -> anyhow::Result<()> {
    let mut calls = futures::stream::iter(0..cas)
        .map(|i| {
            let client = connections[i % connections.len()].clone();
            let ca = ca_load::ca_name(prefix, i);
            let app = app.to_string();
            async move {
                client
                    .call(&app, &ca, "increment", vec![])
                    .await
                    .with_context(|| format!("the first turn of {app}/{ca}"))
            }
        })
        .buffer_unordered(100);
    while let Some(r) = calls.next().await {
        r?;
    }
    Ok(())
}

struct Upgrade {
    /// Latency of each CA's first message after the publish was acknowledged.
    next: Latencies,
    /// Latency of each CA's message in the round before the publish (the peer).
    before: Latencies,
    /// Of those next messages, how many ran the new version.
    on_new: usize,
    /// How many next messages there were.
    cas: usize,
    /// The latest a message that still ran the old version was sent after the acknowledgement
    /// (the host's node agent had not received the new version yet).
    old_until: Duration,
    /// Publish acknowledged → every CA has answered on the new version.
    all_moved: Duration,
    publish: Duration,
}

impl Upgrade {
    fn markdown(&self, cas: usize) -> String {
        format!(
            "## Publish → {cas} active CAs on the new version\n\n\
             {cas} CAs are activated, then sent one message each (`[increment, version]`, {IN_FLIGHT} in flight) \
             before the publish (the peer) and one each after it was acknowledged ({:.0} ms after it was sent); \
             CAs whose message still ran the old version get one more:\n\n\
             | round | p50 ms | p99 ms | max ms |\n|---|---|---|---|\n\
             | next message after the publish | {:.2} | {:.2} | {:.2} |\n\
             | message before the publish (peer) | {:.2} | {:.2} | {:.2} |\n\n\
             Next-message p99 ÷ before p99: **{:.2}**; goal p99 < 100 ms after the message arrives: {}.\n\
             {} of {} next messages ran the new version; the others were sent at most {:.1} ms after the \
             acknowledgement, before the host's node agent had the new version (Fairness: the newest \
             version the node has). Publish acknowledged → every CA has answered on the new version: {:.0} ms.\n",
            self.publish.as_secs_f64() * 1e3,
            self.next.quantile_ms(0.5),
            self.next.quantile_ms(0.99),
            self.next.max_ms(),
            self.before.quantile_ms(0.5),
            self.before.quantile_ms(0.99),
            self.before.max_ms(),
            self.next.quantile_ms(0.99) / self.before.quantile_ms(0.99).max(f64::MIN_POSITIVE),
            if self.next.quantile_ms(0.99) < 100.0 {
                "met"
            } else {
                "MISSED"
            },
            self.on_new,
            self.cas,
            self.old_until.as_secs_f64() * 1e3,
            self.all_moved.as_secs_f64() * 1e3,
        )
    }
}

/// Messages in flight in a round of the upgrade measurement.
const IN_FLIGHT: usize = 100;

/// What one message of a round saw.
struct Sent {
    ca: usize,
    at: Instant,
    took: Duration,
    version: u64,
}

/// One message to each of `cas`, [`IN_FLIGHT`] at a time.
async fn round(connections: &[CaClient], cas: Vec<usize>) -> anyhow::Result<Vec<Sent>> {
    let mut calls = futures::stream::iter(cas)
        .map(|i| {
            let client = connections[i % connections.len()].clone();
            let ca = ca_load::ca_name("upg", i);
            async move {
                let calls = vec![
                    MethodCall::new("increment", vec![]),
                    MethodCall::new("version", vec![]),
                ];
                let at = Instant::now();
                let r = client
                    .multi_call(SCRIPTED, &ca, calls)
                    .await
                    .with_context(|| format!("a message to {ca}"))?;
                anyhow::Ok(Sent {
                    ca: i,
                    at,
                    took: at.elapsed(),
                    version: r.result.as_u64().unwrap_or(0),
                })
            }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut out = Vec::new();
    while let Some(r) = calls.next().await {
        out.push(r?);
    }
    Ok(out)
}

async fn upgrade(
    spine: &spine_client::Client,
    connections: &[CaClient],
    v1: &code_map::Package,
    cas: usize,
    now: impl Fn() -> u64,
) -> anyhow::Result<Upgrade> {
    eprintln!("  upgrade: activating {cas} CAs");
    first_turns(connections, SCRIPTED, "upg", cas).await?;
    let mut v2 = v1.clone();
    for text in v2.scripts.values_mut() {
        *text = text.replace("this.state.count += n;", "this.state.count += 2 * n;");
    }
    let mut before = Latencies::new();
    for s in round(connections, (0..cas).collect()).await? {
        before.record(s.took);
    }
    eprintln!("  upgrade: publishing version 2");
    let sent = Instant::now();
    let new = spine.publish_app(&v2, now()).await?.version;
    let acked = Instant::now();
    let after = round(connections, (0..cas).collect()).await?;
    let mut next = Latencies::new();
    let (mut on_new, mut old_until) = (0, Duration::ZERO);
    let mut behind = Vec::new();
    for s in &after {
        next.record(s.took);
        if s.version == new {
            on_new += 1;
        } else {
            old_until = old_until.max(s.at.saturating_duration_since(acked));
            behind.push(s.ca);
        }
    }
    let mut all_moved = after
        .iter()
        .map(|s| s.at + s.took - acked)
        .max()
        .unwrap_or_default();
    while !behind.is_empty() {
        let again = round(connections, std::mem::take(&mut behind)).await?;
        for s in again {
            if s.version == new {
                all_moved = all_moved.max(s.at + s.took - acked);
            } else {
                behind.push(s.ca);
            }
        }
    }
    Ok(Upgrade {
        next,
        before,
        on_new,
        cas: after.len(),
        old_until,
        all_moved,
        publish: acked - sent,
    })
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
