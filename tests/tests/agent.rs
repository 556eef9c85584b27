//! Node agent scenarios against real Spine processes: isolation, fairness, failover, many maps.

use std::sync::Arc;
use std::time::Duration;

use node_agent::{Agent, AgentConfig};
use serde_json::json;
use sharing_map::{AppName, ChangeSet, Entry, MapName, UpdateId};
use spine_client::Client;
use spine_tests::{Cluster, ClusterOpts, eventually};

const APP: &str = "acme-shop";

/// One update that sets keys a, b and c all to `version + 1` (so a reader can check that all keys
/// it reads come from one version).
fn triple(map: &MapName, version: u64) -> anyhow::Result<ChangeSet> {
    let v = json!(version + 1);
    Ok(ChangeSet::from_ops(
        map.clone(),
        version,
        UpdateId::parse(&format!("u{version}"))?,
        ["a", "b", "c"].map(|k| (Arc::from(k), Some(Entry::value(v.clone())))),
    ))
}

async fn write(
    client: &Client,
    app: &AppName,
    map: &MapName,
    from: u64,
    to: u64,
) -> anyhow::Result<()> {
    for v in from..to {
        client.update(app, vec![triple(map, v)?]).await?;
    }
    Ok(())
}

fn fast_agent(cluster: &Cluster) -> AgentConfig {
    AgentConfig {
        idle_timeout: Duration::from_millis(300),
        lag_probe: Duration::from_millis(200),
        ..cluster.agent_config()
    }
}

#[tokio::test]
async fn isolation_and_fairness() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let app = AppName::parse(APP)?;
    let map = MapName::parse("bob-tv-prices")?;
    let client = cluster.client()?;
    client.create_map(&app, &map, vec![]).await?;
    write(&client, &app, &map, 0, 1).await?;
    let agent = Agent::connect(vec![cluster.endpoint(2)], fast_agent(&cluster)).await?;
    let mut replica = agent.replica(&app, &map).await?;
    // The agent's node may have sent version 0 first; hold a version with values in it.
    while replica.version() < 1 {
        replica.changed().await?;
    }
    let held = replica.pin();
    let held_version = held.version();
    let writer = {
        let (client, app, map) = (client.clone(), app.clone(), map.clone());
        tokio::spawn(async move { write(&client, &app, &map, 1, 1001).await })
    };
    // While 1,000 updates arrive, the pinned snapshot keeps exactly its version, and every key
    // read from it comes from that one version; fresh pins move on and are never torn either.
    let mut fresh_versions = Vec::new();
    while replica.version() < 1001 {
        replica.changed().await?;
        assert_eq!(held.version(), held_version);
        for k in ["a", "b", "c"] {
            assert_eq!(held.get(k), Some(&json!(held_version)), "torn read of {k}");
        }
        let fresh = replica.pin();
        let (a, b, c) = (fresh.get("a"), fresh.get("b"), fresh.get("c"));
        assert!(
            a == b && b == c && a == Some(&json!(fresh.version())),
            "torn snapshot at {}",
            fresh.version()
        );
        fresh_versions.push(fresh.version());
    }
    writer.await??;
    assert!(
        fresh_versions.windows(2).all(|w| w[0] <= w[1]),
        "a fresh pin went back in time"
    );
    // Fairness: the old pin holds back nobody; memory is what is pinned plus K versions.
    let newest = replica.pin();
    assert_eq!(newest.version(), 1001);
    let status = agent.status().await?;
    let m = &status.per_map[0];
    assert!(m.retained <= AgentConfig::default().versions_kept, "{m:?}");
    assert_eq!(m.pinned, 2, "{m:?}");
    drop(newest);
    drop(held);
    assert_eq!(agent.status().await?.pinned, 0);
    // Lag is reported against the Spine.
    let status = eventually("lag probe", Duration::from_secs(10), || async {
        let s = agent.status().await.ok()?;
        (s.per_map[0].versions_behind == 0 && s.since_last_event_ms < 5_000).then_some(s)
    })
    .await?;
    assert_eq!(status.per_map[0].version, Some(1001));
    Ok(())
}

