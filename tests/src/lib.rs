//! A harness for multi-process cluster tests: real `spine serve` processes on loopback ports in
//! temporary directories, with fault injection that needs no root.
//!
//! - [`Cluster::start`] launches N nodes; each node reaches each other node through its own
//!   [`Proxy`], so [`Cluster::isolate`] can cut one node off from the others (both directions)
//!   while clients still reach it directly.
//! - [`Cluster::kill`] sends SIGKILL; [`Cluster::restart`] starts the node again on its data.
//! - [`eventually`] waits for a condition with a deadline (no sleeps as synchronization).
//! - Invariants are code: [`Cluster::wait_converged`] returns once every live node applied the
//!   same index with the same state digest.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use spine_proto::v1 as pb;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// A raw gRPC client of one node (presenting a token, or none).
pub type RawClient = pb::spine_client::SpineClient<
    tonic::service::interceptor::InterceptedService<Channel, spine_client::Credentials>,
>;

/// Path of example `name` of the `ca-runtime` crate (`ca-runtime/examples/NAME.rs`) of this
/// build profile, built first (a no-op when it is up to date).
pub fn example(name: &str) -> anyhow::Result<PathBuf> {
    let dir = bin("ca-host")?
        .parent()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("cannot locate the target directory"))?;
    let release = dir.file_name().is_some_and(|n| n == "release");
    cargo_build(&["-p", "ca-runtime", "--example", name], release).map_err(anyhow::Error::msg)?;
    let path = dir.join("examples").join(name);
    if !path.exists() {
        bail!("example {} not found", path.display());
    }
    Ok(path)
}

/// `cargo build --quiet ARGS` (`--release` if `release`), as a nested build: without the
/// per-package variables cargo gave this process. A test (or `cargo run`) process has them
/// (CARGO_PKG_*, CARGO_MANIFEST_DIR, OUT_DIR with a build script, ...); a nested cargo that
/// inherits them records them in build-script fingerprints (ring's), so it would rebuild rustls,
/// tonic and the servers, and so would the next top-level build.
fn cargo_build(args: &[&str], release: bool) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--quiet"]).args(args);
    if release {
        cmd.arg("--release");
    }
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_package = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| key.starts_with(p));
        if per_package || key == "CARGO_PRIMARY_PACKAGE" || key == "OUT_DIR" {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build {} failed: {status}", args.join(" ")));
    }
    Ok(())
}

/// Path of a workspace binary of this build profile, built once per process (a no-op when it is up
/// to date) so a test or a benchmark never runs a stale one.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            // target/<profile>/deps/<test> or target/<profile>/<binary> -> target/<profile>
            let mut profile_dir = exe
                .parent()
                .ok_or("cannot locate the target directory")?
                .to_path_buf();
            if profile_dir.file_name().is_some_and(|n| n == "deps") {
                profile_dir.pop();
            }
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            cargo_build(
                &[
                    "-p",
                    "spine-server",
                    "-p",
                    "spine-client",
                    "-p",
                    "node-agent",
                    "-p",
                    "ca-runtime",
                    "-p",
                    "ca-client",
                    "--bins",
                ],
                release,
            )?;
            Ok(profile_dir)
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("binary {} not found", path.display());
    }
    Ok(path)
}

/// A port that was free a moment ago, for a server a test starts later.
///
/// It is chosen at random below the kernel's ephemeral range, never from it: an ephemeral port
/// freed here could be handed to another test's outgoing connection (or `bind(0)`) before the
/// server binds it, and the server would then fail to start. Below the range only another test's
/// `free_port` can race for it.
pub fn free_port() -> anyhow::Result<u16> {
    use rand::Rng;
    let low = ephemeral_low().saturating_sub(1).max(10_001);
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(10_000..low);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port below {low} after 1000 tries")
}

