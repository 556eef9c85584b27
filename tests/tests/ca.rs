//! The CA runtime end to end: real `spine serve` processes and real `ca-host` processes, killed
//! with SIGKILL (issue 13's scenarios 1, 2, 3, 5, 7 and 8).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use authz_aggregate::{Constraints, RootKey, issue};
use ca_client::{CaClient, CallError, ErrorCode};
use serde_json::{Value, json};
use sharing_map::{AppName, MapName};
use spine_tests::ca::CaHost;
use spine_tests::{Cluster, ClusterOpts, eventually};

const APP: &str = "demo-counter";

async fn cluster() -> anyhow::Result<Cluster> {
    Cluster::start(3, ClusterOpts::default()).await
}

fn host_dir(cluster: &Cluster, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = cluster.credentials().dir.join("..").join(name);
    Ok(dir)
}

async fn map(cluster: &Cluster, name: &str) -> anyhow::Result<sharing_map::SharingMap> {
    let client = cluster.client()?;
    Ok(client
        .get_map(&AppName::parse(APP)?, &MapName::parse(name)?, false)
        .await?)
}

/// Calls until an answer that is not a retryable error (a host restarting, a CA moving).
async fn call_retrying(
    client: &CaClient,
    ca: &str,
    method: &str,
    args: Vec<Value>,
) -> Result<ca_client::Reply, CallError> {
    call_in(APP, client, ca, method, args).await
}

