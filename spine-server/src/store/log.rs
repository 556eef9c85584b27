//! The Raft log: spine-raft-log in the data directory's `raft-log/` (entries, hard state,
//! configuration, snapshot position), and the floor of reserved request numbers in sled's tree
//! `raft`. It implements raft-rs's [`raft::Storage`] and the node loop's [`RaftLog`].
//!
//! Snapshots are produced on demand from the newest applied state, which the node loop publishes
//! into `applied` after every apply (it is the only writer, so the image is consistent with the
//! index it claims).

use std::sync::{Arc, Mutex, MutexGuard};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use sharing_map::codec;
use spine_raft_log::{LogBatch, Options};

use super::legacy::{self, Layout};
use super::{LogWrite, RaftLog, Store, StoreError};
use crate::state::State;

/// The first request number no life of this node has reserved yet.
const REQUEST_FLOOR: &[u8] = b"rq";

/// Where a founding member's new log starts: a snapshot position (index 1, term 1) holding the
/// founding configuration, not an entry. The configuration is nowhere in the entries, so a node
/// that joins later must never replay them from the start (it would apply the first membership
/// change to an empty configuration and refuse it): with index 1 never an entry, a joiner's log
/// (empty) can only be caught up by a snapshot, which carries the configuration.
pub const FOUNDING_POSITION: (u64, u64) = (1, 1);

/// The Raft log of a node.
#[derive(Clone)]
pub struct RaftStore {
    // Declared before `store`, so dropped first: the log is open only while sled's lock on the
    // data directory is held.
    log: Arc<Mutex<spine_raft_log::RaftLog>>,
    applied: Arc<Mutex<Arc<State>>>,
    /// sled's tree `raft`, which holds the request floor.
    requests: sled::Tree,
    store: Store,
}

impl std::fmt::Debug for RaftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore").finish_non_exhaustive()
    }
}

fn open_log(dir: &std::path::Path) -> Result<spine_raft_log::RaftLog, StoreError> {
    Ok(spine_raft_log::RaftLog::open(dir, Options::default())?)
}

impl RaftStore {
    /// Opens the Raft log of `store`, moving it out of sled first if an older version kept it
    /// there. A new log is initialized with `initial_voters` (all bootstrap members use the same
    /// list), or left empty to join an existing group.
    pub fn open(store: &Store, initial_voters: &[u64]) -> Result<Self, StoreError> {
        let tree = store.tree("raft")?;
        let dir = store.log_dir();
        let layout = legacy::layout(store, &tree)?;
        let mut log = match layout {
            Layout::Moved if !dir.is_dir() => {
                return Err(StoreError::MissingLog {
                    dir: dir.display().to_string(),
                });
            }
            Layout::Moved | Layout::None => open_log(&dir)?,
            Layout::InSled => {
                // What is there is a copy that a crash cut short: the sled log is the truth
                // until the move completes.
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|source| StoreError::Io {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                let mut log = open_log(&dir)?;
                legacy::migrate(store, &tree, &mut log, &dir)?;
                log
            }
        };
        let recovery = log.recovery();
        if recovery.torn_bytes > 0 || recovery.removed_segment {
            tracing::warn!(
                torn_bytes = recovery.torn_bytes,
                removed_segment = recovery.removed_segment,
                dir = %dir.display(),
                "dropped the torn tail of the Raft log: a write the process did not finish \
                 (never synced, so never acknowledged)"
            );
        }
        if *log.conf_state() == ConfState::default() && !initial_voters.is_empty() {
            let (index, term) = FOUNDING_POSITION;
            let mut batch = LogBatch::new();
            batch
                .restore(index, term)
                .set_conf_state(ConfState {
                    voters: initial_voters.to_vec(),
                    ..Default::default()
                })
                .set_hard_state(HardState {
                    term,
                    commit: index,
                    ..Default::default()
                });
            log.write(batch)?;
            log.sync()?;
        }
        if layout == Layout::None {
            // Only once the log exists: a mark without it would refuse the next start.
            legacy::mark_moved(store, &tree)?;
        }
        Ok(Self {
            log: Arc::new(Mutex::new(log)),
            applied: Arc::new(Mutex::new(Arc::new(State::default()))),
            requests: tree,
            store: store.clone(),
        })
    }

    fn log(&self) -> MutexGuard<'_, spine_raft_log::RaftLog> {
        // A poisoned lock means a panic elsewhere; the log itself refuses writes after any
        // failure it saw, and a panic between its calls leaves it consistent.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftLog for RaftStore {
    fn set_applied(&self, state: Arc<State>) {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    fn hard_state(&self) -> HardState {
        self.log().hard_state().clone()
    }

    fn first(&self) -> u64 {
        self.log().first_index()
    }

    fn write(&self, write: LogWrite) -> Result<(), StoreError> {
        let mut log = self.log();
        let mut batch = LogBatch::new();
        let mut hard_state = write.hard_state;
        if let Some(md) = &write.snapshot {
            batch
                .restore(md.index, md.term)
                .set_conf_state(md.get_conf_state().clone());
            // raft-rs refuses to start with a commit index below the log's first entry: with
            // the position goes a hard state that has the snapshot committed.
            let mut hs = hard_state.unwrap_or_else(|| log.hard_state().clone());
            hs.commit = hs.commit.max(md.index);
            hs.term = hs.term.max(md.term);
            hard_state = Some(hs);
        }
        batch.append(write.entries);
        if let Some(hs) = hard_state {
            batch.set_hard_state(hs);
        }
        Ok(log.write(batch)?)
    }

    fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut log = self.log();
        if log.hard_state().commit == commit {
            return Ok(());
        }
        let mut hs = log.hard_state().clone();
        hs.commit = commit;
        Ok(log.set_hard_state(&hs)?)
    }

    fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError> {
        let mut batch = LogBatch::new();
        batch.set_conf_state(cs.clone());
        Ok(self.log().write(batch)?)
    }

    fn compact(&self, index: u64) -> Result<(), StoreError> {
        Ok(self.log().compact(index)?)
    }

    fn reserve_requests(&self, count: u64) -> Result<u64, StoreError> {
        let first = match self
            .requests
            .get(REQUEST_FLOOR)
            .map_err(|e| self.store.err(e))?
        {
            Some(b) => {
                let bytes: [u8; 8] = b.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    tree: "raft",
                    key: "rq".into(),
                    reason: format!("{} bytes, expected 8", b.len()),
                })?;
                u64::from_be_bytes(bytes)
            }
            None => 1,
        };
        let end = first.saturating_add(count);
        self.requests
            .insert(REQUEST_FLOOR, &end.to_be_bytes())
            .map_err(|e| self.store.err(e))?;
        self.store.sync()?;
        Ok(first)
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut log = self.log();
        log.sync()?;
        // A freed segment file left behind costs disk space until the next start removes it;
        // durability does not depend on it.
        for e in log.take_removal_errors() {
            tracing::warn!(error = %e, "a compacted Raft log segment was not removed");
        }
        Ok(())
    }
}

