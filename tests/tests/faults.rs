//! Scenarios 2 and 6: the leader is killed again and again during concurrent writes; a node cut
//! off from the majority accepts no write and catches up after healing. And a crash mid-append:
//! a torn last record in the Raft log is dropped and nothing acknowledged is lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use sharing_map::{AppName, ChangeSet, Entry, MapName, UpdateId};
use spine_client::Client;
use spine_proto::v1 as pb;
use spine_tests::{Cluster, ClusterOpts, eventually, get_map, req};
use tonic::Code;

const APP: &str = "acme-shop";

fn change_set(map: &MapName, version: u64) -> anyhow::Result<ChangeSet> {
    Ok(ChangeSet::from_ops(
        map.clone(),
        version,
        UpdateId::parse(&format!("w-{version}"))?,
        [(
            Arc::from(format!("k{version}")),
            Some(Entry::value(json!(version))),
        )],
    ))
}

/// Writes to its own map until told to stop; returns the last acknowledged version.
async fn writer(
    client: Client,
    app: AppName,
    map: MapName,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
) -> anyhow::Result<u64> {
    client.create_map(&app, &map, vec![]).await?;
    let mut version = 0;
    while !stop.load(Ordering::SeqCst) {
        let versions = client
            .update(&app, vec![change_set(&map, version)?])
            .await
            .map_err(|e| anyhow::anyhow!("{map} at version {version}: {e}"))?;
        anyhow::ensure!(
            versions == vec![version + 1],
            "{map}: got {versions:?} for {version}"
        );
        version += 1;
        acks.fetch_add(1, Ordering::SeqCst);
    }
    Ok(version)
}

#[tokio::test]
async fn killing_the_leader_repeatedly_loses_no_acknowledged_update() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let app = AppName::parse(APP)?;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = cluster
            .client_builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let map = MapName::parse(&format!("bob-writer{w}-data"))?;
        writers.push((
            map.clone(),
            tokio::spawn(writer(client, app.clone(), map, stop.clone(), acks.clone())),
        ));
    }
    for round in 0..3 {
        let target = acks.load(Ordering::SeqCst) + 40;
        eventually(
            "writers to make progress",
            Duration::from_secs(30),
            || async { (acks.load(Ordering::SeqCst) >= target).then_some(()) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
        cluster.kill(leader).await?;
        cluster.wait_for_leader(Duration::from_secs(20)).await?;
        cluster.restart(leader).await?;
    }
    let target = acks.load(Ordering::SeqCst) + 40;
    eventually(
        "writers to go on after the last kill",
        Duration::from_secs(30),
        || async { (acks.load(Ordering::SeqCst) >= target).then_some(()) },
    )
    .await?;
    stop.store(true, Ordering::SeqCst);
    let mut last: BTreeMap<MapName, u64> = BTreeMap::new();
    for (map, w) in writers {
        last.insert(map, w.await??);
    }
    cluster.wait_converged(Duration::from_secs(30)).await?;
    assert_every_acknowledged_update_is_everywhere(&cluster, &last).await
}

/// Every acknowledged update (`last`: each map's last acknowledged version) is present on every
/// node, and versions are gap-free.
async fn assert_every_acknowledged_update_is_everywhere(
    cluster: &Cluster,
    last: &BTreeMap<MapName, u64>,
) -> anyhow::Result<()> {
    for id in cluster.ids() {
        let mut c = cluster.raw(id).await?;
        for (map, version) in last {
            let got = get_map(&mut c, APP, map.as_str(), true).await?;
            assert_eq!(got.version, *version, "node {id}, {map}");
            let keys: Vec<String> = got.entries.iter().map(|e| e.key.clone()).collect();
            for v in 0..*version {
                assert!(
                    keys.contains(&format!("k{v}")),
                    "node {id}: {map} lost k{v}"
                );
            }
            assert_eq!(keys.len() as u64, *version);
            let history = c
                .history(pb::HistoryRequest {
                    app: APP.into(),
                    map: map.to_string(),
                    after_version: 0,
                    stale_ok: true,
                })
                .await?
                .into_inner();
            let versions: Vec<u64> = history.change_sets.iter().map(|cs| cs.version).collect();
            let expected: Vec<u64> = (history.oldest_retained..*version).collect();
            assert_eq!(versions, expected, "node {id}: {map} history has gaps");
        }
    }
    Ok(())
}

/// The newest segment file of a node's Raft log.
fn last_log_segment(cluster: &Cluster, id: u64) -> anyhow::Result<PathBuf> {
    let dir = cluster.data_dir(id)?.join("raft-log");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    segments.retain(|p| p.extension().is_some_and(|x| x == "seg"));
    segments.sort();
    segments
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no segment file in {}", dir.display()))
}

/// A crash in the middle of an append: the leader is killed with SIGKILL under writers and the
/// end of its log is left as a write cut short leaves it (the last record cut, half a record of
/// garbage after it). It restarts, drops the torn tail, catches up, and the cluster loses no
/// acknowledged update. Killed again later, it reopens with what it wrote after the torn tail.
#[tokio::test]
async fn a_torn_final_log_record_is_dropped_and_no_acknowledged_update_is_lost()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let app = AppName::parse(APP)?;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = cluster
            .client_builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let map = MapName::parse(&format!("bob-torn{w}-data"))?;
        writers.push((
            map.clone(),
            tokio::spawn(writer(client, app.clone(), map, stop.clone(), acks.clone())),
        ));
    }
    let progress = |what: &'static str| {
        let acks = acks.clone();
        async move {
            let target = acks.load(Ordering::SeqCst) + 40;
            eventually(what, Duration::from_secs(30), || async {
                (acks.load(Ordering::SeqCst) >= target).then_some(())
            })
            .await
        }
    };
    progress("writers to make progress").await?;
    let torn = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    cluster.kill(torn).await?;
    let segment = last_log_segment(&cluster, torn)?;
    {
        use std::io::Write as _;
        let file = std::fs::OpenOptions::new().append(true).open(&segment)?;
        let len = file.metadata()?.len();
        file.set_len(len - 3)?;
        // A frame header announcing 200 bytes, and 5 of them.
        (&file).write_all(&[200, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 2, 1, 2, 3, 4])?;
    }
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    cluster.restart(torn).await?;
    progress("writers to go on with the torn node back").await?;
    cluster.wait_converged(Duration::from_secs(30)).await?;
    let log = cluster.log_tail(torn, usize::MAX);
    assert!(
        log.contains("dropped the torn tail of the Raft log"),
        "node {torn} did not report a torn tail"
    );
    // What it wrote after the torn tail reads back after another crash.
    cluster.kill(torn).await?;
    cluster.restart(torn).await?;
    progress("writers to go on after the second kill").await?;
    stop.store(true, Ordering::SeqCst);
    let mut last: BTreeMap<MapName, u64> = BTreeMap::new();
    for (map, w) in writers {
        last.insert(map, w.await??);
    }
    cluster.wait_converged(Duration::from_secs(30)).await?;
    assert_every_acknowledged_update_is_everywhere(&cluster, &last).await
}

