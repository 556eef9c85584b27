//! The user's path through `spinectl` against real nodes: create, put, get, methods, remove,
//! list, history, watch; one-line errors with exit status 1. Also the operator's endpoints:
//! Prometheus metrics and gRPC health.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use spine_tests::{Cluster, ClusterOpts, bin, free_port};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

struct Ctl {
    endpoints: String,
    token: String,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ctl {
    async fn run(&self, args: &[&str]) -> anyhow::Result<Out> {
        let out = Command::new(bin("spinectl")?)
            .args(["--endpoints", &self.endpoints, "--app", "acme-shop"])
            .args(args)
            .env("SPINE_TOKEN", &self.token)
            .stdin(Stdio::null())
            .output()
            .await?;
        Ok(Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args).await?;
        anyhow::ensure!(out.code == 0, "spinectl {args:?} failed: {}", out.stderr);
        Ok(out.stdout)
    }

    async fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        Ok(serde_json::from_str(&self.ok(&all).await?)?)
    }

    async fn fails(&self, args: &[&str], text: &str) -> anyhow::Result<()> {
        let out = self.run(args).await?;
        anyhow::ensure!(
            out.code == 1,
            "spinectl {args:?} exited {}: {}",
            out.code,
            out.stdout
        );
        let line = out.stderr.trim_end();
        anyhow::ensure!(!line.contains('\n'), "more than one line: {line}");
        anyhow::ensure!(line.starts_with("error: "), "{line}");
        anyhow::ensure!(line.contains(text), "{line:?} lacks {text:?}");
        Ok(())
    }
}

