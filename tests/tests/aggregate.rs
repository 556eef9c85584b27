//! Aggregates on a node agent against real Spine processes: revocation takes effect with the
//! update that makes it, readers never see half of a policy change, links come and go.
//!
//! ACL convention: a map's key is a principal (user `bob` or CA `bob-phone`), its value a JSON
//! array of roles; `__link_key__` lists the maps whose grants it includes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use node_agent::aggregate::{AggregateSnapshot, check};
use node_agent::{Agent, AgentConfig, Aggregate};
use serde_json::{Value, json};
use sharing_map::{AppName, CaName, ChangeSet, Entry, MapName, UpdateId};
use spine_client::Client;
use spine_tests::{Cluster, ClusterOpts, eventually};

const APP: &str = "acme-shop";
const LINK_KEY: &str = "__link_key__";
const WAIT: Duration = Duration::from_secs(10);

fn agent_config(cluster: &Cluster) -> AgentConfig {
    AgentConfig {
        idle_timeout: Duration::from_millis(300),
        first_version_timeout: Duration::from_secs(2),
        ..cluster.agent_config()
    }
}

fn name(s: &str) -> anyhow::Result<MapName> {
    Ok(MapName::parse(s)?)
}

fn ca(s: &str) -> anyhow::Result<CaName> {
    Ok(CaName::parse(s)?)
}

fn entries(pairs: &[(&str, Value)]) -> Vec<(Arc<str>, Entry)> {
    pairs
        .iter()
        .map(|(k, v)| (Arc::from(*k), Entry::value(v.clone())))
        .collect()
}

/// A change set from `version` putting (`Some`) or removing (`None`) keys.
fn change(map: &MapName, version: u64, ops: &[(&str, Option<Value>)]) -> anyhow::Result<ChangeSet> {
    Ok(ChangeSet::from_ops(
        map.clone(),
        version,
        UpdateId::parse(&format!("u{version}"))?,
        ops.iter()
            .map(|(k, v)| (Arc::from(*k), v.clone().map(Entry::value))),
    ))
}

/// Writes one change set and returns the version it produced.
async fn write(
    client: &Client,
    app: &AppName,
    map: &MapName,
    version: u64,
    ops: &[(&str, Option<Value>)],
) -> anyhow::Result<u64> {
    let versions = client.update(app, vec![change(map, version, ops)?]).await?;
    versions
        .first()
        .copied()
        .context("no version in the answer")
}

/// Waits, through `changed`, for a snapshot satisfying `cond`, and returns it.
async fn wait_for(
    agg: &mut Aggregate,
    what: &str,
    cond: impl Fn(&AggregateSnapshot) -> bool,
) -> anyhow::Result<AggregateSnapshot> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut snap = agg.snapshot();
    while !cond(&snap) {
        snap = tokio::time::timeout_at(deadline, agg.changed())
            .await
            .with_context(|| {
                format!("timed out after {WAIT:?} waiting for {what}; last: {snap:?}")
            })??;
    }
    Ok(snap)
}

fn version_of(snap: &AggregateSnapshot, map: &MapName) -> Option<u64> {
    snap.version_vector().get(map).copied()
}