#[tokio::test]
async fn a_cut_off_node_accepts_no_write_and_catches_up_after_healing() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let mut c = cluster.raw(1).await?;
    for map in ["bob-tv-main", "bob-tv-iso"] {
        c.create_map(req::create(APP, map)).await?;
    }
    cluster.wait_converged(Duration::from_secs(20)).await?;
    // Cut off the leader: the hardest case, since it believes it leads until check-quorum.
    let cut = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let cut_digest = cluster
        .raw(cut)
        .await?
        .digest(pb::DigestRequest {})
        .await?
        .into_inner();
    cluster.isolate(cut);
    let mut isolated = cluster.raw(cut).await?;
    let refused = isolated
        .update(req::update(
            APP,
            "bob-tv-iso",
            0,
            "iso",
            vec![req::put("k", "1")],
        ))
        .await;
    match refused {
        Err(s) => assert_eq!(s.code(), Code::Unavailable, "{}", s.message()),
        Ok(r) => panic!("a cut-off node accepted a write: {:?}", r.into_inner()),
    }
    // The majority side elects a leader and goes on.
    let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != cut).collect();
    let mut majority = cluster.raw(others[0]).await?;
    let mut version = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while version < 20 {
        match majority
            .update(req::update(
                APP,
                "bob-tv-main",
                version,
                &format!("m{version}"),
                vec![req::put("k", &version.to_string())],
            ))
            .await
        {
            Ok(_) => version += 1,
            Err(s) if s.code() == Code::Unavailable && std::time::Instant::now() < deadline => {}
            Err(s) => anyhow::bail!("majority write failed: {s}"),
        }
    }
    // Nothing reached the cut-off node meanwhile.
    let during = isolated.digest(pb::DigestRequest {}).await?.into_inner();
    assert_eq!(during.digest, cut_digest.digest);
    assert!(
        get_map(&mut isolated, APP, "bob-tv-main", false)
            .await
            .is_err_and(|e| e
                .downcast_ref::<tonic::Status>()
                .is_some_and(|s| s.code() == Code::Unavailable)),
        "a cut-off node served a linearizable read"
    );
    cluster.heal(cut);
    let healed = cluster.wait_converged(Duration::from_secs(30)).await?;
    assert_ne!(healed.digest, cut_digest.digest);
    let main = get_map(&mut isolated, APP, "bob-tv-main", true).await?;
    assert_eq!(main.version, 20);
    let iso = get_map(&mut isolated, APP, "bob-tv-iso", true).await?;
    assert_eq!(iso.version, 0, "the refused write must never commit");
    Ok(())
}