/// The lowest port the kernel hands out for `bind(0)` and `connect` (Linux; 32768 elsewhere).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Polls `check` until it returns `Some`, or fails after `deadline` with `what` in the error.
pub async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A TCP proxy that can be cut (refusing and dropping connections) and healed.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    enabled: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding a fresh loopback port to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let enabled = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (en, cs) = (enabled.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !en.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut c) = cs.lock() {
                    c.retain(|h| !h.is_finished());
                    c.push(task.abort_handle());
                }
            }
        });
        Ok(Self {
            port,
            enabled,
            conns,
            accept,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        if let Ok(mut c) = self.conns.lock() {
            for h in c.drain(..) {
                h.abort();
            }
        }
    }

    /// Accepts connections again.
    pub fn heal(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Options for a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Extra `spine serve` arguments for every node.
    pub args: Vec<String>,
    /// Run without authentication (`--no-auth`) instead of with `spine init`'s credentials.
    pub no_auth: bool,
    /// Serve TLS, with mutual TLS between the nodes (`spine init --tls` certificates).
    pub tls: bool,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        Self {
            args: vec!["--tick-ms".into(), "50".into()],
            no_auth: false,
            tls: false,
        }
    }
}

/// The credentials `spine init` made for a test cluster.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The directory (root.key, root.pub, admin.token).
    pub dir: PathBuf,
    /// The admin token, URL-safe base64.
    pub admin_token: String,
}

impl Credentials {
    /// Runs `spine init --dir DIR [--tls]`.
    pub async fn init(dir: PathBuf, tls: bool) -> anyhow::Result<Self> {
        let out = Command::new(bin("spine")?)
            .args(["init", "--dir"])
            .arg(&dir)
            .args(tls.then_some("--tls"))
            .output()
            .await
            .context("running spine init")?;
        anyhow::ensure!(
            out.status.success(),
            "spine init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin_token = std::fs::read_to_string(dir.join("admin.token"))
            .context("reading admin.token")?
            .trim()
            .to_string();
        Ok(Self { dir, admin_token })
    }

    /// The private root key file.
    pub fn root_key(&self) -> PathBuf {
        self.dir.join("root.key")
    }
    /// The public root key file.
    pub fn root_pub(&self) -> PathBuf {
        self.dir.join("root.pub")
    }
    /// The admin token file.
    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.join("admin.token")
    }
    /// The TLS CA certificate.
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }
    /// The node certificate.
    pub fn tls_cert(&self) -> PathBuf {
        self.dir.join("tls/node.pem")
    }
    /// The node key.
    pub fn tls_key(&self) -> PathBuf {
        self.dir.join("tls/node.key")
    }
}

#[derive(Debug)]
struct NodeProc {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    join: bool,
    extra: Vec<String>,
}

/// A cluster of real `spine serve` processes.
#[derive(Debug)]
pub struct Cluster {
    tmp: tempfile::TempDir,
    opts: ClusterOpts,
    creds: Credentials,
    nodes: BTreeMap<u64, NodeProc>,
    /// (from, to) -> the proxy `from` uses to reach `to`.
    proxies: HashMap<(u64, u64), Proxy>,
}