#[tokio::test]
async fn failover_keeps_every_version_in_order() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let app = AppName::parse(APP)?;
    let map = MapName::parse("bob-tv-feed")?;
    let client = cluster
        .client_builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    client.create_map(&app, &map, vec![]).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    // The agent is connected to a follower first, so killing it does not stop the writer.
    let attached = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap_or(1);
    let mut endpoints = vec![cluster.endpoint(attached)];
    endpoints.extend(
        cluster
            .ids()
            .into_iter()
            .filter(|id| *id != attached)
            .map(|id| cluster.endpoint(id)),
    );
    let agent = Agent::connect(endpoints, fast_agent(&cluster)).await?;
    let replica = agent.replica(&app, &map).await?;
    const TOTAL: u64 = 300;
    let writer = {
        let (client, app, map) = (client.clone(), app.clone(), map.clone());
        tokio::spawn(async move { write(&client, &app, &map, 0, TOTAL).await })
    };
    // A reader pins at every new version and at least every millisecond in between; pinning
    // never fails and never goes back. (Spinning with yield_now took a core from the nodes.)
    let reader = {
        let mut replica = replica.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut pins = 0u64;
            while last < TOTAL {
                let p = replica.pin();
                anyhow::ensure!(
                    p.version() >= last,
                    "went back from {last} to {}",
                    p.version()
                );
                last = p.version();
                pins += 1;
                tokio::select! {
                    changed = replica.changed() => { changed?; }
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                }
            }
            anyhow::Ok(pins)
        })
    };
    eventually(
        "a third of the updates",
        Duration::from_secs(60),
        || async { (replica.version() >= TOTAL / 3).then_some(()) },
    )
    .await?;
    cluster.kill(attached).await?;
    writer.await??;
    let pins = tokio::time::timeout(Duration::from_secs(60), reader).await???;
    assert!(pins > 0);
    let status = agent.status().await?;
    let m = &status.per_map[0];
    // Version 0 came as the first snapshot; every later version was applied exactly once, in
    // order, as a delta (a skipped or repeated version would not be counted, a reordering would
    // be a gap).
    assert_eq!(m.version, Some(TOTAL), "{m:?}");
    assert_eq!((m.snapshots, m.updates), (1, TOTAL), "{m:?}");
    Ok(())
}

#[tokio::test]
async fn ten_thousand_maps_over_one_stream_without_leaks() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let app = AppName::parse(APP)?;
    const MAPS: usize = 10_000;
    let client = cluster
        .client_builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let names: Vec<MapName> = (0..MAPS)
        .map(|i| MapName::parse(&format!("bob-fleet-m{i}")))
        .collect::<Result<_, _>>()?;
    let mut creators = Vec::new();
    for chunk in names.chunks(MAPS / 50) {
        let (client, app, chunk) = (client.clone(), app.clone(), chunk.to_vec());
        creators.push(tokio::spawn(async move {
            for m in chunk {
                client.create_map(&app, &m, vec![]).await?;
            }
            anyhow::Ok(())
        }));
    }
    for c in creators {
        c.await??;
    }
    let agent = Agent::connect(cluster.endpoints(), fast_agent(&cluster)).await?;
    for round in 0..2 {
        // Readers open their maps concurrently, as the CAs of a node would.
        let opens = names.iter().map(|m| agent.replica(&app, m));
        let replicas: Vec<_> = futures::future::try_join_all(opens).await?;
        let status = agent.status().await?;
        assert_eq!(status.maps, MAPS, "round {round}");
        // An update to one of them reaches the agent over the shared stream.
        let last = &names[MAPS - 1];
        client.update(&app, vec![triple(last, round)?]).await?;
        let r = &replicas[MAPS - 1];
        eventually("the update", Duration::from_secs(20), || async {
            (r.version() == round + 1).then_some(())
        })
        .await?;
        drop(replicas);
        // Nobody uses them any more: they are unsubscribed and freed.
        eventually(
            "idle maps to be dropped",
            Duration::from_secs(30),
            || async {
                agent
                    .status()
                    .await
                    .ok()
                    .filter(|s| s.maps == 0)
                    .map(|_| ())
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
    }
    Ok(())
}