/// [`call_retrying`] for a CA of `app`.
async fn call_in(
    app: &str,
    client: &CaClient,
    ca: &str,
    method: &str,
    args: Vec<Value>,
) -> Result<ca_client::Reply, CallError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.call(app, ca, method, args.clone()).await {
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

fn code(r: Result<ca_client::Reply, CallError>) -> Option<ErrorCode> {
    r.err().and_then(|e| e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_reply_is_committed_state_and_survives_a_host_kill() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let mut host = CaHost::start(&cluster, host_dir(&cluster, "host")?, vec![]).await?;
    let token = cluster.token();
    let client = host.client(&token).await?;
    // 1,000 calls over 100 CAs, each CA's calls in order: every reply is the count the turn
    // committed.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let ca = format!("u{i:03}-phone");
            for n in 1..=10 {
                let reply = client.call(APP, &ca, "increment", vec![]).await?;
                anyhow::ensure!(
                    reply.result == json!(n),
                    "{ca}: reply {reply:?} after {n} calls"
                );
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let state = map(&cluster, "u007-phone-castate").await?;
    assert_eq!(state.get_value("s.count"), Some(&json!(10)));

    host.kill().await?;
    host.restart().await?;
    let client = host.client(&token).await?;
    for i in 0..100 {
        let reply = client
            .call(APP, &format!("u{i:03}-phone"), "get", vec![])
            .await?;
        assert_eq!(reply.result, json!(10), "u{i:03}-phone after the kill");
    }

    // Under load: kill the host while every CA has a call in flight. A call that got no answer
    // may or may not have committed (at most one per CA, each CA's calls being sequential), so
    // each count is its last acknowledged reply or one more.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let ca = format!("u{i:03}-phone");
            let mut last = 10;
            loop {
                match client.call(APP, &ca, "increment", vec![]).await {
                    Ok(r) => {
                        let v = r.result.as_i64().unwrap_or(-1);
                        anyhow::ensure!(v == last + 1, "{ca}: {v} after {last}");
                        last = v;
                    }
                    Err(_) => return anyhow::Ok((ca, last)),
                }
            }
        }));
    }
    eventually(
        "calls to commit before the kill",
        Duration::from_secs(30),
        || {
            let cluster = &cluster;
            async move {
                let m = map(cluster, "u000-phone-castate").await.ok()?;
                (m.get_value("s.count")?.as_i64()? > 15).then_some(())
            }
        },
    )
    .await?;
    host.kill().await?;
    let mut acked = BTreeMap::new();
    for t in tasks {
        let (ca, last) = t.await??;
        acked.insert(ca, last);
    }
    host.restart().await?;
    let client = host.client(&token).await?;
    for (ca, last) in acked {
        let now = call_retrying(&client, &ca, "get", vec![]).await?;
        let now = now.result.as_i64().unwrap_or(-1);
        assert!(
            now == last || now == last + 1,
            "{ca}: count {now}, last acknowledged {last}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_turn_leaves_no_trace_in_state_maps_or_intents() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host")?, vec![]).await?;
    let client = host.client(&cluster.token()).await?;
    let ca = "alice-phone";
    assert_eq!(
        client.call(APP, ca, "share", vec![json!(5)]).await?.result,
        json!(5)
    );
    let before: Vec<_> = {
        let mut v = Vec::new();
        for m in [
            "alice-phone-castate",
            "alice-phone-counter",
            "alice-phone-mirror",
        ] {
            v.push(map(&cluster, m).await?.version());
        }
        v
    };
    let e = client
        .call(APP, ca, "fail", vec![json!("out of stock")])
        .await;
    let e = e.expect_err("an app error");
    assert_eq!(e.code(), Some(ErrorCode::AppError));
    assert!(e.to_string().ends_with("out of stock"), "{e}");
    let e = client
        .call(APP, ca, "panic", vec![])
        .await
        .expect_err("a panic");
    assert_eq!(e.code(), Some(ErrorCode::Exception));
    // The CA goes on, its state as before the failed turns.
    assert_eq!(client.call(APP, ca, "get", vec![]).await?.result, json!(5));
    let mut after = Vec::new();
    for m in [
        "alice-phone-castate",
        "alice-phone-counter",
        "alice-phone-mirror",
    ] {
        let got = map(&cluster, m).await?;
        if m != "alice-phone-castate" {
            assert_eq!(got.get_value("count"), Some(&json!(5)), "{m}");
        }
        after.push(got.version());
    }
    assert_eq!(before, after, "a failed turn changed a map's version");
    assert!(host.intent_lines().is_empty(), "{:?}", host.intent_lines());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_run_only_after_their_checkpoint_and_once_across_kills() -> anyhow::Result<()> {
    let mut cluster = cluster().await?;
    let mut host = CaHost::start(&cluster, host_dir(&cluster, "host")?, vec![]).await?;
    let token = cluster.token();
    let client = host.client(&token).await?;
    let ca = "bob-phone";
    client.call(APP, ca, "increment", vec![]).await?;

    // The output gate: with no quorum the checkpoint cannot commit, so neither the reply nor the
    // intent may escape.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let others: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    for id in &others {
        cluster.kill(*id).await?;
    }
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.call(APP, ca, "log", vec![json!("gated")]).await })
    };
    // Nothing may appear while the Spine cannot commit (a window, not a synchronization).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !pending.is_finished(),
        "a reply escaped before its checkpoint committed"
    );
    assert!(
        host.intent_lines().is_empty(),
        "an intent ran before its checkpoint committed"
    );
    for id in &others {
        cluster.restart(*id).await?;
    }
    let reply = pending.await??;
    assert_eq!(reply.result, json!(2));
    let key = format!("{APP}/{ca}/{}/0", reply.version);
    eventually("the intent to run", Duration::from_secs(10), || {
        let lines = host.intent_lines();
        let key = key.clone();
        async move {
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{key}\t")))
                .then_some(())
        }
    })
    .await?;

    // Kill between checkpoint and intent: the plugin is held, so the intent stays pending.
    std::fs::write(host.intent_log().with_extension("log.hold"), b"")?;
    let reply = client.call(APP, ca, "log", vec![json!("redo")]).await?;
    let key = format!("{APP}/{ca}/{}/0", reply.version);
    let state = map(&cluster, "bob-phone-castate").await?;
    assert!(
        state.get_value(&format!("i.{key}")).is_some(),
        "the intent is in the checkpoint"
    );
    host.kill().await?;
    std::fs::remove_file(host.intent_log().with_extension("log.hold"))?;
    host.restart().await?;
    let client = host.client(&token).await?;
    // Activation redoes it before taking the call.
    client.call(APP, ca, "get", vec![]).await?;
    eventually(
        "the pending intent to be redone",
        Duration::from_secs(10),
        || {
            let lines = host.intent_lines();
            let key = key.clone();
            async move {
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("{key}\t")))
                    .then_some(())
            }
        },
    )
    .await?;
    // Kill right after it ran, before a checkpoint removes it: the next activation redoes it
    // again, and the key keeps it from being applied twice.
    host.kill().await?;
    host.restart().await?;
    let client = host.client(&token).await?;
    client.call(APP, ca, "increment", vec![]).await?;
    eventually(
        "the redone intent to be removed",
        Duration::from_secs(10),
        || {
            let cluster = &cluster;
            let key = key.clone();
            async move {
                let state = map(cluster, "bob-phone-castate").await.ok()?;
                state.get_value(&format!("i.{key}")).is_none().then_some(())
            }
        },
    )
    .await?;
    let lines = host.intent_lines();
    let keys: Vec<&str> = lines.iter().filter_map(|l| l.split('\t').next()).collect();
    let unique: BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(keys.len(), 2, "{lines:?}");
    assert_eq!(unique.len(), keys.len(), "an intent ran twice: {lines:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_activating_one_ca_never_both_commit_a_version() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    // Without placement both hosts serve the CA, as a host cut off from the leases that still
    // believes it holds the CA's partition would.
    let unplaced = || vec!["--no-placement".to_string()];
    let a = CaHost::start(&cluster, host_dir(&cluster, "a")?, unplaced()).await?;
    let b = CaHost::start(&cluster, host_dir(&cluster, "b")?, unplaced()).await?;
    let token = cluster.token();
    let ca = "carol-phone";
    let mut tasks = Vec::new();
    for (i, host) in [&a, &b, &a, &b].into_iter().enumerate() {
        let client = host.client(&token).await?;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut moved = 0;
            for _ in 0..40 {
                match client
                    .call(APP, ca, "log", vec![json!(format!("w{i}"))])
                    .await
                {
                    Ok(r) => acked.push(r.result.as_i64().unwrap_or(-1)),
                    Err(e) if e.code() == Some(ErrorCode::Moved) => moved += 1,
                    Err(e) => anyhow::bail!("writer {i}: {e}"),
                }
            }
            anyhow::Ok((acked, moved))
        }));
    }
    let mut acked = Vec::new();
    let mut moved = 0;
    for t in tasks {
        let (a, m) = t.await??;
        acked.extend(a);
        moved += m;
    }
    assert!(
        moved > 0,
        "the two activations never met: the test proves nothing"
    );
    let unique: BTreeSet<i64> = acked.iter().copied().collect();
    assert_eq!(
        unique.len(),
        acked.len(),
        "two activations acknowledged one count"
    );
    // Every committed turn was acknowledged (conflicts never land), and no other turn counted.
    let state = map(&cluster, "carol-phone-castate").await?;
    assert_eq!(state.get_value("s.count"), Some(&json!(acked.len())));
    // No intent of a losing turn escaped: every logged count was acknowledged.
    eventually("the intents to run", Duration::from_secs(10), || {
        let n = a.intent_lines().len() + b.intent_lines().len();
        let want = acked.len();
        async move { (n >= want).then_some(()) }
    })
    .await?;
    for line in a.intent_lines().into_iter().chain(b.intent_lines()) {
        let payload: Value = serde_json::from_str(line.split('\t').nth(1).unwrap_or("null"))?;
        let count = payload["count"].as_i64().unwrap_or(-1);
        assert!(
            unique.contains(&count),
            "intent of an unacknowledged turn ran: {line}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_hosts_cas_answer_from_another_within_the_lease() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let lease = Duration::from_secs(2);
    let args = || vec!["--lease-ms".to_string(), lease.as_millis().to_string()];
    // One external service (the intent log) for both hosts.
    let log = host_dir(&cluster, "service.log")?;
    let mut a =
        CaHost::start_with_log(&cluster, host_dir(&cluster, "a")?, args(), log.clone()).await?;
    let b = CaHost::start_with_log(&cluster, host_dir(&cluster, "b")?, args(), log).await?;
    let token = cluster.token();
    let cas: Vec<String> = (0..20).map(|i| format!("h{i:03}-phone")).collect();
    // Host a takes every partition first: these calls activate the CAs there.
    let via_a = a.client(&token).await?;
    for ca in &cas {
        via_a.call(APP, ca, "increment", vec![]).await?;
    }
    // Under load through host b, which forwards to a until a dies.
    let via_b = b.client(&token).await?;
    let killed_at = Arc::new(std::sync::Mutex::new(None::<tokio::time::Instant>));
    let mut tasks = Vec::new();
    for ca in cas.clone() {
        let client = via_b.clone();
        let killed_at = killed_at.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<(i64, u64)> = Vec::new();
            let mut longest_gap = Duration::ZERO;
            let stop = tokio::time::Instant::now() + Duration::from_secs(12);
            while tokio::time::Instant::now() < stop {
                let started = tokio::time::Instant::now();
                let reply = call_retrying(&client, &ca, "log", vec![json!("x")]).await?;
                if let Some(k) = *killed_at.lock().unwrap_or_else(|p| p.into_inner()) {
                    if started <= k {
                        longest_gap = longest_gap.max(k.elapsed());
                    }
                }
                let count = reply.result.as_i64().unwrap_or(-1);
                if let Some((last, _)) = acked.last() {
                    anyhow::ensure!(count > *last, "{ca}: {count} after {last}");
                }
                acked.push((count, reply.version));
            }
            anyhow::Ok((ca, acked, longest_gap))
        }));
    }
    eventually("calls through b", Duration::from_secs(10), || {
        let m = map(&cluster, "h000-phone-castate");
        async move { (m.await.ok()?.get_value("s.count")?.as_i64()? > 5).then_some(()) }
    })
    .await?;
    a.kill().await?;
    *killed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    let mut keys = BTreeSet::new();
    for t in tasks {
        let (ca, acked, gap) = t.await??;
        assert!(
            gap < lease + Duration::from_secs(3),
            "{ca} answered {gap:?} after its host died (lease {lease:?})"
        );
        let state = map(&cluster, &format!("{ca}-castate")).await?;
        let count = state
            .get_value("s.count")
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        let last = acked.last().map(|(c, _)| *c).unwrap_or(0);
        assert!(
            count >= last,
            "{ca}: committed {count} < acknowledged {last}"
        );
        for (_, version) in acked {
            keys.insert(format!("{APP}/{ca}/{version}/0"));
        }
    }
    // Every acknowledged turn's intent ran, pending ones redone by b, none twice.
    eventually(
        "every acknowledged intent to run",
        Duration::from_secs(20),
        || {
            let lines = b.intent_lines();
            let keys = &keys;
            async move {
                let logged: BTreeSet<&str> =
                    lines.iter().filter_map(|l| l.split('\t').next()).collect();
                keys.iter()
                    .all(|k| logged.contains(k.as_str()))
                    .then_some(())
            }
        },
    )
    .await?;
    let lines = b.intent_lines();
    let logged: Vec<&str> = lines.iter().filter_map(|l| l.split('\t').next()).collect();
    let unique: BTreeSet<&str> = logged.iter().copied().collect();
    assert_eq!(unique.len(), logged.len(), "an intent ran twice");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_and_two_maps_commit_together_across_a_leader_kill() -> anyhow::Result<()> {
    let mut cluster = cluster().await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host")?, vec![]).await?;
    let token = cluster.token();
    let cas: Vec<String> = (0..4).map(|i| format!("m{i:03}-phone")).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for ca in cas.clone() {
        let client = host.client(&token).await?;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(r) = call_retrying(&client, &ca, "share", vec![json!(1)]).await {
                    acked.push(r.result.as_i64().unwrap_or(-1));
                }
            }
            (ca, acked)
        }));
    }
    eventually("turns before the kill", Duration::from_secs(20), || {
        let m = map(&cluster, "m000-phone-counter");
        async move { (m.await.ok()?.get_value("count")?.as_i64()? > 10).then_some(()) }
    })
    .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    cluster.kill(leader).await?;
    eventually("turns after the kill", Duration::from_secs(30), || {
        let m = map(&cluster, "m000-phone-counter");
        async move { (m.await.ok()?.get_value("count")?.as_i64()? > 30).then_some(()) }
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    cluster.restart(leader).await?;
    // Histories live in memory: a restarted node's starts at its checkpoint, so ask the two
    // that kept running.
    let survivors: Vec<String> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .map(|id| cluster.endpoint(id))
        .collect();
    let client = spine_client::Client::builder(survivors)
        .token(cluster.token())
        .build()?;
    let app = AppName::parse(APP)?;
    for t in tasks {
        let (ca, acked) = t.await?;
        // Each turn's three change sets share the checkpoint's update id: group the histories by
        // it. A turn is in all three maps with one count, or in none.
        let mut by_id: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        for local in ["castate", "counter", "mirror"] {
            let name = MapName::parse(&format!("{ca}-{local}"))?;
            let history = client.history(&app, &name, 0).await?;
            anyhow::ensure!(history.oldest_retained <= 1, "{name}: history was trimmed");
            for cs in history.change_sets {
                let key = if local == "castate" {
                    "s.count"
                } else {
                    "count"
                };
                if let Some((_, e)) = cs.puts().iter().find(|(k, _)| &**k == key) {
                    let count = e.as_value().cloned().unwrap_or(Value::Null);
                    by_id
                        .entry(cs.update_id().to_string())
                        .or_default()
                        .push((local.to_string(), count));
                }
            }
        }
        let mut counts = BTreeSet::new();
        for (id, parts) in &by_id {
            let names: Vec<&str> = parts.iter().map(|(m, _)| m.as_str()).collect();
            if names == ["castate"] {
                // The first checkpoint (`__ca_init__`'s count of 0) writes the state map alone.
                continue;
            }
            assert_eq!(
                names,
                ["castate", "counter", "mirror"],
                "{ca} {id}: {parts:?}"
            );
            assert!(
                parts.iter().all(|(_, c)| c == &parts[0].1),
                "{ca} {id}: {parts:?}"
            );
            counts.insert(parts[0].1.as_i64().unwrap_or(-1));
        }
        // Every acknowledged turn is there (its count, or a later one in the same checkpoint).
        let max = counts.iter().max().copied().unwrap_or(0);
        for a in &acked {
            assert!(
                *a <= max,
                "{ca}: acknowledged {a} but the maps stop at {max}"
            );
        }
        let state = map(&cluster, &format!("{ca}-castate")).await?;
        assert_eq!(state.get_value("s.count"), Some(&json!(max)), "{ca}");
        for local in ["counter", "mirror"] {
            let m = map(&cluster, &format!("{ca}-{local}")).await?;
            assert_eq!(m.get_value("count"), Some(&json!(max)), "{ca}-{local}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_versions_upgrade_compatibly_refuse_downgrades_and_run_the_hook() -> anyhow::Result<()>
{
    let cluster = cluster().await?;
    let mut host = CaHost::start(&cluster, host_dir(&cluster, "host")?, vec![]).await?;
    let token = cluster.token();
    let ca = "dave-phone";
    host.client(&token)
        .await?
        .call(APP, ca, "increment", vec![])
        .await?;
    let meta = |m: &sharing_map::SharingMap| m.get_value("m").map(|v| v["state_version"].clone());
    assert_eq!(
        meta(&map(&cluster, "dave-phone-castate").await?),
        Some(json!("0.1.0"))
    );

    let version = |v: &str| vec!["--state-version".to_string(), format!("{APP}={v}")];
    host.set_args(version("0.1.1"));
    host.restart().await?;
    let reply = host
        .client(&token)
        .await?
        .call(APP, ca, "get", vec![])
        .await?;
    assert_eq!(reply.result, json!(1));
    assert_eq!(
        meta(&map(&cluster, "dave-phone-castate").await?),
        Some(json!("0.1.1"))
    );

    host.set_args(version("0.0.9"));
    host.restart().await?;
    let e = host
        .client(&token)
        .await?
        .call(APP, ca, "get", vec![])
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::Version), "{e}");
    assert!(
        e.to_string().contains("0.1.1") && e.to_string().contains("0.0.9"),
        "{e}"
    );
    assert_eq!(
        meta(&map(&cluster, "dave-phone-castate").await?),
        Some(json!("0.1.1"))
    );

    host.set_args(version("0.2.0"));
    host.restart().await?;
    let state = host
        .client(&token)
        .await?
        .call(APP, ca, "state", vec![])
        .await?;
    assert_eq!(state.result, json!({"count": 1, "upgraded_from": "0.1.1"}));
    assert_eq!(
        meta(&map(&cluster, "dave-phone-castate").await?),
        Some(json!("0.2.0"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host")?, vec![]).await?;
    let client = host.client(&cluster.token()).await?;
    let ca = "erin-phone";
    client.call(APP, ca, "increment", vec![json!(3)]).await?;
    let version = map(&cluster, "erin-phone-castate").await?.version();

    let invalid = [
        (
            client.call(APP, "Erin", "get", vec![]).await,
            "invalid CA name",
        ),
        (
            client.call("nodash", ca, "get", vec![]).await,
            "invalid app name",
        ),
        (
            client.call(APP, ca, "nope", vec![]).await,
            "no method \"nope\"",
        ),
        (
            client.call(APP, ca, "__ca_init__", vec![]).await,
            "system method",
        ),
        (
            client.call(APP, ca, "increment", vec![json!("x")]).await,
            "argument 1 (n)",
        ),
        (
            client
                .call(APP, ca, "increment", vec![json!("y".repeat(300 * 1024))])
                .await,
            "at most 262144 are allowed",
        ),
    ];
    for (answer, says) in invalid {
        let e = answer.expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");
        assert!(e.to_string().contains(says), "{e} should say {says}");
    }
    let e = client
        .call("demo-other", ca, "get", vec![])
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    let e = client
        .call(APP, ca, "grow", vec![json!(2 << 20)])
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::Prepare), "{e}");
    assert!(e.is_retryable());

    // Tokens: none, one for another CA, one for this CA.
    let root = RootKey::from_private_hex(
        std::fs::read_to_string(cluster.credentials().root_key())?.trim(),
    )?;
    let app = AppName::parse(APP)?;
    let erin = issue(
        &root,
        &Constraints::any()
            .app(&app)
            .ca(&sharing_map::CaName::parse(ca)?),
    )?;
    let frank = issue(
        &root,
        &Constraints::any()
            .app(&app)
            .ca(&sharing_map::CaName::parse("frank-phone")?),
    )?;
    let anonymous = CaClient::connect(&host.endpoint(), None).await?;
    assert_eq!(
        code(anonymous.call(APP, ca, "get", vec![]).await),
        Some(ErrorCode::NotAuthorized)
    );
    let as_frank = host.client(&frank.to_base64()).await?;
    assert_eq!(
        code(as_frank.call(APP, ca, "increment", vec![]).await),
        Some(ErrorCode::NotAuthorized)
    );
    let as_erin = host.client(&erin.to_base64()).await?;
    assert_eq!(as_erin.call(APP, ca, "get", vec![]).await?.result, json!(3));
    assert_eq!(
        map(&cluster, "erin-phone-castate").await?.version(),
        version
    );
    // The CA's private state map is the host's: not even the CA's own token reaches it in the
    // Spine, nor sees it listed, nor can it create one.
    let spine_as_erin = cluster.client_builder().token(erin.to_base64()).build()?;
    let private = MapName::parse("erin-phone-castate")?;
    let e = spine_as_erin
        .get_map(&app, &private, false)
        .await
        .expect_err("private");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let listed = spine_as_erin.list_maps(&app, "erin-phone", false).await?;
    assert!(
        listed.iter().all(|m| !m.name.is_private_state()),
        "{listed:?}"
    );
    assert!(!listed.is_empty(), "its Sharing Maps are listed");
    let other = MapName::parse("erin-tablet-castate")?;
    let e = spine_as_erin
        .create_map(&app, &other, vec![])
        .await
        .expect_err("reserved");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_call_is_one_transaction() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host")?, vec![]).await?;
    let client = host.client(&cluster.token()).await?;
    let ca = "gina-phone";
    let calls = |second: &str| {
        vec![
            ca_client::MethodCall::new("increment", vec![json!(2)]),
            ca_client::MethodCall::new(second, vec![json!("stop")]),
        ]
    };
    let e = client
        .multi_call(APP, ca, calls("fail"))
        .await
        .expect_err("all or nothing");
    assert_eq!(e.code(), Some(ErrorCode::AppError));
    let r = client.multi_call(APP, ca, calls("log")).await?;
    assert_eq!(r.result, json!(3), "the last result, after both calls");
    Ok(())
}

/// A block of ports for `ca-host dev`: three Spine ports, their metrics ports 10 above.
fn dev_ports() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let base = spine_tests::free_port()?;
        if base > 65000 {
            continue;
        }
        let free = [0, 1, 2, 10, 11, 12]
            .iter()
            .all(|d| std::net::TcpListener::bind(("127.0.0.1", base + d)).is_ok());
        if free {
            return Ok(base);
        }
    }
    anyhow::bail!("no free block of ports for the dev cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_system_runs_from_one_command_and_keeps_counts_across_kill_9() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let base = dev_ports()?;
    let listen = format!("127.0.0.1:{}", spine_tests::free_port()?);
    let http = format!("127.0.0.1:{}", spine_tests::free_port()?);
    let start = || -> anyhow::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("dev.log"))?;
        Ok(tokio::process::Command::new(spine_tests::bin("ca-host")?)
            .args(["dev", "--base-port", &base.to_string(), "--listen", &listen])
            .args(["--http-listen", &http])
            .current_dir(dir.path())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?)
    };
    // The `ca` command, run in the dev directory: it finds spine-data/admin.token there.
    let ca = |args: Vec<String>| {
        let listen = listen.clone();
        let dir = dir.path().to_path_buf();
        async move {
            let out = tokio::process::Command::new(spine_tests::bin("ca").ok()?)
                .args(["--endpoint", &listen, "call", APP, "alice-phone"])
                .args(args)
                .current_dir(dir)
                .output()
                .await
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
    };
    let mut dev = start()?;
    let first = eventually("the dev system to answer", Duration::from_secs(60), || {
        ca(vec!["increment".into()])
    })
    .await?;
    assert_eq!(first, "1");
    assert_eq!(
        ca(vec!["increment".into(), "4".into()]).await.as_deref(),
        Some("5")
    );
    dev.start_kill()?;
    dev.wait().await?;
    let _dev = start()?;
    let after = eventually(
        "the restarted dev system to answer",
        Duration::from_secs(60),
        || ca(vec!["get".into()]),
    )
    .await?;
    assert_eq!(after, "5", "the count the CA had before kill -9");
    Ok(())
}

// The `sharing` plugin's read-only half: CAs reading other writers' maps and aggregates through
// the host's node agent, one version per message (Isolation), the newest at the next message
// (Fairness).

/// What a `read` (or `read_again`) returned: `(version, value)`.
fn seen(v: &Value) -> anyhow::Result<(u64, Value)> {
    let version = v["version"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no version in {v}"))?;
    Ok((version, v["value"].clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_sees_the_newest_version_at_its_next_message_and_never_an_older_one()
-> anyhow::Result<()> {
    let cluster = cluster().await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host")?, vec![]).await?;
    let client = host.client(&cluster.token()).await?;
    let (writer, reader, prices) = ("alice-phone", "bob-phone", "alice-phone-counter");
    let read = || {
        let client = client.clone();
        async move {
            let r = client
                .call(APP, reader, "read", vec![json!(prices), json!("count")])
                .await?;
            seen(&r.result)
        }
    };
    // The writer's map at its first version with a count.
    assert_eq!(
        client
            .call(APP, writer, "share", vec![json!(1)])
            .await?
            .result,
        json!(1)
    );
    let v1 = map(&cluster, prices).await?.version();
    let first = read().await?;
    assert_eq!(
        first,
        (v1, json!(1)),
        "the first read pins the version it waited for"
    );
    // The writer moves on; the reader's later messages see it within a deadline.
    client.call(APP, writer, "share", vec![json!(1)]).await?;
    let v2 = map(&cluster, prices).await?.version();
    assert!(v2 > v1);
    eventually(
        "the reader to see version 2",
        Duration::from_secs(10),
        || async { (read().await.ok()? == (v2, json!(2))).then_some(()) },
    )
    .await?;
    // Then never an older one, while the writer keeps writing and the reader keeps reading.
    let mut last = (v2, 2);
    for _ in 0..30 {
        client.call(APP, writer, "share", vec![json!(1)]).await?;
        let (version, value) = read().await?;
        let value = value.as_i64().unwrap_or(-1);
        assert!(
            version >= last.0 && value >= last.1,
            "the reader went back from {last:?} to {:?}",
            (version, value)
        );
        last = (version, value);
    }
    let newest = map(&cluster, prices).await?.version();
    eventually(
        "the reader to see the newest",
        Duration::from_secs(10),
        || async { (read().await.ok()?.0 == newest).then_some(()) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_method_of_a_multi_call_reads_one_version_while_updates_land() -> anyhow::Result<()> {
    // Each message holds its turn this long between its two reads; writes commit meanwhile.
    const DAWDLE_MS: u64 = 400;
    const MESSAGES: usize = 15;
    let cluster = cluster().await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host")?, vec![]).await?;
    let client = host.client(&cluster.token()).await?;
    let (writer, reader, prices) = ("alice-phone", "bob-phone", "alice-phone-counter");
    client.call(APP, writer, "share", vec![json!(1)]).await?;
    // A write storm: the writer's map gets a new version every turn.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let storm = {
        let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = client.call(APP, writer, "share", vec![json!(1)]).await?;
                acked.store(
                    r.result.as_u64().unwrap_or(0),
                    std::sync::atomic::Ordering::SeqCst,
                );
            }
            anyhow::Ok(())
        })
    };
    let calls = || {
        let args = vec![json!(prices), json!("count")];
        vec![
            ca_client::MethodCall::new("read", args.clone()),
            ca_client::MethodCall::new("dawdle", vec![json!(DAWDLE_MS)]),
            ca_client::MethodCall::new("read_again", args),
        ]
    };
    let mut versions = BTreeSet::new();
    let mut landed_during = 0;
    let started = tokio::time::Instant::now();
    for _ in 0..MESSAGES {
        let before = acked.load(std::sync::atomic::Ordering::SeqCst);
        let r = client.multi_call(APP, reader, calls()).await?.result;
        let after = acked.load(std::sync::atomic::Ordering::SeqCst);
        let (first, last) = (seen(&r["before"])?, seen(&r)?);
        assert_eq!(
            first, last,
            "the first and last methods of one message read different versions: {r}"
        );
        versions.insert(last.0);
        // The writer committed at least twice while this message ran: an update landed at the
        // Spine during it, whichever version the message pinned.
        if after >= before + 2 {
            landed_during += 1;
        }
    }
    // Speculative turns: messages that also change the reader's state, sent four at a time, so
    // each runs while the previous one's checkpoint is in flight; each pins its own version.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        let mut calls = calls();
        calls.insert(0, ca_client::MethodCall::new("increment", vec![]));
        calls[2] = ca_client::MethodCall::new("dawdle", vec![json!(50)]);
        tasks.push(tokio::spawn(async move {
            let mut seen_here = Vec::new();
            for _ in 0..5 {
                let r = client.multi_call(APP, reader, calls.clone()).await?.result;
                seen_here.push((seen(&r["before"])?, seen(&r)?));
            }
            anyhow::Ok(seen_here)
        }));
    }
    for t in tasks {
        for (first, last) in t.await?? {
            assert_eq!(first, last, "a speculative turn read two versions");
            versions.insert(last.0);
        }
    }
    assert_eq!(
        client.call(APP, reader, "get", vec![]).await?.result,
        json!(20),
        "every speculative turn committed"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let elapsed = started.elapsed();
    storm.await??;
    // The test means something only if updates landed while messages ran.
    let commits = acked.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        landed_during >= MESSAGES / 3,
        "the storm committed during only {landed_during} of {MESSAGES} messages ({commits} commits in {elapsed:?})"
    );
    assert!(
        versions.len() >= MESSAGES / 3,
        "messages should each pin the newest version: {versions:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_a_map_that_does_not_exist_fails_clearly_and_in_bounded_time()
-> anyhow::Result<()> {
    let cluster = cluster().await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host")?, vec![]).await?;
    let client = host.client(&cluster.token()).await?;
    let reader = "bob-phone";
    client
        .call(APP, reader, "increment", vec![json!(3)])
        .await?;
    let started = tokio::time::Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(15),
        client.call(
            APP,
            reader,
            "read",
            vec![json!("nobody-home-prices"), json!("x")],
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("a read of a missing map hung"))?
    .expect_err("the map does not exist");
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(
        e.to_string().contains("nobody-home-prices") && e.to_string().contains("does not exist"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The CA goes on, nothing changed; once the map exists it reads.
    assert_eq!(
        client.call(APP, reader, "get", vec![]).await?.result,
        json!(3)
    );
    let app = AppName::parse(APP)?;
    let name = MapName::parse("nobody-home-prices")?;
    cluster
        .client()?
        .create_map(
            &app,
            &name,
            vec![(Arc::from("x"), sharing_map::Entry::value(json!("here")))],
        )
        .await?;
    let r = client
        .call(
            APP,
            reader,
            "read",
            vec![json!("nobody-home-prices"), json!("x")],
        )
        .await?;
    assert_eq!(seen(&r.result)?, (0, json!("here")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_checks_an_aggregate_pinned_for_its_message() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host")?, vec![]).await?;
    let client = host.client(&cluster.token()).await?;
    let spine = cluster.client()?;
    let app = AppName::parse(APP)?;
    let (root, more) = (
        MapName::parse("carl-acl-root")?,
        MapName::parse("carl-acl-more")?,
    );
    let entry = |v: Value| sharing_map::Entry::value(v);
    spine
        .create_map(
            &app,
            &more,
            vec![(Arc::from("erin-phone"), entry(json!(["reader"])))],
        )
        .await?;
    spine
        .create_map(
            &app,
            &root,
            vec![
                (Arc::from("dave"), entry(json!(["admin"]))),
                (Arc::from("__link_key__"), entry(json!(["carl-acl-more"]))),
            ],
        )
        .await?;
    let allowed = |caller: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .call(
                    APP,
                    "bob-phone",
                    "allowed",
                    vec![json!("carl-acl-root"), json!(caller)],
                )
                .await?;
            anyhow::Ok(r.result)
        }
    };
    eventually(
        "the linked map to join the aggregate",
        Duration::from_secs(10),
        || async { (allowed("erin-phone").await.ok()? == json!(true)).then_some(()) },
    )
    .await?;
    assert_eq!(
        allowed("dave-laptop").await?,
        json!(true),
        "dave's owner name is granted"
    );
    assert_eq!(allowed("frank-phone").await?, json!(false));
    // Revocation: the root drops its link; the next messages are denied.
    let cs = sharing_map::ChangeSet::from_ops(
        root.clone(),
        0,
        sharing_map::UpdateId::parse("unlink")?,
        [(Arc::from("__link_key__"), None)],
    );
    spine.update(&app, vec![cs]).await?;
    eventually(
        "the revocation to reach the CA",
        Duration::from_secs(10),
        || async { (allowed("erin-phone").await.ok()? == json!(false)).then_some(()) },
    )
    .await?;
    assert_eq!(allowed("dave-phone").await?, json!(true));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_binary_with_an_app_of_its_own_serves_it_checkpointed() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let dir = host_dir(&cluster, "greeter")?;
    std::fs::create_dir_all(&dir)?;
    let creds = cluster.credentials();
    let listen = format!("127.0.0.1:{}", spine_tests::free_port()?);
    let http = format!("127.0.0.1:{}", spine_tests::free_port()?);
    let start = || -> anyhow::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("greeter.log"))?;
        Ok(
            tokio::process::Command::new(spine_tests::example("greeter")?)
                .args([
                    "--spine",
                    &cluster.endpoints().join(","),
                    "--listen",
                    &listen,
                ])
                .env("CA_SPINE_TOKEN_FILE", creds.admin_token_file())
                .env("CA_ROOT_KEY_FILE", creds.root_pub())
                .env("CA_HTTP_LISTEN", &http)
                .env("CA_INTENT_LOG", dir.join("intents.log"))
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()?,
        )
    };
    let root = RootKey::from_private_hex(std::fs::read_to_string(creds.root_key())?.trim())?;
    let token = issue(&root, &Constraints::any())?.to_base64();
    let mut greeter = start()?;
    let client = eventually("the greeter host to serve", Duration::from_secs(30), || {
        let (listen, token) = (listen.clone(), token.clone());
        async move { CaClient::connect(&listen, Some(&token)).await.ok() }
    })
    .await?;
    let greet = |who: &'static str| {
        let client = client.clone();
        async move {
            call_in(
                "demo-greeter",
                &client,
                "alice-phone",
                "greet",
                vec![json!(who)],
            )
            .await
        }
    };
    assert_eq!(greet("bob").await?.result, json!("hello bob (1)"));
    assert_eq!(greet("bob").await?.result, json!("hello bob (2)"));
    let refused = greet("").await;
    assert_eq!(code(refused), Some(ErrorCode::AppError));
    // The counter of host.json is served beside it.
    assert_eq!(
        client
            .call(APP, "alice-phone", "increment", vec![])
            .await?
            .result,
        json!(1)
    );
    // Killed and started again, the greeter remembers: its state is checkpointed in the Spine.
    greeter.start_kill()?;
    greeter.wait().await?;
    let _greeter = start()?;
    let reply = call_in("demo-greeter", &client, "alice-phone", "greeted", vec![]).await?;
    assert_eq!(reply.result, json!({"bob": 2}));
    let log = std::fs::read_to_string(dir.join("intents.log"))?;
    assert_eq!(log.lines().count(), 2, "one log intent per greeting: {log}");
    Ok(())
}
