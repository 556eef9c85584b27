//! Sessions, exactly-once requests and clients end to end (issue 14): real `spine serve` and
//! `ca-host` processes, the `ca.v1` API through `ca-client`, hosts killed with SIGKILL.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use authz_aggregate::{Constraints, RootKey, issue};
use ca_client::session::{Session, SessionConfig, SessionError};
use ca_client::{
    CaClient, CallError, ErrorCode, MethodCall, Notification, NotificationStream, Target,
};
use futures::StreamExt;
use rand::Rng;
use serde_json::{Value, json};
use sharing_map::{AppName, CaName, MapName};
use spine_tests::ca::CaHost;
use spine_tests::{Cluster, ClusterOpts, eventually};

const APP: &str = "demo-counter";
/// How long a test waits for a notification that must arrive.
const ARRIVES: Duration = Duration::from_secs(20);

async fn cluster() -> anyhow::Result<Cluster> {
    Cluster::start(3, ClusterOpts::default()).await
}

fn host_dir(cluster: &Cluster, name: &str) -> std::path::PathBuf {
    cluster.credentials().dir.join("..").join(name)
}

fn root_key(cluster: &Cluster) -> anyhow::Result<RootKey> {
    Ok(RootKey::from_private_hex(
        std::fs::read_to_string(cluster.credentials().root_key())?.trim(),
    )?)
}

/// A token for CA `ca` of the demo app.
fn token_for(cluster: &Cluster, ca: &str) -> anyhow::Result<String> {
    let c = Constraints::any()
        .app(&AppName::parse(APP)?)
        .ca(&CaName::parse(ca)?);
    Ok(issue(&root_key(cluster)?, &c)?.to_base64())
}

async fn next(stream: &mut NotificationStream) -> anyhow::Result<Notification> {
    match tokio::time::timeout(ARRIVES, stream.next()).await {
        Ok(Some(Ok(n))) => Ok(n),
        Ok(Some(Err(e))) => anyhow::bail!("the stream failed: {e}"),
        Ok(None) => anyhow::bail!("the stream ended"),
        Err(_) => anyhow::bail!("no notification within {ARRIVES:?}"),
    }
}

fn notify(text: &str, to: &str) -> MethodCall {
    MethodCall::new("notify", vec![json!(text), json!(to)])
}

