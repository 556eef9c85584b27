//! Scenarios of the node loop in the in-memory harness (`sim/`): real nodes and storage, a
//! network and a clock under the test's control.

mod sim;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sim::{Cluster, Error, Faults, create, map, put, versions};
use spine_server::node::NodeHandle;
use spine_server::state::Outcome;
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);

async fn version_of(node: &NodeHandle, name: &str, limit: Duration) -> Result<u64, Error> {
    let state = tokio::time::timeout(limit, node.linearizable()).await??;
    Ok(state
        .get(&sim::app(), &map(name))
        .map(|m| m.map.version())
        .ok_or_else(|| format!("map {name} is missing"))?)
}

async fn wait_version(node: &NodeHandle, name: &str, at_least: u64) -> Result<(), Error> {
    let mut rx = node.watch_state();
    let found = tokio::time::timeout(
        5 * SECOND,
        rx.wait_for(|s| {
            s.get(&sim::app(), &map(name))
                .is_some_and(|m| m.map.version() >= at_least)
        }),
    )
    .await;
    match found {
        Ok(Ok(_)) => Ok(()),
        _ => Err(format!("{name} did not reach version {at_least} in time").into()),
    }
}

/// A request a node's previous life proposed, applied after it restarted, never answers a
/// request of its new life: a follower forwards update A and is cut off before it applies A,
/// crashes, restarts, and its first new request B (at a wrong version) must be refused, not
/// acknowledged with A's result.
#[tokio::test(start_paused = true)]
async fn an_entry_of_a_previous_life_never_answers_a_new_request() -> Result<(), Error> {
    let mut c = Cluster::start(3, 1).await?;
    let leader = c.leader(10 * SECOND).await?;
    let l = c.node(leader)?;
    l.propose(create("alice-phone-x")).await?;
    l.propose(create("alice-phone-y")).await?;
    let follower = c
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .ok_or("no follower")?;
    let f = c.node(follower)?;
    wait_version(&f, "alice-phone-y", 0).await?;

    // The follower's proposal reaches the leader, but nothing comes back to the follower.
    for other in c.ids() {
        if other != follower {
            c.cut(other, follower);
        }
    }
    let a = tokio::spawn({
        let f = f.clone();
        async move { f.propose(put("alice-phone-x", 0, "a", "k", 1)).await }
    });
    wait_version(&l, "alice-phone-x", 1).await?;
    c.crash(follower).await;
    let _ = a.await;

    // Its new life asks before it has caught up with A.
    c.restart(follower)?;
    c.isolate(follower);
    let f = c.node(follower)?;
    let b = tokio::spawn({
        let f = f.clone();
        async move { f.propose(put("alice-phone-y", 5, "b", "k", 2)).await }
    });
    tokio::time::sleep(SECOND).await;
    c.heal();
    let b = versions(&b.await?);
    assert!(
        b.as_ref().is_err_and(|e| e.contains("Conflict")),
        "B was at a wrong version and must be refused with a conflict, got {b:?}"
    );
    assert_eq!(version_of(&f, "alice-phone-y", 5 * SECOND).await?, 0);
    assert_eq!(version_of(&f, "alice-phone-x", 5 * SECOND).await?, 1);
    c.check_replicas_equal(10 * SECOND).await?;
    c.stop().await;
    Ok(())
}

