//! The `spine` binary: `spine serve` runs one node, `spine dev` a local 3-node cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use sharing_map::Limits;
use std::sync::Arc;

use authz_aggregate::Verifier;
use spine_server::auth::Auth;
use spine_server::credentials;
use spine_server::node::NodeConfig;
use spine_server::server::{self, Security, ServeConfig};
use spine_server::state::ApplyConfig;

/// Spine: the Raft-replicated master store for Sharing Maps.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Examples:\n  spine dev                      # a local 3-node cluster in ./spine-data\n  spine init --dir creds         # root key pair + admin token\n  spine serve --id 1 --listen 127.0.0.1:7401 --data-dir /var/lib/spine/1 \\\n      --root-key-file creds/root.pub --peer-token-file creds/admin.token \\\n      --peer 1=127.0.0.1:7401 --peer 2=127.0.0.1:7402 --peer 3=127.0.0.1:7403\n\nLogs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one Spine node.
    #[command(args_override_self = true)]
    Serve(Box<ServeArgs>),
    /// Run a local 3-node cluster (the embedded default), resuming from its data directory.
    Dev(DevArgs),
    /// Create a deployment's root key pair and an admin token (never overwrites).
    Init(InitArgs),
}

#[derive(Args, Debug)]
struct InitArgs {
    /// Directory for root.key (keep it secret), root.pub (give it to every node) and
    /// admin.token.
    #[arg(long, default_value = "spine-credentials")]
    dir: PathBuf,
    /// Also create a CA and a node certificate in DIR/tls (for --tls-cert/--tls-key/--tls-ca).
    #[arg(long)]
    tls: bool,
    /// Extra DNS names or IP addresses for the node certificate (localhost and 127.0.0.1 are
    /// always in it); repeat for each.
    #[arg(long = "tls-name", value_name = "NAME", requires = "tls")]
    tls_names: Vec<String>,
}

/// How a node authenticates requests.
#[derive(Args, Debug, Clone)]
struct AuthArgs {
    /// Public root key (hex) that every request's token is checked against; `spine init`
    /// writes it to DIR/root.pub.
    #[arg(
        long,
        env = "SPINE_ROOT_KEY_FILE",
        value_name = "FILE",
        required_unless_present = "no_auth"
    )]
    root_key_file: Option<PathBuf>,
    /// Admin token this node presents to its peers; `spine init` writes one to
    /// DIR/admin.token.
    #[arg(
        long,
        env = "SPINE_PEER_TOKEN_FILE",
        value_name = "FILE",
        required_unless_present = "no_auth"
    )]
    peer_token_file: Option<PathBuf>,
    /// Accept every request without a token. Local experiments only: anyone who can reach the
    /// port can write any map and change membership.
    #[arg(long, env = "SPINE_NO_AUTH", conflicts_with_all = ["root_key_file", "peer_token_file"])]
    no_auth: bool,
    /// Serve TLS with this certificate (PEM) and talk to peers with mutual TLS; `spine init
    /// --tls` writes one to DIR/tls/node.pem.
    #[arg(long, env = "SPINE_TLS_CERT", value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(
        long,
        env = "SPINE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) that peers' certificates must chain to.
    #[arg(long, env = "SPINE_TLS_CA", value_name = "FILE", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
}

impl AuthArgs {
    fn security(&self) -> anyhow::Result<Security> {
        let tls = match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(credentials::TlsFiles::read(cert, key, ca)?),
            _ => None,
        };
        if self.no_auth {
            tracing::warn!("authentication is off (--no-auth): every request is allowed");
            return Ok(Security {
                tls,
                ..Security::disabled()
            });
        }
        let (Some(key), Some(token)) = (&self.root_key_file, &self.peer_token_file) else {
            bail!("give --root-key-file and --peer-token-file (see `spine init`), or --no-auth");
        };
        let root = credentials::read_root_public(key)?;
        let peer_token = credentials::read_token(token)?;
        // A node whose own token would be refused by its peers cannot form a cluster.
        let verifier = Verifier::new(root);
        verifier
            .authenticate(&peer_token)
            .with_context(|| format!("{}: not a token of this root key", token.display()))?;
        Ok(Security {
            auth: Auth::Tokens(Arc::new(verifier)),
            peer_token: Some(peer_token),
            tls,
        })
    }
}

