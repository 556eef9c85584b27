//! A 3-node Spine cluster of `spine serve` processes, and how the benchmark's clients and node
//! agents reach it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use node_agent::AgentConfig;
use spine_client::{Client, ClientBuilder};
use tokio::process::Command;

use super::{STARTUP_DEADLINE, ServerProcs, free_addr, rotated};

/// Per-call deadline of benchmark clients: long, so that a slow answer under load is measured
/// as latency instead of being abandoned and retried on another node.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// A Spine cluster under test.
#[derive(Debug)]
pub struct SpineTarget {
    /// Client endpoints, the leader's first.
    pub endpoints: Vec<String>,
    /// Server processes, when the tool started them.
    pub procs: ServerProcs,
    /// The token every client and agent presents (the admin token of the credentials the tool
    /// made with `spine init`, or the one given for an existing cluster).
    pub token: Option<String>,
    /// Diagnostics: the node agents' lag probe period, instead of the agent's default.
    pub agent_lag_probe: Option<Duration>,
}

/// What one benchmark connection to the Spine is made of.
#[derive(Debug)]
pub struct SpineAccess {
    /// Endpoints, the one this connection uses first.
    pub endpoints: Vec<String>,
    /// A client builder with the benchmark's timeouts (and credentials, when the Spine has them).
    pub client: ClientBuilder,
    /// Node agent settings for the same endpoints.
    pub agent: AgentConfig,
}

impl SpineTarget {
    /// Makes credentials with `spine init`, starts 3 `spine serve` nodes that require them
    /// (the Spine's default), with data and logs under `dir`, and waits for a leader.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        eprintln!("building (if needed) and locating the spine binary with cargo ...");
        // The test harness's nested build: the binaries of this build profile, up to date.
        let spine = spine_tests::bin("spine")?;
        let creds = dir.join("spine-credentials");
        let init = Command::new(&spine)
            .args(["init", "--dir"])
            .arg(&creds)
            .output()
            .await
            .context("running spine init")?;
        if !init.status.success() {
            bail!(
                "spine init failed: {}",
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let token_file = creds.join("admin.token");
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_string();
        let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect::<anyhow::Result<_>>()?;
        let mut procs = ServerProcs::default();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i + 1;
            let data = dir.join(format!("spine{id}"));
            std::fs::create_dir_all(&data)?;
            let mut cmd = Command::new(&spine);
            cmd.arg("serve")
                .args(["--id", &id.to_string(), "--listen", addr])
                .args(["--data-dir", &data.join("data").display().to_string()]);
            for (j, peer) in addrs.iter().enumerate() {
                cmd.args(["--peer", &format!("{}={peer}", j + 1)]);
            }
            cmd.arg("--root-key-file")
                .arg(creds.join("root.pub"))
                .arg("--peer-token-file")
                .arg(&token_file);
            cmd.env("RUST_LOG", "warn");
            procs.spawn(cmd, &data.join("node.log"))?;
        }
        let mut target = SpineTarget {
            endpoints: addrs,
            procs,
            token: Some(token),
            agent_lag_probe: None,
        };
        if let Err(e) = target.order_leader_first().await {
            bail!("{e:#}\n{}", target.procs.log_tails(10));
        }
        Ok(target)
    }

    /// A cluster someone else runs, reached with `token` (none: a `--no-auth` cluster); no
    /// process figures.
    pub async fn existing(endpoints: Vec<String>, token: Option<String>) -> anyhow::Result<Self> {
        let mut target = SpineTarget {
            endpoints,
            procs: ServerProcs::default(),
            token,
            agent_lag_probe: None,
        };
        target.order_leader_first().await?;
        Ok(target)
    }

    /// The one place that makes Spine clients and agent settings: connection `i` starts at
    /// endpoint `i mod 3` of the leader-first list.
    pub fn access(&self, i: usize) -> SpineAccess {
        let endpoints = rotated(&self.endpoints, i);
        let mut agent = AgentConfig {
            token: self.token.clone(),
            ..AgentConfig::default()
        };
        if let Some(probe) = self.agent_lag_probe {
            agent.lag_probe = probe;
        }
        let mut client = Client::builder(endpoints.clone())
            .timeout(CALL_TIMEOUT)
            .attempt_timeout(ATTEMPT_TIMEOUT);
        if let Some(token) = &self.token {
            client = client.token(token.clone());
        }
        SpineAccess {
            client,
            agent,
            endpoints,
        }
    }

    /// A client for connection `i`.
    pub fn client(&self, i: usize) -> anyhow::Result<Client> {
        Ok(self.access(i).client.build()?)
    }

    /// Waits until every node names the same leader, then puts the leader's endpoint first.
    async fn order_leader_first(&mut self) -> anyhow::Result<()> {
        let client = self.client(0)?;
        let endpoints = self.endpoints.clone();
        let leader = spine_tests::eventually(
            "a Spine leader that every node knows",
            STARTUP_DEADLINE,
            || {
                let (client, endpoints) = (client.clone(), endpoints.clone());
                async move {
                    let mut leader = None;
                    let mut leader_endpoint = None;
                    for e in &endpoints {
                        let s = client.cluster_status_of(e).await.ok()?;
                        if s.leader_id == 0 || leader.is_some_and(|l| l != s.leader_id) {
                            return None;
                        }
                        leader = Some(s.leader_id);
                        if s.id == s.leader_id {
                            leader_endpoint = Some(e.clone());
                        }
                    }
                    // A leader outside the given endpoints: keep their order.
                    leader_endpoint.or_else(|| endpoints.first().cloned())
                }
            },
        )
        .await?;
        let at = self
            .endpoints
            .iter()
            .position(|e| *e == leader)
            .context("leader endpoint vanished")?;
        self.endpoints.rotate_left(at);
        Ok(())
    }
}
