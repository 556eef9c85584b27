//! CA hosts as real `ca-host serve` processes beside a test [`Cluster`](crate::Cluster).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ca_client::CaClient;
use tokio::process::{Child, Command};

use crate::{Cluster, bin, eventually, free_port};

/// One `ca-host serve` process, killable and restartable on the same port and files.
#[derive(Debug)]
pub struct CaHost {
    port: u16,
    http_port: u16,
    dir: PathBuf,
    spine: Vec<String>,
    token_file: PathBuf,
    root_pub: PathBuf,
    extra: Vec<String>,
    intent_log: PathBuf,
    child: Option<Child>,
}

impl CaHost {
    /// Starts a host in `dir` checkpointing in `cluster`, with `extra` arguments, and waits until
    /// it serves.
    pub async fn start(
        cluster: &Cluster,
        dir: PathBuf,
        extra: Vec<String>,
    ) -> anyhow::Result<Self> {
        let log = dir.join("intents.log");
        Self::start_with_log(cluster, dir, extra, log).await
    }

    /// Like [`start`](Self::start), with the `log` plugin writing to `intent_log` (hosts may
    /// share one, as they would share one external service).
    pub async fn start_with_log(
        cluster: &Cluster,
        dir: PathBuf,
        extra: Vec<String>,
        intent_log: PathBuf,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let creds = cluster.credentials();
        let mut host = Self {
            port: free_port()?,
            http_port: free_port()?,
            dir,
            spine: cluster.endpoints(),
            token_file: creds.admin_token_file(),
            root_pub: creds.root_pub(),
            extra,
            intent_log,
            child: None,
        };
        host.restart().await?;
        Ok(host)
    }

    /// The client endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The host's HTTP address (WebSocket, web page, event ingress), `127.0.0.1:PORT`.
    pub fn http_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// The file the host's `log` plugin writes.
    pub fn intent_log(&self) -> PathBuf {
        self.intent_log.clone()
    }

    /// The lines of the intent log (none if it does not exist yet).
    pub fn intent_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.intent_log())
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// A client presenting `token`.
    pub async fn client(&self, token: &str) -> anyhow::Result<CaClient> {
        Ok(CaClient::connect(&self.endpoint(), Some(token)).await?)
    }

    /// The extra arguments the next start uses.
    pub fn set_args(&mut self, extra: Vec<String>) {
        self.extra = extra;
    }

    /// Kills the host with SIGKILL.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Starts the host (again) and waits until it answers health checks.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("host.log"))?;
        let child = Command::new(bin("ca-host")?)
            .arg("serve")
            .args(["--listen", &self.endpoint()])
            .args(["--http-listen", &self.http_endpoint()])
            .args(["--spine", &self.spine.join(",")])
            .arg("--spine-token-file")
            .arg(&self.token_file)
            .arg("--root-key-file")
            .arg(&self.root_pub)
            .arg("--intent-log")
            .arg(self.intent_log())
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting ca-host")?;
        self.child = Some(child);
        let endpoint = format!("http://{}", self.endpoint());
        eventually("the CA host to serve", Duration::from_secs(20), || {
            let endpoint = endpoint.clone();
            async move {
                let channel = tonic::transport::Endpoint::from_shared(endpoint)
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let answer = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .ok()?;
                (answer.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
                    .then_some(())
            }
        })
        .await
    }

    /// The tail of the host's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("host.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
