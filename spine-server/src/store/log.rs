//! The Raft log in sled (tree `raft`): one record per entry, the hard state, the configuration,
//! the position of the last snapshot or compaction, and the floor of reserved request numbers.
//! It implements raft-rs's [`raft::Storage`] and the node loop's [`RaftLog`].
//!
//! Snapshots are produced on demand from the newest applied state, which the node loop publishes
//! into `applied` after every apply (it is the only writer, so the image is consistent with the
//! index it claims).

use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use sharing_map::codec;

use super::{RaftLog, StateStore, Store, StoreError, corrupt};
use crate::state::State;

const HARD_STATE: &[u8] = b"hs";
const CONF_STATE: &[u8] = b"cs";
const SNAP_META: &[u8] = b"sm";
/// The first request number no life of this node has reserved yet.
const REQUEST_FLOOR: &[u8] = b"rq";
const LOG_PREFIX: u8 = b'l';
fn log_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LOG_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

#[derive(Clone, Debug, Default)]
struct LogMeta {
    hard_state: HardState,
    conf_state: ConfState,
    snap_index: u64,
    snap_term: u64,
    last: u64,
}

/// The Raft log and hard state in sled.
#[derive(Clone)]
pub struct RaftStore {
    store: Store,
    tree: sled::Tree,
    meta: Arc<Mutex<LogMeta>>,
    applied: Arc<Mutex<Arc<State>>>,
}

impl std::fmt::Debug for RaftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore").finish_non_exhaustive()
    }
}

fn decode_pb<M: protobuf::Message>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn encode_pb<M: protobuf::Message>(m: &M) -> Vec<u8> {
    // Encoding an in-memory protobuf message into a Vec cannot fail.
    m.write_to_bytes().unwrap_or_default()
}

