//! Scripted apps published as code maps, end to end (issue 15): real `spine serve` and
//! `ca-host serve` processes, `spinectl app` as a user runs it, the apps of `examples/`.
//!
//! 1. A publish moves every CA at its next message; no message mixes two versions (method and
//!    data); each CA's `__ca_upgrade__` runs once.
//! 2. A rollback is one command; CAs move back at their next message, running the hooks the
//!    restored code defines; a version the Spine no longer retains is refused clearly.
//! 3. A runaway script hits its limit, its turn aborts, the CA goes on, and another CA's calls
//!    keep completing meanwhile.
//! 4. Publishing without the publisher's token, or with a script that does not compile, writes
//!    nothing.
//! 5. The shopping app's requests take effect exactly once, across retries and a host kill.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use authz_aggregate::{Constraints, RootKey, issue};
use ca_client::{CaClient, ErrorCode, MethodCall, Target};
use futures::StreamExt;
use serde_json::{Value, json};
use sharing_map::{AppName, CaName, MapName};
use spine_tests::ca::CaHost;
use spine_tests::{Cluster, ClusterOpts, bin, eventually};
use tokio::process::Command;

/// `spinectl` against the test cluster, presenting `token`.
struct Ctl {
    endpoints: String,
    token: String,
}

impl Ctl {
    fn new(cluster: &Cluster, token: String) -> Self {
        Self {
            endpoints: cluster.endpoints().join(","),
            token,
        }
    }

    /// Runs spinectl: `(exit code, stdout, stderr)`.
    async fn run(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let out = Command::new(bin("spinectl")?)
            .args(["--endpoints", &self.endpoints])
            .args(args)
            .env("SPINE_TOKEN", &self.token)
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let (code, out, err) = self.run(args).await?;
        anyhow::ensure!(code == 0, "spinectl {args:?} failed: {err}");
        Ok(out)
    }

    async fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let (code, out, err) = self.run(args).await?;
        anyhow::ensure!(code == 1, "spinectl {args:?} exited {code}: {out}");
        let line = err.trim_end();
        anyhow::ensure!(!line.contains('\n'), "more than one line: {line}");
        anyhow::ensure!(line.starts_with("error: "), "{line}");
        Ok(line.to_string())
    }

    /// Publishes `dir`; the version.
    async fn publish(&self, dir: &Path) -> anyhow::Result<u64> {
        let dir = dir.display().to_string();
        let out = self
            .ok(&["--output", "json", "app", "publish", &dir])
            .await?;
        let v: Value = serde_json::from_str(&out)?;
        v["published"]["version"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no version in {out}"))
    }
}

/// A copy of `examples/<name>` in `dir`, to edit.
fn example(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let to = dir.join(name);
    copy_dir(&from, &to)?;
    Ok(to)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Replaces `from` (which must be there) by `to` in `file`.
fn edit(file: &Path, from: &str, to: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)?;
    anyhow::ensure!(text.contains(from), "{} lacks {from:?}", file.display());
    std::fs::write(file, text.replace(from, to))?;
    Ok(())
}

fn append(file: &Path, text: &str) -> anyhow::Result<()> {
    let mut all = std::fs::read_to_string(file)?;
    all.push_str(text);
    std::fs::write(file, all)?;
    Ok(())
}

fn work_dir(cluster: &Cluster, name: &str) -> PathBuf {
    cluster.credentials().dir.join("..").join(name)
}

/// A token for CA `ca` of `app`.
fn token_for(cluster: &Cluster, app: &str, ca: &str) -> anyhow::Result<String> {
    let root = RootKey::from_private_hex(
        std::fs::read_to_string(cluster.credentials().root_key())?.trim(),
    )?;
    Ok(issue(
        &root,
        &Constraints::any()
            .app(&AppName::parse(app)?)
            .ca(&CaName::parse(ca)?),
    )?
    .to_base64())
}

async fn start(cluster: &Cluster) -> anyhow::Result<(CaHost, CaClient, Ctl)> {
    let host = CaHost::start(cluster, work_dir(cluster, "host"), vec![]).await?;
    let client = host.client(&cluster.token()).await?;
    Ok((host, client, Ctl::new(cluster, cluster.token())))
}