/// The log is compacted behind the checkpoints, and a follower that was down meanwhile catches
/// up from a snapshot: with small checkpoint and compaction settings, the leader's log no longer
/// holds the entries the follower is missing, yet after its restart it has every update.
#[tokio::test(start_paused = true)]
async fn a_follower_behind_a_compacted_log_catches_up_from_a_snapshot() -> Result<(), Error> {
    let mut c = Cluster::start_with(3, 4, |cfg| {
        cfg.checkpoint_entries = 10;
        cfg.compact_after = 20;
        cfg.keep_entries = 5;
    })
    .await?;
    let leader = c.leader(10 * SECOND).await?;
    let l = c.node(leader)?;
    l.propose(create("alice-phone-x")).await?;
    let follower = c
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .ok_or("no follower")?;
    wait_version(&c.node(follower)?, "alice-phone-x", 0).await?;
    let behind_at = c.node(follower)?.state().applied_index;
    c.crash(follower).await;

    for v in 0..100 {
        let done = l
            .propose(put("alice-phone-x", v, &format!("u{v}"), "k", v))
            .await;
        assert_eq!(versions(&done), Ok(vec![v + 1]), "update {v}");
    }
    let first = l.status().first_index;
    assert!(
        first > behind_at + 1,
        "the leader's log must have been compacted past the follower (first index {first}, follower at {behind_at})"
    );

    c.restart(follower)?;
    let f = c.node(follower)?;
    wait_version(&f, "alice-phone-x", 100).await?;
    assert_eq!(version_of(&f, "alice-phone-x", 5 * SECOND).await?, 100);
    c.check_replicas_equal(10 * SECOND).await?;
    c.stop().await;
    Ok(())
}

/// Proposals that arrive together reach each follower together: the leader sends a follower
/// one append for them (and gets one answer), not one per entry.
#[tokio::test(start_paused = true)]
async fn proposals_that_arrive_together_travel_in_one_append() -> Result<(), Error> {
    let c = Cluster::start(3, 5).await?;
    let leader = c.leader(10 * SECOND).await?;
    let l = c.node(leader)?;
    l.propose(create("alice-phone-x")).await?;
    c.check_replicas_equal(10 * SECOND).await?;
    const PROPOSALS: u64 = 200;
    let before = c.delivered();
    let done = futures::future::join_all(
        (0..PROPOSALS).map(|i| l.propose(create(&format!("alice-phone-m{i}")))),
    )
    .await;
    for d in &done {
        assert!(
            matches!(d, Ok((Outcome::Created { created: true, .. }, _))),
            "{d:?}"
        );
    }
    c.check_replicas_equal(10 * SECOND).await?;
    let messages = c.delivered() - before;
    // One entry per message would be at least 2 appends and 2 answers per proposal.
    assert!(
        messages < PROPOSALS / 2,
        "{messages} messages for {PROPOSALS} proposals"
    );
    c.stop().await;
    Ok(())
}

/// Reads on both followers at once are each answered within a few round trips: their ReadIndex
/// contexts never collide at the leader (which ignores a context already pending).
#[tokio::test(start_paused = true)]
async fn concurrent_reads_on_two_followers_do_not_stall() -> Result<(), Error> {
    let c = Cluster::start(3, 2).await?;
    let leader = c.leader(10 * SECOND).await?;
    c.node(leader)?.propose(create("alice-phone-x")).await?;
    // A little latency keeps each read pending at the leader while the other arrives.
    c.set_faults(Faults {
        max_delay: Duration::from_millis(3),
        ..Faults::default()
    });
    let followers: Vec<NodeHandle> = c
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .map(|id| c.node(id))
        .collect::<Result<_, _>>()?;
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let started = Instant::now();
        let reads: Vec<_> = followers
            .iter()
            .map(|f| {
                let f = f.clone();
                tokio::spawn(async move { f.linearizable().await })
            })
            .collect();
        for r in reads {
            r.await??;
        }
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a pair of follower reads took {slowest:?}"
    );
    c.stop().await;
    Ok(())
}