impl Cluster {
    /// Starts `n` founding nodes with ids 1..=n and waits for a leader.
    pub async fn start(n: u64, opts: ClusterOpts) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let creds = Credentials::init(tmp.path().join("credentials"), opts.tls).await?;
        let mut c = Self {
            tmp,
            opts,
            creds,
            nodes: BTreeMap::new(),
            proxies: HashMap::new(),
        };
        for id in 1..=n {
            let dir = c.tmp.path().join(format!("node{id}"));
            c.nodes.insert(
                id,
                NodeProc {
                    port: free_port()?,
                    dir,
                    child: None,
                    join: false,
                    extra: Vec::new(),
                },
            );
        }
        for from in 1..=n {
            for to in 1..=n {
                if from != to {
                    let target = SocketAddr::from(([127, 0, 0, 1], c.nodes[&to].port));
                    c.proxies.insert((from, to), Proxy::start(target).await?);
                }
            }
        }
        for id in 1..=n {
            c.spawn(id)?;
        }
        if let Err(e) = c.wait_for_leader(Duration::from_secs(20)).await {
            return Err(e.context(c.describe_nodes()));
        }
        Ok(c)
    }

    fn founders(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.join)
            .map(|(id, _)| *id)
            .collect()
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let spine = bin("spine")?;
        let founders = self.founders();
        let node = self.nodes.get(&id).context("no such node")?;
        std::fs::create_dir_all(&node.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("node.log"))?;
        let mut cmd = Command::new(spine);
        cmd.arg("serve")
            .args(["--id", &id.to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", node.port)])
            .args(["--data-dir", &node.dir.join("data").display().to_string()]);
        if node.join {
            // A joiner learns where the members are (it becomes one only when added).
            cmd.arg("--join");
            for peer in &founders {
                let port = self
                    .nodes
                    .get(peer)
                    .map(|n| n.port)
                    .context("no such node")?;
                cmd.args(["--peer", &format!("{peer}=127.0.0.1:{port}")]);
            }
        } else {
            for peer in &founders {
                let port = if *peer == id {
                    node.port
                } else {
                    self.proxies
                        .get(&(id, *peer))
                        .map(Proxy::port)
                        .context("missing proxy")?
                };
                cmd.args(["--peer", &format!("{peer}=127.0.0.1:{port}")]);
            }
        }
        if self.opts.no_auth {
            cmd.arg("--no-auth");
        } else {
            cmd.arg("--root-key-file")
                .arg(self.creds.root_pub())
                .arg("--peer-token-file")
                .arg(self.creds.admin_token_file());
        }
        if self.opts.tls {
            cmd.arg("--tls-cert")
                .arg(self.creds.tls_cert())
                .arg("--tls-key")
                .arg(self.creds.tls_key())
                .arg("--tls-ca")
                .arg(self.creds.tls_ca());
        }
        cmd.args(&self.opts.args)
            .args(&node.extra)
            .env(
                "RUST_LOG",
                std::env::var("SPINE_TEST_LOG").unwrap_or_else(|_| "info,raft=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().context("starting spine serve")?;
        if let Some(n) = self.nodes.get_mut(&id) {
            n.child = Some(child);
        }
        Ok(())
    }

    /// Adds a node started with `--join` (not yet a member: add it with `AddLearner`).
    pub fn spawn_joiner(&mut self, id: u64, extra: Vec<String>) -> anyhow::Result<String> {
        let port = free_port()?;
        let dir = self.tmp.path().join(format!("node{id}"));
        self.nodes.insert(
            id,
            NodeProc {
                port,
                dir,
                child: None,
                join: true,
                extra,
            },
        );
        self.spawn(id)?;
        Ok(format!("127.0.0.1:{port}"))
    }

    /// Ids of all nodes (running or not).
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of running nodes.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.child.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// A node's data directory (`spine serve --data-dir`).
    pub fn data_dir(&self, id: u64) -> anyhow::Result<PathBuf> {
        Ok(self
            .nodes
            .get(&id)
            .context("no such node")?
            .dir
            .join("data"))
    }

    /// The client address of a node.
    pub fn endpoint(&self, id: u64) -> String {
        self.nodes
            .get(&id)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .unwrap_or_default()
    }

    /// Client addresses of every node.
    pub fn endpoints(&self) -> Vec<String> {
        self.ids().into_iter().map(|id| self.endpoint(id)).collect()
    }

    /// The cluster's credentials (`spine init` output).
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// The admin token (URL-safe base64): it may do anything.
    pub fn token(&self) -> String {
        self.creds.admin_token.clone()
    }

    /// A client builder for every node, presenting the admin token.
    pub fn client_builder(&self) -> spine_client::ClientBuilder {
        let builder = spine_client::Client::builder(self.endpoints()).token(self.token());
        match self.tls_ca_pem() {
            Some(ca) => builder.tls_ca(ca),
            None => builder,
        }
    }

    /// The CA certificate (PEM) clients trust, when the cluster serves TLS.
    pub fn tls_ca_pem(&self) -> Option<Vec<u8>> {
        self.opts
            .tls
            .then(|| std::fs::read(self.creds.tls_ca()).ok())
            .flatten()
    }

    /// A client for every node, presenting the admin token.
    pub fn client(&self) -> anyhow::Result<spine_client::Client> {
        Ok(self.client_builder().build()?)
    }

    /// Agent settings presenting the admin token.
    pub fn agent_config(&self) -> node_agent::AgentConfig {
        node_agent::AgentConfig {
            token: Some(self.token()),
            tls_ca_pem: self.tls_ca_pem(),
            ..node_agent::AgentConfig::default()
        }
    }

    /// A gRPC endpoint of one node: `https` with the cluster's CA when it serves TLS.
    pub fn grpc_endpoint(&self, id: u64) -> anyhow::Result<tonic::transport::Endpoint> {
        Ok(match self.tls_ca_pem() {
            Some(ca) => {
                tonic::transport::Endpoint::from_shared(format!("https://{}", self.endpoint(id)))?
                    .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                )?
            }
            None => {
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.endpoint(id)))?
            }
        })
    }

    /// A raw gRPC client of one node, presenting the admin token.
    pub async fn raw(&self, id: u64) -> anyhow::Result<RawClient> {
        self.raw_with(id, Some(&self.token())).await
    }

    /// A raw gRPC client of one node, presenting `token` (or none).
    pub async fn raw_with(&self, id: u64, token: Option<&str>) -> anyhow::Result<RawClient> {
        let ch = self
            .grpc_endpoint(id)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("connecting to node {id}"))?;
        let credentials = match token {
            Some(t) => spine_client::Credentials::token(t)?,
            None => spine_client::Credentials::default(),
        };
        Ok(pb::spine_client::SpineClient::with_interceptor(
            ch,
            credentials,
        ))
    }

    /// Kills a node with SIGKILL and waits for it to exit.
    pub async fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Stops a node with SIGTERM (graceful) and waits for it to exit.
    pub async fn stop(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                child.start_kill()?;
                child.wait().await?;
                bail!("node {id} did not stop within 10 s of SIGTERM");
            }
        }
        Ok(())
    }

    /// Starts a stopped or killed node again on its data.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.spawn(id)
    }

    /// Cuts a node off from every other node, both ways (clients still reach it).
    pub fn isolate(&self, id: u64) {
        for ((from, to), p) in &self.proxies {
            if *from == id || *to == id {
                p.cut();
            }
        }
    }

    /// Reconnects a node.
    pub fn heal(&self, id: u64) {
        for ((from, to), p) in &self.proxies {
            if *from == id || *to == id {
                p.heal();
            }
        }
    }

    /// Cluster status from one node.
    pub async fn status(&self, id: u64) -> anyhow::Result<pb::ClusterStatusResponse> {
        Ok(self
            .raw(id)
            .await?
            .cluster_status(pb::ClusterStatusRequest {})
            .await?
            .into_inner())
    }

    /// Waits until every live node follows one leader that says it leads; returns its id.
    pub async fn wait_for_leader(&self, deadline: Duration) -> anyhow::Result<u64> {
        let live = self.live();
        eventually("a leader", deadline, || async {
            let mut leaders = Vec::new();
            for id in &live {
                if let Ok(s) = self.status(*id).await {
                    leaders.push((s.id, s.leader_id, s.state));
                }
            }
            let leader = leaders
                .iter()
                .find(|(_, _, state)| state == "leader")
                .map(|(id, _, _)| *id)?;
            // Every live node must know it, so a test's first request to any node is served.
            let agree = leaders.iter().filter(|(_, l, _)| *l == leader).count();
            (agree == live.len()).then_some(leader)
        })
        .await
    }

    /// Waits until every live node has applied the same index with the same state digest.
    pub async fn wait_converged(&self, deadline: Duration) -> anyhow::Result<pb::DigestResponse> {
        let live = self.live();
        let last = Arc::new(Mutex::new(String::new()));
        let result = eventually("replicas to converge", deadline, || {
            let live = live.clone();
            let last = last.clone();
            async move {
                let mut digests = Vec::new();
                for id in &live {
                    let d = self
                        .raw(*id)
                        .await
                        .ok()?
                        .digest(pb::DigestRequest {})
                        .await
                        .ok()?;
                    digests.push(d.into_inner());
                }
                if let Ok(mut l) = last.lock() {
                    *l = format!("{digests:?}");
                }
                let first = *digests.first()?;
                digests
                    .iter()
                    .all(|d| d.applied_index == first.applied_index && d.digest == first.digest)
                    .then_some(first)
            }
        })
        .await;
        let last = last.lock().map(|l| l.clone()).unwrap_or_default();
        result.with_context(|| format!("last digests: {last}"))
    }

    /// The last lines of a node's log, for failure messages.
    /// Each node's process state and log tail, for an error that needs them.
    fn describe_nodes(&mut self) -> String {
        let mut out = String::from("the nodes:");
        let ids = self.ids();
        for id in ids {
            let state = match self.nodes.get_mut(&id).and_then(|n| n.child.as_mut()) {
                None => "not running".to_string(),
                Some(child) => match child.try_wait() {
                    Ok(None) => "running".to_string(),
                    Ok(Some(status)) => format!("exited ({status})"),
                    Err(e) => format!("unknown ({e})"),
                },
            };
            out.push_str(&format!(
                "\n---- node {id} at {}: {state}; log (tail) ----\n{}",
                self.endpoint(id),
                self.log_tail(id, 40)
            ));
        }
        out
    }

    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let Some(n) = self.nodes.get(&id) else {
            return String::new();
        };
        let text = std::fs::read_to_string(n.dir.join("node.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for id in self.ids() {
                eprintln!("---- node {id} log (tail) ----\n{}", self.log_tail(id, 40));
            }
        }
        for n in self.nodes.values_mut() {
            if let Some(child) = n.child.as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}