#[tokio::test]
async fn removing_a_grant_from_a_linked_map_revokes_it_with_that_update() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let client = cluster.client()?;
    let app = AppName::parse(APP)?;
    let root = name("acme-admin-roles")?;
    let staff = name("acme-admin-staff")?;
    client
        .create_map(&app, &staff, entries(&[("bob", json!(["clerk"]))]))
        .await?;
    client
        .create_map(
            &app,
            &root,
            entries(&[
                ("alice", json!(["admin"])),
                (LINK_KEY, json!([staff.as_str()])),
            ]),
        )
        .await?;
    let agent = Agent::connect(vec![cluster.endpoint(2)], agent_config(&cluster)).await?;
    let mut agg = Aggregate::open(&agent, app.clone(), root.clone()).await?;
    assert!(agg.is_loaded());
    let (alice, bob) = (ca("alice-phone")?, ca("bob-phone")?);

    // An unrelated update first, so the revocation is not the map's first change.
    let before_v = write(
        &client,
        &app,
        &staff,
        0,
        &[("carol-phone", Some(json!(["clerk"])))],
    )
    .await?;
    let before = wait_for(&mut agg, "the staff map's first update", |s| {
        version_of(s, &staff) == Some(before_v)
    })
    .await?;
    assert!(check(&before, &bob), "bob is granted through the link");
    assert_eq!(before.explain("bob")[0].path, [root.clone(), staff.clone()]);

    let revoked_v = write(&client, &app, &staff, before_v, &[("bob", None)]).await?;
    assert_eq!(revoked_v, before_v + 1);
    // Every snapshot published until the revocation still grants bob; the first one holding the
    // revoking version does not (nothing was written after it, so it holds exactly that one).
    let revoked = loop {
        let snap = tokio::time::timeout(WAIT, agg.changed())
            .await
            .context("timed out waiting for the revocation")??;
        match version_of(&snap, &staff) {
            Some(v) if v < revoked_v => assert!(check(&snap, &bob), "revoked early at {v}"),
            Some(v) => {
                assert_eq!(v, revoked_v);
                break snap;
            }
            None => anyhow::bail!("the staff map left the aggregate: {snap:?}"),
        }
    };
    assert!(!check(&revoked, &bob), "bob still granted at {revoked_v}");
    assert!(!agg.check(&bob));
    assert!(revoked.explain("bob").is_empty());
    // The rest of the policy is untouched, and the snapshot pinned before is unchanged.
    assert!(check(&revoked, &alice));
    assert!(check(&revoked, &ca("carol-phone")?));
    assert!(
        !check(&revoked, &ca("carol-tablet")?),
        "carol-phone's grant is the CA's only"
    );
    assert_eq!(version_of(&before, &staff), Some(before_v));
    assert!(check(&before, &bob));
    Ok(())
}

/// The linked maps written together in every request of the torn-policy test.
const TEAMS: u64 = 6;

/// At version `v` of every team (they are always written together): `bob` (`v` even) or `carol`
/// (`v` odd) is in team 0, `dave` is in team `v % TEAMS` only, and every team's `round` is `v`.
fn expected_state(snap: &AggregateSnapshot, teams: &[MapName]) -> anyhow::Result<u64> {
    let versions: Vec<Option<u64>> = teams.iter().map(|t| version_of(snap, t)).collect();
    let v = versions[0].context("team 0 is not in the aggregate")?;
    ensure!(
        versions.iter().all(|x| *x == Some(v)),
        "torn across maps: versions {versions:?}"
    );
    let rounds: Vec<&Value> = snap.get_all("round").iter().map(|f| f.value()).collect();
    ensure!(
        rounds.len() == teams.len() && rounds.iter().all(|r| **r == json!(v)),
        "at version {v} the rounds are {rounds:?}"
    );
    let (bob, carol) = (
        check(snap, &ca("bob-phone")?),
        check(snap, &ca("carol-phone")?),
    );
    ensure!(
        bob == (v % 2 == 0) && carol == (v % 2 == 1),
        "torn grant move at version {v}: bob {bob}, carol {carol}"
    );
    let dave: Vec<&MapName> = snap.get_all("dave").iter().map(|f| f.map()).collect();
    let home = &teams[(v % TEAMS) as usize];
    ensure!(
        dave == [home],
        "at version {v} dave is in {dave:?}, expected only {home}"
    );
    Ok(v)
}

/// The request taking every team from version `v` to `v + 1`: moves bob <-> carol within team 0
/// (one change set) and dave from one team to the next (two), and bumps every round.
fn move_grants(teams: &[MapName], v: u64) -> anyhow::Result<Vec<ChangeSet>> {
    let round = json!(v + 1);
    let (from, to) = (v % TEAMS, (v + 1) % TEAMS);
    let mut sets = Vec::new();
    for (j, team) in (0..).zip(teams) {
        let mut ops = vec![("round", Some(round.clone()))];
        if j == 0 {
            let (gone, granted) = if v % 2 == 0 {
                ("bob", "carol")
            } else {
                ("carol", "bob")
            };
            ops.push((gone, None));
            ops.push((granted, Some(json!(["admin"]))));
        }
        if j == from {
            ops.push(("dave", None));
        }
        if j == to {
            ops.push(("dave", Some(json!(["viewer"]))));
        }
        sets.push(change(team, v, &ops)?);
    }
    Ok(sets)
}

