//! `ca-host`: runs Cloud Assistants of the apps compiled into it, checkpointing in a Spine. The
//! host is assembled from a JSON component description (`ca-runtime/host.json` by default).

use std::path::PathBuf;

use anyhow::{Context, bail};
use ca_runtime::assembly::{self, DEFAULT_HOST_JSON};
use clap::{Args, Parser, Subcommand};
use components::{Delta, Description, ProcessEnv, Rename, merge, resolve};
use serde_json::{Map, Value, json};

/// Runs CA hosts.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serves the apps of the host description (by default `demo-counter`) to clients on
    /// --listen, checkpointing every turn in the Spine at --spine before replying.
    Serve(ServeArgs),
    /// Runs the whole development system in one process: the 3-node dev Spine (as `spine dev`
    /// does: data, credentials and admin token in --data-dir, resumed when run again) and a CA
    /// host serving the example apps on --listen (127.0.0.1:7601).
    Dev(DevArgs),
    /// Prints the fully resolved host description `serve` would build, or why it cannot.
    Check(ServeArgs),
}

#[derive(Args, Debug)]
struct DevArgs {
    /// Directory for the dev Spine's data and credentials.
    #[arg(long, default_value = "spine-data")]
    data_dir: PathBuf,
    /// Port of Spine node 1; nodes 2 and 3 use the next two, their metrics the ports 10 above.
    #[arg(long, default_value_t = 7401)]
    base_port: u16,
    #[command(flatten)]
    host: ServeArgs,
}

/// Every flag overrides one env value of the host description (its default is there, also
/// settable by the environment variable named).
#[derive(Args, Debug)]
struct ServeArgs {
    /// A host description to use instead of the built-in `ca-runtime/host.json`; a `NAME++.json`
    /// delta beside it (or in a --dir) is merged over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A directory to look for the description's `++` delta in.
    #[arg(long, value_name = "DIR")]
    dir: Vec<PathBuf>,
    /// Where clients connect (gRPC `ca.v1`) [CA_LISTEN; default 127.0.0.1:7601].
    #[arg(long)]
    listen: Option<String>,
    /// The host's HTTP port (WebSocket clients, the web page, event ingress, `/health`)
    /// [CA_HTTP_LISTEN; default 127.0.0.1:7602].
    #[arg(long)]
    http_listen: Option<String>,
    /// The Spine's endpoints, comma-separated [SPINE_ENDPOINTS; default 127.0.0.1:7401-7403].
    #[arg(long)]
    spine: Option<String>,
    /// The host's token for the Spine: it writes the CAs' private state maps, so an admin token
    /// [CA_SPINE_TOKEN].
    #[arg(long)]
    spine_token: Option<String>,
    /// A file holding the host's Spine token [CA_SPINE_TOKEN_FILE; default: spine-data/admin.token
    /// if present].
    #[arg(long)]
    spine_token_file: Option<PathBuf>,
    /// The deployment's root public key (`spine init` writes root.pub): client tokens are checked
    /// against it [CA_ROOT_KEY_FILE; default spine-data/root.pub].
    #[arg(long)]
    root_key_file: Option<PathBuf>,
    /// Let every client call every CA without a token; local experiments only [CA_NO_AUTH].
    #[arg(long)]
    no_auth: bool,
    /// Serve Prometheus metrics here (`GET /metrics`) [CA_METRICS_LISTEN].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// The file the `log` plugin appends intents to [CA_INTENT_LOG; default ca-data/intents.log].
    #[arg(long)]
    intent_log: Option<PathBuf>,
    /// An activation idle this long ends; its CA then costs no memory [CA_IDLE_MS; default
    /// 60000].
    #[arg(long)]
    idle_ms: Option<u64>,
    /// Largest state of one CA, in bytes of compact JSON [CA_MAX_STATE_BYTES; default 1 MiB].
    #[arg(long)]
    max_state_bytes: Option<u64>,
    /// Serve every CA called here, without partition leases: for a single host. Two such hosts
    /// on one Spine take turns failing each other's checkpoints: nothing wrong commits, but
    /// callers see `moved` errors [CA_PLACEMENT=false].
    #[arg(long)]
    no_placement: bool,
    /// This host's id among hosts [CA_HOST_ID; default: its advertised address].
    #[arg(long)]
    host_id: Option<String>,
    /// Where other hosts reach this one [CA_ADVERTISE; default: --listen].
    #[arg(long)]
    advertise: Option<String>,
    /// Partitions CAs hash onto; the same on every host of a deployment [CA_PARTITIONS; default
    /// 64].
    #[arg(long)]
    partitions: Option<u64>,
    /// How long a partition lease lasts: a dead host's CAs answer from another host within it
    /// [CA_LEASE_MS; default 10000].
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Declare another state version for an app's code (`demo-counter=0.2.0`), e.g. to try
    /// upgrades: CAs checkpointed by another version upgrade at their next message, or refuse.
    #[arg(long, value_name = "APP=VERSION")]
    state_version: Vec<String>,
    /// Give an app a pulse (`demo-timers=500`): its CAs get `__ca_pulse__` every that many
    /// milliseconds (the `timers` plugin's env `pulse_ms`); `demo-timers=0` takes the pulse away.
    #[arg(long, value_name = "APP=MS")]
    pulse: Vec<String>,
    /// How often the host looks for partitions with due timers that no live host holds
    /// [CA_WAKE_SCAN_MS; default 2000].
    #[arg(long)]
    wake_scan_ms: Option<u64>,
    /// Send the events an app emits (cmd.*, evt.*, notif.*) to this URL (`demo-books=URL`;
    /// replaces the description's sinks of that app).
    #[arg(long, value_name = "APP=URL")]
    sink: Vec<String>,
    /// Let an app's http requests go to URLs under this prefix (`demo-books=http://HOST:PORT/`;
    /// replaces the description's destinations of that app; repeat for several).
    #[arg(long, value_name = "APP=URL")]
    allow: Vec<String>,
}

