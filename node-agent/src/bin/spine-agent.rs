//! The `spine-agent` binary: `spine-agent` runs the node agent daemon on a Unix socket;
//! `spine-agent get` and `spine-agent status` read through a running one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use node_agent::daemon::{self, Daemon, DaemonConfig, PinCount};
use node_agent::{Agent, AgentConfig, metrics};
use spine_proto::agent_v1 as pb;
use spine_proto::v1::entry::Kind;

/// The endpoints of `spine dev`.
const DEV_ENDPOINTS: &str = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403";

/// The Spine node agent: one per machine, serving pinned snapshots of Sharing Maps to local
/// reader processes over gRPC on a Unix socket (service spine.agent.v1.NodeAgent).
#[derive(Parser, Debug)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  spine-agent --socket /tmp/spine-agent.sock          # run the daemon next to `spine dev`\n  spine-agent get --socket /tmp/spine-agent.sock alice-phone-prices apple\n  spine-agent status --socket /tmp/spine-agent.sock\n\nClients must Release what they Pin: pins are not tied to connections (see --pin-max-age-secs).\nLogs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read keys of a map through a running daemon (pins, reads, releases).
    Get(GetArgs),
    /// Show the maps a running daemon follows, their versions and lag.
    Status(StatusArgs),
}

#[derive(Args, Debug, Clone)]
struct SocketArg {
    /// The daemon's socket [default: $XDG_RUNTIME_DIR/spine-agent.sock, or
    /// /tmp/spine-agent-$UID.sock]
    #[arg(long, env = "SPINE_AGENT_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
}

impl SocketArg {
    fn path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket)
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Spine nodes (any of them; the agent fails over between them), comma-separated.
    #[arg(long, env = "SPINE_ENDPOINTS", value_delimiter = ',', default_value = DEV_ENDPOINTS)]
    endpoints: Vec<String>,
    /// Versions kept per map (besides those readers pin).
    #[arg(long, env = "SPINE_AGENT_VERSIONS_KEPT", default_value_t = AgentConfig::default().versions_kept)]
    versions_kept: usize,
    /// Maps no reader used for this many seconds are unsubscribed and freed.
    #[arg(long, env = "SPINE_AGENT_IDLE_TIMEOUT_SECS", default_value_t = AgentConfig::default().idle_timeout.as_secs())]
    idle_timeout_secs: u64,
    /// How long a Pin or Watch of a map waits for its first version, in seconds.
    #[arg(long, env = "SPINE_AGENT_FIRST_VERSION_TIMEOUT_SECS", default_value_t = AgentConfig::default().first_version_timeout.as_secs())]
    first_version_timeout_secs: u64,
    /// Refuse to run map methods (Invoke fails with FAILED_PRECONDITION).
    #[arg(long, env = "SPINE_AGENT_NO_EXEC")]
    no_exec: bool,
    /// Most pins held for clients at once; Pin fails with RESOURCE_EXHAUSTED beyond it.
    #[arg(long, env = "SPINE_AGENT_MAX_PINS", default_value_t = DaemonConfig::default().max_pins)]
    max_pins: usize,
    /// Pins not released after this many seconds are dropped (0: never), so a client that died
    /// holding pins does not hold versions forever.
    #[arg(long, env = "SPINE_AGENT_PIN_MAX_AGE_SECS", default_value_t = 600)]
    pin_max_age_secs: u64,
    /// Serve Prometheus metrics (agent-wide, no series per map) at GET /metrics on this address,
    /// e.g. 127.0.0.1:7421 [default: off]
    #[arg(long, env = "SPINE_AGENT_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Token presented to the Spine (URL-safe base64) [default: --token-file, else
    /// ./spine-data/admin.token when `spine dev` runs in this directory]
    #[arg(long, env = "SPINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the token.
    #[arg(long, env = "SPINE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Connect to the Spine with TLS, trusting this CA certificate (PEM).
    #[arg(long, env = "SPINE_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct GetArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// The app namespace.
    #[arg(long, env = "SPINE_APP", default_value = "dev-app")]
    app: String,
    /// The map.
    map: String,
    /// Keys to read (all when none).
    keys: Vec<String>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Print the agent's full status as JSON.
    #[arg(long)]
    json: bool,
}