// Several worker threads, so the agent applies updates while the aggregate reads replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_half_of_a_policy_change() -> anyhow::Result<()> {
    const UPDATES: u64 = 200;
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let client = cluster.client()?;
    let app = AppName::parse(APP)?;
    let root = name("acme-admin-roles")?;
    let teams: Vec<MapName> = (0..TEAMS)
        .map(|j| name(&format!("acme-admin-team{j}")))
        .collect::<anyhow::Result<_>>()?;
    for (j, team) in (0..).zip(&teams) {
        let mut initial = vec![("round", json!(0))];
        if j == 0 {
            initial.extend([("bob", json!(["admin"])), ("dave", json!(["viewer"]))]);
        }
        client.create_map(&app, team, entries(&initial)).await?;
    }
    let links: Vec<&str> = teams.iter().map(MapName::as_str).collect();
    client
        .create_map(&app, &root, entries(&[(LINK_KEY, json!(links))]))
        .await?;
    let agent = Agent::connect(vec![cluster.endpoint(3)], agent_config(&cluster)).await?;
    let mut agg = Aggregate::open(&agent, app.clone(), root.clone()).await?;
    let held = agg.snapshot();
    assert_eq!(expected_state(&held, &teams)?, 0);

    let writer = {
        let (client, app, teams) = (client.clone(), app.clone(), teams.clone());
        tokio::spawn(async move {
            for v in 0..UPDATES {
                let versions = client.update(&app, move_grants(&teams, v)?).await?;
                ensure!(
                    versions.iter().all(|x| *x == v + 1),
                    "unexpected versions {versions:?}"
                );
            }
            anyhow::Ok(())
        })
    };

    // A second reader polls the newest snapshot while the updates arrive.
    let done = Arc::new(AtomicBool::new(false));
    let polled = Arc::new(AtomicUsize::new(0));
    let poller = {
        let (agg, done, polled, teams) = (agg.clone(), done.clone(), polled.clone(), teams.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                expected_state(&agg.snapshot(), &teams)?;
                polled.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            anyhow::Ok(())
        })
    };

    let mut seen = BTreeSet::new();
    let mut last = 0;
    while last < UPDATES {
        let snap = tokio::time::timeout(WAIT, agg.changed())
            .await
            .with_context(|| format!("no new snapshot after version {last}"))??;
        let v = expected_state(&snap, &teams)?;
        ensure!(v >= last, "went back from {last} to {v}");
        seen.insert(v);
        last = v;
        // The snapshot held since the start has not moved.
        ensure!(
            expected_state(&held, &teams)? == 0,
            "the held snapshot changed"
        );
        ensure!(version_of(&held, &root) == version_of(&snap, &root));
    }
    done.store(true, Ordering::SeqCst);
    writer.await??;
    poller.await??;
    assert!(
        seen.len() >= 3,
        "the reader saw too few versions to prove anything: {seen:?}"
    );
    assert!(polled.load(Ordering::SeqCst) > 0);
    assert!(check(&held, &ca("bob-phone")?) && !check(&held, &ca("carol-phone")?));
    Ok(())
}

