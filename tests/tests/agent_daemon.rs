//! The `spine-agent` daemon as its own process, read from this (second) process over its Unix
//! socket: pins keep their version while new pins move on, keys and methods read from a pin, pins
//! are released, watches see each version, malformed requests get errors that quote the problem,
//! the daemon serves Prometheus metrics over HTTP, and it stops on SIGTERM, ending its watches and
//! removing its socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use node_agent::daemon;
use serde_json::{Value, json};
use sharing_map::{AppName, Entry, MapName, UpdateId};
use spine_client::Client;
use spine_proto::agent_v1 as pb;
use spine_proto::agent_v1::node_agent_client::NodeAgentClient;
use spine_proto::v1::entry::Kind;
use spine_tests::{Cluster, ClusterOpts, bin, eventually, free_port, reflection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

const APP: &str = "acme-shop";
const MAP: &str = "bob-tv-prices";
const MAX_PINS: usize = 4;
const PATIENCE: Duration = Duration::from_secs(30);

/// A `spine-agent` process with its socket and log in a temporary directory.
struct AgentProcess {
    child: Child,
    socket: PathBuf,
    /// Where it serves Prometheus metrics.
    metrics_port: u16,
    dir: tempfile::TempDir,
}

impl AgentProcess {
    /// Starts a daemon, on a socket path where a crashed one left its socket file.
    async fn start(cluster: &Cluster) -> anyhow::Result<(Self, NodeAgentClient<Channel>)> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("agent.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket)?);
        let log = std::fs::File::create(dir.path().join("agent.log"))?;
        let metrics_port = free_port()?;
        let child = Self::command(cluster, &socket)?
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting spine-agent")?;
        let agent = Self {
            child,
            socket,
            metrics_port,
            dir,
        };
        let client = eventually("the agent's socket to accept", PATIENCE, || async {
            daemon::connect(&agent.socket).await.ok()
        })
        .await
        .with_context(|| agent.log())?;
        Ok((agent, client))
    }

    fn command(cluster: &Cluster, socket: &Path) -> anyhow::Result<Command> {
        let mut cmd = Command::new(bin("spine-agent")?);
        cmd.args(["--endpoints", &cluster.endpoints().join(",")])
            .arg("--socket")
            .arg(socket)
            .args(["--first-version-timeout-secs", "3"])
            .args(["--max-pins", &MAX_PINS.to_string()])
            .env("SPINE_TOKEN", cluster.token())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        Ok(cmd)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// `GET /metrics` over plain HTTP/1.0: the body.
    async fn metrics(&self) -> anyhow::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        ensure!(response.starts_with("HTTP/1.0 200"), "{response}");
        Ok(response)
    }

    async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(bin("spine-agent")?)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "spine-agent {args:?} failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }
}

/// Writes version `v` of the map: `a = v`, `b = 10 v`, and at version 1 the method `total(n)`.
async fn write(client: &Client, v: u64) -> anyhow::Result<()> {
    let (app, map) = (AppName::parse(APP)?, MapName::parse(MAP)?);
    let mut ops = vec![
        (Arc::from("a"), Some(Entry::value(json!(v)))),
        (Arc::from("b"), Some(Entry::value(json!(v * 10)))),
    ];
    if v == 1 {
        let total = Entry::method(vec!["n".into()], "this.get(\"a\") * n");
        ops.push((Arc::from("total"), Some(total)));
    }
    let written = client
        .put(&app, &map, ops, UpdateId::parse(&format!("w{v}"))?)
        .await?;
    ensure!(written == v, "wrote version {written}, expected {v}");
    Ok(())
}

async fn pin(
    agent: &mut NodeAgentClient<Channel>,
    map: &str,
) -> Result<pb::PinResponse, tonic::Status> {
    agent
        .pin(pb::PinRequest {
            app: APP.into(),
            map: map.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn get(
    agent: &mut NodeAgentClient<Channel>,
    pin_id: u64,
    keys: &[&str],
) -> Result<pb::GetResponse, tonic::Status> {
    agent
        .get(pb::GetRequest {
            pin_id,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn invoke(
    agent: &mut NodeAgentClient<Channel>,
    pin_id: u64,
    method: &str,
    args: &[&str],
) -> Result<pb::InvokeResponse, tonic::Status> {
    agent
        .invoke(pb::InvokeRequest {
            pin_id,
            method: method.into(),
            args_json: args.iter().map(|a| a.to_string()).collect(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn release(agent: &mut NodeAgentClient<Channel>, pin_id: u64) -> Result<(), tonic::Status> {
    agent
        .release(pb::ReleaseRequest { pin_id })
        .await
        .map(|_| ())
}

/// The value of `key` in a Get answer: its JSON, `None` when not found.
fn value(got: &pb::GetResponse, key: &str) -> anyhow::Result<Option<Value>> {
    let kv = got
        .entries
        .iter()
        .find(|kv| kv.key == key)
        .with_context(|| format!("{key} missing from {got:?}"))?;
    match kv.entry.as_ref().and_then(|e| e.kind.as_ref()) {
        Some(Kind::Json(text)) if kv.found => Ok(Some(serde_json::from_str(text)?)),
        None if !kv.found => Ok(None),
        other => anyhow::bail!("{key}: unexpected entry {other:?} (found = {})", kv.found),
    }
}

/// Asserts a call failed with `code` and a message containing every one of `quotes`.
fn assert_error<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    quotes: &[&str],
) -> anyhow::Result<()> {
    let status = match result {
        Ok(v) => anyhow::bail!("expected {code:?}, got {v:?}"),
        Err(s) => s,
    };
    ensure!(status.code() == code, "expected {code:?}, got {status:?}");
    for q in quotes {
        ensure!(
            status.message().contains(q),
            "{status:?} does not quote {q:?}"
        );
    }
    Ok(())
}

async fn next_version(watch: &mut tonic::Streaming<pb::VersionEvent>) -> anyhow::Result<u64> {
    let event = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .context("no version event in time")?
        .context("the watch ended")??;
    ensure!(event.app == APP && event.map == MAP, "{event:?}");
    Ok(event.version)
}

#[tokio::test]
async fn readers_in_another_process_pin_read_and_watch_through_the_socket() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let writer = cluster.client()?;
    writer
        .create_map(&AppName::parse(APP)?, &MapName::parse(MAP)?, vec![])
        .await?;
    for v in 1..=3 {
        write(&writer, v).await?;
    }
    let (mut process, agent) = AgentProcess::start(&cluster).await?;
    let result = scenario(&cluster, &writer, &mut process, agent).await;
    result.with_context(|| format!("spine-agent log:\n{}", process.log()))
}

async fn scenario(
    cluster: &Cluster,
    writer: &Client,
    process: &mut AgentProcess,
    mut agent: NodeAgentClient<Channel>,
) -> anyhow::Result<()> {
    // Only the daemon's user may use the socket, and a second daemon does not steal it.
    let mode = std::fs::metadata(&process.socket)?.permissions().mode();
    ensure!(mode & 0o777 == 0o600, "socket mode {mode:o}");
    let second = tokio::time::timeout(
        PATIENCE,
        AgentProcess::command(cluster, &process.socket)?.output(),
    )
    .await
    .context("a second daemon on the same socket did not exit")??;
    let stderr = String::from_utf8_lossy(&second.stderr);
    ensure!(
        !second.status.success() && stderr.contains("another process is serving"),
        "second daemon: {}: {stderr}",
        second.status
    );

    // Health and both reflection versions are served on the socket too.
    let ch = daemon::channel(&process.socket).await?;
    let health = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "spine.agent.v1.NodeAgent".into(),
        })
        .await?
        .into_inner()
        .status;
    ensure!(
        health == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
        "agent health {health}"
    );
    for (version, listed) in [
        ("v1", reflection::services_v1(ch.clone(), None).await?),
        ("v1alpha", reflection::services_v1alpha(ch, None).await?),
    ] {
        ensure!(
            listed.iter().any(|s| s == "spine.agent.v1.NodeAgent"),
            "agent reflection {version} lists {listed:?}"
        );
    }

    // A watch starts with the current version (the agent may first see an older one).
    let mut watch = agent
        .watch(pb::WatchRequest {
            app: APP.into(),
            map: MAP.into(),
        })
        .await?
        .into_inner();
    let mut seen = next_version(&mut watch).await?;
    while seen < 3 {
        let next = next_version(&mut watch).await?;
        ensure!(next > seen, "the watch went from {seen} to {next}");
        seen = next;
    }
    ensure!(seen == 3, "watched version {seen}, only 3 were written");

    // A pin holds the newest version; keys read from it are that version's.
    let old = pin(&mut agent, MAP).await?;
    ensure!(old.version == 3, "{old:?}");
    let got = get(&mut agent, old.pin_id, &["a", "b", "total", "missing"]).await?;
    ensure!(got.version == 3);
    ensure!(value(&got, "a")? == Some(json!(3)));
    ensure!(value(&got, "b")? == Some(json!(30)));
    ensure!(value(&got, "missing")? == None);
    let total = got.entries.iter().find(|kv| kv.key == "total");
    ensure!(
        matches!(total.and_then(|kv| kv.entry.as_ref()?.kind.as_ref()),
            Some(Kind::Method(m)) if m.args == ["n"] && m.body.contains("this.get")),
        "{total:?}"
    );
    let all = get(&mut agent, old.pin_id, &[]).await?;
    let keys: Vec<&str> = all.entries.iter().map(|kv| kv.key.as_str()).collect();
    ensure!(keys == ["a", "b", "total"], "all keys: {keys:?}");

    // Each version written reaches the watch; the old pin does not move, a new pin does.
    for v in 4..=5 {
        write(writer, v).await?;
        ensure!(next_version(&mut watch).await? == v);
    }
    let held = get(&mut agent, old.pin_id, &["a", "b"]).await?;
    ensure!(
        held.version == 3 && value(&held, "a")? == Some(json!(3)),
        "{held:?}"
    );
    ensure!(value(&held, "b")? == Some(json!(30)));
    let new = pin(&mut agent, MAP).await?;
    ensure!(new.version == 5 && new.pin_id != old.pin_id, "{new:?}");
    let fresh = get(&mut agent, new.pin_id, &["a", "b"]).await?;
    ensure!(
        fresh.version == 5 && value(&fresh, "a")? == Some(json!(5)),
        "{fresh:?}"
    );

    // Methods run on the pinned version, whichever connection asks.
    let on_old = invoke(&mut agent, old.pin_id, "total", &["2"]).await?;
    ensure!(
        (on_old.result_json.as_str(), on_old.version) == ("6", 3),
        "{on_old:?}"
    );
    let mut other_connection = daemon::connect(&process.socket).await?;
    let on_new = invoke(&mut other_connection, new.pin_id, "total", &["2"]).await?;
    ensure!(
        (on_new.result_json.as_str(), on_new.version) == ("10", 5),
        "{on_new:?}"
    );

    // Status shows the map and the pins.
    let status = agent.status(pb::StatusRequest {}).await?.into_inner();
    let m = status.per_map.iter().find(|m| m.app == APP && m.map == MAP);
    ensure!(
        m.is_some_and(|m| m.version == 5 && m.pinned >= 2),
        "{status:?}"
    );
    ensure!(status.daemon_pins == 2, "{status:?}");
    let json: Value = serde_json::from_str(&status.json)?;
    ensure!(json["per_map"][0]["map"] == json!(MAP), "{json}");

    // Metrics: agent-wide figures, computed when scraped, and no series per map.
    let metrics = process.metrics().await?;
    let sample = |name: &str| -> anyhow::Result<f64> {
        let line = metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("metrics lack {name}:\n{metrics}"))?;
        Ok(line.parse()?)
    };
    for name in [
        "spine_agent_pinned_snapshots",
        "spine_agent_versions_retained",
        "spine_agent_seconds_since_last_event",
        "spine_agent_applied_index",
        "spine_agent_outages_total",
        "spine_agent_max_versions_behind",
        "spine_agent_max_seconds_behind",
    ] {
        sample(name)?;
    }
    ensure!(sample("spine_agent_maps")? >= 1.0, "{metrics}");
    ensure!(sample("spine_agent_daemon_pins")? == 2.0, "{metrics}");
    ensure!(sample("spine_agent_pinned_snapshots")? >= 2.0, "{metrics}");
    ensure!(!metrics.contains(MAP), "a series per map:\n{metrics}");

    // Malformed requests get errors that quote the problem.
    assert_error(
        pin(&mut agent, "Bob_TV").await,
        Code::InvalidArgument,
        &["\"Bob_TV\"", "map"],
    )?;
    assert_error(
        agent
            .pin(pb::PinRequest {
                app: "x".into(),
                map: MAP.into(),
            })
            .await,
        Code::InvalidArgument,
        &["app", "\"x\""],
    )?;
    assert_error(
        invoke(&mut agent, new.pin_id, "total", &["{not json"]).await,
        Code::InvalidArgument,
        &["argument 1", "not JSON", "{not json"],
    )?;
    assert_error(
        invoke(&mut agent, new.pin_id, "a", &[]).await,
        Code::InvalidArgument,
        &["\"a\""],
    )?;
    assert_error(
        invoke(&mut agent, new.pin_id, "total", &[]).await,
        Code::InvalidArgument,
        &["takes 1 arguments, got 0"],
    )?;
    assert_error(
        get(&mut agent, 999_999, &["a"]).await,
        Code::NotFound,
        &["pin 999999 is not held"],
    )?;
    assert_error(
        pin(&mut agent, "bob-tv-nothing").await,
        Code::NotFound,
        &["bob-tv-nothing", "does the map exist?"],
    )?;

    // The daemon holds at most --max-pins pins.
    let mut extra = Vec::new();
    while extra.len() + 2 < MAX_PINS {
        extra.push(pin(&mut agent, MAP).await?.pin_id);
    }
    assert_error(
        pin(&mut agent, MAP).await,
        Code::ResourceExhausted,
        &["4 pins", "release"],
    )?;
    for id in extra {
        release(&mut agent, id).await?;
    }

    // A released pin is gone, with a clear message.
    release(&mut agent, old.pin_id).await?;
    let gone = format!("pin {} is not held (released", old.pin_id);
    assert_error(
        get(&mut agent, old.pin_id, &["a"]).await,
        Code::NotFound,
        &[&gone],
    )?;
    assert_error(
        release(&mut agent, old.pin_id).await,
        Code::NotFound,
        &[&gone],
    )?;
    release(&mut agent, new.pin_id).await?;
    let status = agent.status(pb::StatusRequest {}).await?.into_inner();
    ensure!(status.daemon_pins == 0, "{status:?}");

    // A person reads the map from a shell.
    let out = process
        .cli(&["get", "--app", APP, MAP, "a", "total", "missing"])
        .await?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines
            == [
                "# acme-shop/bob-tv-prices version 5",
                "a = 5",
                "total = method(n) { this.get(\"a\") * n }",
                "# missing not found",
            ],
        "spine-agent get printed:\n{out}"
    );
    let out = process.cli(&["status"]).await?;
    ensure!(
        out.contains("acme-shop/bob-tv-prices  version 5") && out.contains("daemon pins 0"),
        "spine-agent status printed:\n{out}"
    );

    // SIGTERM stops it: watches end, the socket file is removed, the exit is clean.
    let pid = process.child.id().context("spine-agent has exited")?;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(_)) = watch.next().await {}
    })
    .await;
    ensure!(
        ended.is_ok(),
        "the watch did not end when the daemon stopped"
    );
    let exit = tokio::time::timeout(PATIENCE, process.child.wait())
        .await
        .context("spine-agent did not stop within 30 s of SIGTERM")??;
    ensure!(exit.success(), "spine-agent exited with {exit}");
    ensure!(!process.socket.exists(), "the socket file is still there");
    Ok(())
}
