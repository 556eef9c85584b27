//! An in-memory multi-node harness for the node loop: several real nodes (real raft-rs loops,
//! real sled stores in temporary directories) in one process, talking through a network the test
//! controls. The network drops, delays, duplicates and partitions messages from a seeded random
//! source; nodes crash (their loop is aborted without a last checkpoint) and restart from their
//! storage. Tests run on tokio's paused clock, so elections and timeouts take no real time.

#![allow(dead_code)] // each test binary uses a part of the harness

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::eraftpb::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sharing_map::{AppName, ChangeSet, Entry, MapName, UpdateId};
use spine_server::metrics::Metrics;
use spine_server::network::{PeerEvent, PeerInbox, RaftNetwork, is_snapshot};
use spine_server::node::{self, NodeConfig, NodeError, NodeHandle};
use spine_server::state::{Command, MapKey, Outcome, State};
use spine_server::store::Store;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the network does to messages.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Each message is delayed by up to this much (uniformly); zero delivers at once.
    pub max_delay: Duration,
}

#[derive(Debug)]
struct NetState {
    nodes: HashMap<u64, NodeHandle>,
    /// Where each running node takes its peers' messages.
    inboxes: HashMap<u64, PeerInbox>,
    /// Directed links that deliver nothing.
    cut: HashSet<(u64, u64)>,
    faults: Faults,
    rng: StdRng,
    delivered: u64,
}

/// The network between the nodes.
#[derive(Debug)]
pub struct Net {
    state: Mutex<NetState>,
}

impl Net {
    /// A handle to a random running node.
    pub fn any_node(&self, rng: &mut StdRng) -> Option<NodeHandle> {
        let s = self.lock();
        let mut ids: Vec<u64> = s.nodes.keys().copied().collect();
        ids.sort_unstable();
        if ids.is_empty() {
            return None;
        }
        let id = ids[rng.random_range(0..ids.len())];
        s.nodes.get(&id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(self: &Arc<Self>, from: u64, m: Message) {
        let to = m.to;
        let (copies, delay) = {
            let mut s = self.lock();
            if s.cut.contains(&(from, to)) {
                return;
            }
            let f = s.faults.clone();
            if f.loss > 0.0 && s.rng.random_bool(f.loss) {
                return;
            }
            let copies = if f.duplicate > 0.0 && s.rng.random_bool(f.duplicate) {
                2
            } else {
                1
            };
            let delay = if f.max_delay.is_zero() {
                Duration::ZERO
            } else {
                let micros = f.max_delay.as_micros() as u64;
                Duration::from_micros(s.rng.random_range(0..=micros))
            };
            (copies, delay)
        };
        for _ in 0..copies {
            let net = self.clone();
            let m = m.clone();
            if delay.is_zero() {
                net.deliver(from, m);
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    net.deliver(from, m);
                });
            }
        }
    }

    /// Delivers to the node running as `m.to` now, if the link is up now.
    fn deliver(&self, from: u64, m: Message) {
        let to = m.to;
        let snapshot = is_snapshot(&m);
        let (target, sender) = {
            let mut s = self.lock();
            if s.cut.contains(&(from, to)) {
                (None, s.inboxes.get(&from).cloned())
            } else {
                s.delivered += 1;
                (s.inboxes.get(&to).cloned(), s.inboxes.get(&from).cloned())
            }
        };
        let ok = target.is_some();
        if let Some(t) = target {
            t.try_deliver(PeerEvent::Message(Box::new(m)));
        }
        if snapshot && let Some(s) = sender {
            s.try_deliver(PeerEvent::SnapshotSent { to, ok });
        }
    }
}

/// One node's outgoing side of the network.
#[derive(Debug)]
struct SimPeers {
    from: u64,
    net: Arc<Net>,
}

impl RaftNetwork for SimPeers {
    fn send(&self, m: Message) {
        self.net.send(self.from, m);
    }
    fn set_peer(self: Arc<Self>, _id: u64, _addr: String) {}
    fn retain(&self, _members: &[u64]) {}
}

