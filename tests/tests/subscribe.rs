//! Scenarios 4, 5 and 8: a subscriber sees every version once and in order across the restart of
//! the node it follows; resuming beyond the retained history gives a snapshot, then deltas; a
//! learner added online catches up through a snapshot and serves subscriptions.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sharing_map::{AppName, ChangeSet, Entry, MapName, UpdateId};
use spine_client::{Client, MapUpdate, SubscriptionSpec};
use spine_proto::v1 as pb;
use spine_tests::{Cluster, ClusterOpts, RawClient, eventually, req};
use tokio_stream::StreamExt;

const APP: &str = "acme-shop";

fn change_set(map: &MapName, version: u64) -> anyhow::Result<ChangeSet> {
    Ok(ChangeSet::from_ops(
        map.clone(),
        version,
        UpdateId::parse(&format!("u{version}"))?,
        [(Arc::from("k"), Some(Entry::value(json!(version))))],
    ))
}

#[tokio::test]
async fn a_follower_subscriber_sees_every_version_once_across_its_restart() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;
    let app = AppName::parse(APP)?;
    let map = MapName::parse("bob-tv-prices")?;
    let writer = cluster
        .client_builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    writer.create_map(&app, &map, vec![]).await?;
    // The subscriber starts on the follower and knows the other nodes to fail over to.
    let mut endpoints = vec![cluster.endpoint(follower)];
    endpoints.extend(
        cluster
            .ids()
            .into_iter()
            .filter(|id| *id != follower)
            .map(|id| cluster.endpoint(id)),
    );
    let reader = Client::builder(endpoints)
        .token(cluster.token())
        .resume_deadline(Duration::from_secs(30))
        .build()?;
    let mut sub = reader
        .subscribe(vec![SubscriptionSpec::map(app.clone(), &map)])
        .await?;

    const TOTAL: u64 = 150;
    let write_task = {
        let (writer, app, map) = (writer.clone(), app.clone(), map.clone());
        tokio::spawn(async move {
            for v in 0..TOTAL {
                writer.update(&app, vec![change_set(&map, v)?]).await?;
            }
            anyhow::Ok(())
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut snapshots = 0;
    let mut restarted = false;
    let collect = async {
        while seen.last() != Some(&TOTAL) {
            let event = sub.next().await?;
            for u in event.updates {
                match &u {
                    MapUpdate::Snapshot { .. } => snapshots += 1,
                    MapUpdate::Delta { change_set, .. } => {
                        anyhow::ensure!(
                            Some(&change_set.version()) == seen.last(),
                            "delta for {} after {:?}",
                            change_set.version(),
                            seen.last()
                        );
                    }
                }
                seen.push(u.version());
            }
            if !restarted && seen.last().is_some_and(|v| *v >= TOTAL / 3) {
                restarted = true;
                cluster.kill(follower).await?;
                cluster.restart(follower).await?;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(90), collect).await??;
    write_task.await??;
    assert!(restarted);
    assert_eq!(
        snapshots, 1,
        "only the first event may be a snapshot (of version 0)"
    );
    let expected: Vec<u64> = (0..=TOTAL).collect();
    assert_eq!(seen, expected, "every version exactly once, in order");
    Ok(())
}

async fn open(
    c: &mut RawClient,
    subs: Vec<pb::Subscription>,
) -> anyhow::Result<tonic::Streaming<pb::SubscribeEvent>> {
    let requests = subs.into_iter().map(|s| pb::SubscribeRequest {
        op: Some(pb::subscribe_request::Op::Add(s)),
    });
    // Keep the request side open: the stream lives as long as the client sends nothing more.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for r in requests {
        tx.send(r).await?;
    }
    tokio::spawn(async move {
        tx.closed().await;
    });
    Ok(c.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner())
}

/// Versions of the map events in the next non-progress event.
async fn next_versions(
    stream: &mut tonic::Streaming<pb::SubscribeEvent>,
) -> anyhow::Result<Vec<String>> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
        if event.events.is_empty() {
            continue;
        }
        return Ok(event
            .events
            .into_iter()
            .map(|e| match e.kind {
                Some(pb::map_event::Kind::Delta(cs)) => format!("d{}", cs.version + 1),
                Some(pb::map_event::Kind::Snapshot(s)) => format!("s{}", s.version),
                None => "?".into(),
            })
            .collect());
    }
}

#[tokio::test]
async fn resuming_beyond_retained_history_gives_a_snapshot_then_deltas() -> anyhow::Result<()> {
    let mut opts = ClusterOpts::default();
    opts.args.extend(["--history".into(), "5".into()]);
    let cluster = Cluster::start(3, opts).await?;
    let mut c = cluster.raw(1).await?;
    c.create_map(req::create(APP, "bob-tv-x")).await?;
    for v in 0..20u64 {
        c.update(req::update(
            APP,
            "bob-tv-x",
            v,
            &format!("u{v}"),
            vec![req::put("k", &v.to_string())],
        ))
        .await?;
    }
    cluster.wait_converged(Duration::from_secs(20)).await?;
    let sub = |from: u64| pb::Subscription {
        app: APP.into(),
        map: "bob-tv-x".into(),
        prefix: false,
        from_version: Some(from),
    };
    let mut follower = cluster.raw(3).await?;
    let mut old = open(&mut follower, vec![sub(2)]).await?;
    assert_eq!(next_versions(&mut old).await?, ["s20"]);
    let mut recent = open(&mut follower, vec![sub(17)]).await?;
    assert_eq!(next_versions(&mut recent).await?, ["d18", "d19", "d20"]);
    c.update(req::update(
        APP,
        "bob-tv-x",
        20,
        "u20",
        vec![req::put("k", "20")],
    ))
    .await?;
    assert_eq!(next_versions(&mut old).await?, ["d21"]);
    assert_eq!(next_versions(&mut recent).await?, ["d21"]);
    // Updates of several maps committed together arrive together.
    c.create_map(req::create(APP, "bob-tv-y")).await?;
    // The subscription goes to node 3; let it apply the creation first, so both maps are in
    // the first event.
    cluster.wait_converged(Duration::from_secs(20)).await?;
    let mut both = open(
        &mut follower,
        vec![pb::Subscription {
            app: APP.into(),
            map: "bob-tv-".into(),
            prefix: true,
            from_version: None,
        }],
    )
    .await?;
    let first = next_versions(&mut both).await?;
    assert_eq!(first, ["s21", "s0"]);
    let mut together = req::update(APP, "bob-tv-x", 21, "u21", vec![req::put("k", "21")]);
    together
        .change_sets
        .extend(req::update(APP, "bob-tv-y", 0, "u21", vec![req::put("k", "1")]).change_sets);
    c.update(together).await?;
    assert_eq!(next_versions(&mut both).await?, ["d22", "d1"]);
    Ok(())
}

#[tokio::test]
async fn a_learner_catches_up_by_snapshot_and_serves_subscriptions() -> anyhow::Result<()> {
    let mut opts = ClusterOpts::default();
    opts.args.extend([
        "--compact-after".into(),
        "20".into(),
        "--keep-entries".into(),
        "5".into(),
    ]);
    let mut cluster = Cluster::start(3, opts.clone()).await?;
    let mut c = cluster.raw(1).await?;
    c.create_map(req::create(APP, "bob-tv-x")).await?;
    for v in 0..60u64 {
        c.update(req::update(
            APP,
            "bob-tv-x",
            v,
            &format!("u{v}"),
            vec![req::put(&format!("k{v}"), &v.to_string())],
        ))
        .await?;
    }
    cluster.wait_converged(Duration::from_secs(20)).await?;
    let addr = cluster.spawn_joiner(4, Vec::new())?;
    let members = c
        .add_learner(pb::AddLearnerRequest { id: 4, addr })
        .await?
        .into_inner()
        .nodes;
    assert!(
        members.iter().any(|n| n.id == 4 && n.role == "learner"),
        "{members:?}"
    );
    let converged = cluster.wait_converged(Duration::from_secs(30)).await?;
    assert_eq!(converged.maps, 1);
    let learner_log = cluster.log_tail(4, 200);
    assert!(
        learner_log.contains("installed a snapshot"),
        "the learner did not catch up by snapshot"
    );
    // It knows the group it joined: every membership change after the snapshot applied.
    assert!(
        !learner_log.contains("membership change not applied"),
        "{learner_log}"
    );
    // It serves subscriptions from its own applied state.
    let mut learner = cluster.raw(4).await?;
    let mut stream = open(
        &mut learner,
        vec![pb::Subscription {
            app: APP.into(),
            map: "bob-tv-x".into(),
            prefix: false,
            from_version: Some(59),
        }],
    )
    .await?;
    assert_eq!(next_versions(&mut stream).await?, ["d60"]);
    c.update(req::update(
        APP,
        "bob-tv-x",
        60,
        "u60",
        vec![req::put("k60", "60")],
    ))
    .await?;
    assert_eq!(next_versions(&mut stream).await?, ["d61"]);
    // Promoted online, it becomes a voter.
    let members = c
        .promote(pb::PromoteRequest { id: 4 })
        .await?
        .into_inner()
        .nodes;
    assert!(
        members.iter().any(|n| n.id == 4 && n.role == "voter"),
        "{members:?}"
    );
    eventually(
        "node 4 to see itself a voter",
        Duration::from_secs(20),
        || async {
            let s = cluster.status(4).await.ok()?;
            s.nodes
                .iter()
                .any(|n| n.id == 4 && n.role == "voter")
                .then_some(())
        },
    )
    .await?;
    // Removing it shrinks the group again; writes go on.
    c.remove_node(pb::RemoveNodeRequest { id: 4 }).await?;
    c.update(req::update(
        APP,
        "bob-tv-x",
        61,
        "u61",
        vec![req::put("k61", "61")],
    ))
    .await?;
    cluster.kill(4).await?;
    cluster.wait_converged(Duration::from_secs(20)).await?;
    Ok(())
}

#[tokio::test]
async fn a_slow_subscriber_gets_snapshots_and_does_not_hold_back_others() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let app = AppName::parse(APP)?;
    const WRITERS: u64 = 8;
    const UPDATES: u64 = 400;
    let maps: Vec<MapName> = (0..WRITERS)
        .map(|w| MapName::parse(&format!("bob-load{w}-data")))
        .collect::<Result<_, _>>()?;
    let client = cluster
        .client_builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    for m in &maps {
        client.create_map(&app, m, vec![]).await?;
    }
    let prefix = pb::Subscription {
        app: APP.into(),
        map: "bob-load".into(),
        prefix: true,
        from_version: None,
    };
    // The slow subscriber opens its stream and then reads nothing while the writers run.
    let mut node3 = cluster.raw(3).await?;
    let mut slow = open(&mut node3, vec![prefix.clone()]).await?;
    let mut fast = Client::builder(vec![cluster.endpoint(3)])
        .token(cluster.token())
        .build()?
        .subscribe(vec![SubscriptionSpec::prefix(app.clone(), "bob-load")])
        .await?;
    let big = "x".repeat(4096);
    let mut tasks = Vec::new();
    for m in maps.clone() {
        let (client, app, big) = (client.clone(), app.clone(), big.clone());
        tasks.push(tokio::spawn(async move {
            for v in 0..UPDATES {
                let cs = ChangeSet::from_ops(
                    m.clone(),
                    v,
                    UpdateId::parse(&format!("u{v}"))?,
                    [(
                        Arc::from("k"),
                        Some(Entry::value(json!(format!("{v}{big}")))),
                    )],
                );
                client.update(&app, vec![cs]).await?;
            }
            anyhow::Ok(())
        }));
    }
    // The fast subscriber keeps up: after the first snapshots it sees nothing but deltas.
    let mut fast_last: std::collections::BTreeMap<MapName, u64> = Default::default();
    let mut fast_snapshots = 0;
    let keep_up = async {
        while fast_last.len() < maps.len() || fast_last.values().any(|v| *v < UPDATES) {
            for u in fast.next().await?.updates {
                if let MapUpdate::Snapshot { .. } = u {
                    fast_snapshots += 1;
                }
                fast_last.insert(u.map().clone(), u.version());
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), keep_up).await??;
    for t in tasks {
        t.await??;
    }
    assert_eq!(
        fast_snapshots, WRITERS as usize,
        "the fast subscriber was resynchronized"
    );

    // Now the slow one reads: its backlog was replaced by snapshots, and per map it is still
    // ordered and gap-free.
    let mut last: std::collections::BTreeMap<String, u64> = Default::default();
    let mut later_snapshots = 0;
    let catch_up = async {
        while last.len() < maps.len() || last.values().any(|v| *v < UPDATES) {
            let event = slow
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
            for e in event.events {
                match e.kind {
                    Some(pb::map_event::Kind::Delta(cs)) => {
                        let have = last.get(&cs.map).copied();
                        anyhow::ensure!(
                            have == Some(cs.version),
                            "{}: delta for {} after {have:?}",
                            cs.map,
                            cs.version
                        );
                        last.insert(cs.map, cs.version + 1);
                    }
                    Some(pb::map_event::Kind::Snapshot(s)) => {
                        let have = last.get(&s.map).copied();
                        anyhow::ensure!(
                            have.is_none_or(|h| s.version > h),
                            "{}: snapshot {} after {have:?}",
                            s.map,
                            s.version
                        );
                        if have.is_some() {
                            later_snapshots += 1;
                        }
                        last.insert(s.map, s.version);
                    }
                    None => anyhow::bail!("empty map event"),
                }
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), catch_up).await??;
    assert!(
        later_snapshots > 0,
        "the slow subscriber's backlog was never coalesced into snapshots"
    );
    Ok(())
}
