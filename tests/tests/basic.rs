//! Scenarios 1, 3 and 7: writes through every node converge; a full restart keeps everything;
//! bad input changes nothing and gets the right code.

use std::time::Duration;

use spine_proto::v1 as pb;
use spine_tests::{Cluster, ClusterOpts, req};
use tonic::Code;

const APP: &str = "acme-shop";

#[tokio::test]
async fn writes_through_every_node_converge() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    for id in cluster.ids() {
        let mut c = cluster.raw(id).await?;
        let map = format!("bob-node{id}-prices");
        let created = c.create_map(req::create(APP, &map)).await?.into_inner();
        assert!(created.created);
        for v in 0..20u64 {
            let r = c
                .update(req::update(
                    APP,
                    &map,
                    v,
                    &format!("u{v}"),
                    vec![req::put(&format!("k{v}"), &v.to_string())],
                ))
                .await?
                .into_inner();
            assert_eq!(r.versions, vec![v + 1]);
        }
    }
    let digest = cluster.wait_converged(Duration::from_secs(20)).await?;
    assert_eq!(digest.maps, 3);
    // Every node serves every map, linearizably, at its final version.
    for id in cluster.ids() {
        let mut c = cluster.raw(id).await?;
        for owner in cluster.ids() {
            let got = spine_tests::get_map(&mut c, APP, &format!("bob-node{owner}-prices"), false)
                .await?;
            assert_eq!(got.version, 20);
            assert_eq!(got.entries.len(), 20);
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_full_restart_keeps_state_and_versions() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let mut c = cluster.raw(1).await?;
    c.create_map(req::create(APP, "bob-tv-x")).await?;
    for v in 0..10u64 {
        c.update(req::update(
            APP,
            "bob-tv-x",
            v,
            &format!("u{v}"),
            vec![req::put("k", &v.to_string())],
        ))
        .await?;
    }
    let before = cluster.wait_converged(Duration::from_secs(20)).await?;
    for id in cluster.ids() {
        cluster.stop(id).await?;
    }
    for id in cluster.ids() {
        cluster.restart(id).await?;
    }
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let after = cluster.wait_converged(Duration::from_secs(20)).await?;
    assert_eq!(
        after.digest, before.digest,
        "state changed across a restart"
    );
    let mut c = cluster.raw(2).await?;
    let r = c
        .update(req::update(
            APP,
            "bob-tv-x",
            10,
            "u10",
            vec![req::put("k", "10")],
        ))
        .await?
        .into_inner();
    assert_eq!(r.versions, vec![11], "writes continue at the next version");
    Ok(())
}

#[tokio::test]
async fn bad_input_changes_nothing_and_gets_the_right_code() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let mut c = cluster.raw(2).await?;
    c.create_map(req::create(APP, "bob-tv-x")).await?;
    c.update(req::update(
        APP,
        "bob-tv-x",
        0,
        "first",
        vec![req::put("k", "1")],
    ))
    .await?;
    let before = cluster.wait_converged(Duration::from_secs(20)).await?;

    let one = |app: &str, map: &str, version: u64, id: &str, key: &str, json: &str| {
        req::update(app, map, version, id, vec![req::put(key, json)])
    };
    let big = format!("\"{}\"", "v".repeat(300 * 1024));
    let long_key = "k".repeat(2000);
    let refused = [
        // Invalid names quote the name and the rule.
        (
            one(APP, "Bob-tv-x", 1, "u", "k", "1"),
            Code::InvalidArgument,
            "\"Bob-tv-x\"",
        ),
        (
            one("ab-shop", "bob-tv-x", 1, "u", "k", "1"),
            Code::InvalidArgument,
            "shorter than 3",
        ),
        // Oversize keys and values.
        (
            one(APP, "bob-tv-x", 1, "u", &long_key, "1"),
            Code::InvalidArgument,
            "the limit is 1024",
        ),
        (
            one(APP, "bob-tv-x", 1, "u", "k", &big),
            Code::InvalidArgument,
            "the limit is 262144",
        ),
        // Malformed change sets.
        (
            one(APP, "bob-tv-x", 1, "u", "k", "{not json"),
            Code::InvalidArgument,
            "JSON value of key \"k\"",
        ),
        (
            one(APP, "bob-tv-x", 1, "", "k", "1"),
            Code::InvalidArgument,
            "update id",
        ),
        (
            pb::UpdateRequest {
                app: APP.into(),
                change_sets: vec![],
            },
            Code::InvalidArgument,
            "at least one change set",
        ),
        // Version conflicts give the current version.
        (
            one(APP, "bob-tv-x", 0, "second", "k", "2"),
            Code::FailedPrecondition,
            "current version is 1",
        ),
        (
            one(APP, "bob-tv-x", 7, "second", "k", "2"),
            Code::FailedPrecondition,
            "current version is 1",
        ),
        // Unknown maps.
        (
            one(APP, "bob-tv-nope", 0, "u", "k", "1"),
            Code::NotFound,
            "does not exist",
        ),
    ];
    for (request, code, text) in refused {
        match c.update(request).await {
            Err(s) => {
                assert_eq!(s.code(), code, "{}", s.message());
                assert!(
                    s.message().contains(text),
                    "message {:?} lacks {text:?}",
                    s.message()
                );
            }
            Ok(r) => panic!("accepted: {:?}", r.into_inner()),
        }
    }
    let after = cluster.wait_converged(Duration::from_secs(20)).await?;
    assert_eq!(
        after.digest, before.digest,
        "a refused request changed state"
    );
    assert!(after.applied_index >= before.applied_index);

    // A retry of the last update id succeeds idempotently with the version it produced.
    let again = c
        .update(req::update(
            APP,
            "bob-tv-x",
            0,
            "first",
            vec![req::put("k", "1")],
        ))
        .await?
        .into_inner();
    assert_eq!(again.versions, vec![1]);
    let after_retry = cluster.wait_converged(Duration::from_secs(20)).await?;
    assert_eq!(after_retry.digest, before.digest);
    // Create-if-absent returns the existing map unchanged.
    let created = c
        .create_map(req::create(APP, "bob-tv-x"))
        .await?
        .into_inner();
    assert_eq!((created.version, created.created), (1, false));
    Ok(())
}

