//! The `spine` binary: `spine serve` runs one node, `spine dev` a local 3-node cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use sharing_map::Limits;
use spine_server::node::NodeConfig;
use spine_server::server::{self, ServeConfig};
use spine_server::state::ApplyConfig;

/// Spine: the Raft-replicated master store for Sharing Maps.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Examples:\n  spine dev                      # a local 3-node cluster in ./spine-data\n  spine serve --id 1 --listen 127.0.0.1:7401 --data-dir /var/lib/spine/1 \\\n      --peer 1=127.0.0.1:7401 --peer 2=127.0.0.1:7402 --peer 3=127.0.0.1:7403\n\nLogs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one Spine node.
    Serve(ServeArgs),
    /// Run a local 3-node cluster (the embedded default), resuming from its data directory.
    Dev(DevArgs),
}

/// Settings shared by `serve` and `dev`.
#[derive(Args, Debug, Clone)]
struct Tuning {
    /// Change sets retained per map for subscribers that resume (older resumes get a snapshot).
    /// Must be the same on every node.
    #[arg(long, env = "SPINE_HISTORY", default_value_t = 1000)]
    history: usize,
    /// Compact the Raft log once this many applied entries are in it.
    #[arg(long, env = "SPINE_COMPACT_AFTER", default_value_t = 10_000)]
    compact_after: u64,
    /// Log entries kept after compaction (followers further behind get a snapshot).
    #[arg(long, env = "SPINE_KEEP_ENTRIES", default_value_t = 1_000)]
    keep_entries: u64,
    /// Raft tick in milliseconds (elections after 10 ticks without a leader, heartbeats every 2).
    #[arg(long, env = "SPINE_TICK_MS", default_value_t = 100)]
    tick_ms: u64,
    /// Longest key, in bytes. Must be the same on every node.
    #[arg(long, env = "SPINE_MAX_KEY_BYTES", default_value_t = Limits::default().max_key_bytes)]
    max_key_bytes: usize,
    /// Largest value (compact JSON) or method, in bytes. Must be the same on every node.
    #[arg(long, env = "SPINE_MAX_VALUE_BYTES", default_value_t = Limits::default().max_value_bytes)]
    max_value_bytes: usize,
    /// Largest change set, in bytes. Must be the same on every node.
    #[arg(long, env = "SPINE_MAX_CHANGE_SET_BYTES", default_value_t = Limits::default().max_change_set_bytes)]
    max_change_set_bytes: usize,
    /// Most entries per map. Must be the same on every node.
    #[arg(long, env = "SPINE_MAX_ENTRIES", default_value_t = Limits::default().max_entries)]
    max_entries: usize,
}

