//! One `ca-host serve` process checkpointing in the suite's Spine: the CA runtime under test.
//! Clients call without tokens (`--no-auth`), as Caf.js runs with security off; the host's
//! own Spine token is the Spine's admin token, passed in the environment.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use ca_client::CaClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{STARTUP_DEADLINE, ServerProcs, SpineTarget, free_addr};

/// A CA host under test.
#[derive(Debug)]
pub struct CaHostTarget {
    /// Where clients connect.
    pub endpoint: String,
    /// Where its Prometheus metrics are served.
    pub metrics: String,
    /// Its HTTP port (event ingress).
    pub http: String,
    /// The host process.
    pub procs: ServerProcs,
}

/// Sums of the host's checkpoint metrics at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommitCounters {
    /// `UpdateBatch` requests sent.
    pub batches: f64,
    /// Checkpoints they carried.
    pub checkpoints: f64,
    /// Seconds they took, summed.
    pub commit_seconds: f64,
}

impl CaHostTarget {
    /// Starts `ca-host serve` (this build profile's) with its files under `dir`, checkpointing
    /// in `spine`, and waits until a call of the counter app answers.
    pub async fn start(spine: &SpineTarget, dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(spine, dir, &[]).await
    }

    /// Like [`start`](Self::start), with more `ca-host serve` arguments.
    pub async fn start_with(
        spine: &SpineTarget,
        dir: &Path,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let bin = spine_tests::bin("ca-host")?;
        std::fs::create_dir_all(dir)?;
        let (endpoint, metrics, http) = (free_addr()?, free_addr()?, free_addr()?);
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args(["--listen", &endpoint])
            .args(["--http-listen", &http])
            .args(["--spine", &spine.endpoints.join(",")])
            .arg("--no-auth")
            .args(["--metrics-listen", &metrics])
            .arg("--intent-log")
            .arg(dir.join("intents.log"))
            .args(extra)
            .env("RUST_LOG", "warn");
        if let Some(token) = &spine.token {
            cmd.env("CA_SPINE_TOKEN", token);
        }
        let mut procs = ServerProcs::default();
        procs.spawn(cmd, &dir.join("host.log"))?;
        let target = Self {
            endpoint,
            metrics,
            http,
            procs,
        };
        let client = target.client().await?;
        let ready =
            spine_tests::eventually("the CA host to answer a call", STARTUP_DEADLINE, || {
                let client = client.clone();
                async move {
                    client
                        .call("demo-counter", "probe-bench", "get", vec![])
                        .await
                        .ok()
                }
            })
            .await;
        if let Err(e) = ready {
            bail!("{e:#}\n{}", target.procs.log_tails(10));
        }
        Ok(target)
    }

    /// A new connection to the host.
    pub async fn client(&self) -> anyhow::Result<CaClient> {
        CaClient::connect(&self.endpoint, None)
            .await
            .with_context(|| format!("connecting to the CA host at {}", self.endpoint))
    }

    /// The host's checkpoint counters now (from its `/metrics`).
    pub async fn commit_counters(&self) -> anyhow::Result<CommitCounters> {
        let text = http_get(&self.metrics, "/metrics").await?;
        Ok(parse_commit_counters(&text))
    }
}

/// `GET path` over HTTP/1.0; returns the body.
async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .with_context(|| format!("GET {path} from {addr} timed out"))?
        .with_context(|| format!("GET {path} from {addr}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path} from {addr}: no HTTP header"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "GET {path} from {addr}: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_string())
}

/// The sums of `ca_batch_size` (count: batches, sum: checkpoints) and `ca_commit_seconds`.
fn parse_commit_counters(text: &str) -> CommitCounters {
    let value = |name: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    CommitCounters {
        batches: value("ca_batch_size_count"),
        checkpoints: value("ca_batch_size_sum"),
        commit_seconds: value("ca_commit_seconds_sum"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_counters_come_from_the_prometheus_text() {
        let text = "# HELP ca_batch_size Checkpoints per UpdateBatch\n\
                    ca_batch_size_bucket{le=\"1\"} 3\n\
                    ca_batch_size_sum 250\n\
                    ca_batch_size_count 10\n\
                    ca_commit_seconds_sum 0.5\n\
                    ca_commit_seconds_count 10\n";
        assert_eq!(
            parse_commit_counters(text),
            CommitCounters {
                batches: 10.0,
                checkpoints: 250.0,
                commit_seconds: 0.5
            }
        );
        assert_eq!(parse_commit_counters(""), CommitCounters::default());
    }
}