/// Settings shared by `serve` and `dev`.
#[derive(Args, Debug, Clone)]
struct Tuning {
    /// Change sets retained per map for subscribers that resume (older resumes get a snapshot).
    /// Must be the same on every node.
    #[arg(long, env = "SPINE_HISTORY", default_value_t = 1000)]
    history: usize,
    /// Compact the Raft log once this many checkpointed entries are in it (it then keeps
    /// `--keep-entries`). Small steps spread the cost; large ones stall writes longer.
    #[arg(long, env = "SPINE_COMPACT_AFTER", default_value_t = 2_000)]
    compact_after: u64,
    /// Write the maps changed since the last checkpoint of the state machine at least this often
    /// (milliseconds) while updates arrive. Updates are durable in the Raft log before that; a
    /// restart replays the log after the last checkpoint.
    #[arg(long, env = "SPINE_CHECKPOINT_MS", default_value_t = 1000)]
    checkpoint_ms: u64,
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
            checkpoint_interval: Duration::from_millis(self.checkpoint_ms.max(1)),
            ..NodeConfig::default()
        }
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// A TOML file of settings, keyed by flag name without dashes (`id = 1`,
    /// `data_dir = "/var/lib/spine"`, `peer = ["1=host:7401", ...]`, `history = 500`). Flags on
    /// the command line win over the file, and the file over `SPINE_*` environment variables.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
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
    #[command(flatten)]
    auth: AuthArgs,
}

#[derive(Args, Debug)]
struct DevArgs {
    /// Directory for the cluster's data; each node uses a subdirectory.
    #[arg(long, default_value = "spine-data")]
    data_dir: PathBuf,
    /// Port of node 1; nodes 2 and 3 use the next two, metrics the ports 10 above.
    #[arg(long, default_value_t = 7401)]
    base_port: u16,
    /// Serve TLS (a CA and node certificate are made in DATA_DIR/tls on first use), with
    /// mutual TLS between the nodes; clients then need --tls-ca DATA_DIR/tls/ca.pem.
    #[arg(long)]
    tls: bool,
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

/// mimalloc: the servers allocate small objects at a high rate (messages, JSON values, map
/// nodes), where glibc malloc spent about a quarter of their CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spine_server::logging::init();
    let args = with_config_file(std::env::args_os().collect())?;
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Dev(args) => dev(args).await,
        Command::Init(args) => init(&args),
    }
}

/// Inserts the settings of `serve --config FILE` as flags right after `serve`, so that flags
/// given on the command line (which come later) override them.
fn with_config_file(args: Vec<std::ffi::OsString>) -> anyhow::Result<Vec<std::ffi::OsString>> {
    let Some(serve_at) = args.iter().position(|a| a == "serve") else {
        return Ok(args);
    };
    let mut path = None;
    for (i, a) in args.iter().enumerate().skip(serve_at + 1) {
        let a = a.to_string_lossy();
        if a == "--config" {
            path = args.get(i + 1).map(PathBuf::from);
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        }
    }
    let Some(path) = path else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let flags =
        config_flags(&text).with_context(|| format!("in config file {}", path.display()))?;
    let mut out: Vec<std::ffi::OsString> = args[..=serve_at].to_vec();
    out.extend(flags.into_iter().map(Into::into));
    out.extend(args[serve_at + 1..].iter().cloned());
    Ok(out)
}

