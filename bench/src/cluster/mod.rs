//! The systems under test: Spine and etcd, each a 3-member cluster on loopback that the tool
//! starts itself (or one the user names with `--spine-endpoints` / `--etcd-endpoints`); for the
//! `ca` workload a CA host on that Spine, and Caf.js on Redis.
//!
//! ```text
//!   ServerProcs ── spawns ─▶ 3 × `spine serve` | 3 × `etcd`   (data in one temp dir, logs beside)
//!        │                               │
//!   SpineTarget / EtcdTarget: endpoints, leader first; server pids for RSS and CPU figures
//!
//!   the `ca` workload's pair:  CaHostTarget (1 × `ca-host serve` on the SpineTarget)
//!                              CafjsTarget  (redis-server + node running bench/cafjs)
//! ```
//!
//! Connection `i` of a workload goes to endpoint `i mod 3` of the leader-first list, for both
//! systems alike, so that the same share of clients talks to the leader.

pub mod cafjs;
pub mod cahost;
pub mod etcd;
pub mod spine;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

pub use cafjs::CafjsTarget;
pub use cahost::CaHostTarget;
pub use etcd::EtcdTarget;
pub use spine::SpineTarget;

/// How long a freshly started cluster may take to elect a leader.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// Server processes started by the tool; killed when dropped.
#[derive(Debug, Default)]
pub struct ServerProcs {
    procs: Vec<(Child, PathBuf)>,
}

impl ServerProcs {
    /// Starts `cmd` with its stdout and stderr in `log`.
    pub fn spawn(&mut self, mut cmd: Command, log: &Path) -> anyhow::Result<()> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.as_std().get_program()))?;
        self.procs.push((child, log.to_path_buf()));
        Ok(())
    }

    /// Process ids of the running servers.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|(c, _)| c.id()).collect()
    }

    /// The last lines of every server's log, for error messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (_, log) in &self.procs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", log.display()));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Kills every server and waits for it to exit.
    pub async fn stop(&mut self) {
        for (child, _) in &mut self.procs {
            let _ = child.kill().await;
        }
        self.procs.clear();
    }
}

/// The program `name` on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `endpoints` rotated so that connection `i` starts at endpoint `i mod len` (of a leader-first
/// list); the others follow as fail-over targets.
pub fn rotated(endpoints: &[String], i: usize) -> Vec<String> {
    let mut e = endpoints.to_vec();
    if !e.is_empty() {
        let n = e.len();
        e.rotate_left(i % n);
    }
    e
}

/// Loopback address with a port that was free a moment ago.
pub fn free_addr() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", spine_tests::free_port()?))
}

/// The file system type a path lives on (from /proc/mounts: the longest mount point that is a
/// prefix of it), to say whether fsync reaches a disk.
pub fn filesystem_of(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((*f.get(1)?, *f.get(2)?, *f.first()?))
        })
        .filter(|(mnt, _, _)| path.starts_with(mnt))
        .max_by_key(|(mnt, _, _)| mnt.len())
        .map(|(mnt, fs, dev)| format!("{fs} ({dev} on {mnt})"))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_spread_over_the_endpoints_leader_first() {
        let e: Vec<String> = ["l", "f1", "f2"].map(String::from).to_vec();
        assert_eq!(rotated(&e, 0), e);
        assert_eq!(rotated(&e, 1), ["f1", "f2", "l"]);
        assert_eq!(rotated(&e, 5), ["f2", "l", "f1"]);
        assert!(rotated(&[], 3).is_empty());
    }
}