struct Running {
    handle: NodeHandle,
    task: tokio::task::JoinHandle<()>,
}

/// A cluster of in-process nodes.
pub struct Cluster {
    pub net: Arc<Net>,
    ids: Vec<u64>,
    cfg: NodeConfig,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    running: BTreeMap<u64, Running>,
}

impl Cluster {
    /// Starts `n` voters (ids 1..=n) with `seed` for the network's randomness.
    pub async fn start(n: u64, seed: u64) -> Result<Self, Error> {
        Self::start_with(n, seed, |_| {}).await
    }

    /// [`start`](Self::start), with node settings changed by `tune`.
    pub async fn start_with(
        n: u64,
        seed: u64,
        tune: impl FnOnce(&mut NodeConfig),
    ) -> Result<Self, Error> {
        let net = Arc::new(Net {
            state: Mutex::new(NetState {
                nodes: HashMap::new(),
                inboxes: HashMap::new(),
                cut: HashSet::new(),
                faults: Faults::default(),
                rng: StdRng::seed_from_u64(seed),
                delivered: 0,
            }),
        });
        let cfg = NodeConfig {
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            request_timeout: Duration::from_secs(5),
            ..NodeConfig::default()
        };
        let mut cfg = cfg;
        tune(&mut cfg);
        let mut cluster = Self {
            net,
            ids: (1..=n).collect(),
            cfg,
            dirs: BTreeMap::new(),
            running: BTreeMap::new(),
        };
        for id in 1..=n {
            cluster.dirs.insert(id, tempfile::tempdir()?);
            cluster.restart(id)?;
        }
        Ok(cluster)
    }

    /// Starts node `id` from its storage (it must not be running).
    pub fn restart(&mut self, id: u64) -> Result<(), Error> {
        let dir = self.dirs.get(&id).ok_or("no such node")?;
        let store = Store::open(dir.path())?;
        let addrs = self.ids.iter().map(|i| (*i, format!("sim:{i}"))).collect();
        let peers: Arc<dyn RaftNetwork> = Arc::new(SimPeers {
            from: id,
            net: self.net.clone(),
        });
        let cfg = NodeConfig {
            id,
            ..self.cfg.clone()
        };
        let (inbox, peer_events) = PeerInbox::channel();
        let (handle, task) = node::start(
            cfg,
            store,
            &self.ids,
            addrs,
            peers,
            peer_events,
            Arc::new(Metrics::new(id)),
        )?;
        {
            let mut net = self.net.lock();
            net.nodes.insert(id, handle.clone());
            net.inboxes.insert(id, inbox);
        }
        self.running.insert(id, Running { handle, task });
        Ok(())
    }

    /// Kills node `id` as SIGKILL would: its loop stops where it is, without a last checkpoint.
    pub async fn crash(&mut self, id: u64) {
        {
            let mut net = self.net.lock();
            net.nodes.remove(&id);
            net.inboxes.remove(&id);
        }
        if let Some(r) = self.running.remove(&id) {
            r.task.abort();
            let _ = r.task.await;
        }
    }

    /// A handle to a running node.
    pub fn node(&self, id: u64) -> Result<NodeHandle, Error> {
        Ok(self
            .running
            .get(&id)
            .ok_or_else(|| format!("node {id} is not running"))?
            .handle
            .clone())
    }

    pub fn ids(&self) -> Vec<u64> {
        self.ids.clone()
    }

    pub fn running(&self) -> Vec<u64> {
        self.running.keys().copied().collect()
    }

    /// Sets what the network does to messages.
    pub fn set_faults(&self, faults: Faults) {
        self.net.lock().faults = faults;
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: u64) {
        let mut s = self.net.lock();
        for other in &self.ids {
            if *other != id {
                s.cut.insert((id, *other));
                s.cut.insert((*other, id));
            }
        }
    }

    /// Cuts the links from `from` to `to` only.
    pub fn cut(&self, from: u64, to: u64) {
        self.net.lock().cut.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.net.lock().cut.clear();
    }