#[tokio::test]
async fn leadership_moves_on_request_and_writes_go_on() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let target = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .ok_or_else(|| anyhow::anyhow!("no other node"))?;
    // Any node accepts the request; it is forwarded to the leader.
    let mut c = cluster.raw(target).await?;
    c.transfer_leader(pb::TransferLeaderRequest { id: target })
        .await?;
    spine_tests::eventually("the new leader", Duration::from_secs(20), || async {
        let s = cluster.status(target).await.ok()?;
        (s.state == "leader").then_some(())
    })
    .await?;
    c.create_map(req::create(APP, "bob-tv-x")).await?;
    let refused = c
        .transfer_leader(pb::TransferLeaderRequest { id: 99 })
        .await;
    assert!(
        refused.is_err_and(
            |s| s.code() == Code::InvalidArgument && s.message().contains("not a voter")
        )
    );
    Ok(())
}

#[tokio::test]
async fn maps_are_listed_by_name_or_prefix() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let mut c = cluster.raw(1).await?;
    for map in ["bob-tv-a", "bob-tv-b", "bob-tv-c", "ann-tv-a"] {
        c.create_map(req::create(APP, map)).await?;
    }
    c.update(req::update(
        APP,
        "bob-tv-b",
        0,
        "u",
        vec![req::put("k", "1")],
    ))
    .await?;
    let client = cluster.client()?;
    let app = sharing_map::AppName::parse(APP)?;
    let names = ["bob-tv-c", "bob-tv-nope", "bob-tv-b", "ann-tv-a"]
        .map(sharing_map::MapName::parse)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    // In the order asked, missing maps left out, linearizable and stale alike.
    for stale_ok in [false, true] {
        let listed = client.map_versions(&app, &names, stale_ok).await?;
        let got: Vec<(String, u64)> = listed
            .iter()
            .map(|m| (m.name.to_string(), m.version))
            .collect();
        assert_eq!(
            got,
            [
                ("bob-tv-c".to_string(), 0),
                ("bob-tv-b".to_string(), 1),
                ("ann-tv-a".to_string(), 0)
            ]
        );
    }
    let by_prefix = client.list_maps(&app, "bob-", false).await?;
    assert_eq!(by_prefix.len(), 3);

    // Names and a prefix together, bad names and too many names are refused.
    let list = |prefix: &str, names: Vec<String>| pb::ListMapsRequest {
        app: APP.into(),
        prefix: prefix.into(),
        names,
        ..Default::default()
    };
    let refused = [
        (
            list("bob-", vec!["bob-tv-a".into()]),
            "either a prefix or names",
        ),
        (list("", vec!["Bob-tv-a".into()]), "\"Bob-tv-a\""),
        (
            list("", (0..10_001).map(|i| format!("bob-tv-m{i}")).collect()),
            "at most 10000",
        ),
    ];
    for (request, text) in refused {
        match c.list_maps(request).await {
            Err(s) => {
                assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
                assert!(
                    s.message().contains(text),
                    "{:?} lacks {text:?}",
                    s.message()
                );
            }
            Ok(r) => panic!("accepted: {:?}", r.into_inner()),
        }
    }
    Ok(())
}