impl ServeArgs {
    /// The flags given, as a delta over the description.
    fn spec(&self, description: &Description) -> anyhow::Result<Delta> {
        let mut parts: Vec<(String, Map<String, Value>)> = Vec::new();
        let mut set = |component: &str, key: &str, value: Value| match parts
            .iter_mut()
            .find(|(c, _)| c == component)
        {
            Some((_, env)) => {
                env.insert(key.into(), value);
            }
            None => parts.push((
                component.into(),
                [(key.to_string(), value)].into_iter().collect(),
            )),
        };
        let path = |p: &PathBuf| json!(p.display().to_string());
        let mut top = Map::new();
        if let Some(v) = &self.listen {
            top.insert("listen".into(), json!(v));
        }
        if let Some(v) = &self.http_listen {
            top.insert("http_listen".into(), json!(v));
        }
        if let Some(v) = &self.spine {
            set("spine", "endpoints", json!(v));
        }
        if let Some(v) = &self.spine_token {
            set("spine", "token", json!(v));
        }
        if let Some(v) = &self.spine_token_file {
            set("spine", "token_file", path(v));
        }
        if let Some(v) = &self.root_key_file {
            set("endpoint", "root_key_file", path(v));
        }
        if self.no_auth {
            set("endpoint", "no_auth", json!(true));
        }
        if let Some(v) = &self.metrics_listen {
            set("endpoint", "metrics_listen", json!(v));
        }
        if let Some(v) = &self.intent_log {
            set("log", "path", path(v));
        }
        if let Some(v) = self.idle_ms {
            set("host", "idle_ms", json!(v));
        }
        if let Some(v) = self.max_state_bytes {
            set("host", "max_state_bytes", json!(v));
        }
        if self.no_placement {
            set("placement", "enabled", json!(false));
        }
        if let Some(v) = &self.host_id {
            set("placement", "host_id", json!(v));
        }
        if let Some(v) = &self.advertise {
            set("placement", "advertise", json!(v));
        }
        if let Some(v) = self.partitions {
            set("placement", "partitions", json!(v));
        }
        if let Some(v) = self.lease_ms {
            set("placement", "lease_ms", json!(v));
        }
        for spec in &self.state_version {
            let Some((app, version)) = spec.split_once('=') else {
                bail!("--state-version {spec:?}: expected APP=VERSION");
            };
            semver::Version::parse(version).with_context(|| {
                format!("--state-version {spec:?}: {version:?} is not a semver version")
            })?;
            if description.child(app).is_none() {
                bail!("--state-version {spec:?}: the host description has no app {app:?}");
            }
            set(app, "state_version", json!(version));
        }
        if let Some(v) = self.wake_scan_ms {
            set("host", "wake_scan_ms", json!(v));
        }
        let mut pulses = Map::new();
        for spec in &self.pulse {
            let Some((app, ms)) = spec.split_once('=') else {
                bail!("--pulse {spec:?}: expected APP=MS");
            };
            let ms: u64 = ms
                .parse()
                .with_context(|| format!("--pulse {spec:?}: {ms:?} is not milliseconds"))?;
            pulses.insert(app.to_string(), json!(ms));
        }
        let mut sinks = Map::new();
        for spec in &self.sink {
            let Some((app, url)) = spec.split_once('=') else {
                bail!("--sink {spec:?}: expected APP=URL");
            };
            sinks.insert(
                app.to_string(),
                json!({"cmd.": url, "evt.": url, "notif.": url}),
            );
        }
        if !sinks.is_empty() {
            set("events", "sinks", Value::Object(sinks));
        }
        let mut allow: Map<String, Value> = Map::new();
        for spec in &self.allow {
            let Some((app, url)) = spec.split_once('=') else {
                bail!("--allow {spec:?}: expected APP=URL");
            };
            let list = allow.entry(app.to_string()).or_insert_with(|| json!([]));
            if let Some(list) = list.as_array_mut() {
                list.push(json!(url));
            }
        }
        if !allow.is_empty() {
            set("http-client", "allow", Value::Object(allow));
        }
        if !pulses.is_empty() {
            set("timers", "pulse_ms", Value::Object(pulses));
        }
        for (component, _) in &parts {
            if description.child(component).is_none() {
                bail!(
                    "the host description has no component {component:?} for a flag to set; use --config's env instead"
                );
            }
        }
        let components: Vec<Value> = parts
            .into_iter()
            .map(|(name, env)| json!({"name": name, "env": env}))
            .collect();
        let delta = json!({"name": description.name, "env": top, "components": components});
        Ok(Delta::from_value(&delta, "<flags>")?)
    }