/// The texts of a session's notifications (each notification is `[text]`).
fn text(n: &Notification) -> String {
    n.args[0].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_have_their_own_queues_that_survive_kill_9_until_acknowledged()
-> anyhow::Result<()> {
    let cluster = cluster().await?;
    let mut host = CaHost::start(&cluster, host_dir(&cluster, "host"), vec![]).await?;
    let token = cluster.token();
    let client = host.client(&token).await?;
    let ca = "alice-phone";
    let phone = Target::new(APP, ca).session("phone");
    let laptop = Target::new(APP, ca).session("laptop");
    let call = |calls: Vec<MethodCall>| {
        let client = client.clone();
        async move { client.call_as(&Target::new(APP, ca), calls).await }
    };
    call(vec![MethodCall::new("increment", vec![])]).await?;
    let mut on_phone = client.listen(&phone, 0).await?;
    let mut on_laptop = client.listen(&laptop, 0).await?;

    call(vec![notify("p1", "phone")]).await?;
    call(vec![notify("l1", "laptop")]).await?;
    call(vec![notify("p2", "phone")]).await?;
    // A failed turn's notification never arrives: the turn after it is the next one seen.
    let failed = call(vec![
        notify("never", "phone"),
        MethodCall::new("fail", vec![json!("no")]),
    ])
    .await
    .expect_err("the turn fails");
    assert_eq!(failed.code(), Some(ErrorCode::AppError));
    call(vec![notify("p3", "phone")]).await?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&mut on_phone).await?);
    }
    assert_eq!(
        seen.iter().map(text).collect::<Vec<_>>(),
        ["p1", "p2", "p3"]
    );
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(text(&next(&mut on_laptop).await?), "l1");
    // The phone's stream got nothing else (the failed turn's notification would have come
    // before p3).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), on_phone.next())
            .await
            .is_err(),
        "an extra notification arrived"
    );

    // A limited queue keeps the newest N.
    call(vec![MethodCall::new(
        "limit_queue",
        vec![json!(2), json!("tablet")],
    )])
    .await?;
    for i in 1..=5 {
        call(vec![notify(&format!("t{i}"), "tablet")]).await?;
    }
    let outq = call(vec![MethodCall::new("outq", vec![json!("tablet")])]).await?;
    let texts: Vec<&str> = outq
        .result
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["args"][0].as_str())
        .collect();
    assert_eq!(texts, ["t4", "t5"]);

    // kill -9: nothing was acknowledged, so a listener after the restart gets all of it again.
    drop((on_phone, on_laptop));
    host.kill().await?;
    host.restart().await?;
    let client = host.client(&token).await?;
    let mut again = client.listen(&phone, 0).await?;
    let mut replay = Vec::new();
    for _ in 0..3 {
        replay.push(next(&mut again).await?);
    }
    let key = |n: &Notification| (n.seq, n.session.clone(), n.args.clone());
    assert_eq!(
        replay.iter().map(key).collect::<Vec<_>>(),
        seen.iter().map(key).collect::<Vec<_>>(),
        "the queue after kill -9"
    );
    let mut tablet = client
        .listen(&Target::new(APP, ca).session("tablet"), 0)
        .await?;
    assert_eq!(text(&next(&mut tablet).await?), "t4");
    assert_eq!(text(&next(&mut tablet).await?), "t5");
    // Acknowledged ones leave the queue (also across a kill); the rest come again.
    client.ack(&phone, seen[1].seq).await?;
    drop(again);
    host.kill().await?;
    host.restart().await?;
    let client = host.client(&token).await?;
    let mut after_ack = client.listen(&phone, 0).await?;
    assert_eq!(key(&next(&mut after_ack).await?), key(&seen[2]));
    // New notifications follow, pushed at commit.
    client
        .call_as(&Target::new(APP, ca), vec![notify("p4", "phone")])
        .await?;
    let p4 = next(&mut after_ack).await?;
    assert_eq!(text(&p4), "p4");
    assert!(p4.seq > seen[2].seq);
    // The admin's view: the sessions and their queues, from the committed checkpoint.
    let view = client.inspect(APP, ca).await?;
    let queued: Vec<&str> = view["sessions"]["phone"]["queue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["args"][0].as_str())
        .collect();
    assert_eq!(queued, ["p3", "p4"], "{view}");
    assert_eq!(view["state"]["count"], json!(1), "{view}");
    Ok(())
}

const ITEMS: u64 = 100;

fn item(i: u64) -> String {
    format!("item{i:03}")
}

