//! Durable storage in sled, in two parts with a boundary between them:
//!
//! ```text
//!   node loop ──RaftLog──▶ log.rs: RaftStore    (tree "raft": entries, hard state, conf state,
//!       │                                        snapshot position, request numbers)
//!       └──checkpoint───▶ checkpoint.rs: StateStore (tree "state": maps, applied position)
//!                          both in one sled database: Store::sync fsyncs it
//! ```
//!
//! Each write is one sled batch (atomic within its tree); [`Store::sync`] fsyncs the database
//! and is called before anything that depends on the write is acknowledged or sent.
//!
//! The Raft log is what makes an update durable. The state machine is written as *checkpoints*:
//! every so often the maps changed since the last checkpoint are written in one batch, with the
//! applied index they describe ([`Dirty`], [`StateStore::checkpoint`]). A map updated many times
//! between two checkpoints is written once. After a restart the node loads the last checkpoint and
//! Raft replays the log entries after it, so the log is never compacted past a checkpoint.
//! Retained change-set history lives in memory only: after a restart it starts at the
//! checkpoint (replayed entries add to it), and older resumes get a snapshot.
//!
//! The node loop uses the log only through [`RaftLog`] (and raft-rs's [`raft::Storage`]), so a
//! log engine built for Raft logs can replace the sled log behind it while checkpoints stay in
//! sled. Installing a snapshot is the one operation that writes both parts: it replaces the state
//! and resets the log in one transaction.

use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use crate::state::State;

mod checkpoint;
mod log;

pub use checkpoint::{Dirty, StateStore};
pub use log::RaftStore;

/// What the node loop needs from a Raft log beyond raft-rs's read side ([`raft::Storage`]).
///
/// Writes may be buffered; [`sync`](Self::sync) makes every write before it durable, and the
/// loop calls it before it sends or acknowledges anything that depends on them.
pub trait RaftLog: raft::Storage + Clone + Send + 'static {
    /// Current hard state.
    fn hard_state(&self) -> HardState;
    /// Index of the first entry still in the log.
    fn first(&self) -> u64;
    /// Appends entries, replacing any conflicting tail.
    fn append(&self, entries: &[Entry]) -> Result<(), StoreError>;
    /// Records the hard state.
    fn set_hard_state(&self, hs: &HardState) -> Result<(), StoreError>;
    /// Records the commit index.
    fn set_commit(&self, commit: u64) -> Result<(), StoreError>;
    /// Records the configuration after a membership change.
    fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError>;
    /// Drops log entries before `index` (which must be applied and checkpointed).
    fn compact(&self, index: u64) -> Result<(), StoreError>;
    /// Reserves `count` request numbers that no earlier life of this node reserved, durably
    /// (synced before it returns), and returns the first of them.
    fn reserve_requests(&self, count: u64) -> Result<u64, StoreError>;
    /// Publishes the newest applied state, which snapshots for followers are made of.
    fn set_applied(&self, state: Arc<State>);
    /// Installs a received snapshot: the log is replaced by the snapshot's position and the
    /// state machine in `states` by its image, so that a crash leaves either the old or the new
    /// node; returns the new state.
    fn install_snapshot(&self, snap: &Snapshot, states: &StateStore) -> Result<State, StoreError>;
    /// Makes every write so far durable.
    fn sync(&self) -> Result<(), StoreError>;
}

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

/// A record could not be decoded.
fn corrupt(tree: &'static str, key: &[u8], reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
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

    pub(super) fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    pub(super) fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
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
