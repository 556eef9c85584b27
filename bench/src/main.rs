//! `spine-bench`: cluster benchmarks that start real `spine serve` processes on loopback.
//!
//! `spine-bench propagation --agents 1,100 --updates 200` measures the time from a writer's
//! acknowledgement to the new version being pinnable on node agents, and the memory an agent
//! spends per followed map. Run it with `--release` for meaningful figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use node_agent::Agent;
use serde_json::json;
use sharing_map::{AppName, ChangeSet, Entry, MapName, UpdateId};
use spine_tests::{Cluster, ClusterOpts};

/// Spine cluster benchmarks.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writer acknowledgement to version pinnable on node agents; agent memory per map.
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Propagation {
            agents,
            updates,
            memory_maps,
        } => propagation(&agents, updates, memory_maps).await,
    }
}

fn rss_bytes() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("malformed statm")?
        .parse()?;
    Ok(pages * 4096)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn propagation(
    agent_counts: &[usize],
    updates: u64,
    memory_maps: usize,
) -> anyhow::Result<()> {
    eprintln!("starting a 3-node cluster ...");
    let cluster = Cluster::start(
        3,
        ClusterOpts {
            args: vec![],
            ..ClusterOpts::default()
        },
    )
    .await?;
    let app = AppName::parse("bench-app")?;
    let agent_config = cluster.agent_config();
    let client = cluster
        .client_builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    println!("| agents | updates | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for &n in agent_counts {
        let map = MapName::parse(&format!("bench-prop-a{n}"))?;
        client.create_map(&app, &map, vec![]).await?;
        let mut replicas = Vec::with_capacity(n);
        for i in 0..n {
            let endpoints = {
                let mut e = cluster.endpoints();
                e.rotate_left(i % 3);
                e
            };
            let agent = Agent::connect(endpoints, agent_config.clone()).await?;
            replicas.push((agent.clone(), agent.replica(&app, &map).await?));
        }
        let mut hist = Histogram::<u64>::new(3)?;
        for v in 0..updates {
            let cs = ChangeSet::from_ops(
                map.clone(),
                v,
                UpdateId::parse(&format!("p{v}"))?,
                [(Arc::from("k"), Some(Entry::value(json!(v))))],
            );
            let waits = replicas.iter().map(|(_, r)| {
                let mut r = r.clone();
                async move {
                    while r.version() < v + 1 {
                        r.changed().await?;
                    }
                    anyhow::Ok(Instant::now())
                }
            });
            let waiting = tokio::spawn(futures::future::try_join_all(waits));
            client.update(&app, vec![cs]).await?;
            let acked = Instant::now();
            let seen = tokio::time::timeout(Duration::from_secs(30), waiting).await???;
            for t in seen {
                let micros = t.saturating_duration_since(acked).as_micros() as u64;
                hist.record(micros.max(1))?;
            }
        }
        println!(
            "| {n} | {updates} | {:.2} | {:.2} | {:.2} |",
            ms(&hist, 0.5),
            ms(&hist, 0.99),
            hist.max() as f64 / 1000.0
        );
        for (agent, _) in &replicas {
            agent.shutdown();
        }
    }

    eprintln!("creating {memory_maps} maps for the memory measurement ...");
    let names: Vec<MapName> = (0..memory_maps)
        .map(|i| MapName::parse(&format!("bench-mem-m{i}")))
        .collect::<Result<_, _>>()?;
    let creates = names.chunks(memory_maps.div_ceil(64).max(1)).map(|chunk| {
        let (client, app, chunk) = (client.clone(), app.clone(), chunk.to_vec());
        async move {
            for m in chunk {
                client.create_map(&app, &m, vec![]).await?;
            }
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(creates).await?;
    let agent = Agent::connect(cluster.endpoints(), cluster.agent_config()).await?;
    let warm = agent.replica(&app, &names[0]).await?;
    let before = rss_bytes()?;
    let opens = names[1..].iter().map(|m| agent.replica(&app, m));
    let held = futures::future::try_join_all(opens).await?;
    let after = rss_bytes()?;
    let per_map = (after.saturating_sub(before)) as f64 / held.len().max(1) as f64;
    println!(
        "\nagent memory: {} maps followed, RSS +{} KiB, {:.0} bytes per followed map (empty maps; add the maps' own content)",
        held.len(),
        after.saturating_sub(before) / 1024,
        per_map
    );
    drop((warm, held));
    Ok(())
}