/// Reads a map from one node (`stale_ok`: from its applied state, no ReadIndex).
pub async fn get_map(
    client: &mut RawClient,
    app: &str,
    map: &str,
    stale_ok: bool,
) -> anyhow::Result<pb::MapSnapshot> {
    client
        .get_map(pb::GetMapRequest {
            app: app.into(),
            map: map.into(),
            stale_ok,
            keys: vec![],
        })
        .await?
        .into_inner()
        .map
        .ok_or_else(|| anyhow::anyhow!("the answer for {map} holds no map"))
}

pub mod ca;
pub mod fleet;
pub mod reflection;

/// Helpers to build requests.
pub mod req {
    use super::pb;

    /// A JSON-valued put.
    pub fn put(key: &str, json: &str) -> pb::KeyEntry {
        pb::KeyEntry {
            key: key.into(),
            entry: Some(pb::Entry {
                kind: Some(pb::entry::Kind::Json(json.into())),
            }),
        }
    }

    /// A one-map update request.
    pub fn update(
        app: &str,
        map: &str,
        version: u64,
        id: &str,
        put: Vec<pb::KeyEntry>,
    ) -> pb::UpdateRequest {
        pb::UpdateRequest {
            app: app.into(),
            change_sets: vec![pb::ChangeSet {
                map: map.into(),
                version,
                update_id: id.into(),
                remove: vec![],
                put,
            }],
        }
    }

    /// A create request.
    pub fn create(app: &str, map: &str) -> pb::CreateMapRequest {
        pb::CreateMapRequest {
            app: app.into(),
            map: map.into(),
            initial: vec![],
        }
    }
}