fn default_socket() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("spine-agent.sock");
    }
    // The owner of /proc/self is this process's user.
    let user = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")
            .map(|m| m.uid().to_string())
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "user".into())
    };
    std::env::temp_dir().join(format!("spine-agent-{user}.sock"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.run).await,
        Some(Command::Get(args)) => get(args).await,
        Some(Command::Status(args)) => status(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let socket = args.socket.path();
    let cfg = AgentConfig {
        versions_kept: args.versions_kept.max(1),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        first_version_timeout: Duration::from_secs(args.first_version_timeout_secs.max(1)),
        no_exec: args.no_exec,
        token: spine_client::resolve_token(args.token.clone(), args.token_file.as_deref())?,
        tls_ca_pem: match &args.tls_ca {
            Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
            None => None,
        },
        ..AgentConfig::default()
    };
    let daemon_cfg = DaemonConfig {
        max_pins: args.max_pins,
        pin_max_age: (args.pin_max_age_secs > 0)
            .then(|| Duration::from_secs(args.pin_max_age_secs)),
    };
    if args.endpoints.is_empty() {
        bail!("no Spine endpoints given (--endpoints or SPINE_ENDPOINTS)");
    }
    let endpoints = args.endpoints.join(",");
    let agent = Agent::connect(args.endpoints, cfg)
        .await
        .with_context(|| format!("connecting to the Spine at {endpoints}"))?;
    let daemon = Daemon::bind(agent.clone(), &socket, daemon_cfg).await?;
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = match args.metrics_listen {
        Some(addr) => {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    // Not serving after all: leave no socket file behind.
                    let _ = std::fs::remove_file(daemon.path());
                    return Err(e).with_context(|| {
                        format!("binding the metrics address {addr} (--metrics-listen)")
                    });
                }
            };
            let bound = listener.local_addr().unwrap_or(addr);
            println!("spine-agent: metrics on http://{bound}/metrics");
            let router = metrics_router(agent.clone(), daemon.pin_count());
            Some(tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = metrics_stopped.await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "metrics server failed");
                }
            }))
        }
        None => None,
    };
    println!(
        "spine-agent: serving on {} (Spine at {endpoints})",
        daemon.path().display()
    );
    println!("export SPINE_AGENT_SOCKET={}", daemon.path().display());
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    let signal = async move {
        let r = shutdown_signal().await;
        let _ = stopped_tx.send(r);
    };
    let served = daemon.serve(signal).await;
    let _ = stop_metrics.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    served?;
    agent.shutdown();
    // The signal handler's own failure (rare) is reported after the socket is gone.
    if let Ok(r) = stopped_rx.await {
        r?;
    }
    println!("spine-agent: stopped");
    Ok(())
}

/// `GET /metrics`: the agent's status as Prometheus text, computed at each scrape.
fn metrics_router(agent: Agent, pins: PinCount) -> axum::Router {
    use axum::http::{StatusCode, header};
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (agent, pins) = (agent.clone(), pins.clone());
            async move {
                match agent.status().await {
                    Ok(status) => {
                        let pins = pins.get().map(|n| n as u64);
                        let text = metrics::render(&status, pins);
                        (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                            text,
                        )
                    }
                    Err(e) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                        format!("the node agent is not running: {e}\n"),
                    ),
                }
            }
        }),
    )
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

async fn get(args: GetArgs) -> anyhow::Result<()> {
    let mut client = daemon::connect(&args.socket.path()).await?;
    let pin = client
        .pin(pb::PinRequest {
            app: args.app.clone(),
            map: args.map.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let read = client
        .get(pb::GetRequest {
            pin_id: pin.pin_id,
            keys: args.keys,
        })
        .await;
    // Release even when the read failed: pins outlive connections.
    let released = client
        .release(pb::ReleaseRequest { pin_id: pin.pin_id })
        .await;
    let read = read.map_err(status_error)?.into_inner();
    released.map_err(status_error)?;
    println!("# {}/{} version {}", args.app, args.map, read.version);
    for kv in read.entries {
        match kv.entry.and_then(|e| e.kind) {
            Some(Kind::Json(json)) => println!("{} = {json}", kv.key),
            Some(Kind::Method(m)) => {
                println!(
                    "{} = method({}) {{ {} }}",
                    kv.key,
                    m.args.join(", "),
                    m.body
                )
            }
            None => println!("# {} not found", kv.key),
        }
    }
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut client = daemon::connect(&args.socket.path()).await?;
    let s = client
        .status(pb::StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if args.json {
        let value: serde_json::Value =
            serde_json::from_str(&s.json).context("the daemon's status is not JSON")?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "maps {}  daemon pins {}  outages {}  last event {} ms ago",
        s.maps, s.daemon_pins, s.outages, s.since_last_event_ms
    );
    for m in s.per_map {
        println!(
            "{}/{}  version {}  retained {}  pinned {}  behind {} versions ({} ms)",
            m.app, m.map, m.version, m.retained, m.pinned, m.versions_behind, m.behind_ms
        );
    }
    Ok(())
}

/// The error and its causes on one line, skipping causes the previous message already quotes.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The daemon's message verbatim, with its code for scripts that match on it.
fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}