impl Tuning {
    fn node_config(&self, id: u64) -> NodeConfig {
        NodeConfig {
            id,
            apply: ApplyConfig {
                history_len: self.history.max(1),
                limits: Limits {
                    max_key_bytes: self.max_key_bytes,
                    max_value_bytes: self.max_value_bytes,
                    max_change_set_bytes: self.max_change_set_bytes,
                    max_entries: self.max_entries,
                },
            },
            tick: Duration::from_millis(self.tick_ms.max(1)),
            compact_after: self.compact_after.max(1),
            keep_entries: self.keep_entries,
            ..NodeConfig::default()
        }
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// This node's id (1, 2, ...), unique in the cluster.
    #[arg(long, env = "SPINE_ID")]
    id: u64,
    /// Address for clients and peers.
    #[arg(long, env = "SPINE_LISTEN", default_value = "127.0.0.1:7401")]
    listen: SocketAddr,
    /// A founding member as ID=HOST:PORT; repeat for each (this node may be included).
    #[arg(long = "peer", value_parser = parse_peer, env = "SPINE_PEERS", value_delimiter = ',')]
    peers: Vec<(u64, String)>,
    /// Start empty and wait to be added to an existing cluster with `spinectl cluster add`.
    #[arg(long, env = "SPINE_JOIN")]
    join: bool,
    /// Directory for this node's data (created if missing).
    #[arg(long, env = "SPINE_DATA_DIR")]
    data_dir: PathBuf,
    /// Address for Prometheus metrics (GET /metrics).
    #[arg(long, env = "SPINE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    tuning: Tuning,
}

#[derive(Args, Debug)]
struct DevArgs {
    /// Directory for the cluster's data; each node uses a subdirectory.
    #[arg(long, default_value = "spine-data")]
    data_dir: PathBuf,
    /// Port of node 1; nodes 2 and 3 use the next two, metrics the ports 10 above.
    #[arg(long, default_value_t = 7401)]
    base_port: u16,
    #[command(flatten)]
    tuning: Tuning,
}

fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("peer {s:?} is not ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("peer {s:?}: id {id:?} is not a number"))?;
    if id == 0 {
        return Err(format!("peer {s:?}: ids start at 1"));
    }
    let addr = addr.trim();
    if !addr.contains(':') {
        return Err(format!("peer {s:?}: address {addr:?} is not HOST:PORT"));
    }
    Ok((id, addr.to_string()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spine_server::logging::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Dev(args) => dev(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let peers: BTreeMap<u64, String> = args.peers.into_iter().collect();
    if !args.join && peers.is_empty() {
        tracing::warn!("no --peer given: starting a single-node cluster");
    }
    let mut server = server::start(ServeConfig {
        node: args.tuning.node_config(args.id),
        listen: args.listen,
        peers,
        join: args.join,
        data_dir: args.data_dir.clone(),
        metrics_listen: args.metrics_listen,
    })
    .await
    .with_context(|| format!("starting node {}", args.id))?;
    tokio::select! {
        r = shutdown_signal() => r?,
        _ = server.stopped() => bail!("node {} stopped after a storage failure; see the log above", args.id),
    }
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let ports: Vec<u16> = (0..3).map(|i| args.base_port + i).collect();
    let peers: BTreeMap<u64, String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}")))
        .collect();
    let resuming = args.data_dir.exists();
    let mut servers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let id = i as u64 + 1;
        let server = server::start(ServeConfig {
            node: args.tuning.node_config(id),
            listen: SocketAddr::from(([127, 0, 0, 1], *port)),
            peers: peers.clone(),
            join: false,
            data_dir: args.data_dir.join(format!("node{id}")),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], port + 10))),
        })
        .await
        .with_context(|| {
            format!("starting dev node {id} on port {port} (is another `spine dev` running?)")
        })?;
        servers.push(server);
    }
    let endpoints: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    println!(
        "spine dev: 3 nodes {} from {}",
        if resuming { "resumed" } else { "started" },
        args.data_dir.display()
    );
    for s in &servers {
        println!(
            "  node {}  grpc {}  metrics http://{}/metrics",
            s.node().id(),
            s.addr(),
            s.metrics_addr().map(|a| a.to_string()).unwrap_or_default()
        );
    }
    println!("export SPINE_ENDPOINTS={}", endpoints.join(","));
    println!(
        "Press Ctrl-C to stop; data stays in {} for the next run.",
        args.data_dir.display()
    );
    shutdown_signal().await?;
    println!("spine dev: stopping");
    for s in servers {
        s.stop().await;
    }
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_with_clear_errors() {
        assert_eq!(
            parse_peer("2=127.0.0.1:7402"),
            Ok((2, "127.0.0.1:7402".into()))
        );
        assert!(parse_peer("x=1:2").is_err_and(|e| e.contains("not a number")));
        assert!(parse_peer("0=a:1").is_err_and(|e| e.contains("start at 1")));
        assert!(parse_peer("2").is_err_and(|e| e.contains("ID=HOST:PORT")));
    }

    #[test]
    fn cli_parses_serve() {
        let cli = Cli::try_parse_from([
            "spine",
            "serve",
            "--id",
            "2",
            "--data-dir",
            "/tmp/x",
            "--peer",
            "1=a:1",
            "--peer",
            "2=b:2",
        ]);
        assert!(
            cli.is_ok_and(|c| matches!(c.command, Command::Serve(ref s) if s.peers.len() == 2))
        );
    }
}