impl raft::Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let log = self.log();
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
        Ok(self.log().entries(low, high, max_size.into())?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        Ok(self.log().term(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.log().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let state = self
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if state.applied_index < request_index || state.applied_index == 0 {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot {
            data: codec::encode(&state.image()).into(),
            ..Default::default()
        };
        let md = snap.mut_metadata();
        md.index = state.applied_index;
        md.term = state.applied_term;
        md.set_conf_state(ConfState {
            voters: state.membership.voters.clone(),
            learners: state.membership.learners.clone(),
            ..Default::default()
        });
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("entry {index} term {term}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn entries(raft: &RaftStore, low: u64, high: u64) -> raft::Result<Vec<Entry>> {
        raft.entries(low, high, None, GetEntriesContext::empty(false))
    }

    #[test]
    fn log_survives_reopen_and_truncates_conflicts() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        // A founder's log starts after its founding position.
        let b = FOUNDING_POSITION.0;
        {
            let store = Store::open(dir.path())?;
            let raft = RaftStore::open(&store, &[1, 2, 3])?;
            assert_eq!(raft.first_index()?, b + 1);
            assert_eq!(raft.term(b)?, FOUNDING_POSITION.1);
            raft.write(LogWrite {
                entries: (b + 1..=b + 5).map(|i| entry(i, 1)).collect(),
                ..LogWrite::default()
            })?;
            let hs = HardState {
                term: 2,
                vote: 1,
                commit: b + 3,
                ..Default::default()
            };
            raft.write(LogWrite {
                entries: vec![entry(b + 4, 2)],
                hard_state: Some(hs),
                ..LogWrite::default()
            })?;
            raft.sync()?;
        }
        let store = Store::open(dir.path())?;
        let raft = RaftStore::open(&store, &[])?;
        assert_eq!(raft.last_index()?, b + 4);
        assert_eq!(raft.term(b + 4)?, 2);
        assert_eq!(raft.term(b + 3)?, 1);
        let st = raft.initial_state()?;
        assert_eq!((st.hard_state.term, st.hard_state.commit), (2, b + 3));
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        raft.compact(b + 3)?;
        assert_eq!(raft.first_index()?, b + 3);
        assert_eq!(raft.term(b + 2)?, 1);
        assert!(entries(&raft, b + 1, b + 3).is_err());
        assert_eq!(entries(&raft, b + 3, b + 5)?.len(), 2);
        Ok(())
    }

    #[test]
    fn a_joiners_log_is_empty_and_a_founders_starts_after_the_founding_position()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("joiner"))?;
        let joiner = RaftStore::open(&store, &[])?;
        assert_eq!((joiner.first_index()?, joiner.last_index()?), (1, 0));
        assert_eq!(joiner.initial_state()?.conf_state, ConfState::default());
        let store = Store::open(&dir.path().join("founder"))?;
        let founder = RaftStore::open(&store, &[1, 2, 3])?;
        // The joiner needs entry 1 next; no founder has it, so a leader must send a snapshot.
        assert!(entries(&founder, 1, 2).is_err());
        assert_eq!(
            founder.initial_state()?.hard_state.commit,
            FOUNDING_POSITION.0
        );
        Ok(())
    }

    #[test]
    fn request_numbers_are_never_reserved_twice() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = {
            let store = Store::open(dir.path())?;
            let raft = RaftStore::open(&store, &[1])?;
            let a = raft.reserve_requests(10)?;
            let b = raft.reserve_requests(10)?;
            assert_eq!(b, a + 10);
            b
        };
        let store = Store::open(dir.path())?;
        let raft = RaftStore::open(&store, &[])?;
        assert_eq!(raft.reserve_requests(10)?, first + 10);
        Ok(())
    }

    /// A data directory as the versions with the log in sled left it: compacted to entry 10
    /// (term 2), entries 11..=40 with a term change at 31, a vote, request numbers reserved.
    fn write_sled_log(dir: &std::path::Path) -> Result<Vec<Entry>, Box<dyn std::error::Error>> {
        let store = Store::open(dir)?;
        let tree = store.tree("raft")?;
        let log: Vec<Entry> = (11..=40)
            .map(|i| entry(i, if i <= 30 { 2 } else { 3 }))
            .collect();
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 37,
            ..Default::default()
        };
        let cs = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        };
        legacy::write::log(&tree, &hs, &cs, (10, 2), &log)?;
        tree.insert(REQUEST_FLOOR, &500u64.to_be_bytes())?;
        store.sync()?;
        Ok(log)
    }

    fn assert_moved(raft: &RaftStore, log: &[Entry]) -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!((raft.first_index()?, raft.last_index()?), (11, 40));
        assert_eq!(raft.term(10)?, 2);
        assert_eq!(entries(raft, 11, 41)?, log);
        let st = raft.initial_state()?;
        assert_eq!(
            (st.hard_state.term, st.hard_state.vote, st.hard_state.commit),
            (3, 2, 37)
        );
        assert_eq!(
            (st.conf_state.voters, st.conf_state.learners),
            (vec![1, 2, 3], vec![4])
        );
        Ok(())
    }

    #[test]
    fn a_log_in_sled_moves_into_the_raft_log_at_the_first_start()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let log = write_sled_log(dir.path())?;
        {
            let store = Store::open(dir.path())?;
            // Initial voters do not override the moved configuration.
            let raft = RaftStore::open(&store, &[1, 2, 3])?;
            assert_moved(&raft, &log)?;
            assert_eq!(raft.reserve_requests(10)?, 500);
            let tree = store.tree("raft")?;
            assert_eq!(
                tree.len(),
                2,
                "only the request floor and the mark are left"
            );
            // A version before this one refuses an `sm` that is not 16 bytes.
            assert_ne!(tree.get(b"sm")?.map(|v| v.len()), Some(16));
            // The moved log goes on.
            raft.write(LogWrite {
                entries: vec![entry(41, 3)],
                ..LogWrite::default()
            })?;
            raft.sync()?;
        }
        let store = Store::open(dir.path())?;
        let raft = RaftStore::open(&store, &[])?;
        assert_eq!(raft.last_index()?, 41);
        assert_eq!(entries(&raft, 11, 41)?, log, "moved once, not again");
        assert_eq!(raft.reserve_requests(10)?, 510);
        Ok(())
    }

    #[test]
    fn a_move_cut_short_by_a_crash_starts_over() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let log = write_sled_log(dir.path())?;
        let log_dir = {
            // The new log as a power loss mid-move could leave it: part of the entries, and a
            // damaged record with intact ones after it, which the log refuses to open.
            let store = Store::open(dir.path())?;
            let mut partial = spine_raft_log::RaftLog::open(store.log_dir(), Options::default())?;
            let mut batch = LogBatch::new();
            batch.restore(10, 2).append(log[..5].to_vec());
            partial.write(batch)?;
            partial.append(&log[5..10])?;
            partial.sync()?;
            store.log_dir()
        };
        let segment = std::fs::read_dir(&log_dir)?
            .next()
            .ok_or("no segment file")??
            .path();
        let mut bytes = std::fs::read(&segment)?;
        let middle = bytes.len() / 3;
        bytes[middle] ^= 0xff;
        std::fs::write(&segment, bytes)?;
        assert!(spine_raft_log::RaftLog::open(&log_dir, Options::default()).is_err());
        let store = Store::open(dir.path())?;
        assert_moved(&RaftStore::open(&store, &[])?, &log)?;
        Ok(())
    }

    #[test]
    fn a_missing_log_directory_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let log_dir = {
            let store = Store::open(dir.path())?;
            let raft = RaftStore::open(&store, &[1])?;
            raft.write(LogWrite {
                entries: vec![entry(FOUNDING_POSITION.0 + 1, 1)],
                ..LogWrite::default()
            })?;
            raft.sync()?;
            store.log_dir()
        };
        std::fs::remove_dir_all(&log_dir)?;
        let store = Store::open(dir.path())?;
        match RaftStore::open(&store, &[1]) {
            Err(StoreError::MissingLog { .. }) => Ok(()),
            other => Err(format!("expected MissingLog, got {other:?}").into()),
        }
    }
}