#[tokio::test]
async fn a_user_creates_puts_reads_calls_and_watches_with_spinectl() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let ctl = Ctl {
        endpoints: cluster.endpoints().join(","),
        token: cluster.token(),
    };
    let map = "alice-phone-prices";
    ctl.ok(&["map", "create", map]).await?;

    // `spinectl load` measures the cluster: every write it counts is acknowledged, and its maps
    // end at the version of the writes it made.
    let report = ctl
        .json(&[
            "load",
            "--writers",
            "3",
            "--seconds",
            "1",
            "--maps-prefix",
            "cliload",
        ])
        .await?;
    let ops = report["ops"].as_u64().unwrap_or(0);
    assert!(ops > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let listed = ctl.json(&["map", "list"]).await?;
    let versions: u64 = listed["maps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            m["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("cliload-"))
        })
        .map(|m| m["version"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(versions, ops, "{listed}");

    // A watcher in a second "terminal" sees each update.
    let mut watch = Command::new(bin("spinectl")?)
        .args([
            "--endpoints",
            &ctl.endpoints,
            "--app",
            "acme-shop",
            "--output",
            "json",
        ])
        .args(["map", "watch", map])
        .env("SPINE_TOKEN", &ctl.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(
        watch
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .lines();
    let first: Value = serde_json::from_str(
        &tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await??
            .unwrap_or_default(),
    )?;
    assert_eq!(
        (first["kind"].as_str(), first["version"].as_u64()),
        (Some("snapshot"), Some(0))
    );

    ctl.ok(&["map", "put", map, "apple", "3", "pear", r#"{"eur": 2}"#])
        .await?;
    ctl.ok(&[
        "map",
        "put",
        map,
        "total",
        "--method",
        r#"this.get("apple") * n"#,
        "--args",
        "n",
    ])
    .await?;
    let got = ctl.json(&["map", "get", map]).await?;
    assert_eq!(got["version"], 2);
    assert_eq!(got["entries"]["apple"]["value"], 3);
    assert_eq!(got["entries"]["pear"]["value"]["eur"], 2);
    assert_eq!(got["entries"]["total"]["method"]["args"][0], "n");
    let human = ctl.ok(&["map", "get", map, "apple"]).await?;
    assert!(
        human.contains("apple") && human.contains('3') && !human.contains("pear"),
        "{human}"
    );
    assert_eq!(ctl.json(&["map", "call", map, "total", "2"]).await?, 6);
    ctl.ok(&["map", "rm", map, "pear"]).await?;
    let got = ctl.json(&["map", "get", map]).await?;
    assert_eq!(got["version"], 3);
    assert!(got["entries"].get("pear").is_none());
    let listed = ctl.json(&["map", "list", "alice-"]).await?;
    assert_eq!(listed["maps"][0]["version"], 3, "{listed}");
    let history = ctl.json(&["map", "history", map]).await?;
    assert!(history.to_string().contains("pear"), "{history}");

    for want in 1..=3u64 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await??
            .unwrap_or_default();
        let update: Value = serde_json::from_str(&line)?;
        assert_eq!(
            (update["kind"].as_str(), update["version"].as_u64()),
            (Some("delta"), Some(want)),
            "{line}"
        );
    }
    watch.start_kill()?;

    // Failures: one line, exit status 1, nothing changed.
    ctl.fails(
        &["map", "put", "Alice-phone-prices", "k", "1"],
        "\"Alice-phone-prices\"",
    )
    .await?;
    ctl.fails(
        &["map", "put", map, "apple", "4", "--version", "1"],
        "current version is 3",
    )
    .await?;
    ctl.fails(&["map", "get", "alice-phone-nothing"], "does not exist")
        .await?;
    ctl.fails(&["map", "call", map, "apple"], "unknown method")
        .await?;
    let down = Ctl {
        endpoints: format!("127.0.0.1:{}", free_port()?),
        token: cluster.token(),
    };
    down.fails(&["--timeout", "2", "map", "get", map], "spine dev")
        .await?;
    assert_eq!(ctl.json(&["map", "get", map]).await?["version"], 3);

    let status = ctl.json(&["cluster", "status"]).await?;
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    Ok(())
}

#[tokio::test]
async fn metrics_and_health_are_served() -> anyhow::Result<()> {
    let port = free_port()?;
    let mut opts = ClusterOpts::default();
    opts.args
        .extend(["--metrics-listen".into(), format!("127.0.0.1:{port}")]);
    // One node serves metrics on a fixed port; a single-node cluster keeps ports distinct.
    let cluster = Cluster::start(1, opts).await?;
    let mut c = cluster.raw(1).await?;
    c.create_map(spine_tests::req::create("acme-shop", "bob-tv-x"))
        .await?;

    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    for metric in [
        "spine_proposals_total",
        "spine_commit_latency_seconds_bucket",
        "spine_applied_index",
        "spine_subscribers",
        "spine_subscriber_lag_entries",
    ] {
        assert!(body.contains(metric), "metrics lack {metric}:\n{body}");
    }
    assert!(
        body.contains("spine_proposals_total{node=\"1\"} 1"),
        "{body}"
    );

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.endpoint(1)))?
            .connect()
            .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "spine.v1.Spine".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    Ok(())
}

#[tokio::test]
async fn a_security_admin_grants_through_linked_maps_and_issues_tokens() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let ctl = Ctl {
        endpoints: cluster.endpoints().join(","),
        token: cluster.token(),
    };
    ctl.ok(&["acl", "grant", "acme-shop-staff", "alice-phone", "clerk"])
        .await?;
    ctl.ok(&["acl", "grant", "acme-admin-roles", "alice", "admin"])
        .await?;
    ctl.ok(&["acl", "link", "acme-admin-roles", "acme-shop-staff"])
        .await?;
    // A cycle back to the root is harmless.
    ctl.ok(&["acl", "link", "acme-shop-staff", "acme-admin-roles"])
        .await?;
    let check = ctl
        .json(&["acl", "check", "acme-admin-roles", "alice-phone", "clerk"])
        .await?;
    assert_eq!(check["granted"], true, "{check}");
    let explain = ctl
        .ok(&["acl", "explain", "acme-admin-roles", "alice-phone"])
        .await?;
    assert!(
        explain.contains(
            "clerk (as alice-phone) from acme-shop-staff: acme-admin-roles -> acme-shop-staff"
        ) && explain.contains("admin (as alice) from acme-admin-roles: acme-admin-roles"),
        "{explain}"
    );
    ctl.ok(&["acl", "revoke", "acme-shop-staff", "alice-phone", "clerk"])
        .await?;
    let check = ctl
        .json(&["acl", "check", "acme-admin-roles", "alice-phone", "clerk"])
        .await?;
    assert_eq!(check["granted"], false, "{check}");
    ctl.fails(&["acl", "grant", "acme-shop-staff", "Bob", "x"], "\"Bob\"")
        .await?;

    // Tokens: issue one for alice-phone, narrow it, and use it.
    let root_key = cluster.credentials().root_key().display().to_string();
    let root_pub = cluster.credentials().root_pub().display().to_string();
    let issued = ctl
        .ok(&[
            "token",
            "issue",
            "--root-key-file",
            &root_key,
            "--app-publisher",
            "acme",
            "--app-local",
            "shop",
            "--ca",
            "alice-phone",
            "--expires-in",
            "1h",
        ])
        .await?;
    let alice = issued.trim().to_string();
    let short = ctl
        .ok(&[
            "token",
            "attenuate",
            &alice,
            "--root-pub-file",
            &root_pub,
            "--expires-in",
            "10m",
        ])
        .await?;
    ctl.fails(
        &[
            "token",
            "attenuate",
            &alice,
            "--root-pub-file",
            &root_pub,
            "--ca-owner",
            "bob",
        ],
        "may only narrow",
    )
    .await?;
    let inspected = ctl
        .json(&[
            "token",
            "inspect",
            short.trim(),
            "--root-pub-file",
            &root_pub,
        ])
        .await?;
    assert_eq!(inspected["ca_owner"], "alice", "{inspected}");
    let as_alice = Ctl {
        endpoints: ctl.endpoints.clone(),
        token: short.trim().to_string(),
    };
    as_alice.ok(&["map", "create", "alice-phone-notes"]).await?;
    as_alice
        .fails(&["map", "create", "bob-phone-notes"], "only the writer CA")
        .await?;
    let nobody = Ctl {
        endpoints: ctl.endpoints.clone(),
        token: String::new(),
    };
    nobody
        .fails(&["map", "list"], "this call needs a token")
        .await?;
    Ok(())
}