/// Turns a TOML table into `--flag value` arguments.
fn config_flags(text: &str) -> anyhow::Result<Vec<String>> {
    let table: toml::Table = toml::from_str(text)?;
    let mut flags = Vec::new();
    for (key, value) in table {
        if key == "config" {
            bail!("a config file cannot name another config file");
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &toml::Value| -> anyhow::Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => bail!("{key}: unsupported value {other:?}"),
            })
        };
        match &value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    flags.push(flag.clone());
                    flags.push(scalar(item)?);
                }
            }
            v => {
                flags.push(flag);
                flags.push(scalar(v)?);
            }
        }
    }
    Ok(flags)
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
        security: args.auth.security()?,
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
    let options = spine_server::dev::DevOptions {
        data_dir: args.data_dir.clone(),
        base_port: args.base_port,
        tls: args.tls,
    };
    let cluster =
        spine_server::dev::DevCluster::start(&options, |id| args.tuning.node_config(id)).await?;
    let resuming = cluster.resumed;
    let creds = cluster.credentials.clone();
    let tls = cluster.tls.clone();
    let servers = &cluster.servers;
    let endpoints: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    println!(
        "spine dev: 3 nodes {} from {}",
        if resuming { "resumed" } else { "started" },
        args.data_dir.display()
    );
    for s in servers {
        println!(
            "  node {}  grpc {}  metrics http://{}/metrics",
            s.node().id(),
            s.addr(),
            s.metrics_addr().map(|a| a.to_string()).unwrap_or_default()
        );
    }
    println!("export SPINE_ENDPOINTS={}", endpoints.join(","));
    if let Some(tls) = &tls {
        println!(
            "TLS on (mutual TLS between the nodes): export SPINE_TLS_CA={}",
            tls.ca_cert.display()
        );
    }
    println!(
        "admin token {} (spinectl run from this directory finds it), root key {}",
        creds.admin_token.display(),
        creds.root_key.display()
    );
    println!(
        "Press Ctrl-C to stop; data stays in {} for the next run.",
        args.data_dir.display()
    );
    shutdown_signal().await?;
    println!("spine dev: stopping");
    cluster.stop().await;
    Ok(())
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let (paths, created) = credentials::init(&args.dir)
        .with_context(|| format!("creating credentials in {}", args.dir.display()))?;
    let tls = if args.tls {
        Some(
            credentials::init_tls(&args.dir, &args.tls_names)
                .with_context(|| format!("creating TLS certificates in {}", args.dir.display()))?
                .0,
        )
    } else {
        None
    };
    println!(
        "{} {}:",
        if created {
            "created"
        } else {
            "kept the existing credentials in"
        },
        args.dir.display()
    );
    println!(
        "  {}  root private key: keep it secret (spinectl token issue --root-key-file)",
        paths.root_key.display()
    );
    println!(
        "  {}  root public key: every node's --root-key-file",
        paths.root_pub.display()
    );
    println!(
        "  {}  admin token: every node's --peer-token-file, and spinectl's --token-file for admin calls",
        paths.admin_token.display()
    );
    if let Some(t) = tls {
        println!(
            "  {}  TLS CA: every node's --tls-ca, and clients' --tls-ca",
            t.ca_cert.display()
        );
        println!("  {}  CA private key: keep it secret", t.ca_key.display());
        println!(
            "  {} + {}  node certificate and key: --tls-cert and --tls-key",
            t.node_cert.display(),
            t.node_key.display()
        );
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
    fn a_config_file_sets_flags_and_the_command_line_wins() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("spine.toml");
        std::fs::write(
            &file,
            "id = 3\ndata_dir = \"/data/3\"\npeer = [\"1=a:1\", \"3=c:3\"]\nhistory = 50\njoin = false\nno_auth = true\n",
        )?;
        let args: Vec<std::ffi::OsString> = ["spine", "serve", "--config"]
            .iter()
            .map(Into::into)
            .chain([file.clone().into_os_string()])
            .chain(["--history", "70"].iter().map(Into::into))
            .collect();
        let cli = Cli::try_parse_from(with_config_file(args)?)?;
        let Command::Serve(s) = cli.command else {
            anyhow::bail!("not serve");
        };
        assert_eq!(s.id, 3);
        assert_eq!(s.data_dir, PathBuf::from("/data/3"));
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.tuning.history, 70, "the command line wins");
        assert!(config_flags("id = [1, [2]]").is_err());
        assert!(config_flags("not toml").is_err());
        Ok(())
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
            "--no-auth",
        ]);
        assert!(
            cli.is_ok_and(|c| matches!(c.command, Command::Serve(ref s) if s.peers.len() == 2))
        );
    }
}