/// The state machine is written in checkpoints; updates after the last one live in the Raft log
/// only. Nodes killed with SIGKILL long before their next checkpoint come back with every
/// acknowledged update (replayed from the log), including the last update ids that make retries
/// idempotent.
#[tokio::test]
async fn killed_nodes_replay_the_log_after_their_last_checkpoint() -> anyhow::Result<()> {
    let mut opts = ClusterOpts::default();
    // No checkpoint by time during the test: only at a graceful stop.
    opts.args
        .extend(["--checkpoint-ms".into(), "3600000".into()]);
    let mut cluster = Cluster::start(3, opts).await?;
    let mut c = cluster.raw(1).await?;
    let maps = ["bob-tv-a", "bob-tv-b", "bob-tv-c"];
    let write = |map: &str, v: u64| {
        let mut r = req::update(
            APP,
            map,
            v,
            &format!("u{v}"),
            vec![req::put(&format!("k{v}"), &v.to_string())],
        );
        // Every update also removes the key the one before put.
        if v > 0 {
            r.change_sets[0].remove.push(format!("k{}", v - 1));
        }
        r
    };
    for map in maps {
        c.create_map(req::create(APP, map)).await?;
        for v in 0..10 {
            c.update(write(map, v)).await?;
        }
    }
    // Node 1 stops gracefully (a checkpoint at version 10), then 10 more updates per map.
    cluster.wait_converged(Duration::from_secs(20)).await?;
    cluster.stop(1).await?;
    cluster.restart(1).await?;
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let mut c = cluster.raw(2).await?;
    for map in maps {
        for v in 10..20 {
            c.update(write(map, v)).await?;
        }
    }
    let before = cluster.wait_converged(Duration::from_secs(20)).await?;
    for id in cluster.ids() {
        cluster.kill(id).await?;
    }
    for id in cluster.ids() {
        cluster.restart(id).await?;
    }
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let after = cluster.wait_converged(Duration::from_secs(20)).await?;
    assert_eq!(after.digest, before.digest, "state changed across SIGKILL");
    for id in cluster.ids() {
        let mut c = cluster.raw(id).await?;
        for map in maps {
            let got = spine_tests::get_map(&mut c, APP, map, true).await?;
            assert_eq!(got.version, 20, "node {id}: {map}");
            let keys: Vec<&str> = got.entries.iter().map(|e| e.key.as_str()).collect();
            assert_eq!(keys, ["k19"], "node {id}: {map}");
        }
    }
    // The retry of the last update is answered idempotently; the next one goes on.
    let mut c = cluster.raw(3).await?;
    for map in maps {
        let again = c.update(write(map, 19)).await?.into_inner();
        assert_eq!(again.versions, vec![20], "{map}");
        let next = c.update(write(map, 20)).await?.into_inner();
        assert_eq!(next.versions, vec![21], "{map}");
    }
    Ok(())
}

