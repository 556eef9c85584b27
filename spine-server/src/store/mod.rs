//! Durable storage in two parts with a boundary between them:
//!
//! ```text
//!   node loop ──RaftLog──▶ log.rs: RaftStore    (spine-raft-log in <data>/raft-log/: entries, hard
//!       │                                        state, conf state; one write + one fsync per Ready)
//!       └──checkpoint───▶ checkpoint.rs: StateStore (sled tree "state": maps, applied position)
//!                          sled also keeps the floor of reserved request numbers (tree "raft")
//! ```
//!
//! The Raft log is what makes an update durable. Each raft-rs `Ready` is written to it as one
//! batch ([`LogWrite`]), atomic after a crash, and [`RaftLog::sync`] makes it durable with one
//! fsync before anything that depends on it is acknowledged or sent; sled is not synced on that
//! path.
//!
//! The state machine is written as *checkpoints* in sled: every so often the maps changed since
//! the last checkpoint are written in one batch, with the applied index they describe ([`Dirty`],
//! [`StateStore::checkpoint`]), and sled is synced. A map updated many times between two
//! checkpoints is written once. After a restart the node loads the last checkpoint and Raft
//! replays the log entries after it, so the log is never compacted past a checkpoint. Retained
//! change-set history lives in memory only: after a restart it starts at the checkpoint (replayed
//! entries add to it), and older resumes get a snapshot.
//!
//! Installing a received snapshot writes both parts, the state machine first:
//! [`StateStore::install`] stores and syncs the image, then the Ready's [`LogWrite`] carries the
//! snapshot's position, which replaces the log. A crash in between leaves a newer state machine
//! over an older log, whose entries at or below the applied index the apply loop skips.
//!
//! Versions before this one kept the Raft log in sled too (tree `raft`, one record per entry);
//! [`RaftStore::open`] moves such a log into the new one at the first start (`legacy.rs`).
//!
//! The log takes no lock of its own: it lives inside the data directory, which sled locks, and
//! each [`RaftStore`] holds the [`Store`], so the lock is held for as long as the log is open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

use crate::state::State;

mod checkpoint;
mod legacy;
mod log;

pub use checkpoint::{Dirty, StateStore};
pub use log::RaftStore;

/// What one raft-rs `Ready` writes to the Raft log: one batch, recovered whole or not at all.
#[derive(Clone, Debug, Default)]
pub struct LogWrite {
    /// The position of a snapshot this Ready installs (its state image already stored by
    /// [`StateStore::install`]): the log is replaced by it, and the configuration is the
    /// snapshot's.
    pub snapshot: Option<SnapshotMetadata>,
    /// New entries, replacing any conflicting tail.
    pub entries: Vec<Entry>,
    /// The hard state, if it changed.
    pub hard_state: Option<HardState>,
}

/// What the node loop needs from a Raft log beyond raft-rs's read side ([`raft::Storage`]).
///
/// Writes are visible to reads at once and durable after [`sync`](Self::sync), which the loop
/// calls before it sends or acknowledges anything that depends on them: one fsync per Ready,
/// never one per entry.
pub trait RaftLog: raft::Storage + Clone + Send + 'static {
    /// Current hard state.
    fn hard_state(&self) -> HardState;
    /// Index of the first entry still in the log.
    fn first(&self) -> u64;
    /// Writes one Ready's snapshot position, entries and hard state as one batch.
    fn write(&self, write: LogWrite) -> Result<(), StoreError>;
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
    /// The Raft log failed (its message names the file).
    #[error(transparent)]
    Log(#[from] spine_raft_log::LogError),
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
    /// The database says the Raft log is in its own directory, and that directory is gone.
    #[error(
        "the Raft log directory {dir} is missing, but the data directory holds state that needs \
         it; restore it from a backup, or empty the data directory and add the node again"
    )]
    MissingLog {
        /// The log directory.
        dir: String,
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

/// The node's data directory: the sled database (checkpoints, request numbers) and the
/// directory of the Raft log.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    /// sled's log file, to `fdatasync` it: sled itself ends a flush with `sync_file_range`,
    /// which does not flush the disk's write cache nor the file's size.
    log_file: Arc<std::fs::File>,
    dir: PathBuf,
    path: String,
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
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
            dir: dir.to_path_buf(),
            path,
        })
    }

    /// Where the Raft log's segment files are.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("raft-log")
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

    /// Makes everything written to sled so far durable: sled writes its buffers out, then its
    /// log file is `fdatasync`ed (data, size, and the disk's write cache). The Raft log is
    /// synced on its own ([`RaftLog::sync`]).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.err(e))?;
        self.log_file.sync_data().map_err(|source| StoreError::Io {
            path: format!("{}/db", self.path),
            source,
        })
    }
}

/// How long [`Store::open`] waits for the database's file lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, waiting a little for its file lock: sled's background threads keep a dropped
/// database's lock for a moment, so a store reopened in the same process (a node restarted in
/// place, a test) would otherwise fail with "could not acquire lock". Another process that
/// holds the directory still gets the error, after [`LOCK_WAIT`].
fn open_sled(dir: &Path) -> Result<sled::Db, sled::Error> {
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
