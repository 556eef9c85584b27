//! The Caf.js peer of the `ca` workload: Debian's `redis-server` with `appendfsync always` (every
//! checkpoint write fsync'd before Redis answers it), and one node process running the counter
//! app of `bench/cafjs/` on caf_core 0.4, listening on loopback. `bench/cafjs/setup.sh`
//! installs both (apt-get and npm, by package name) when they are missing.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::process::Command;

use super::{STARTUP_DEADLINE, ServerProcs, free_addr, on_path};

/// Caf.js's checkpoint coalescing, from caf_platform's framework.json (component `cp`): a
/// write waits up to this many milliseconds ...
pub const COALESCING_INTERVAL_MS: u64 = 10;
/// ... or until this many writes are pending.
pub const COALESCING_MAX_PENDING: u64 = 20;

/// A Caf.js node and its Redis.
#[derive(Debug)]
pub struct CafjsTarget {
    /// The app's URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// `bench/cafjs/`: the app and the load client.
    pub dir: PathBuf,
    /// Redis, then the node process (`pids()` follow this order).
    pub procs: ServerProcs,
    /// Versions, for the report.
    pub version: String,
    /// The node process's log.
    pub log: PathBuf,
}

/// `bench/cafjs/` in the source tree this benchmark was built from.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cafjs")
}

/// Runs `dir/setup.sh` unless its last run is newer than `package.json`.
pub fn setup(dir: &Path) -> anyhow::Result<()> {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let done = modified(dir.join("node_modules/.spine-bench-setup"));
    let wanted = modified(dir.join("package.json"))
        .with_context(|| format!("no package.json in {}", dir.display()))?;
    let ready = done.is_some_and(|d| d >= wanted)
        && on_path("redis-server").is_some()
        && on_path("node").is_some();
    if ready {
        return Ok(());
    }
    eprintln!(
        "installing Caf.js (npm: caf_core, caf_cli) and Redis (apt: redis-server) with {}/setup.sh ...",
        dir.display()
    );
    let status = std::process::Command::new("bash")
        .arg(dir.join("setup.sh"))
        .status()
        .context("running cafjs/setup.sh")?;
    if !status.success() {
        bail!("{}/setup.sh failed ({status})", dir.display());
    }
    Ok(())
}

fn version_of(program: &str, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

impl CafjsTarget {
    /// Installs what is missing, starts Redis (data under `data`) and the app, and waits until
    /// both accept connections.
    pub async fn start(dir: &Path, data: &Path) -> anyhow::Result<Self> {
        setup(dir)?;
        std::fs::create_dir_all(data)?;
        let redis_addr = free_addr()?;
        let app_addr = free_addr()?;
        let port = |addr: &str| addr.rsplit(':').next().unwrap_or_default().to_string();
        let mut procs = ServerProcs::default();

        let mut redis = Command::new("redis-server");
        redis
            .args(["--bind", "127.0.0.1", "--port", &port(&redis_addr)])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(data);
        procs.spawn(redis, &data.join("redis.log"))?;
        wait_listening(&redis_addr, "Redis").await?;

        let mut node = Command::new("node");
        node.current_dir(dir.join("lib"))
            .args(["-r", "./loopback.js", "ca_methods.js"])
            .env("REDIS_PORT_6379_TCP_ADDR", "127.0.0.1")
            .env("REDIS_PORT_6379_TCP_PORT", port(&redis_addr))
            .env("PORT0", port(&app_addr))
            .env("HOST", "127.0.0.1")
            .env("LOG_LEVEL", "WARN")
            // caf_platform's supervisor kills the process when its periodic checkup (every 2 s)
            // is still running 20 checks later; while 10,000 sessions open on 2 busy cores it
            // is, and the platform exits ("Hang in checkup"). The watchdog is a deployment
            // setting, not part of the work measured, so it is turned off.
            .env("MAX_HANG_RETRIES", "1000000");
        let log = data.join("node.log");
        procs.spawn(node, &log)?;
        if let Err(e) = wait_listening(&app_addr, "the Caf.js app").await {
            bail!("{e:#}\n{}", procs.log_tails(10));
        }
        let version = format!(
            "caf_core {} on node {}, {}",
            npm_version(dir, "caf_core"),
            version_of("node", "--version"),
            version_of("redis-server", "--version")
        );
        Ok(Self {
            url: format!("http://{app_addr}"),
            dir: dir.to_path_buf(),
            procs,
            version,
            log,
        })
    }

    /// Why the Caf.js platform stopped, when its log says it did ("Platform Dying").
    pub fn death(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let at = text.find("Platform Dying")?;
        let reason = text[at..]
            .lines()
            .find_map(|l| l.trim().strip_prefix("\"msg\":"))
            .map_or("no reason given", |m| m.trim().trim_matches('"'));
        Some(format!(
            "the Caf.js platform died: {reason} (see {})",
            self.log.display()
        ))
    }
}

/// The installed version of npm package `name` under `dir`.
fn npm_version(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join("node_modules").join(name).join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("version")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

async fn wait_listening(addr: &str, what: &str) -> anyhow::Result<()> {
    spine_tests::eventually(
        &format!("{what} to listen on {addr}"),
        STARTUP_DEADLINE,
        || async { tokio::net::TcpStream::connect(addr).await.ok() },
    )
    .await?;
    Ok(())
}
