//! `spine-bench`: cluster benchmarks on real processes on loopback.
//!
//! - `spine-bench suite` drives a 3-node Spine cluster and a 3-member etcd cluster (both started
//!   here, or given by endpoints) with the same load generator and payloads, alternating between
//!   them, and writes a Markdown table of ratios, JSON and an SVG of latency distributions. Its
//!   `ca` workload compares a CA host checkpointing in that Spine with Caf.js on Redis.
//!   `--smoke` runs the same code paths with tiny parameters in seconds, for CI.
//! - `spine-bench orchestration` measures the CA runtime's CloudEvents orchestration (events/s,
//!   p99 per step at 1,000 orchestrations) and timers (firing lateness at 100,000 pending), each
//!   beside a peer in the same run (counter turns; tokio timers). `--smoke` for CI.
//! - `spine-bench propagation` measures only Spine's writer-ack → node-agent latency and the
//!   agent's memory per followed map.
//!
//! Build it with `--release`: the Spine binaries it starts are taken from the same profile.

mod chart;
mod cluster;
mod etcd;
mod load;
mod procfs;
mod report;
mod scripted;
mod stats;
mod suite;
mod workload;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use node_agent::Agent;
use sharing_map::{AppName, MapName};

use crate::cluster::SpineTarget;

/// Cluster benchmarks of Spine, side by side with etcd (and of the CA host, with Caf.js).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every workload on Spine and etcd; writes report.md, results.json, latency.svg.
    Suite(Box<suite::SuiteArgs>),
    /// Scripted apps: the counter in Rhai beside the counter in Rust (turns/s), and publish →
    /// every active CA on the new version at its next message.
    Scripted(scripted::ScriptedArgs),
    /// Spine only: writer acknowledgement to version pinnable on node agents; agent memory.
    Propagation {
        /// Agent counts to measure, comma-separated (each agent has its own stream).
        #[arg(long, value_delimiter = ',', default_value = "1,100")]
        agents: Vec<usize>,
        /// Updates per agent count.
        #[arg(long, default_value_t = 200)]
        updates: u64,
        /// Maps one agent follows for the memory measurement.
        #[arg(long, default_value_t = 10_000)]
        memory_maps: usize,
    },
    /// The CA runtime's CloudEvents orchestration and timers, each beside a peer.
    Orchestration {
        /// Tiny parameters, for CI.
        #[arg(long)]
        smoke: bool,
        /// Concurrent orchestrations [full: 1000].
        #[arg(long)]
        orchestrations: Option<usize>,
        /// CAs with timers [full: 10000] (each with --timers-per-ca).
        #[arg(long)]
        timer_cas: Option<usize>,
        /// Timers per CA [full: 10].
        #[arg(long)]
        timers_per_ca: Option<usize>,
        /// Write the figures as JSON here.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

/// mimalloc: the servers allocate small objects at a high rate (messages, JSON values, map
/// nodes), where glibc malloc spent about a quarter of their CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let command = async {
        match Cli::parse().command {
            Command::Suite(args) => run_suite(*args).await,
            Command::Scripted(args) => scripted::run(args).await,
            Command::Propagation {
                agents,
                updates,
                memory_maps,
            } => propagation(&agents, updates, memory_maps).await,
            Command::Orchestration {
                smoke,
                orchestrations,
                timer_cas,
                timers_per_ca,
                out,
            } => {
                let mut shape = if smoke {
                    workload::orchestration::Shape::smoke()
                } else {
                    workload::orchestration::Shape::full()
                };
                if let Some(n) = orchestrations {
                    shape.orchestrations = n.max(1);
                }
                if let Some(n) = timer_cas {
                    shape.timer_cas = n.max(1);
                }
                if let Some(n) = timers_per_ca {
                    shape.timers_per_ca = n.max(1);
                }
                let tmp = tempfile::tempdir()?;
                let figures = workload::orchestration::run(shape, tmp.path()).await?;
                if let Some(out) = out {
                    std::fs::write(&out, serde_json::to_string_pretty(&figures)?)?;
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    };
    // On Ctrl-C or SIGTERM the command is dropped, and with it the clusters: their processes
    // are killed rather than left running.
    let result = tokio::select! {
        result = command => result,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}; clusters stopped")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn interrupted() -> &'static str {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return "Ctrl-C";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}

async fn run_suite(args: suite::SuiteArgs) -> anyhow::Result<ExitCode> {
    let out = args.out.clone();
    let report = suite::run(args).await?;
    println!("{}", report.table());
    for goal in &report.goals {
        let mark = match goal.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        println!("{mark}: {} — {}", goal.goal, goal.evidence);
    }
    for path in suite::write_outputs(&report, &out)? {
        eprintln!("wrote {}", path.display());
    }
    eprintln!("suite took {:.0} s", report.total_seconds);
    if report.failed() {
        eprintln!("error: some workloads failed (see the Errors section of report.md)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn propagation(
    agent_counts: &[usize],
    updates: u64,
    memory_maps: usize,
) -> anyhow::Result<ExitCode> {
    eprintln!("starting a 3-node cluster ...");
    let tmp = tempfile::tempdir()?;
    let mut spine = SpineTarget::start(tmp.path()).await?;
    let app = AppName::parse("bench-app")?;
    println!("| agents | updates | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for &n in agent_counts {
        let outcome = workload::propagation::spine(&spine, &app, n, 1, updates).await?;
        let f = |k| outcome.figures.get(k).copied().unwrap_or_default();
        println!(
            "| {n} | {updates} | {:.2} | {:.2} | {:.2} |",
            f("p50_ms"),
            f("p99_ms"),
            f("max_ms")
        );
    }

    eprintln!("creating {memory_maps} maps for the memory measurement ...");
    let names: Vec<MapName> = (0..memory_maps)
        .map(|i| MapName::parse(&format!("bench-mem-m{i}")))
        .collect::<Result<_, _>>()?;
    load::spine_writers(&spine, &app, names.clone()).await?;
    let access = spine.access(0);
    let agent = Agent::connect(access.endpoints, access.agent).await?;
    let first = names.first().context("--memory-maps must be at least 1")?;
    let warm = agent.replica(&app, first).await?;
    let me = std::process::id();
    let before = procfs::rss_bytes(me)?;
    let opens = names[1..].iter().map(|m| agent.replica(&app, m));
    let held = futures::future::try_join_all(opens).await?;
    let after = procfs::rss_bytes(me)?;
    let per_map = after.saturating_sub(before) as f64 / held.len().max(1) as f64;
    println!(
        "\nagent memory: {} maps followed, RSS +{} KiB, {:.0} bytes per followed map (empty maps; add the maps' own content)",
        held.len(),
        after.saturating_sub(before) / 1024,
        per_map
    );
    drop((warm, held));
    agent.shutdown();
    spine.procs.stop().await;
    Ok(ExitCode::SUCCESS)
}