/// Reads and writes sent to the survivors right after the leader dies are answered once a new
/// leader is up (within the election time plus a few round trips), not after the request timeout.
#[tokio::test(start_paused = true)]
async fn requests_pending_at_a_leader_kill_are_answered_by_the_new_leader() -> Result<(), Error> {
    let mut c = Cluster::start(3, 3).await?;
    let leader = c.leader(10 * SECOND).await?;
    c.node(leader)?.propose(create("alice-phone-x")).await?;
    let survivors: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    for id in &survivors {
        wait_version(&c.node(*id)?, "alice-phone-x", 0).await?;
    }
    c.crash(leader).await;
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut reads = Vec::new();
    for id in &survivors {
        let n = c.node(*id)?;
        reads.push(tokio::spawn(
            async move { n.linearizable().await.map(|_| ()) },
        ));
    }
    let writer = c.node(survivors[0])?;
    let write =
        tokio::spawn(async move { writer.propose(put("alice-phone-x", 0, "w", "k", 1)).await });
    for r in reads {
        r.await??;
    }
    let write = versions(&write.await?);
    let answered = killed.elapsed();
    let new_leader = c.leader_among(&survivors, SECOND).await?;
    assert_eq!(
        write,
        Ok(vec![1]),
        "the write must commit on the new leader"
    );
    eprintln!("reads and the write answered {answered:?} after the leader died");
    // Election timeout is 1-2 s (10 ticks of 100 ms, randomized up to twice), plus pre-vote.
    assert!(
        answered < Duration::from_millis(3500),
        "answered {answered:?} after the leader died (new leader {new_leader})"
    );
    c.check_replicas_equal(10 * SECOND).await?;
    c.stop().await;
    Ok(())
}

/// What clients were told, checked against what the cluster holds.
#[derive(Default)]
struct Ledger {
    /// Per map: the acknowledged value written at each version.
    acked: HashMap<String, HashMap<u64, u64>>,
}

impl Ledger {
    fn newest(&self, name: &str) -> u64 {
        self.acked
            .get(name)
            .and_then(|m| m.keys().max().copied())
            .unwrap_or(0)
    }
}

/// One writer per map: CAS puts `v{version} = token`; after any failure it reads the map again.
async fn writer(
    net: Arc<sim::Net>,
    name: String,
    ledger: Arc<Mutex<Ledger>>,
    seed: u64,
    until: Instant,
) -> Result<u64, Error> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut version = 0;
    let mut token = seed * 1_000_000;
    let mut writes = 0;
    while Instant::now() < until {
        let Some(node) = net.any_node(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        token += 1;
        let key = format!("v{}", version + 1);
        let update_id = format!("u{token}");
        let outcome = node
            .propose(put(&name, version, &update_id, &key, token))
            .await;
        match versions(&outcome) {
            Ok(v) => {
                let got = v.first().copied().ok_or("an update without versions")?;
                if got != version + 1 {
                    return Err(
                        format!("{name}: put at {version} acknowledged as version {got}").into(),
                    );
                }
                ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .acked
                    .entry(name.clone())
                    .or_default()
                    .insert(got, token);
                version = got;
                writes += 1;
                // The paused clock moves only while every task waits: pause between writes.
                tokio::time::sleep(Duration::from_millis(rng.random_range(1..20))).await;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..100))).await;
                // Unknown outcome: learn the map's version before trying again.
                if let Some(n) = net.any_node(&mut rng)
                    && let Ok(Ok(state)) = tokio::time::timeout(SECOND * 6, n.linearizable()).await
                    && let Some(m) = state.get(&sim::app(), &map(&name))
                {
                    version = m.map.version();
                }
            }
        }
    }
    Ok(writes)
}

/// Linearizable reads on random nodes never see a map older than a write acknowledged before
/// the read began.
async fn reader(
    net: Arc<sim::Net>,
    names: Vec<String>,
    ledger: Arc<Mutex<Ledger>>,
    seed: u64,
    until: Instant,
) -> Result<u64, Error> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut reads = 0;
    while Instant::now() < until {
        let Some(node) = net.any_node(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let before: Vec<u64> = {
            let l = ledger.lock().unwrap_or_else(|p| p.into_inner());
            names.iter().map(|n| l.newest(n)).collect()
        };
        if let Ok(state) = node.linearizable().await {
            for (name, floor) in names.iter().zip(before) {
                let seen = state
                    .get(&sim::app(), &map(name))
                    .map(|m| m.map.version())
                    .unwrap_or(0);
                if seen < floor {
                    return Err(format!(
                        "node {} read {name} at version {seen} after version {floor} was acknowledged",
                        node.id()
                    )
                    .into());
                }
            }
            reads += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..20))).await;
    }
    Ok(reads)
}