fn storage_error(e: StoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl RaftStore {
    /// Opens the Raft part of `store`. A new store is initialized with `initial_voters` (all
    /// bootstrap members use the same list), or left empty to join an existing group.
    pub fn open(store: &Store, initial_voters: &[u64]) -> Result<Self, StoreError> {
        let tree = store.tree("raft")?;
        let get = |k: &[u8]| tree.get(k).map_err(|e| store.err(e));
        let mut meta = LogMeta::default();
        if let Some(b) = get(HARD_STATE)? {
            meta.hard_state = decode_pb("raft", HARD_STATE, &b)?;
        }
        if let Some(b) = get(CONF_STATE)? {
            meta.conf_state = decode_pb("raft", CONF_STATE, &b)?;
        } else if !initial_voters.is_empty() {
            meta.conf_state.voters = initial_voters.to_vec();
            tree.insert(CONF_STATE, encode_pb(&meta.conf_state))
                .map_err(|e| store.err(e))?;
        }
        if let Some(b) = get(SNAP_META)? {
            if b.len() != 16 {
                return Err(StoreError::Corrupt {
                    tree: "raft",
                    key: "sm".into(),
                    reason: format!("{} bytes, expected 16", b.len()),
                });
            }
            let mut idx = [0u8; 8];
            let mut term = [0u8; 8];
            idx.copy_from_slice(&b[..8]);
            term.copy_from_slice(&b[8..]);
            meta.snap_index = u64::from_be_bytes(idx);
            meta.snap_term = u64::from_be_bytes(term);
        }
        meta.last = match tree
            .scan_prefix([LOG_PREFIX])
            .keys()
            .next_back()
            .transpose()
            .map_err(|e| store.err(e))?
        {
            Some(k) if k.len() == 9 => {
                let mut idx = [0u8; 8];
                idx.copy_from_slice(&k[1..]);
                u64::from_be_bytes(idx)
            }
            _ => meta.snap_index,
        };
        Ok(Self {
            store: store.clone(),
            tree,
            meta: Arc::new(Mutex::new(meta)),
            applied: Arc::new(Mutex::new(Arc::new(State::default()))),
        })
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, LogMeta> {
        // A poisoned lock means a panic elsewhere; the data itself is still consistent because
        // every mutation is completed before the guard is dropped.
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftLog for RaftStore {
    fn set_applied(&self, state: Arc<State>) {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    fn hard_state(&self) -> HardState {
        self.meta().hard_state.clone()
    }

    fn first(&self) -> u64 {
        self.meta().snap_index + 1
    }

    fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut meta = self.meta();
        let mut batch = sled::Batch::default();
        for stale in first.index..=meta.last {
            batch.remove(&log_key(stale));
        }
        for e in entries {
            batch.insert(&log_key(e.index), encode_pb(e));
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.store.err(e))?;
        meta.last = entries[entries.len() - 1].index;
        Ok(())
    }

    fn reserve_requests(&self, count: u64) -> Result<u64, StoreError> {
        let first = match self
            .tree
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
        self.tree
            .insert(REQUEST_FLOOR, &end.to_be_bytes())
            .map_err(|e| self.store.err(e))?;
        self.store.sync()?;
        Ok(first)
    }

    fn set_hard_state(&self, hs: &HardState) -> Result<(), StoreError> {
        self.tree
            .insert(HARD_STATE, encode_pb(hs))
            .map_err(|e| self.store.err(e))?;
        self.meta().hard_state = hs.clone();
        Ok(())
    }

    fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.hard_state();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError> {
        self.tree
            .insert(CONF_STATE, encode_pb(cs))
            .map_err(|e| self.store.err(e))?;
        self.meta().conf_state = cs.clone();
        Ok(())
    }

    fn install_snapshot(&self, snap: &Snapshot, states: &StateStore) -> Result<State, StoreError> {
        let (state_batch, state) = states.replace_batch(&snap.data)?;
        let md = snap.get_metadata();
        let mut meta = self.meta();
        let mut batch = sled::Batch::default();
        for k in self.tree.scan_prefix([LOG_PREFIX]).keys() {
            batch.remove(k.map_err(|e| self.store.err(e))?);
        }
        let mut sm = Vec::with_capacity(16);
        sm.extend_from_slice(&md.index.to_be_bytes());
        sm.extend_from_slice(&md.term.to_be_bytes());
        batch.insert(SNAP_META, sm);
        let mut hs = meta.hard_state.clone();
        hs.term = hs.term.max(md.term);
        hs.commit = md.index;
        batch.insert(HARD_STATE, encode_pb(&hs));
        batch.insert(CONF_STATE, encode_pb(md.get_conf_state()));
        use sled::Transactional as _;
        (&self.tree, &states.tree)
            .transaction(|(raft_tx, state_tx)| {
                raft_tx.apply_batch(&batch)?;
                state_tx.apply_batch(&state_batch)?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => self.store.err(e),
                sled::transaction::TransactionError::Abort(()) => {
                    corrupt("state", b"snapshot", "transaction aborted")
                }
            })?;
        meta.hard_state = hs;
        meta.conf_state = md.get_conf_state().clone();
        meta.snap_index = md.index;
        meta.snap_term = md.term;
        meta.last = md.index;
        Ok(state)
    }

    fn compact(&self, index: u64) -> Result<(), StoreError> {
        let first = self.first();
        if index <= first {
            return Ok(());
        }
        let term = raft::Storage::term(self, index - 1).map_err(|e| StoreError::Corrupt {
            tree: "raft",
            key: format!("log {}", index - 1),
            reason: e.to_string(),
        })?;
        let mut batch = sled::Batch::default();
        for i in first..index {
            batch.remove(&log_key(i));
        }
        let mut sm = Vec::with_capacity(16);
        sm.extend_from_slice(&(index - 1).to_be_bytes());
        sm.extend_from_slice(&term.to_be_bytes());
        batch.insert(SNAP_META, sm);
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.store.err(e))?;
        let mut meta = self.meta();
        meta.snap_index = index - 1;
        meta.snap_term = term;
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.store.sync()
    }
}

impl raft::Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let meta = self.meta();
        Ok(RaftState::new(
            meta.hard_state.clone(),
            meta.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.first();
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let mut out = Vec::with_capacity((high.saturating_sub(low)) as usize);
        for item in self.tree.range(log_key(low)..log_key(high)) {
            let (k, v) = item.map_err(|e| storage_error(self.store.err(e)))?;
            out.push(decode_pb::<Entry>("raft", &k, &v).map_err(storage_error)?);
        }
        if out.len() as u64 != high.saturating_sub(low) {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (snap_index, snap_term, last) = {
            let m = self.meta();
            (m.snap_index, m.snap_term, m.last)
        };
        if idx == snap_index {
            return Ok(snap_term);
        }
        if idx < snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let key = log_key(idx);
        match self
            .tree
            .get(key)
            .map_err(|e| storage_error(self.store.err(e)))?
        {
            Some(v) => Ok(decode_pb::<Entry>("raft", &key, &v)
                .map_err(storage_error)?
                .term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        let m = self.meta();
        Ok(m.last.max(m.snap_index))
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
            ..Default::default()
        }
    }

    #[test]
    fn log_survives_reopen_and_truncates_conflicts() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let store = Store::open(dir.path())?;
            let raft = RaftStore::open(&store, &[1, 2, 3])?;
            raft.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>())?;
            raft.append(&[entry(4, 2)])?;
            let hs = HardState {
                term: 2,
                vote: 1,
                commit: 3,
                ..Default::default()
            };
            raft.set_hard_state(&hs)?;
            store.sync()?;
        }
        let store = Store::open(dir.path())?;
        let raft = RaftStore::open(&store, &[])?;
        assert_eq!(raft.last_index()?, 4);
        assert_eq!(raft.term(4)?, 2);
        assert_eq!(raft.term(3)?, 1);
        let st = raft.initial_state()?;
        assert_eq!((st.hard_state.term, st.hard_state.commit), (2, 3));
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        raft.compact(3)?;
        assert_eq!(raft.first_index()?, 3);
        assert_eq!(raft.term(2)?, 1);
        assert!(
            raft.entries(1, 3, None, GetEntriesContext::empty(false))
                .is_err()
        );
        assert_eq!(
            raft.entries(3, 5, None, GetEntriesContext::empty(false))?
                .len(),
            2
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
}
