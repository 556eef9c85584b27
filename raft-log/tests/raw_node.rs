//! raft-rs on the log: a three-node group in memory, each node's `raft::Storage` a `RaftLog`,
//! one `LogBatch` and one sync per `Ready`. Nodes are stopped and restarted from their
//! directories (a follower comes back behind the leader's compaction and needs a snapshot; the
//! leader restarts too), and every node must end with the same applied sequence holding every
//! proposal once, in order.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, Message, Snapshot};
use raft::{GetEntriesContext, RaftState, RawNode, StateRole, Storage};
use spine_raft_log::{LogBatch, LogError, Options, RaftLog};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The applied state: every applied proposal, in order. Kept across restarts, as if it were
/// checkpointed at every apply.
#[derive(Clone, Debug, Default, PartialEq)]
struct Applied {
    index: u64,
    term: u64,
    values: Vec<Vec<u8>>,
}

impl Applied {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for v in &self.values {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    fn decode(index: u64, term: u64, mut bytes: &[u8]) -> Result<Applied> {
        let mut values = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_le_bytes(bytes.get(..4).ok_or("short")?.try_into()?) as usize;
            values.push(bytes.get(4..4 + len).ok_or("short")?.to_vec());
            bytes = &bytes[4 + len..];
        }
        Ok(Applied {
            index,
            term,
            values,
        })
    }
}