    /// Messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.net.lock().delivered
    }

    /// The leader, once every running node in `among` agrees on one that is running, within
    /// `limit` (of the paused clock).
    pub async fn leader_among(&self, among: &[u64], limit: Duration) -> Result<u64, Error> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let leaders: HashSet<u64> = among
                .iter()
                .filter_map(|id| self.running.get(id))
                .map(|r| r.handle.status().leader_id)
                .collect();
            if leaders.len() == 1
                && let Some(l) = leaders.into_iter().next()
                && l != 0
                && among.contains(&l)
                && self
                    .running
                    .get(&l)
                    .is_some_and(|r| r.handle.status().role == "leader")
            {
                return Ok(l);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("no agreed leader among {among:?} within {limit:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn leader(&self, limit: Duration) -> Result<u64, Error> {
        let running = self.running();
        self.leader_among(&running, limit).await
    }

    /// Waits until every running node applied at least `index`.
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + limit;
        for (id, r) in &self.running {
            let mut rx = r.handle.watch_state();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::timeout(left, rx.wait_for(|s| s.applied_index >= index))
                .await
                .map_err(|_| format!("node {id} did not apply index {index} within {limit:?}"))?
                .map_err(|_| format!("node {id} stopped"))?;
        }
        Ok(())
    }

    /// Waits until every running node has applied the same index, at least the highest commit
    /// any of them knows, and checks that they hold the same maps there.
    pub async fn check_replicas_equal(&self, limit: Duration) -> Result<Arc<State>, Error> {
        let commit = self
            .running
            .values()
            .map(|r| r.handle.status().commit)
            .max()
            .unwrap_or(0);
        self.wait_applied(commit, limit).await?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let states: Vec<(u64, Arc<State>)> = self
                .running
                .iter()
                .map(|(id, r)| (*id, r.handle.state()))
                .collect();
            let (first_id, first) = states.first().cloned().ok_or("no node is running")?;
            if states
                .iter()
                .all(|(_, s)| s.applied_index == first.applied_index)
            {
                for (id, s) in &states {
                    if s.digest() != first.digest() {
                        return Err(format!(
                            "node {id} and node {first_id} hold different maps at index {}",
                            first.applied_index
                        )
                        .into());
                    }
                }
                return Ok(first);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(
                    format!("replicas did not reach one applied index within {limit:?}").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A handle to a random running node.
    pub fn any_node(&self, rng: &mut StdRng) -> Option<NodeHandle> {
        self.net.any_node(rng)
    }

    /// Stops every node.
    pub async fn stop(mut self) {
        let ids: Vec<u64> = self.running.keys().copied().collect();
        for id in ids {
            self.crash(id).await;
        }
    }
}

pub fn app() -> AppName {
    AppName::parse("acme-shop").unwrap_or_else(|e| panic!("{e}"))
}

pub fn map(name: &str) -> MapName {
    MapName::parse(name).unwrap_or_else(|e| panic!("{e}"))
}

pub fn create(name: &str) -> Command {
    Command::Create {
        key: MapKey {
            app: app(),
            map: map(name),
        },
        initial: Vec::new(),
    }
}

/// An update of map `name` from `version`, putting `key = value`.
pub fn put(name: &str, version: u64, update_id: &str, key: &str, value: u64) -> Command {
    let id = UpdateId::parse(update_id).unwrap_or_else(|e| panic!("{e}"));
    Command::Update {
        app: app(),
        change_sets: vec![ChangeSet::from_ops(
            map(name),
            version,
            id,
            [(key.into(), Some(Entry::value(serde_json::json!(value))))],
        )],
    }
}

/// The versions an update produced, or why it was refused.
pub fn versions(outcome: &Result<(Outcome, u64), NodeError>) -> Result<Vec<u64>, String> {
    match outcome {
        Ok((Outcome::Updated { versions }, _)) => Ok(versions.clone()),
        Ok((other, _)) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}