/// What a `[remember, again]` multi-call of the pricing fixture saw: the code version of each
/// quote, checked to be whole (the method and the data of one version).
fn versions_seen(reply: &Value) -> anyhow::Result<(u64, u64)> {
    let mut seen = Vec::new();
    for q in reply.as_array().into_iter().flatten() {
        let code = q["code"].as_u64().unwrap_or(0);
        let (unit, body) = (q["unit"].as_i64(), q["shipping"].as_i64());
        match code {
            1 => anyhow::ensure!(unit == Some(3) && body.is_none(), "v1 mixed: {q}"),
            2 => anyhow::ensure!(unit == Some(30) && body == Some(1), "v2 mixed: {q}"),
            _ => anyhow::bail!("no such version: {q}"),
        }
        seen.push(code);
    }
    anyhow::ensure!(seen.len() == 2, "two quotes expected: {reply}");
    Ok((seen[0], seen[1]))
}

const PRICING_TEST_METHODS: &str = r#"
// Test methods: the first call of a multi-call quotes into scratch, the second quotes again.
fn remember(item) { this.scratch.seen = this.quote(item, 1); 0 }
fn again(item) { [this.scratch.seen, this.quote(item, 1)] }
fn state() { this.state }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_reaches_every_ca_at_its_next_message_and_no_message_mixes_versions()
-> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let (host, client, ctl) = start(&cluster).await?;
    let dir = work_dir(&cluster, "apps");
    let v1 = example("pricing", &dir)?;
    append(&v1.join("pricing.rhai"), PRICING_TEST_METHODS)?;
    // Version 2: another price table, another method body, a new state layout and its migration.
    let v2 = dir.join("pricing-v2");
    copy_dir(&v1, &v2)?;
    edit(
        &v2.join("data/prices.json"),
        "\"apple\": 3",
        "\"apple\": 30",
    )?;
    edit(&v2.join("app.json"), "\"1.0.0\"", "\"2.0.0\"")?;
    edit(
        &v2.join("pricing.rhai"),
        "#{ item: item, qty: qty, unit: price, total: total, code: this.code.version }",
        "#{ item: item, qty: qty, unit: price, total: total + 1, shipping: 1, code: this.code.version }",
    )?;
    append(
        &v2.join("pricing.rhai"),
        "fn __ca_upgrade__(from, to) { this.state.upgrades = (this.state.upgrades ?? 0) + 1; this.state.migrated = `${from}->${to}`; }\n",
    )?;
    assert_eq!(ctl.publish(&v1).await?, 1);
    const APP: &str = "acme-pricing";
    let cas: Vec<String> = (0..100).map(|i| format!("c{i:03}-phone")).collect();
    let t0 = Instant::now();
    let first = cas.iter().map(|ca| {
        let client = client.clone();
        async move {
            let q = client.call(APP, ca, "quote", vec![json!("apple")]).await?;
            let (code, unit) = (&q.result["code"], &q.result["unit"]);
            anyhow::ensure!(*code == json!(1) && *unit == json!(3), "{q:?}");
            anyhow::Ok(())
        }
    });
    for r in futures::future::join_all(first).await {
        r?;
    }
    eprintln!("first messages of 100 CAs: {:?}", t0.elapsed());

    // Every CA is called in a loop by its own client, each message a multi-call of two methods
    // that quote; version 2 is published in the middle.
    let stop = Arc::new(AtomicBool::new(false));
    let on_v2 = Arc::new(AtomicU64::new(0));
    let messages = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for ca in cas.clone() {
        let (client, stop, on_v2) = (client.clone(), stop.clone(), on_v2.clone());
        let messages = messages.clone();
        callers.push(tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let calls = vec![
                    MethodCall::new("remember", vec![json!("apple")]),
                    MethodCall::new("again", vec![json!("apple")]),
                ];
                let reply = client.multi_call(APP, &ca, calls).await?;
                let (a, b) = versions_seen(&reply.result)?;
                anyhow::ensure!(a == b, "{ca}: one message saw versions {a} and {b}");
                if a == 2 && seen.last() != Some(&2) {
                    on_v2.fetch_add(1, Ordering::SeqCst);
                }
                seen.push(a);
                messages.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::Ok((ca, seen))
        }));
    }
    eventually(
        "messages before the publish",
        Duration::from_secs(30),
        || {
            let messages = messages.clone();
            async move { (messages.load(Ordering::SeqCst) >= 200).then_some(()) }
        },
    )
    .await?;
    let published = Instant::now();
    assert_eq!(ctl.publish(&v2).await?, 2);
    eventually("every CA to run version 2", Duration::from_secs(30), || {
        let on_v2 = on_v2.clone();
        async move { (on_v2.load(Ordering::SeqCst) == 100).then_some(()) }
    })
    .await?;
    let all_moved = published.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut before_v2 = 0;
    for c in callers {
        let (ca, seen) = c.await??;
        // Once a CA ran version 2, every later message ran version 2.
        let first_v2 = seen.iter().position(|v| *v == 2).unwrap_or(seen.len());
        assert!(
            seen[first_v2..].iter().all(|v| *v == 2),
            "{ca} went back: {seen:?}"
        );
        before_v2 += first_v2;
    }
    assert!(
        before_v2 > 0,
        "no message ran before the publish: the test proved nothing"
    );
    eprintln!(
        "{before_v2} messages on version 1, every CA on version 2 {all_moved:?} after the publish started"
    );
    // Each CA's migration ran exactly once, and its checkpoint names the code version.
    for ca in &cas {
        let state = client.call(APP, ca, "state", vec![]).await?.result;
        assert_eq!(state["upgrades"], json!(1), "{ca}: {state}");
        assert_eq!(state["migrated"], json!("1.0.0->2.0.0"), "{ca}");
    }
    let castate = cluster
        .client()?
        .get_map(
            &AppName::parse(APP)?,
            &MapName::parse("c042-phone-castate")?,
            false,
        )
        .await?;
    let meta = castate.get_value("m").cloned().unwrap_or_default();
    assert_eq!(
        (meta["state_version"].clone(), meta["code_version"].clone()),
        (json!("2.0.0"), json!(2))
    );
    drop(host);
    Ok(())
}