/// `UpdateBatch`: independent updates in one request, each with its own result.
#[tokio::test]
async fn a_batch_applies_each_update_on_its_own_and_retries_idempotently() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let mut c = cluster.raw(2).await?;
    for m in ["ann-tv-x", "bob-tv-y", "cat-tv-z"] {
        c.create_map(req::create(APP, m)).await?;
    }
    let code = |r: &pb::UpdateResult| Code::from_i32(r.code);
    let batch = pb::UpdateBatchRequest {
        updates: vec![
            req::update(APP, "ann-tv-x", 0, "a1", vec![req::put("k", "1")]),
            req::update(APP, "bob-tv-y", 4, "b1", vec![req::put("k", "1")]), // stale version
            req::update(APP, "Not-A-Map", 0, "n1", vec![req::put("k", "1")]), // bad name
            req::update(APP, "dan-tv-w", 0, "d1", vec![req::put("k", "1")]), // no such map
            req::update(APP, "cat-tv-z", 0, "c1", vec![req::put("k", "1")]),
            req::update(APP, "ann-tv-x", 1, "a2", vec![req::put("k", "2")]), // same map, next version
        ],
    };
    let answer = c.update_batch(batch.clone()).await?.into_inner();
    let codes: Vec<Code> = answer.results.iter().map(code).collect();
    assert_eq!(
        codes,
        vec![
            Code::Ok,
            Code::FailedPrecondition,
            Code::InvalidArgument,
            Code::NotFound,
            Code::Ok,
            Code::Ok
        ],
        "{answer:?}"
    );
    assert_eq!(answer.results[0].versions, vec![1]);
    assert_eq!(answer.results[5].versions, vec![2]);
    assert!(
        answer.results[1].message.contains("current version is 0"),
        "{}",
        answer.results[1].message
    );
    assert!(
        answer.results[2].message.contains("Not-A-Map"),
        "{}",
        answer.results[2].message
    );
    assert!(answer.index > 0);
    // The refused updates changed nothing; the others are there.
    let y = spine_tests::get_map(&mut c, APP, "bob-tv-y", false).await?;
    assert_eq!(y.version, 0);
    let x = spine_tests::get_map(&mut c, APP, "ann-tv-x", false).await?;
    assert_eq!(x.version, 2);

    // A retry of the last update of a map is answered with the version it produced.
    let retry = pb::UpdateBatchRequest {
        updates: vec![
            req::update(APP, "ann-tv-x", 1, "a2", vec![req::put("k", "2")]),
            req::update(APP, "cat-tv-z", 0, "c1", vec![req::put("k", "1")]),
        ],
    };
    let again = c.update_batch(retry).await?.into_inner();
    assert!(
        again.results.iter().all(|r| code(r) == Code::Ok),
        "{again:?}"
    );
    assert_eq!(again.results[0].versions, vec![2]);
    assert_eq!(again.results[1].versions, vec![1]);

    // An empty batch is refused whole.
    let empty = c
        .update_batch(pb::UpdateBatchRequest { updates: vec![] })
        .await;
    assert_eq!(empty.err().map(|s| s.code()), Some(Code::InvalidArgument));
    let digest = cluster.wait_converged(Duration::from_secs(20)).await?;
    assert_eq!(digest.maps, 3);
    Ok(())
}
