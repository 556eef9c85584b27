//! CA turns: N Cloud Assistants of the counter app, each called by its own closed-loop client
//! (`increment`, again as soon as the last call answered), for a fixed time after a warm-up.
//! A turn counts when its reply arrives inside the measured window; each reply is sent only
//! after the turn's checkpoint is durable (the CA host: committed in the Spine; Caf.js: written
//! to Redis, which fsyncs every write with `appendfsync always`).
//!
//! ```text
//!  first turns: every CA called once (created / activated), 100 at a time
//!  warm-up ─▶ window opens: servers' CPU read ─▶ closed loops ─▶ window ends: CPU read again
//! ```
//!
//! - CA host: the clients are tasks of this process over `min(N, 12)` gRPC connections, the
//!   loop of `ca load` (`ca_client::load`). Its `/metrics` give the checkpoints per
//!   `UpdateBatch`.
//! - Caf.js: the clients are `bench/cafjs/load.js` in one node process, a caf_cli session (a
//!   WebSocket) per CA, as Caf.js clients connect.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ca_client::CaClient;
use ca_client::load::{self as ca_load, Window};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use super::Outcome;
use crate::cluster::{CaHostTarget, CafjsTarget};
use crate::load::CONNECTIONS;
use crate::procfs::CpuWindow;
use crate::stats::Latencies;

/// The app both systems serve the counter as, on the CA host.
const APP: &str = "demo-counter";
/// CAs created / activated at once before the warm-up.
const FIRST_TURN_CONCURRENCY: usize = 100;
/// Longest the first turns of all CAs (and, on Caf.js, opening their sessions) may take.
const FIRST_TURNS_DEADLINE: Duration = Duration::from_secs(600);

/// The shape of one run.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// CAs.
    pub cas: usize,
    /// Closed-loop clients per CA (more than one: a hot CA).
    pub callers: usize,
    /// Seconds of calls before the window opens.
    pub warmup: f64,
    /// Seconds measured.
    pub seconds: f64,
}