/// One randomized run: writers and readers while the network loses, duplicates and delays
/// messages, nodes crash and restart and get cut off; then every invariant is checked.
async fn randomized_run(seed: u64) -> Result<(), Error> {
    let mut c = Cluster::start(3, seed).await?;
    let leader = c.leader(10 * SECOND).await?;
    eprintln!("seed {seed}: leader {leader}");
    let names: Vec<String> = (0..3).map(|i| format!("alice-w{i}-m")).collect();
    for name in &names {
        c.node(leader)?.propose(create(name)).await?;
    }
    eprintln!("seed {seed}: maps created");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let until = Instant::now() + 20 * SECOND;
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        tasks.push(tokio::spawn(writer(
            c.net.clone(),
            name.clone(),
            ledger.clone(),
            seed * 100 + i as u64,
            until,
        )));
    }
    let readers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(reader(
                c.net.clone(),
                names.clone(),
                ledger.clone(),
                seed * 100 + 50 + i,
                until,
            ))
        })
        .collect();

    let real = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut down: Option<u64> = None;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
        c.heal();
        if let Some(id) = down.take() {
            c.restart(id)?;
        }
        c.set_faults(Faults {
            loss: rng.random_range(0.0..0.1),
            duplicate: rng.random_range(0.0..0.1),
            max_delay: Duration::from_millis(rng.random_range(0..30)),
        });
        let victim = rng.random_range(1..=3);
        eprintln!(
            "seed {seed}: {:?} left, {} messages delivered, real {:?}",
            until.saturating_duration_since(Instant::now()),
            c.delivered(),
            real.elapsed()
        );
        match rng.random_range(0..3) {
            0 => {
                c.crash(victim).await;
                down = Some(victim);
            }
            1 => c.isolate(victim),
            _ => {}
        }
    }
    c.heal();
    c.set_faults(Faults::default());
    if let Some(id) = down.take() {
        c.restart(id)?;
    }
    eprintln!("seed {seed}: chaos over, real {:?}", real.elapsed());
    let mut writes = 0;
    for t in tasks {
        writes += t.await??;
    }
    let mut reads = 0;
    for r in readers {
        reads += r.await??;
    }
    eprintln!("seed {seed}: {writes} writes and {reads} reads acknowledged");
    assert!(
        writes > 0 && reads > 0,
        "seed {seed}: {writes} writes, {reads} reads"
    );
    c.leader(20 * SECOND).await?;
    let state = c.check_replicas_equal(20 * SECOND).await?;
    let acked = ledger
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .acked
        .clone();
    for name in &names {
        let m = state
            .get(&sim::app(), &map(name))
            .ok_or_else(|| format!("seed {seed}: map {name} lost"))?;
        for (version, token) in acked.get(name).into_iter().flatten() {
            let stored = m
                .map
                .get_value(&format!("v{version}"))
                .and_then(|v| v.as_u64());
            if stored != Some(*token) {
                return Err(format!(
                    "seed {seed}: {name} version {version} was acknowledged with {token}, the cluster holds {stored:?}"
                )
                .into());
            }
        }
    }
    c.stop().await;
    Ok(())
}

/// Randomized runs over several seeds (`SPINE_SIM_SEEDS`, default 12; `SPINE_SIM_SEED` runs one).
#[tokio::test(start_paused = true)]
async fn randomized_faults_lose_nothing_and_acknowledge_only_what_committed() -> Result<(), Error> {
    let seeds: Vec<u64> = match std::env::var("SPINE_SIM_SEED") {
        Ok(s) => vec![s.parse()?],
        Err(_) => {
            let n: u64 = std::env::var("SPINE_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(12);
            (1..=n).collect()
        }
    };
    for seed in seeds {
        randomized_run(seed).await?;
    }
    Ok(())
}