/// One instance of a stateless client: `@begin`, then buys from after the memento on. With
/// `crash: Some((k, cut))` it crashes at its `k`-th buy: the call is dropped `cut` after it was
/// sent (it may or may not have reached the CA, or committed). `Ok(None)`: it crashed.
async fn shopper(
    client: CaClient,
    target: Target,
    crash: Option<(u64, Duration)>,
) -> Result<Option<u64>, CallError> {
    let begun = client.begin(&target).await?;
    let from = begun.memento.and_then(|m| m.as_u64()).map_or(0, |m| m + 1);
    let mut bought = 0;
    for (k, i) in (from..ITEMS).enumerate() {
        let buy = client.call_as(
            &target,
            vec![MethodCall::new(
                "buy",
                vec![json!(begun.nonce), json!(i), json!(item(i))],
            )],
        );
        if let Some((at, cut)) = crash
            && at == k as u64
        {
            let _ = tokio::time::timeout(cut, buy).await;
            return Ok(None);
        }
        if buy.await?.result["repeat"] != json!(true) {
            bought += 1;
        }
    }
    client.end(&target, &begun.nonce).await?;
    Ok(Some(bought))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashing_client_buys_every_item_exactly_once() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host"), vec![]).await?;
    let token = token_for(&cluster, "bob-phone")?;
    let target = Target::new(APP, "bob-phone").session("shop");
    let mut rng = rand::rng();
    let mut crashes = 0;
    // Each instance runs on a fresh connection and crashes at a random buy, that call dropped
    // at a random moment after it was sent; the next instance starts with `begin`. The last
    // one runs to the end.
    loop {
        let client = host.client(&token).await?;
        let crash = (crashes < 12).then(|| {
            (
                rng.random_range(0..16),
                Duration::from_micros(rng.random_range(0..8000)),
            )
        });
        match shopper(client, target.clone(), crash).await? {
            Some(_) => break,
            None => crashes += 1,
        }
    }
    assert!(crashes >= 2, "the client crashed only {crashes} times");
    let client = host.client(&token).await?;
    let bought = client
        .call_as(&target, vec![MethodCall::new("bought", vec![])])
        .await?
        .result;
    let want: Vec<Value> = (0..ITEMS).map(|i| json!(item(i))).collect();
    assert_eq!(bought, json!(want), "every item once, in order");

    // Two concurrent instances: the older one's nonce is stale once the newer began; it is
    // refused and never buys twice.
    let second = Target::new(APP, "bob-phone").session("shop2");
    let a = client.begin(&second).await?;
    let buy = |nonce: &str, i: u64| {
        let (client, second, nonce) = (client.clone(), second.clone(), nonce.to_string());
        async move {
            client
                .call_as(
                    &second,
                    vec![MethodCall::new(
                        "buy",
                        vec![json!(nonce), json!(i), json!(item(i))],
                    )],
                )
                .await
        }
    };
    buy(&a.nonce, 0).await?;
    buy(&a.nonce, 1).await?;
    let b = client.begin(&second).await?;
    assert_eq!(
        b.memento,
        Some(json!(1)),
        "the newer instance learns where the older stopped"
    );
    let stale = buy(&a.nonce, 2)
        .await
        .expect_err("a stale nonce is refused");
    assert_eq!(stale.code(), Some(ErrorCode::AppError), "{stale}");
    assert!(
        stale
            .to_string()
            .contains("not the session's current instance"),
        "{stale}"
    );
    buy(&b.nonce, 2).await?;
    assert!(
        !client.end(&second, &a.nonce).await?,
        "a stale instance cannot end it"
    );
    assert!(client.end(&second, &b.nonce).await?);
    assert!(client.end(&second, &b.nonce).await?, "end is idempotent");
    assert_eq!(
        client.begin(&second).await?.memento,
        None,
        "it ended: no memento"
    );
    let bought = client
        .call_as(&target, vec![MethodCall::new("bought", vec![])])
        .await?
        .result;
    let mut want: Vec<Value> = (0..ITEMS).map(|i| json!(item(i))).collect();
    want.extend((0..3).map(|i| json!(item(i))));
    assert_eq!(bought, json!(want));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sessions_calls_survive_host_failover_each_applied_once() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let args = || vec!["--lease-ms".to_string(), "2000".to_string()];
    let mut a = CaHost::start(&cluster, host_dir(&cluster, "a"), args()).await?;
    let b = CaHost::start(&cluster, host_dir(&cluster, "b"), args()).await?;
    let token = token_for(&cluster, "carol-phone")?;
    let target = Target::new(APP, "carol-phone").session("cart");
    // Host a holds the CA: it is activated there first.
    a.client(&token)
        .await?
        .call_as(&target, vec![MethodCall::new("increment", vec![])])
        .await?;
    let mut config = SessionConfig::new(vec![a.endpoint(), b.endpoint()], Some(token), target);
    config.timeout = Duration::from_secs(40);
    let session = Session::open(config)?;
    let begun = session.begin().await?;
    const CALLS: u64 = 150;
    let mut calls = Vec::new();
    for i in 0..CALLS {
        // Queued now, in order: one in flight, the rest waiting.
        let call = session.call("buy", vec![json!(begun.nonce), json!(i), json!(item(i))]);
        calls.push(tokio::spawn(call));
    }
    // Kill the holder while calls are in flight and queued.
    let admin = a.client(&cluster.token()).await?;
    eventually("calls to commit on host a", Duration::from_secs(20), || {
        let admin = admin.clone();
        async move {
            let v = admin.inspect(APP, "carol-phone").await.ok()?;
            (v["state"]["bought"].as_array()?.len() >= 20).then_some(())
        }
    })
    .await?;
    a.kill().await?;
    let mut answered = 0;
    for c in calls {
        c.await??;
        answered += 1;
    }
    assert_eq!(answered, CALLS);
    let bought = session.call("bought", vec![]).await?;
    let want: Vec<Value> = (0..CALLS).map(|i| json!(item(i))).collect();
    assert_eq!(bought, json!(want), "every call applied once, in order");
    assert!(session.end(&begun.nonce).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_refused_without_a_valid_token_and_others_need_a_grant_at_its_version()
-> anyhow::Result<()> {
    let cluster = cluster().await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host"), vec![]).await?;
    let alice = host.client(&token_for(&cluster, "alice-phone")?).await?;
    alice.call(APP, "alice-phone", "increment", vec![]).await?;
    let code = |r: Result<ca_client::Reply, CallError>| r.err().and_then(|e| e.code());

    // No token.
    let anonymous = CaClient::connect(&host.endpoint(), None).await?;
    assert_eq!(
        code(anonymous.call(APP, "alice-phone", "get", vec![]).await),
        Some(ErrorCode::NotAuthorized)
    );
    // An expired token.
    let expired = issue(
        &root_key(&cluster)?,
        &Constraints::any()
            .app(&AppName::parse(APP)?)
            .ca(&CaName::parse("alice-phone")?)
            .expires_at(SystemTime::now() - Duration::from_secs(60)),
    )?;
    let e = host
        .client(&expired.to_base64())
        .await?
        .call(APP, "alice-phone", "get", vec![])
        .await
        .expect_err("expired");
    assert_eq!(e.code(), Some(ErrorCode::NotAuthorized));
    assert!(e.to_string().contains("expired"), "{e}");
    // A token for another CA, with no grant.
    let bob = host.client(&token_for(&cluster, "bob-phone")?).await?;
    let e = bob
        .call(APP, "alice-phone", "increment", vec![])
        .await
        .expect_err("not granted");
    assert_eq!(e.code(), Some(ErrorCode::NotAuthorized));
    // Nor may it listen to alice's sessions.
    let e = bob
        .listen(&Target::new(APP, "alice-phone"), 0)
        .await
        .err()
        .and_then(|e| e.code());
    assert_eq!(e, Some(ErrorCode::NotAuthorized));
    // A non-owner may not create a CA, even one the rules would let it call.
    let e = bob
        .call(APP, "zed-phone", "increment", vec![])
        .await
        .expect_err("only the owner creates it");
    assert_eq!(e.code(), Some(ErrorCode::NotAuthorized));
    assert!(e.to_string().contains("only its owner zed"), "{e}");
    let spine = cluster.client()?;
    let app = AppName::parse(APP)?;
    let missing = spine
        .get_map(&app, &MapName::parse("zed-phone-castate")?, false)
        .await;
    assert_eq!(missing.err().map(|e| e.code()), Some(tonic::Code::NotFound));

    // The app's rule: {"aggregate": "{ca}-acl", "method": "*"}. Alice's ACL map goes through
    // versions 0 (nothing) 1 (carl) 2 (grant bob-phone) 3 (dave) 4 (revoke bob-phone) 5 (erin);
    // every call of bob's says which version it was decided at: allowed exactly at 2 and 3.
    let acl = MapName::parse("alice-phone-acl")?;
    spine.create_map(&app, &acl, vec![]).await?;
    let updates: Vec<(&str, Option<Value>)> = vec![
        ("carl", Some(json!(["caller"]))),
        ("bob-phone", Some(json!(["caller"]))),
        ("dave", Some(json!(["caller"]))),
        ("bob-phone", None),
        ("erin", Some(json!(["caller"]))),
    ];
    let calls = vec![
        MethodCall::new("increment", vec![]),
        MethodCall::new("acl_versions", vec![json!("alice-phone-acl")]),
    ];
    let decided_at = |r: Result<ca_client::Reply, CallError>| -> anyhow::Result<(bool, u64)> {
        match r {
            Ok(reply) => Ok((true, reply.result["alice-phone-acl"].as_u64().unwrap_or(99))),
            Err(e) if e.code() == Some(ErrorCode::NotAuthorized) => {
                let text = e.to_string();
                let at = text
                    .split("\"alice-phone-acl\":")
                    .nth(1)
                    .and_then(|t| t.split('}').next())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("no version in {text}"))?;
                Ok((false, at))
            }
            Err(e) => anyhow::bail!("{e}"),
        }
    };
    let allowed_calls = std::sync::atomic::AtomicU64::new(0);
    let seen = std::sync::Mutex::new(BTreeSet::new());
    for version in 0..=updates.len() as u64 {
        // Bob calls until a call was decided at this version (later ones may be too).
        eventually(
            "a call decided at the newest version",
            Duration::from_secs(20),
            || {
                let (bob, calls) = (bob.clone(), calls.clone());
                let (seen, allowed_calls) = (&seen, &allowed_calls);
                async move {
                    let (allowed, at) =
                        decided_at(bob.call_as(&Target::new(APP, "alice-phone"), calls).await)
                            .ok()?;
                    assert_eq!(
                        allowed,
                        (2..4).contains(&at),
                        "decided {allowed} at version {at} of alice-phone-acl"
                    );
                    allowed_calls
                        .fetch_add(u64::from(allowed), std::sync::atomic::Ordering::SeqCst);
                    seen.lock().ok()?.insert(at);
                    (at == version).then_some(())
                }
            },
        )
        .await?;
        if let Some((key, value)) = updates.get(version as usize) {
            let entry = value.clone().map(sharing_map::Entry::value);
            let cs = sharing_map::ChangeSet::from_ops(
                acl.clone(),
                version,
                sharing_map::UpdateId::parse(&format!("acl{version}"))?,
                [(std::sync::Arc::from(*key), entry)],
            );
            spine.update(&app, vec![cs]).await?;
        }
    }
    assert_eq!(
        *seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
        (0..=5).collect::<BTreeSet<u64>>()
    );
    // Only the granted calls incremented alice's count.
    let count = alice.call(APP, "alice-phone", "get", vec![]).await?.result;
    let allowed = allowed_calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(allowed >= 2, "granted calls at versions 2 and 3");
    assert_eq!(count, json!(1 + allowed));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_error_and_change_nothing() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host"), vec![]).await?;
    let client = host.client(&cluster.token()).await?;
    let ca = "erin-phone";
    let target = Target::new(APP, ca);
    client.call(APP, ca, "notify", vec![json!("kept")]).await?;
    let before = client.inspect(APP, ca).await?;
    let invalid: Vec<(Result<ca_client::Reply, CallError>, &str)> = vec![
        (
            client.call(APP, ca, "nope", vec![]).await,
            "no method \"nope\"",
        ),
        (
            client.call(APP, ca, "@nope", vec![]).await,
            "no method \"@nope\"",
        ),
        (
            client
                .call(APP, ca, "limit_queue", vec![json!("two")])
                .await,
            "argument 1 (n)",
        ),
        (
            client
                .call(APP, ca, "notify", vec![json!("x"), json!("bad name!")])
                .await,
            "session name",
        ),
        (
            client
                .call_as(
                    &target.clone().session("no spaces"),
                    vec![MethodCall::new("get", vec![])],
                )
                .await,
            "session name",
        ),
        (
            client
                .call_as(
                    &target.clone().from("Not-A-Ca"),
                    vec![MethodCall::new("get", vec![])],
                )
                .await,
            "from",
        ),
        (
            client
                .call(APP, ca, "notify", vec![json!("y".repeat(300 * 1024))])
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
        .listen(&target.clone().session("bad session"), 0)
        .await
        .err()
        .and_then(|e| e.code());
    assert_eq!(e, Some(ErrorCode::Invalid));
    assert!(
        client.end(&target, "").await?,
        "no instance to end: already ended"
    );
    let after = client.inspect(APP, ca).await?;
    assert_eq!(before["version"], after["version"], "nothing committed");
    assert_eq!(before["sessions"], after["sessions"]);
    // Inspect is for admins only.
    let own = host.client(&token_for(&cluster, ca)?).await?;
    assert_eq!(
        own.inspect(APP, ca).await.err().and_then(|e| e.code()),
        Some(ErrorCode::NotAuthorized)
    );

    // A session's bound: requests queued beyond it, oldest unsent first, are dropped; the rest
    // are answered in order.
    let mut config = SessionConfig::new(vec![host.endpoint()], Some(cluster.token()), target);
    config.max_queued = 5;
    let session = Session::open(config)?;
    let mut calls = Vec::new();
    for i in 0..60 {
        let call = session.call("notify", vec![json!(format!("n{i}")), json!("bounded")]);
        calls.push(tokio::spawn(call));
    }
    let (mut answered, mut dropped) = (Vec::new(), 0);
    for (i, c) in calls.into_iter().enumerate() {
        match c.await? {
            Ok(_) => answered.push(i),
            Err(SessionError::Dropped(5)) => dropped += 1,
            Err(e) => anyhow::bail!("call {i}: {e}"),
        }
    }
    assert!(
        dropped > 0,
        "nothing was dropped: the bound was never reached"
    );
    assert!(answered.contains(&59), "the newest is kept");
    let outq = session.call("outq", vec![json!("bounded")]).await?;
    let order: Vec<String> = outq
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["args"][0].as_str().map(str::to_string))
        .collect();
    let want: Vec<String> = answered.iter().map(|i| format!("n{i}")).collect();
    assert_eq!(
        order, want,
        "answered calls ran in the order they were made"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_makes_no_progress_closes_with_the_reason() -> anyhow::Result<()> {
    // Nothing listens on this port: every attempt fails, retryably, until the timeout.
    let nowhere = format!("127.0.0.1:{}", spine_tests::free_port()?);
    let mut config = SessionConfig::new(vec![nowhere], None, Target::new(APP, "ann-phone"));
    config.timeout = Duration::from_millis(1500);
    let session = Session::open(config)?;
    let started = tokio::time::Instant::now();
    let e = session.call("get", vec![]).await.expect_err("no host");
    assert!(matches!(e, SessionError::Closed(_)), "{e}");
    assert!(e.to_string().contains("no progress"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Closed for good, with the same reason.
    let again = session.call("get", vec![]).await.expect_err("closed");
    assert_eq!(again, e);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_command_listens_begins_ends_and_inspects() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host"), vec![]).await?;
    let token = cluster.token();
    let ca = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(spine_tests::bin("ca")?);
        cmd.args([
            "--endpoint",
            &host.endpoint(),
            "--token",
            &token,
            "--output",
            "json",
        ])
        .args(args)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        anyhow::Ok(cmd)
    };
    let run = |args: &[&str]| {
        let cmd = ca(args);
        async move {
            let out = cmd?.output().await?;
            anyhow::ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(serde_json::from_slice::<Value>(&out.stdout)?)
        }
    };
    run(&["call", APP, "ann-phone", "increment"]).await?;
    let listener = ca(&[
        "--session",
        "cli",
        "listen",
        APP,
        "ann-phone",
        "--count",
        "2",
    ])?
    .spawn()?;
    // One notification, queued whether or not the listener is connected yet; it is taken once
    // the session's queue is empty again (acknowledged).
    run(&["call", APP, "ann-phone", "notify", "ping", "cli"]).await?;
    eventually(
        "the listener to take a notification",
        Duration::from_secs(20),
        || {
            let run = &run;
            async move {
                let view = run(&["inspect", APP, "ann-phone"]).await.ok()?;
                view["sessions"].get("cli").is_none().then_some(())
            }
        },
    )
    .await?;
    run(&[
        "call",
        APP,
        "ann-phone",
        "notify",
        "{\"last\": true}",
        "cli",
    ])
    .await?;
    let out = tokio::time::timeout(ARRIVES, listener.wait_with_output()).await??;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l["session"] == json!("cli")));
    assert_eq!(lines[0]["args"], json!(["ping"]));
    assert_eq!(lines[1]["args"], json!([{"last": true}]));
    assert!(lines[0]["seq"].as_u64() < lines[1]["seq"].as_u64());
    let begun = run(&["--session", "s", "session", "begin", APP, "ann-phone"]).await?;
    let nonce = begun["nonce"].as_str().unwrap_or_default().to_string();
    assert_eq!(begun["memento"], Value::Null);
    let bought = run(&[
        "--session",
        "s",
        "call",
        APP,
        "ann-phone",
        "buy",
        &nonce,
        "0",
        "tea",
    ])
    .await?;
    assert_eq!(bought["result"], json!({"index": 0, "repeat": false}));
    let again = run(&["--session", "s", "session", "begin", APP, "ann-phone"]).await?;
    assert_eq!(again["memento"], json!(0));
    let ended = run(&["--session", "s", "session", "end", APP, "ann-phone", &nonce]).await?;
    assert_eq!(ended, json!(false), "the first instance is stale now");
    Ok(())
}
