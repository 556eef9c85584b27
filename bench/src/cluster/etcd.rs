//! A 3-member etcd cluster (Debian's `etcd-server`, installed with apt-get when missing), with its
//! defaults: fsync on every WAL write, no auto-compaction.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::process::Command;

use super::{STARTUP_DEADLINE, ServerProcs, free_addr, on_path, rotated};
use crate::etcd::EtcdConn;

/// An etcd cluster under test.
#[derive(Debug)]
pub struct EtcdTarget {
    /// Client endpoints, the leader's first.
    pub endpoints: Vec<String>,
    /// Server processes, when the tool started them.
    pub procs: ServerProcs,
    /// `etcd --version`'s first line, when the tool started it.
    pub version: String,
}

/// The `etcd` binary: `explicit`, or the one on PATH, or Debian's after installing it.
pub fn find_or_install(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.exists() {
            bail!("--etcd-bin {} does not exist", path.display());
        }
        return Ok(path.to_path_buf());
    }
    if let Some(found) = on_path("etcd") {
        return Ok(found);
    }
    eprintln!(
        "etcd not found on PATH: installing Debian's etcd-server package with apt-get \
         (pass --etcd-bin or --etcd-endpoints to avoid this)"
    );
    let install = || {
        std::process::Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "etcd-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let status = install().context("running apt-get (is this Debian?)")?;
    if !status.success() {
        eprintln!("apt-get install failed; running apt-get update and trying again");
        let _ = std::process::Command::new("apt-get").arg("update").status();
        let status = install().context("running apt-get")?;
        if !status.success() {
            bail!(
                "apt-get install etcd-server failed ({status}); install etcd and pass --etcd-bin"
            );
        }
    }
    on_path("etcd").context("etcd-server was installed but no `etcd` is on PATH")
}

impl EtcdTarget {
    /// Starts 3 members of `etcd` with data and logs under `dir`, and waits for a leader.
    pub async fn start(etcd: &Path, dir: &Path) -> anyhow::Result<Self> {
        let version = std::process::Command::new(etcd)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| "unknown".into());
        let clients: Vec<String> = (0..3).map(|_| free_addr()).collect::<anyhow::Result<_>>()?;
        let peers: Vec<String> = (0..3).map(|_| free_addr()).collect::<anyhow::Result<_>>()?;
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{}=http://{p}", i + 1))
            .collect();
        let mut procs = ServerProcs::default();
        for i in 0..3 {
            let name = format!("m{}", i + 1);
            let data = dir.join(format!("etcd{}", i + 1));
            std::fs::create_dir_all(&data)?;
            let mut cmd = Command::new(etcd);
            cmd.args(["--name", &name])
                .args(["--data-dir", &data.join("data").display().to_string()])
                .args(["--listen-client-urls", &format!("http://{}", clients[i])])
                .args(["--advertise-client-urls", &format!("http://{}", clients[i])])
                .args(["--listen-peer-urls", &format!("http://{}", peers[i])])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://{}", peers[i]),
                ])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-token", "spine-bench"])
                .args(["--initial-cluster-state", "new"])
                .args(["--logger", "zap", "--log-level", "warn"]);
            procs.spawn(cmd, &data.join("etcd.log"))?;
        }
        let mut target = EtcdTarget {
            endpoints: clients,
            procs,
            version,
        };
        if let Err(e) = target.order_leader_first().await {
            bail!("{e:#}\n{}", target.procs.log_tails(10));
        }
        Ok(target)
    }

    /// A cluster someone else runs; no process figures.
    pub async fn existing(endpoints: Vec<String>) -> anyhow::Result<Self> {
        let mut target = EtcdTarget {
            endpoints,
            procs: ServerProcs::default(),
            version: "external".into(),
        };
        target.order_leader_first().await?;
        Ok(target)
    }

    /// Connection `i`: to endpoint `i mod 3` of the leader-first list.
    pub async fn connect(&self, i: usize) -> anyhow::Result<EtcdConn> {
        let endpoints = rotated(&self.endpoints, i);
        let first = endpoints.first().context("no etcd endpoints")?;
        EtcdConn::connect(first).await
    }

    /// Waits until every member names the same leader, then puts the leader's endpoint first.
    async fn order_leader_first(&mut self) -> anyhow::Result<()> {
        let endpoints = self.endpoints.clone();
        let leader = spine_tests::eventually(
            "an etcd leader that every member knows",
            STARTUP_DEADLINE,
            || {
                let endpoints = endpoints.clone();
                async move {
                    let mut leader = None;
                    let mut leader_endpoint = None;
                    for e in &endpoints {
                        let conn = EtcdConn::connect(e).await.ok()?;
                        let (member, l, _) = conn.status().await.ok()?;
                        if l == 0 || leader.is_some_and(|x| x != l) {
                            return None;
                        }
                        leader = Some(l);
                        if member == l {
                            leader_endpoint = Some(e.clone());
                        }
                    }
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