/// `raft::Storage` over a shared `RaftLog`; snapshots come from the applied state.
#[derive(Clone)]
struct LogStorage {
    log: Arc<RwLock<RaftLog>>,
    applied: Arc<RwLock<Applied>>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let log = read(&self.log);
        Ok(RaftState::new(
            log.hard_state().clone(),
            log.conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        Ok(read(&self.log).entries(low, high, max_size.into())?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        Ok(read(&self.log).term(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(read(&self.log).first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(read(&self.log).last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let applied = read(&self.applied).clone();
        if applied.index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot {
            data: applied.encode().into(),
            ..Default::default()
        };
        let md = snap.mut_metadata();
        md.index = applied.index;
        md.term = applied.term;
        md.set_conf_state(read(&self.log).conf_state().clone());
        Ok(snap)
    }
}

struct Node {
    raw: RawNode<LogStorage>,
    log: Arc<RwLock<RaftLog>>,
    applied: Arc<RwLock<Applied>>,
    /// Snapshots installed since the node started.
    snapshots: usize,
}

const VOTERS: [u64; 3] = [1, 2, 3];

fn options() -> Options {
    Options {
        segment_bytes: 4096,
        cache_bytes: 8192,
        ..Options::default()
    }
}

impl Node {
    fn start(id: u64, dir: &std::path::Path, applied: Applied) -> Result<Node> {
        let mut log = RaftLog::open(dir, options())?;
        if log.conf_state().voters.is_empty() {
            let mut batch = LogBatch::new();
            batch.set_conf_state(ConfState {
                voters: VOTERS.to_vec(),
                ..Default::default()
            });
            log.write(batch)?;
            log.sync()?;
        }
        let cfg = raft::Config {
            id,
            election_tick: 10,
            heartbeat_tick: 2,
            applied: applied.index.min(log.hard_state().commit),
            max_size_per_msg: 2048,
            max_inflight_msgs: 64,
            ..Default::default()
        };
        let log = Arc::new(RwLock::new(log));
        let applied = Arc::new(RwLock::new(applied));
        let storage = LogStorage {
            log: log.clone(),
            applied: applied.clone(),
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        Ok(Node {
            raw: RawNode::new(&cfg, storage, &logger)?,
            log,
            applied,
            snapshots: 0,
        })
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        let mut applied = write(&self.applied);
        for e in entries {
            if e.index <= applied.index {
                continue;
            }
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                applied.values.push(e.data.to_vec());
            }
            applied.index = e.index;
            applied.term = e.term;
        }
    }

    /// One Ready: one batch, one sync, then the messages that wait for it.
    fn on_ready(&mut self, outbox: &mut Vec<Message>) -> Result {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        outbox.extend(rd.take_messages());
        let mut batch = LogBatch::new();
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let md = snap.get_metadata();
            self.snapshots += 1;
            // The state machine first, then the log (see the durability contract).
            *write(&self.applied) = Applied::decode(md.index, md.term, &snap.data)?;
            batch
                .restore(md.index, md.term)
                .set_conf_state(md.get_conf_state().clone());
        }
        self.apply(rd.take_committed_entries());
        batch.append(rd.take_entries());
        if let Some(hs) = rd.hs() {
            batch.set_hard_state(hs.clone());
        }
        {
            let mut log = write(&self.log);
            log.write(batch)?;
            log.sync()?;
        }
        outbox.extend(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            let mut log = write(&self.log);
            let mut hs = log.hard_state().clone();
            hs.commit = commit;
            log.set_hard_state(&hs)?;
        }
        outbox.extend(light.take_messages());
        self.apply(light.take_committed_entries());
        self.raw.advance_apply();
        // Compaction: keep a few applied entries for followers just behind.
        let applied = read(&self.applied).index;
        let mut log = write(&self.log);
        if applied > log.first_index() + 20 {
            log.compact(applied - 5)?;
        }
        Ok(())
    }
}

struct Cluster {
    dirs: BTreeMap<u64, PathBuf>,
    _root: tempfile::TempDir,
    nodes: BTreeMap<u64, Node>,
    /// The applied state of a stopped node, as it was when it stopped.
    stopped: BTreeMap<u64, Applied>,
    inflight: Vec<Message>,
}

impl Cluster {
    fn new() -> Result<Cluster> {
        let root = support::scratch_dir()?;
        let mut c = Cluster {
            dirs: BTreeMap::new(),
            _root: root,
            nodes: BTreeMap::new(),
            stopped: BTreeMap::new(),
            inflight: Vec::new(),
        };
        for id in VOTERS {
            let dir = c._root.path().join(format!("node-{id}"));
            c.dirs.insert(id, dir.clone());
            c.nodes
                .insert(id, Node::start(id, &dir, Applied::default())?);
        }
        Ok(c)
    }

    fn stop(&mut self, id: u64) -> Result {
        let node = self.nodes.remove(&id).ok_or("not running")?;
        self.stopped.insert(id, read(&node.applied).clone());
        Ok(())
    }

    fn restart(&mut self, id: u64) -> Result {
        let applied = self.stopped.remove(&id).ok_or("not stopped")?;
        let dir = self.dirs.get(&id).ok_or("no dir")?;
        self.nodes.insert(id, Node::start(id, dir, applied)?);
        Ok(())
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .find(|(_, n)| n.raw.raft.state == StateRole::Leader)
            .map(|(&id, _)| id)
    }

    /// Ticks, delivers and handles Readies until `done` or the round limit.
    fn run_until(&mut self, mut done: impl FnMut(&Cluster) -> bool) -> Result {
        for _ in 0..2000 {
            if done(self) {
                return Ok(());
            }
            for node in self.nodes.values_mut() {
                node.raw.tick();
            }
            for _ in 0..4 {
                let mut outbox = Vec::new();
                for node in self.nodes.values_mut() {
                    node.on_ready(&mut outbox)?;
                }
                outbox.append(&mut self.inflight);
                if outbox.is_empty() {
                    break;
                }
                for m in outbox {
                    if let Some(node) = self.nodes.get_mut(&m.to) {
                        node.raw.step(m)?;
                    }
                }
            }
        }
        Err("the cluster did not get there".into())
    }

    fn propose(&mut self, values: std::ops::Range<u32>) -> Result {
        for v in values {
            self.run_until(|c| c.leader().is_some())?;
            let leader = self.leader().ok_or("no leader")?;
            let node = self.nodes.get_mut(&leader).ok_or("gone")?;
            node.raw
                .propose(vec![], format!("value {v}").into_bytes())?;
            if v % 8 == 0 {
                let mut outbox = Vec::new();
                node.on_ready(&mut outbox)?;
                self.inflight.extend(outbox);
            }
        }
        Ok(())
    }

    fn applied(&self, id: u64) -> Vec<Vec<u8>> {
        self.nodes
            .get(&id)
            .map(|n| read(&n.applied).values.clone())
            .unwrap_or_default()
    }
}

fn values(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|v| format!("value {v}").into_bytes()).collect()
}

#[test]
fn a_raft_group_on_the_log_survives_restarts_and_catches_up_by_snapshot() -> Result {
    let mut c = Cluster::new()?;
    c.run_until(|c| c.leader().is_some())?;
    c.propose(0..100)?;
    c.run_until(|c| VOTERS.iter().all(|&id| c.applied(id) == values(0..100)))?;

    // A follower stops and misses more than the leader keeps.
    let leader = c.leader().ok_or("no leader")?;
    let follower = VOTERS.into_iter().find(|&id| id != leader).ok_or("none")?;
    c.stop(follower)?;
    c.propose(100..250)?;
    c.run_until(|c| {
        c.nodes
            .values()
            .all(|n| read(&n.applied).values == values(0..250))
    })?;
    let leader_first = read(&c.nodes[&leader].log).first_index();
    assert!(
        leader_first > c.stopped[&follower].index + 1,
        "the leader compacted past the follower"
    );
    c.restart(follower)?;
    c.run_until(|c| c.applied(follower) == values(0..250))?;
    assert_eq!(
        c.nodes[&follower].snapshots, 1,
        "the follower caught up by a snapshot"
    );
    assert!(read(&c.nodes[&follower].log).first_index() > 100);

    // The leader restarts: a new election, and the group goes on.
    c.stop(leader)?;
    c.restart(leader)?;
    c.propose(250..300)?;
    c.run_until(|c| VOTERS.iter().all(|&id| c.applied(id) == values(0..300)))?;

    // Every node's log reopens to what it held when it stopped.
    for id in VOTERS {
        let (dir, entries, hard_state) = {
            let log = read(&c.nodes[&id].log);
            let all = log.entries(log.first_index(), log.last_index() + 1, None)?;
            (log.dir().to_path_buf(), all, log.hard_state().clone())
        };
        c.stop(id)?;
        let again = RaftLog::open(&dir, options())?;
        assert_eq!(
            again.entries(again.first_index(), again.last_index() + 1, None)?,
            entries,
            "node {id}"
        );
        assert_eq!(again.hard_state(), &hard_state);
        assert_eq!(again.recovery().torn_bytes, 0);
    }
    Ok(())
}

#[test]
fn storage_errors_reach_raft_as_its_own_kinds() -> Result {
    let dir = support::scratch_dir()?;
    let mut log = RaftLog::open(dir.path(), options())?;
    log.append(&support::entries(1..=10, 1))?;
    log.compact(5)?;
    let storage = LogStorage {
        log: Arc::new(RwLock::new(log)),
        applied: Arc::default(),
    };
    assert!(matches!(
        storage.entries(2, 6, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(raft::StorageError::Compacted))
    ));
    assert!(matches!(
        storage.term(11),
        Err(raft::Error::Store(raft::StorageError::Unavailable))
    ));
    assert_eq!(storage.term(4)?, 1);
    let e: raft::Error = LogError::Failed { cause: "x".into() }.into();
    assert!(matches!(
        e,
        raft::Error::Store(raft::StorageError::Other(_))
    ));
    // The entries raft-rs reads back encode as they were written.
    let got = storage.entries(5, 11, None, GetEntriesContext::empty(false))?;
    assert_eq!(
        got.iter()
            .map(|e| e.write_to_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()?,
        support::entries(5..=10, 1)
            .iter()
            .map(|e| e.write_to_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()?
    );
    Ok(())
}