    /// The description to build: base, `++` delta, flags, then environment properties and links.
    fn description(&self) -> anyhow::Result<Description> {
        let base = match &self.config {
            Some(file) => {
                let mut loader = components::Loader::new(file.clone());
                for dir in &self.dir {
                    loader = loader.dir(dir.clone());
                }
                // The loader resolves too; flags merge over it below, so load unresolved here.
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let mut d = Description::from_json(&text, &file.display().to_string())?;
                if let Some(delta_file) = loader.delta_file() {
                    let label = delta_file.display().to_string();
                    let text = std::fs::read_to_string(&delta_file)
                        .with_context(|| format!("reading {label}"))?;
                    let delta = Delta::from_json_for(&text, &label, Some(&d.name))?;
                    d = merge(&d, &delta, &label, Rename::Forbidden)?;
                }
                d
            }
            None => Description::from_json(DEFAULT_HOST_JSON, "ca-runtime/host.json")?,
        };
        let spec = self.spec(&base)?;
        let merged = merge(&base, &spec, "<flags>", Rename::Forbidden)?;
        Ok(resolve(&merged, &ProcessEnv, "host description")?)
    }
}

/// Builds the host from its description and supervises it until Ctrl-C.
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let description = args.description()?;
    assembly::run(&description, assembly::registry()?, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn dev(mut args: DevArgs) -> anyhow::Result<()> {
    let options = spine_server::dev::DevOptions {
        data_dir: args.data_dir.clone(),
        base_port: args.base_port,
        tls: false,
    };
    let cluster =
        spine_server::dev::DevCluster::start(&options, |id| spine_server::node::NodeConfig {
            id,
            ..Default::default()
        })
        .await?;
    let endpoints = cluster.endpoints();
    println!(
        "ca-host dev: Spine of 3 nodes {} from {} on {}",
        if cluster.resumed {
            "resumed"
        } else {
            "started"
        },
        args.data_dir.display(),
        endpoints.join(",")
    );
    let host = &mut args.host;
    host.spine.get_or_insert_with(|| endpoints.join(","));
    host.spine_token_file
        .get_or_insert_with(|| cluster.credentials.admin_token.clone());
    if !host.no_auth {
        host.root_key_file
            .get_or_insert_with(|| cluster.credentials.root_pub.clone());
    }
    println!(
        "admin token {} (ca and spinectl run from this directory find it)",
        cluster.credentials.admin_token.display()
    );
    println!("try: ca call demo-counter alice-phone increment");
    let served = serve(args.host).await;
    println!("ca-host dev: stopping");
    cluster.stop().await;
    served
}

/// mimalloc: the servers allocate small objects at a high rate (messages, JSON values, map
/// nodes), where glibc malloc spent about a quarter of their CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
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
        Command::Dev(args) => dev(args).await,
        Command::Check(args) => {
            let d = args.description()?;
            println!("{}", serde_json::to_string_pretty(&d.to_value())?);
            Ok(())
        }
    }
}
