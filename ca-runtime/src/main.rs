//! `ca-host`: runs Cloud Assistants of the apps compiled into it, checkpointing in a Spine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use authz_aggregate::{RootPublicKey, Verifier};
use ca_runtime::apps::counter::Counter;
use ca_runtime::placement::{Placement, PlacementConfig};
use ca_runtime::plugins::{LogPlugin, Plugins};
use ca_runtime::service::CaService;
use ca_runtime::{App, Host, HostConfig};
use clap::{Args, Parser, Subcommand};
use sharing_map::AppName;

/// Runs CA hosts.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serves the example apps (`demo-counter`) to clients on --listen, checkpointing every turn
    /// in the Spine at --spine before replying.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Where clients connect (gRPC `ca.v1`).
    #[arg(long, env = "CA_LISTEN", default_value = "127.0.0.1:7601")]
    listen: SocketAddr,
    /// The Spine's endpoints, comma-separated.
    #[arg(
        long,
        env = "SPINE_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403"
    )]
    spine: Vec<String>,
    /// The host's token for the Spine (it writes the CAs' private state maps, so an admin
    /// token); else --spine-token-file, else `spine-data/admin.token` if present.
    #[arg(long, env = "CA_SPINE_TOKEN", hide_env_values = true)]
    spine_token: Option<String>,
    /// A file holding the host's Spine token.
    #[arg(long, env = "CA_SPINE_TOKEN_FILE")]
    spine_token_file: Option<PathBuf>,
    /// The deployment's root public key (`spine init` writes `root.pub`): client tokens are
    /// checked against it. Defaults to `spine-data/root.pub` when that exists.
    #[arg(long, env = "CA_ROOT_KEY_FILE")]
    root_key_file: Option<PathBuf>,
    /// Let every client call every CA without a token (local experiments only).
    #[arg(long, env = "CA_NO_AUTH", conflicts_with = "root_key_file")]
    no_auth: bool,
    /// Serve Prometheus metrics here (`GET /metrics`).
    #[arg(long, env = "CA_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// The file the `log` plugin appends intents to.
    #[arg(long, env = "CA_INTENT_LOG", default_value = "ca-data/intents.log")]
    intent_log: PathBuf,
    /// An activation idle this long ends (its CA then costs no memory).
    #[arg(long, env = "CA_IDLE_MS", default_value_t = 60_000)]
    idle_ms: u64,
    /// Largest state of one CA, in bytes of compact JSON.
    #[arg(long, env = "CA_MAX_STATE_BYTES", default_value_t = 1024 * 1024)]
    max_state_bytes: usize,
    /// Serve every CA called here, without partition leases: for a single host (two such hosts
    /// on one Spine would take turns failing each other's checkpoints; nothing wrong would
    /// commit, but callers would see `moved` errors).
    #[arg(long, env = "CA_NO_PLACEMENT")]
    no_placement: bool,
    /// This host's id among hosts (default: its --advertise address).
    #[arg(long, env = "CA_HOST_ID")]
    host_id: Option<String>,
    /// Where other hosts reach this one (default: --listen).
    #[arg(long, env = "CA_ADVERTISE")]
    advertise: Option<String>,
    /// Partitions CAs hash onto; the same on every host of a deployment.
    #[arg(long, env = "CA_PARTITIONS", default_value_t = 64)]
    partitions: u32,
    /// How long a partition lease lasts: a dead host's CAs answer from another host within it.
    #[arg(long, env = "CA_LEASE_MS", default_value_t = 10_000)]
    lease_ms: u64,
    /// Declare another state version for an app's code (`demo-counter=0.2.0`), e.g. to try
    /// upgrades: CAs checkpointed by another version upgrade at their next message, or refuse.
    #[arg(long, value_name = "APP=VERSION")]
    state_version: Vec<String>,
}

fn apps(args: &ServeArgs) -> anyhow::Result<Vec<(AppName, Arc<dyn App>)>> {
    let mut counter_version = Counter::default_version();
    for spec in &args.state_version {
        let Some((app, version)) = spec.split_once('=') else {
            bail!("--state-version {spec:?}: expected APP=VERSION");
        };
        if app != Counter::APP {
            bail!(
                "--state-version {spec:?}: this host serves no app {app:?} (it serves {})",
                Counter::APP
            );
        }
        counter_version = semver::Version::parse(version).with_context(|| {
            format!("--state-version {spec:?}: {version:?} is not a semver version")
        })?;
    }
    let name = AppName::parse(Counter::APP)?;
    Ok(vec![(
        name,
        Arc::new(Counter::new(counter_version)) as Arc<dyn App>,
    )])
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let apps = apps(&args)?;
    let token =
        spine_client::resolve_token(args.spine_token.clone(), args.spine_token_file.as_deref())?;
    let mut builder = spine_client::Client::builder(args.spine.clone());
    if let Some(t) = &token {
        builder = builder.token(t.clone());
    }
    let client = builder.build().context("the Spine client")?;
    let verifier = if args.no_auth {
        tracing::warn!("client authentication is off (--no-auth): every call is allowed");
        None
    } else {
        let path = match &args.root_key_file {
            Some(p) => p.clone(),
            None if std::path::Path::new("spine-data/root.pub").exists() => {
                PathBuf::from("spine-data/root.pub")
            }
            None => bail!(
                "give --root-key-file (the deployment's root.pub, see `spine init`) or --no-auth"
            ),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the root public key {}", path.display()))?;
        let root = RootPublicKey::from_hex(text.trim())
            .with_context(|| format!("{}: not a root public key", path.display()))?;
        Some(Arc::new(Verifier::new(root)))
    };
    if let Some(dir) = args
        .intent_log
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let plugins = Plugins::default().with(LogPlugin::new(args.intent_log.clone()));
    let mut config = HostConfig {
        idle: Duration::from_millis(args.idle_ms),
        ..HostConfig::default()
    };
    config.limits.max_state_bytes = args.max_state_bytes;
    let placement = if args.no_placement {
        None
    } else {
        let addr = args
            .advertise
            .clone()
            .unwrap_or_else(|| args.listen.to_string());
        if args.partitions == 0 {
            bail!("--partitions must be at least 1");
        }
        Some(Placement::new(
            client.clone(),
            PlacementConfig {
                host_id: args.host_id.clone().unwrap_or_else(|| addr.clone()),
                addr,
                partitions: args.partitions,
                lease: Duration::from_millis(args.lease_ms.max(100)),
            },
        )?)
    };
    let host = Host::new(client, apps, plugins, placement, config);
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics address {addr}"))?;
        let metrics = host.metrics();
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (is another ca-host running?)", args.listen))?;
    let addr = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<spine_proto::ca_v1::ca_server::CaServer<CaService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(spine_proto::CA_FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("reflection service")?;
    println!(
        "ca-host: serving {} on {addr}, checkpointing in the Spine at {}",
        host.apps()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        args.spine.join(",")
    );
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(CaService::new(host, verifier).into_server())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await
        .context("serving clients")?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // A panicking method is an exception its caller hears about; the log gets one line (with the
    // place it panicked), not a backtrace per failed turn.
    std::panic::set_hook(Box::new(|info| tracing::error!(%info, "panic")));
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
    }
}
