//! Durable storage in sled: the Raft log, hard state and snapshot metadata ([`RaftStore`]), and
//! the applied state machine ([`StateStore`]).
//!
//! Each write is one sled batch (atomic within its tree); [`Store::sync`] fsyncs both trees and is
//! called before anything that depends on the write is acknowledged or sent.
//!
//! The Raft log is what makes an update durable. The state machine is written as *checkpoints*:
//! every so often the maps changed since the last checkpoint are written in one batch, with the
//! applied index they describe ([`Dirty`], [`StateStore::checkpoint`]). A map updated many times
//! between two checkpoints is written once. After a restart the node loads the last checkpoint and
//! Raft replays the log entries after it, so the log is never compacted past a checkpoint.
//! Retained change-set history lives in memory only: after a restart it starts at the
//! checkpoint (replayed entries add to it), and older resumes get a snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};
use sharing_map::{MapDump, SharingMap, UpdateId, codec};

use crate::state::{Change, MapKey, MapState, Membership, State, StateImage};

/// Storage failed: the node cannot go on safely.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an I/O or corruption error.
    #[error("storage error in {path}: {source}")]
    Sled {
        /// The database directory.
        path: String,
        /// sled's error.
        source: sled::Error,
    },
    /// A file operation failed.
    #[error("storage error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Stored bytes could not be decoded.
    #[error("corrupt record {key:?} in {tree}: {reason}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// The key, lossily printed.
        key: String,
        /// Why it is unreadable.
        reason: String,
    },
}

const HARD_STATE: &[u8] = b"hs";
const CONF_STATE: &[u8] = b"cs";
const SNAP_META: &[u8] = b"sm";
/// The first request number no life of this node has reserved yet.
const REQUEST_FLOOR: &[u8] = b"rq";
const LOG_PREFIX: u8 = b'l';
// Starts with a byte no map record starts with.
const STATE_META: &[u8] = b"\0meta";

fn log_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LOG_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The node's database.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    /// sled's log file, to `fdatasync` it: sled itself ends a flush with `sync_file_range`,
    /// which does not flush the disk's write cache nor the file's size.
    log_file: Arc<std::fs::File>,
    path: String,
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        let db = open_sled(dir).map_err(|source| StoreError::Sled {
            path: path.clone(),
            source,
        })?;
        let log = dir.join("db");
        let log_file = std::fs::File::open(&log).map_err(|source| StoreError::Io {
            path: log.display().to_string(),
            source,
        })?;
        Ok(Self {
            db,
            log_file: Arc::new(log_file),
            path,
        })
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(|e| self.err(e))
    }

    /// Makes everything written so far durable: sled writes its buffers out, then the log file
    /// is `fdatasync`ed (data, size, and the disk's write cache).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.err(e))?;
        self.log_file.sync_data().map_err(|source| StoreError::Io {
            path: format!("{}/db", self.path),
            source,
        })
    }

    /// Whether the database holds any Raft state yet.
    pub fn is_new(&self) -> Result<bool, StoreError> {
        Ok(self.tree("raft")?.is_empty() && self.tree("state")?.is_empty())
    }
}

/// How long [`Store::open`] waits for the database's file lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, waiting a little for its file lock: sled's background threads keep a dropped
/// database's lock for a moment, so a store reopened in the same process (a node restarted in
/// place, a test) would otherwise fail with "could not acquire lock". Another process that
/// holds the directory still gets the error, after [`LOCK_WAIT`].
fn open_sled(dir: &std::path::Path) -> Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                return Err(sled::Error::Io(std::io::Error::other(format!(
                    "{e} (is another spine process using this data directory?)"
                ))));
            }
            other => return other,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct LogMeta {
    hard_state: HardState,
    conf_state: ConfState,
    snap_index: u64,
    snap_term: u64,
    last: u64,
}

