//! The crate's one error type.

use std::path::PathBuf;

/// What went wrong with the log. Corruption and I/O failures say which file and where; the
/// caller's own mistakes (a batch that would leave a gap) are [`LogError::InvalidBatch`].
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("raft log: {op} {path}: {source}")]
    Io {
        /// What was being done (`"open"`, `"write"`, `"fdatasync"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Stored bytes are damaged or inconsistent, somewhere a torn write cannot explain (a sealed
    /// segment, or a damaged record with intact records after it). The log refuses to open
    /// rather than guess; the node should be restored from its peers.
    #[error("raft log corrupt: {path} at byte {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Entries that are not compacted are in no segment file: segment files were removed by
    /// hand, or restored from different backups.
    #[error(
        "raft log in {dir}: entries {first}..={last} are not compacted but no segment holds them"
    )]
    MissingEntries {
        /// The log directory.
        dir: PathBuf,
        /// The first missing index.
        first: u64,
        /// The last missing index.
        last: u64,
    },
    /// The entry was compacted away.
    #[error("raft log: entry {index} is compacted (the first entry is {first_index})")]
    Compacted {
        /// The index asked for.
        index: u64,
        /// The first index still in the log.
        first_index: u64,
    },
    /// The entry is past the end of the log.
    #[error("raft log: entry {index} is past the last entry {last_index}")]
    Unavailable {
        /// The index asked for.
        index: u64,
        /// The last index in the log.
        last_index: u64,
    },
    /// The write or compaction would break the log's shape; nothing was written.
    #[error("raft log: rejected: {reason}")]
    InvalidBatch {
        /// Why.
        reason: String,
    },
    /// An earlier write or fsync failed, so what is on disk is unknown (after a failed fsync
    /// the kernel may already have dropped the dirty pages). The log takes no more writes;
    /// reopen it to recover from what the files really hold.
    #[error("raft log failed earlier and must be reopened: {cause}")]
    Failed {
        /// The first failure.
        cause: String,
    },
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        LogError::InvalidBatch {
            reason: reason.into(),
        }
    }
}

/// raft-rs's [`raft::Storage`] has its own error kinds for "compacted" and "unavailable", which
/// drive its log-matching logic (a follower whose next entry is compacted gets a snapshot); every
/// other failure is `Other`.
impl From<LogError> for raft::Error {
    fn from(e: LogError) -> Self {
        use raft::StorageError;
        raft::Error::Store(match e {
            LogError::Compacted { .. } => StorageError::Compacted,
            LogError::Unavailable { .. } => StorageError::Unavailable,
            other => StorageError::Other(Box::new(other)),
        })
    }
}