#[tokio::test]
async fn links_to_new_maps_join_unlinked_maps_leave_and_cycles_terminate() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let client = cluster.client()?;
    let app = AppName::parse(APP)?;
    let root = name("acme-admin-roles")?;
    let late = name("acme-admin-late")?;
    let cycle = name("acme-admin-cycle")?;
    client
        .create_map(&app, &root, entries(&[("alice", json!(["admin"]))]))
        .await?;
    let agent = Agent::connect(vec![cluster.endpoint(1)], agent_config(&cluster)).await?;
    let mut agg = Aggregate::open(&agent, app.clone(), root.clone()).await?;
    let (erin, frank) = (ca("erin-phone")?, ca("frank-phone")?);

    // A link to a map that does not exist yet: it is missing, and stays so past the agent's
    // first-version timeout (the aggregate keeps asking in the background).
    let linked_v = write(
        &client,
        &app,
        &root,
        0,
        &[(LINK_KEY, Some(json!([late.as_str()])))],
    )
    .await?;
    let snap = wait_for(&mut agg, "the link to a missing map", |s| {
        version_of(s, &root) == Some(linked_v)
    })
    .await?;
    assert!(snap.missing().contains(&late), "{snap:?}");
    eventually("the missing map's first answer", WAIT, || async {
        agg.is_loaded().then_some(())
    })
    .await?;
    assert!(agg.snapshot().missing().contains(&late));

    // Creating it with grants brings them in.
    client
        .create_map(&app, &late, entries(&[("erin", json!(["clerk"]))]))
        .await?;
    let snap = wait_for(&mut agg, "the created map to join", |s| {
        s.contains_map(&late)
    })
    .await?;
    assert!(check(&snap, &erin));
    assert!(snap.missing().is_empty());
    assert_eq!(snap.explain("erin")[0].path, [root.clone(), late.clone()]);

    // A cycle: late -> cycle -> {late, root}. It terminates, and paths are shortest.
    client
        .create_map(
            &app,
            &cycle,
            entries(&[
                ("frank", json!(["auditor"])),
                (LINK_KEY, json!([late.as_str(), root.as_str()])),
            ]),
        )
        .await?;
    write(
        &client,
        &app,
        &late,
        0,
        &[(LINK_KEY, Some(json!([cycle.as_str()])))],
    )
    .await?;
    let snap = wait_for(&mut agg, "the cycle to join", |s| s.contains_map(&cycle)).await?;
    assert!(check(&snap, &frank));
    assert_eq!(
        snap.reachable(),
        BTreeSet::from([root.clone(), late.clone(), cycle.clone()])
    );
    assert_eq!(
        snap.explain("frank")[0].path,
        [root.clone(), late.clone(), cycle.clone()]
    );
    assert_eq!(snap.explain("alice")[0].path, std::slice::from_ref(&root));

    let leases = |status: &node_agent::AgentStatus, map: &MapName| {
        status
            .per_map
            .iter()
            .find(|m| m.map == map.as_str())
            .map_or(0, |m| m.leases)
    };
    let status = agent.status().await?;
    assert!(leases(&status, &late) > 0 && leases(&status, &cycle) > 0);

    // Unlinking drops everything behind the link with that very update. The snapshot held
    // across it is taken before the write: taken after the write returns, it raced with the
    // agent, which may already have published the unlink by then.
    let held = agg.snapshot();
    let unlinked_v = write(&client, &app, &root, linked_v, &[(LINK_KEY, None)]).await?;
    loop {
        let snap = tokio::time::timeout(WAIT, agg.changed())
            .await
            .context("timed out waiting for the unlink")??;
        match version_of(&snap, &root) {
            Some(v) if v < unlinked_v => {
                assert!(
                    check(&snap, &erin) && check(&snap, &frank),
                    "dropped early at {v}"
                );
            }
            Some(v) => {
                assert_eq!(v, unlinked_v);
                assert!(!check(&snap, &erin) && !check(&snap, &frank), "{snap:?}");
                assert!(check(&snap, &ca("alice-phone")?));
                assert_eq!(snap.reachable(), BTreeSet::from([root.clone()]));
                assert!(snap.missing().is_empty());
                break;
            }
            None => anyhow::bail!("the root left its own aggregate: {snap:?}"),
        }
    }
    assert!(check(&held, &erin), "a held snapshot keeps its grants");

    // The unlinked maps are released: the agent drops them once idle.
    eventually("the unlinked maps to be released", WAIT, || async {
        let status = agent.status().await.ok()?;
        (leases(&status, &late) == 0 && leases(&status, &cycle) == 0).then_some(())
    })
    .await?;
    Ok(())
}