/// The Raft log and hard state, implementing raft-rs's [`raft::Storage`].
///
/// Snapshots are produced on demand from the newest applied state, which the node loop publishes
/// into `applied` after every apply (it is the only writer, so the image is consistent with the
/// index it claims).
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

    /// Publishes the newest applied state (used to build snapshots).
    pub fn set_applied(&self, state: Arc<State>) {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Current hard state.
    pub fn hard_state(&self) -> HardState {
        self.meta().hard_state.clone()
    }

    /// Index of the first entry still in the log.
    pub fn first(&self) -> u64 {
        self.meta().snap_index + 1
    }

    /// Appends entries, replacing any conflicting tail.
    pub fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
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

    /// Reserves `count` request numbers that no earlier life of this node reserved, durably
    /// (synced before it returns), and returns the first of them.
    pub fn reserve_requests(&self, count: u64) -> Result<u64, StoreError> {
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

    /// Records the hard state.
    pub fn set_hard_state(&self, hs: &HardState) -> Result<(), StoreError> {
        self.tree
            .insert(HARD_STATE, encode_pb(hs))
            .map_err(|e| self.store.err(e))?;
        self.meta().hard_state = hs.clone();
        Ok(())
    }

    /// Records the commit index.
    pub fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.hard_state();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Records the configuration after a membership change.
    pub fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError> {
        self.tree
            .insert(CONF_STATE, encode_pb(cs))
            .map_err(|e| self.store.err(e))?;
        self.meta().conf_state = cs.clone();
        Ok(())
    }

    /// Installs a received snapshot: the log is replaced by the snapshot's position and the
    /// state machine by its image, in one transaction over both trees, so a crash leaves either
    /// the old or the new node.
    pub fn install_snapshot(
        &self,
        snap: &Snapshot,
        states: &StateStore,
    ) -> Result<State, StoreError> {
        let image: StateImage = codec::decode(&snap.data).map_err(|e| corrupt(b"snapshot", e))?;
        let (state_batch, state) = states.replace_batch(&image)?;
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
                    corrupt(b"snapshot", "transaction aborted")
                }
            })?;
        meta.hard_state = hs;
        meta.conf_state = md.get_conf_state().clone();
        meta.snap_index = md.index;
        meta.snap_term = md.term;
        meta.last = md.index;
        Ok(state)
    }

    /// Drops log entries before `index` (which must be applied).
    pub fn compact(&self, index: u64) -> Result<(), StoreError> {
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

#[derive(Serialize, Deserialize)]
struct MapMeta {
    version: u64,
    last_update_id: Option<UpdateId>,
}

#[derive(Serialize, Deserialize)]
struct StateMeta {
    applied_index: u64,
    applied_term: u64,
    membership: Membership,
}

fn map_prefix(tag: u8, key: &MapKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.app.as_str().len() + key.map.as_str().len() + 1);
    k.push(tag);
    k.extend_from_slice(key.app.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(key.map.as_str().as_bytes());
    k
}

fn entry_key(key: &MapKey, entry: &str) -> Vec<u8> {
    let mut k = map_prefix(b'e', key);
    k.push(0);
    k.extend_from_slice(entry.as_bytes());
    k
}

/// Splits `tag app \0 map [\0 rest]` into its parts.
fn parse_map_key(bytes: &[u8]) -> Option<(MapKey, &[u8])> {
    let body = bytes.get(1..)?;
    let app_end = body.iter().position(|&b| b == 0)?;
    let app = std::str::from_utf8(&body[..app_end]).ok()?;
    let rest = &body[app_end + 1..];
    let map_end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let map = std::str::from_utf8(&rest[..map_end]).ok()?;
    let tail = rest.get(map_end + 1..).unwrap_or(&[]);
    Some((
        MapKey {
            app: app.parse().ok()?,
            map: map.parse().ok()?,
        },
        tail,
    ))
}

/// What changed in the applied state since the last checkpoint: per map, whether it was created
/// and which keys were put or removed.
#[derive(Debug, Default)]
pub struct Dirty {
    maps: BTreeMap<MapKey, DirtyMap>,
}

#[derive(Debug, Default)]
struct DirtyMap {
    created: bool,
    keys: BTreeSet<Arc<str>>,
}

impl Dirty {
    /// Notes what `changes` touched.
    pub fn record(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::Created { key, .. } => {
                    let d = self.maps.entry(key.clone()).or_default();
                    d.created = true;
                    d.keys.clear();
                }
                Change::Delta {
                    key, change_set, ..
                } => {
                    let d = self.maps.entry(key.clone()).or_default();
                    if !d.created {
                        d.keys.extend(change_set.removes().iter().cloned());
                        d.keys
                            .extend(change_set.puts().iter().map(|(k, _)| k.clone()));
                    }
                }
            }
        }
    }

    /// Maps changed since the last checkpoint.
    pub fn maps(&self) -> usize {
        self.maps.len()
    }
}