const COUNTER_V1_HOOK: &str = r#"
// Version 1 knows the layout of 2.x, so a rollback can take its CAs back.
fn __ca_upgrade__(from, to) {
    if this.state.hooks == () { this.state.hooks = []; }
    this.state.hooks.push(`${from}->${to}`);
    if from.starts_with("2.") { this.state.count = this.state.total; this.state.remove("total"); }
}
fn state() { this.state }
"#;

const COUNTER_V2: &str = r#"
fn increment(n) { if n == () { n = 1; } this.state.total += 10 * n; this.state.total }
fn get() { this.state.total }
fn version() { this.code.version }
fn state() { this.state }
fn __ca_upgrade__(from, to) {
    if this.state.hooks == () { this.state.hooks = []; }
    this.state.hooks.push(`${from}->${to}`);
    this.state.total = this.state.count; this.state.remove("count");
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_one_command_and_cas_move_back_at_their_next_message() -> anyhow::Result<()> {
    // The Spine keeps the last 4 change sets per map, so the oldest versions age out below.
    let mut opts = ClusterOpts::default();
    opts.args.extend(["--history".into(), "4".into()]);
    let cluster = Cluster::start(3, opts).await?;
    let (_host, client, ctl) = start(&cluster).await?;
    let dir = work_dir(&cluster, "apps");
    let v1 = example("counter", &dir)?;
    append(&v1.join("counter.rhai"), COUNTER_V1_HOOK)?;
    let v2 = dir.join("counter-v2");
    std::fs::create_dir_all(&v2)?;
    std::fs::write(v2.join("counter.rhai"), COUNTER_V2)?;
    std::fs::write(
        v2.join("app.json"),
        r#"{"app": "acme-counter", "state_version": "2.0.0"}"#,
    )?;
    const APP: &str = "acme-counter";
    let call = |ca: &'static str, method: &'static str| {
        let client = client.clone();
        async move { anyhow::Ok(client.call(APP, ca, method, vec![]).await?.result) }
    };
    assert_eq!(ctl.publish(&v1).await?, 1);
    assert_eq!(call("ann-phone", "increment").await?, json!(1));
    assert_eq!(call("bob-phone", "increment").await?, json!(1));
    assert_eq!(ctl.publish(&v2).await?, 2);
    // ann moves to version 2 (by 10s now); bob is not called while version 2 is current.
    assert_eq!(call("ann-phone", "increment").await?, json!(11));

    let out = ctl.ok(&["app", "rollback", APP, "--to", "1"]).await?;
    assert!(
        out.contains("version 3") && out.contains("the content of version 1"),
        "{out}"
    );
    assert_eq!(call("ann-phone", "version").await?, json!(3));
    assert_eq!(
        call("ann-phone", "increment").await?,
        json!(12),
        "version 1's behaviour"
    );
    assert_eq!(call("bob-phone", "increment").await?, json!(2));
    let ann = call("ann-phone", "state").await?;
    assert_eq!(
        ann["hooks"],
        json!(["1.0.0->2.0.0", "2.0.0->1.0.0"]),
        "{ann}"
    );
    let bob = call("bob-phone", "state").await?;
    assert_eq!(
        bob.get("hooks"),
        None,
        "bob never left state version 1: {bob}"
    );

    let versions: Value = serde_json::from_str(
        &ctl.ok(&["--output", "json", "app", "versions", APP])
            .await?,
    )?;
    let rows = versions["versions"].as_array().cloned().unwrap_or_default();
    let digest = |i: usize| rows[i]["digest"].clone();
    assert_eq!(rows.len(), 3, "{versions}");
    assert_eq!(
        (digest(2), rows[2]["rollback_of"].clone()),
        (digest(0), json!(1))
    );
    assert_ne!(digest(0), digest(1));
    assert_eq!(rows[1]["state_version"], json!("2.0.0"));
    assert!(rows.iter().all(|r| r["at_ms"].as_u64().unwrap_or(0) > 0));

    let e = ctl.fails(&["app", "rollback", APP, "--to", "9"]).await?;
    assert!(e.contains("has no version 9"), "{e}");
    // Two more publishes: version 1 is no longer in the Spine's history (it keeps 4).
    ctl.publish(&v1).await?;
    ctl.publish(&v1).await?;
    let e = ctl.fails(&["app", "rollback", APP, "--to", "1"]).await?;
    assert!(
        e.contains("no longer retained") && e.contains("spinectl app publish"),
        "{e}"
    );
    let out = ctl.ok(&["app", "rollback", APP, "--to", "2"]).await?;
    assert!(out.contains("version 6"), "{out}");
    Ok(())
}

const RUNAWAY: &str = r#"
fn __ca_init__() { this.state.count = 0; }
fn increment() { this.state.count += 1; this.state.count }
fn spin() { this.state.count += 100; loop { } }
fn recurse(n) { this.state.count += 100; this.recurse(n + 1) }
fn grow() { this.state.count += 100; let s = "x"; loop { s += s; } }
fn broken() {
    let x = 1;
    x.no_such_method()
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runaway_script_hits_its_limit_and_the_host_goes_on() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let (host, client, ctl) = start(&cluster).await?;
    let app_dir = work_dir(&cluster, "apps").join("runaway");
    std::fs::create_dir_all(&app_dir)?;
    std::fs::write(app_dir.join("runaway.rhai"), RUNAWAY)?;
    std::fs::write(
        app_dir.join("app.json"),
        r#"{"app": "acme-runaway", "state_version": "1.0.0"}"#,
    )?;
    ctl.publish(&app_dir).await?;
    const APP: &str = "acme-runaway";
    assert_eq!(
        client
            .call(APP, "xan-phone", "increment", vec![])
            .await?
            .result,
        json!(1)
    );
    for (method, args, limit) in [
        ("spin", vec![], "operations"),
        ("recurse", vec![json!(0)], "call depth"),
        ("grow", vec![], "too large"),
    ] {
        let e = client
            .call(APP, "xan-phone", method, args)
            .await
            .expect_err(method);
        assert_eq!(e.code(), Some(ErrorCode::Exception), "{method}: {e}");
        assert!(
            e.to_string().contains("limit exceeded") && e.to_string().contains(limit),
            "{method}: {e}"
        );
    }
    let e = client
        .call(APP, "xan-phone", "broken", vec![])
        .await
        .expect_err("fails");
    assert!(
        e.to_string().contains("runaway.rhai:9") && e.to_string().contains("fn broken"),
        "{e}"
    );
    // The CA goes on, with none of the aborted turns' effects.
    assert_eq!(
        client
            .call(APP, "xan-phone", "increment", vec![])
            .await?
            .result,
        json!(2)
    );

    // Another CA's calls while four clients keep CAs looping into their limit. Its calls must
    // keep completing, each within a generous 2 s (a turn normally takes milliseconds).
    let calm = |n: usize| {
        let client = client.clone();
        async move {
            let mut took = Vec::new();
            for _ in 0..n {
                let sent = Instant::now();
                client.call(APP, "yan-phone", "increment", vec![]).await?;
                took.push(sent.elapsed());
            }
            anyhow::Ok(took)
        }
    };
    let alone = calm(20).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let runaways = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for i in 0..4 {
        let (client, stop, runaways) = (client.clone(), stop.clone(), runaways.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let e = client
                    .call(APP, &format!("run{i}-phone"), "spin", vec![])
                    .await;
                anyhow::ensure!(e.is_err(), "a runaway turn succeeded");
                runaways.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::Ok(())
        }));
    }
    eventually("runaway turns to run", Duration::from_secs(20), || {
        let runaways = runaways.clone();
        async move { (runaways.load(Ordering::SeqCst) >= 8).then_some(()) }
    })
    .await?;
    let during_from = runaways.load(Ordering::SeqCst);
    let during = calm(20).await?;
    let during_runaways = runaways.load(Ordering::SeqCst) - during_from;
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await??;
    }
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    eprintln!(
        "yan-phone alone: max {:?}; beside {during_runaways} runaway turns: max {:?}",
        max(&alone),
        max(&during)
    );
    assert!(
        during_runaways >= 4,
        "the runaways did not run meanwhile ({during_runaways})"
    );
    assert!(
        max(&during) < Duration::from_secs(2),
        "a calm call took {:?}",
        max(&during)
    );
    assert_eq!(
        client
            .call(APP, "yan-phone", "increment", vec![])
            .await?
            .result,
        json!(41)
    );
    drop(host);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_the_publishers_token_and_scripts_that_compile() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let (_host, client, _) = start(&cluster).await?;
    const APP: &str = "acme-counter";
    let dir = work_dir(&cluster, "apps");
    let v1 = example("counter", &dir)?;
    let spine = cluster.client()?;
    let (app, map) = (AppName::parse(APP)?, MapName::parse("acme-counter-code")?);
    let v1_text = v1.display().to_string();

    // A token of another CA of the app may not publish: nothing is written.
    let alice = Ctl::new(&cluster, token_for(&cluster, APP, "alice-phone")?);
    let e = alice.fails(&["app", "publish", &v1_text]).await?;
    assert!(e.contains("only the writer CA acme-counter"), "{e}");
    let missing = spine
        .get_map(&app, &map, false)
        .await
        .expect_err("not created");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let e = client
        .call(APP, "ann-phone", "get", vec![])
        .await
        .expect_err("no app");
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    assert!(e.to_string().contains("spinectl app publish"), "{e}");

    // The publisher's token (one speaking for CA acme-counter) publishes.
    let publisher = Ctl::new(&cluster, token_for(&cluster, APP, "acme-counter")?);
    assert_eq!(publisher.publish(&v1).await?, 1);
    assert_eq!(
        client
            .call(APP, "ann-phone", "increment", vec![])
            .await?
            .result,
        json!(1)
    );

    // A script that does not compile is refused before anything is written.
    let broken = dir.join("broken");
    copy_dir(&v1, &broken)?;
    edit(&broken.join("counter.rhai"), "fn get() {", "fn get( {")?;
    let e = publisher
        .fails(&["app", "publish", &broken.display().to_string()])
        .await?;
    let line = std::fs::read_to_string(broken.join("counter.rhai"))?
        .lines()
        .position(|l| l.starts_with("fn get( {"))
        .map_or(0, |i| i + 1);
    let place = format!("counter.rhai:{line}");
    assert!(
        e.contains("not published") && e.contains(&place),
        "{place}: {e}"
    );
    edit(&broken.join("counter.rhai"), "fn get( {", "fn get() {")?;
    append(&broken.join("counter.rhai"), "let stray = 1;\n")?;
    let e = publisher
        .fails(&["app", "publish", &broken.display().to_string()])
        .await?;
    assert!(e.contains("top-level statements"), "{e}");
    edit(&broken.join("app.json"), "\"1.0.0\"", "\"one\"")?;
    let e = publisher
        .fails(&["app", "publish", &broken.display().to_string()])
        .await?;
    assert!(e.contains("state_version"), "{e}");
    assert_eq!(
        spine.get_map(&app, &map, false).await?.version(),
        1,
        "nothing written"
    );
    assert_eq!(
        client
            .call(APP, "ann-phone", "increment", vec![])
            .await?
            .result,
        json!(2)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_takes_each_request_once_across_retries_and_a_host_kill() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let (mut host, client, ctl) = start(&cluster).await?;
    ctl.publish(&example("shop", &work_dir(&cluster, "apps"))?)
        .await?;
    const APP: &str = "acme-shop";
    let ca = "dana-phone";
    let call = |client: &CaClient, method: &'static str, args: Vec<Value>| {
        let client = client.clone();
        async move { anyhow::Ok(client.call(APP, ca, method, args).await?.result) }
    };
    let add = |id: &str, item: &str, n: i64| vec![json!(id), json!(item), json!(n)];
    assert_eq!(call(&client, "add", add("r1", "apple", 2)).await?, json!(2));
    // A retry of r1 (its answer lost, say) changes nothing and answers the same.
    assert_eq!(call(&client, "add", add("r1", "apple", 2)).await?, json!(2));
    assert_eq!(call(&client, "add", add("r2", "pear", 1)).await?, json!(3));
    let e = client
        .call(APP, ca, "add", add("r3", "plum", 1))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::AppError));
    assert!(e.to_string().contains("we do not sell plum"), "{e}");

    // The host dies after acknowledging r4; the client, unsure, sends r4 again to the restarted
    // host: it is not applied twice.
    assert_eq!(call(&client, "add", add("r4", "fig", 1)).await?, json!(4));
    host.kill().await?;
    host.restart().await?;
    let client = host.client(&cluster.token()).await?;
    assert_eq!(call(&client, "add", add("r4", "fig", 1)).await?, json!(4));
    let order = call(&client, "checkout", vec![json!("r5")]).await?;
    assert_eq!(order["total"], json!(2 * 3 + 2 + 7), "{order}");
    assert_eq!(call(&client, "checkout", vec![json!("r5")]).await?, order);
    assert_eq!(call(&client, "orders", vec![]).await?, json!([order]));
    // The checkout notified the client's session once (this.session), the repeat did not.
    let mut heard = client.listen(&Target::new(APP, ca), 0).await?;
    let first = tokio::time::timeout(Duration::from_secs(20), heard.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the notification stream ended"))??;
    assert_eq!(first.args, json!(["ordered", "r5", order["total"]]));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), heard.next())
            .await
            .is_err(),
        "one notification only"
    );
    // The order left once, after its turn committed.
    eventually("the order to leave", Duration::from_secs(20), || {
        let lines = host.intent_lines();
        async move { (lines.len() == 1).then_some(lines) }
    })
    .await?;
    let lines = host.intent_lines();
    assert!(
        lines[0].contains("\"r5\"") && lines[0].contains(ca),
        "{lines:?}"
    );
    Ok(())
}