/// CPU seconds per process group over the window.
#[derive(Debug, Default)]
struct Cpu {
    /// The system's servers, by part (`("host", s)`, `("spine", s)`; `("node", s)`, `("redis", s)`).
    parts: Vec<(&'static str, f64)>,
    /// The load generator.
    client: f64,
}

fn outcome(turns: u64, errors: u64, seconds: f64, latencies: &Latencies, cpu: &Cpu) -> Outcome {
    let mut out = Outcome::default();
    out.figure("turns_per_s", turns as f64 / seconds.max(f64::MIN_POSITIVE))
        .figure("turns", turns as f64)
        .figure("seconds", seconds)
        .latency(latencies.summary())
        .detail("errors", errors);
    if turns > 0 {
        let per_turn = |s: f64| crate::stats::round3(s * 1e6 / turns as f64);
        let server: f64 = cpu.parts.iter().map(|(_, s)| s).sum();
        out.figure("server_cpu_us_per_turn", server * 1e6 / turns as f64)
            .detail("server_cpu_s_in_window", crate::stats::round3(server))
            .detail("client_cpu_us_per_turn", per_turn(cpu.client));
        for (part, s) in &cpu.parts {
            out.detail(&format!("{part}_cpu_us_per_turn"), per_turn(*s));
            if server > 0.0 {
                out.detail(
                    &format!("{part}_cpu_share"),
                    crate::stats::round3(s / server),
                );
            }
        }
    }
    out
}

/// `shape.cas` fresh counter CAs (`<prefix><i>-load`) on the CA host; `spine_pids` are the
/// Spine's servers, whose CPU counts with the host's.
pub async fn ca_host(
    target: &CaHostTarget,
    spine_pids: &[u32],
    prefix: &str,
    shape: Shape,
) -> anyhow::Result<Outcome> {
    let host_pid = *target
        .procs
        .pids()
        .first()
        .context("the CA host is not running")?;
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS.min(shape.cas * shape.callers).max(1) {
        connections.push(target.client().await?);
    }
    first_turns(&connections, prefix, shape.cas).await?;

    let window = Window::after(
        Duration::from_secs_f64(shape.warmup),
        Duration::from_secs_f64(shape.seconds),
    );
    let mut pids = vec![host_pid];
    pids.extend_from_slice(spine_pids);
    pids.push(std::process::id());
    let sampler = async {
        tokio::time::sleep_until(window.start.into()).await;
        let cpu = CpuWindow::start(&pids)?;
        let commits = target.commit_counters().await.ok();
        tokio::time::sleep_until(window.end.into()).await;
        let used = cpu.seconds()?;
        let commits = commits.zip(target.commit_counters().await.ok());
        anyhow::Ok((used, commits))
    };
    let label = format!("CA host, {} CAs × {} callers", shape.cas, shape.callers);
    eprintln!(
        "    {label}: measuring {} s after {} s warm-up",
        shape.seconds, shape.warmup
    );
    let (report, sampled) = tokio::join!(
        ca_load::run_callers(&connections, APP, prefix, shape.cas, shape.callers, window),
        sampler
    );
    let report = report?;
    let (used, commits) = sampled?;
    let spine: f64 = used[1..used.len() - 1].iter().sum();
    let cpu = Cpu {
        parts: vec![("host", used[0]), ("spine", spine)],
        client: used[used.len() - 1],
    };
    let mut latencies = Latencies::new();
    latencies.merge_micros(&report.latencies);
    let mut out = outcome(
        report.turns,
        report.errors,
        window.seconds(),
        &latencies,
        &cpu,
    );
    if let Some(e) = &report.first_error {
        out.detail("first_error", e.to_string());
    }
    if let Some((before, after)) = commits {
        let batches = after.batches - before.batches;
        if batches > 0.0 {
            let checkpoints = after.checkpoints - before.checkpoints;
            out.detail(
                "checkpoints_per_batch",
                crate::stats::round3(checkpoints / batches),
            )
            .detail(
                "batches_per_s",
                crate::stats::round3(batches / window.seconds()),
            )
            .detail(
                "commit_ms_mean",
                crate::stats::round3(
                    (after.commit_seconds - before.commit_seconds) * 1e3 / batches,
                ),
            );
        }
    }
    if report.turns == 0 {
        bail!(
            "no turn answered in the window ({} errors; first: {})",
            report.errors,
            report
                .first_error
                .map_or_else(|| "none".into(), |e| e.to_string())
        );
    }
    Ok(out)
}

/// Calls every CA once, `FIRST_TURN_CONCURRENCY` at a time.
async fn first_turns(connections: &[CaClient], prefix: &str, cas: usize) -> anyhow::Result<()> {
    let calls = futures::stream::iter(0..cas)
        .map(|i| {
            let client = connections[i % connections.len()].clone();
            let ca = ca_load::ca_name(prefix, i);
            async move {
                client
                    .call(APP, &ca, "increment", vec![])
                    .await
                    .with_context(|| format!("the first turn of CA {ca}"))
            }
        })
        .buffer_unordered(FIRST_TURN_CONCURRENCY)
        .try_for_each(|_| async { Ok(()) });
    tokio::time::timeout(FIRST_TURNS_DEADLINE, calls)
        .await
        .context("the CAs' first turns took too long")?
}

/// What `load.js` prints at the end.
#[derive(Debug, Deserialize)]
struct CafjsReport {
    turns: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u64>,
}

/// `shape.cas` fresh counter CAs on Caf.js, driven by `load.js` (CA names from `prefix`).
pub async fn cafjs(target: &CafjsTarget, prefix: &str, shape: Shape) -> anyhow::Result<Outcome> {
    let server_pids = target.procs.pids();
    let [redis_pid, node_pid] = server_pids[..] else {
        bail!("the Caf.js servers are not running");
    };
    let mut child = Command::new("node")
        .current_dir(&target.dir)
        .arg("load.js")
        .args(["--url", &target.url])
        .args(["--cas", &shape.cas.to_string()])
        .args(["--callers", &shape.callers.to_string()])
        .args(["--seconds", &shape.seconds.to_string()])
        .args(["--warmup", &shape.warmup.to_string()])
        .args(["--prefix", prefix])
        .args(["--connect", &FIRST_TURN_CONCURRENCY.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting node load.js")?;
    let client_pid = child.id().context("load.js exited at once")?;
    let mut stdout = BufReader::new(child.stdout.take().context("load.js has no stdout")?).lines();
    let mut stderr = child.stderr.take().context("load.js has no stderr")?;
    let label = format!("Caf.js, {} CAs × {} callers", shape.cas, shape.callers);
    let opened = Instant::now();
    let first = tokio::time::timeout(FIRST_TURNS_DEADLINE, stdout.next_line())
        .await
        .context("load.js did not open its sessions in time")??;
    if first.as_deref().map(str::trim) != Some(r#"{"window":"open"}"#) {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        bail!(
            "load.js failed before measuring: {} {}{}",
            first.unwrap_or_default(),
            err.trim(),
            target.death().map(|d| format!("; {d}")).unwrap_or_default()
        );
    }
    eprintln!(
        "    {label}: sessions opened and first turns in {:.1} s; measuring {} s",
        opened.elapsed().as_secs_f64() - shape.warmup,
        shape.seconds
    );
    let pids = [node_pid, redis_pid, client_pid];
    let cpu = CpuWindow::start(&pids)?;
    tokio::time::sleep(Duration::from_secs_f64(shape.seconds)).await;
    let used = cpu.seconds()?;
    let last = tokio::time::timeout(Duration::from_secs(120), stdout.next_line())
        .await
        .context("load.js did not report in time")??
        .context("load.js ended without a report")?;
    let status = child.wait().await?;
    if !status.success() {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        bail!(
            "load.js failed ({status}): {}{}",
            err.trim(),
            target.death().map(|d| format!("; {d}")).unwrap_or_default()
        );
    }
    let report: CafjsReport =
        serde_json::from_str(&last).with_context(|| format!("load.js's report: {last:.200}"))?;
    let mut latencies = Latencies::new();
    for &us in &report.latencies_us {
        latencies.record(Duration::from_micros(us));
    }
    let cpu = Cpu {
        parts: vec![("node", used[0]), ("redis", used[1])],
        client: used[2],
    };
    let mut out = outcome(report.turns, report.errors, shape.seconds, &latencies, &cpu);
    if let Some(e) = report.first_error {
        out.detail("first_error", e);
    }
    if report.turns == 0 {
        bail!("no turn answered in the window ({} errors)", report.errors);
    }
    Ok(out)
}