/// The applied state machine in sled.
#[derive(Clone, Debug)]
pub struct StateStore {
    store: Store,
    tree: sled::Tree,
}

fn corrupt(key: &[u8], reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree: "state",
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

impl StateStore {
    /// Opens the state part of `store`.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            tree: store.tree("state")?,
            store: store.clone(),
        })
    }

    /// Writes a checkpoint: the current content of every map in `dirty` and the applied
    /// position of `state`, in one atomic batch, then fsyncs it. Log entries up to
    /// `state.applied_index` are not needed for recovery after this returns.
    pub fn checkpoint(&self, state: &State, dirty: Dirty) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, d) in dirty.maps {
            let Some(ms) = state.maps.get(&key) else {
                continue;
            };
            self.put_meta(&mut batch, &key, &ms.map);
            if d.created {
                for (k, e) in ms.map.iter() {
                    batch.insert(entry_key(&key, k), codec::encode(e));
                }
            }
            for k in &d.keys {
                match ms.map.get(k) {
                    Some(e) => batch.insert(entry_key(&key, k), codec::encode(e)),
                    None => batch.remove(entry_key(&key, k)),
                }
            }
        }
        self.put_state_meta(&mut batch, state);
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.store.err(e))?;
        self.store.sync()
    }

    fn put_meta(&self, batch: &mut sled::Batch, key: &MapKey, map: &SharingMap) {
        batch.insert(
            map_prefix(b'm', key),
            codec::encode(&MapMeta {
                version: map.version(),
                last_update_id: map.last_update_id().cloned(),
            }),
        );
    }

    fn put_state_meta(&self, batch: &mut sled::Batch, state: &State) {
        batch.insert(
            STATE_META,
            codec::encode(&StateMeta {
                applied_index: state.applied_index,
                applied_term: state.applied_term,
                membership: state.membership.clone(),
            }),
        );
    }

    /// A batch replacing everything with a snapshot's image, and the state it describes.
    fn replace_batch(&self, image: &StateImage) -> Result<(sled::Batch, State), StoreError> {
        let state = State::from_image(image.clone());
        let mut batch = sled::Batch::default();
        for k in self.tree.iter().keys() {
            batch.remove(k.map_err(|e| self.store.err(e))?);
        }
        for (key, ms) in state.maps.iter() {
            self.put_meta(&mut batch, key, &ms.map);
            for (k, e) in ms.map.iter() {
                batch.insert(entry_key(key, k), codec::encode(e));
            }
        }
        self.put_state_meta(&mut batch, &state);
        Ok((batch, state))
    }

    /// Loads the applied state.
    pub fn load(&self) -> Result<State, StoreError> {
        let mut state = State::default();
        if let Some(b) = self.tree.get(STATE_META).map_err(|e| self.store.err(e))? {
            let meta: StateMeta = codec::decode(&b).map_err(|e| corrupt(STATE_META, e))?;
            state.applied_index = meta.applied_index;
            state.applied_term = meta.applied_term;
            state.membership = meta.membership;
        }
        let mut dumps: std::collections::BTreeMap<MapKey, MapDump> = Default::default();
        let mut stale = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item.map_err(|e| self.store.err(e))?;
            match k.first() {
                Some(b'm') => {
                    let (key, _) = parse_map_key(&k).ok_or_else(|| corrupt(&k, "bad key"))?;
                    let meta: MapMeta = codec::decode(&v).map_err(|e| corrupt(&k, e))?;
                    let dump = dumps.entry(key.clone()).or_insert_with(|| MapDump {
                        name: key.map.clone(),
                        version: 0,
                        last_update_id: None,
                        entries: Vec::new(),
                    });
                    dump.version = meta.version;
                    dump.last_update_id = meta.last_update_id;
                }
                Some(b'e') => {
                    let (key, tail) = parse_map_key(&k).ok_or_else(|| corrupt(&k, "bad key"))?;
                    let entry_name = std::str::from_utf8(tail).map_err(|e| corrupt(&k, e))?;
                    let entry = codec::decode(&v).map_err(|e| corrupt(&k, e))?;
                    dumps
                        .entry(key.clone())
                        .or_insert_with(|| MapDump {
                            name: key.map.clone(),
                            version: 0,
                            last_update_id: None,
                            entries: Vec::new(),
                        })
                        .entries
                        .push((Arc::from(entry_name), entry));
                }
                // Change-set history written by earlier versions, which kept it on disk: it
                // is in memory only now, and the stale copy is dropped.
                Some(b'h') => stale.push(k),
                _ => {}
            }
        }
        for (key, dump) in dumps {
            state.maps.insert_mut(
                key,
                MapState {
                    map: SharingMap::restore(dump),
                    history: rpds::QueueSync::new_sync(),
                },
            );
        }
        if !stale.is_empty() {
            let mut batch = sled::Batch::default();
            for k in stale {
                batch.remove(k);
            }
            self.tree
                .apply_batch(batch)
                .map_err(|e| self.store.err(e))?;
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ApplyConfig, Command};
    use raft::Storage as _;
    use serde_json::json;
    use sharing_map::{AppName, ChangeSet, Entry as MapEntry, MapName};

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

    #[test]
    fn state_round_trips_through_sled() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let states = StateStore::open(&store)?;
        let mut state = State::default();
        let cfg = ApplyConfig {
            history_len: 2,
            ..ApplyConfig::default()
        };
        let key = MapKey {
            app: AppName::parse("acme-shop")?,
            map: MapName::parse("bob-tv-x")?,
        };
        let mut dirty = Dirty::default();
        let (_, ch) = state.apply(
            &Command::Create {
                key: key.clone(),
                initial: vec![(Arc::from("k\0odd"), MapEntry::value(json!(1)))],
            },
            &cfg,
        );
        dirty.record(&ch);
        states.checkpoint(&state, std::mem::take(&mut dirty))?;
        for v in 0..4u64 {
            let cs = ChangeSet::from_ops(
                key.map.clone(),
                v,
                UpdateId::parse(&format!("u{v}"))?,
                [
                    (Arc::from(format!("k{v}")), Some(MapEntry::value(json!(v)))),
                    (Arc::from("k\0odd"), None),
                ],
            );
            let (_, ch) = state.apply(
                &Command::Update {
                    app: key.app.clone(),
                    change_sets: vec![cs],
                },
                &cfg,
            );
            state.applied_index = 10 + v;
            dirty.record(&ch);
            // Checkpoints after the second and the fourth update: each writes the keys
            // changed since the one before.
            if v % 2 == 1 {
                states.checkpoint(&state, std::mem::take(&mut dirty))?;
            }
        }
        let loaded = states.load()?;
        assert_eq!(loaded.applied_index, 13);
        assert_eq!(loaded.digest(), state.digest());
        let ms = loaded.get(&key.app, &key.map).ok_or("missing")?;
        assert_eq!(ms.map.version(), 4);
        assert_eq!(ms.map.get("k\0odd"), None);
        // History is kept in memory only; a loaded map starts with none.
        assert_eq!(ms.history.len(), 0);
        assert_eq!(ms.oldest_retained(), 4);
        // A snapshot of this state installed on a fresh node reproduces it.
        let raft = RaftStore::open(&store, &[1])?;
        raft.set_applied(Arc::new(state.clone()));
        let snap = raft.snapshot(13, 2)?;
        let dir2 = tempfile::tempdir()?;
        let store2 = Store::open(dir2.path())?;
        let raft2 = RaftStore::open(&store2, &[])?;
        let states2 = StateStore::open(&store2)?;
        let installed = raft2.install_snapshot(&snap, &states2)?;
        assert_eq!(installed.digest(), state.digest());
        assert_eq!(states2.load()?.digest(), state.digest());
        assert_eq!(raft2.first_index()?, 14);
        assert_eq!(raft2.term(13)?, state.applied_term);
        Ok(())
    }
}
