//! When the node checkpoints its state machine and how far it compacts its log, as a pure
//! policy: the loop passes in its positions and clock readings and does what it is told.
//!
//! The log is what makes an update durable; a checkpoint writes the maps changed since the one
//! before, with the applied index they describe. A restart loads the last checkpoint and replays
//! the log after it, so the log is never compacted past the last checkpoint, and a few entries
//! before it are kept for followers that are only a little behind.

use std::time::Duration;

use super::NodeConfig;

/// The checkpoint and compaction settings of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Checkpoint at least this often while the state changes.
    pub interval: Duration,
    /// ... and at least every this many applied entries.
    pub entries: u64,
    /// Compact once this many checkpointed entries are in the log.
    pub compact_after: u64,
    /// Entries kept before the checkpoint when compacting.
    pub keep_entries: u64,
}

impl CheckpointPolicy {
    /// The policy of a node's configuration.
    pub fn of(cfg: &NodeConfig) -> Self {
        Self {
            interval: cfg.checkpoint_interval,
            entries: cfg.checkpoint_entries,
            compact_after: cfg.compact_after,
            keep_entries: cfg.keep_entries,
        }
    }

    /// Whether to checkpoint now: `applied` is the applied index, `checkpointed` the one of the
    /// last checkpoint, `since_last` the time since it; `force` (at shutdown) checkpoints
    /// whatever is behind. Nothing applied since the last checkpoint: nothing to write.
    pub fn checkpoint_due(
        &self,
        applied: u64,
        checkpointed: u64,
        since_last: Duration,
        force: bool,
    ) -> bool {
        let behind = applied.saturating_sub(checkpointed);
        behind > 0 && (force || behind >= self.entries || since_last >= self.interval)
    }

    /// Where to compact the log to (entries before the returned index go), if it is time:
    /// `first` is the log's first index, `checkpointed` the applied index of the last checkpoint.
    pub fn compact_to(&self, checkpointed: u64, first: u64) -> Option<u64> {
        if checkpointed.saturating_sub(first) < self.compact_after {
            return None;
        }
        let to = checkpointed.saturating_sub(self.keep_entries).max(first);
        (to > first).then_some(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CheckpointPolicy {
        CheckpointPolicy {
            interval: Duration::from_secs(1),
            entries: 100,
            compact_after: 50,
            keep_entries: 10,
        }
    }

    #[test]
    fn checkpoints_come_by_time_or_by_entries_and_never_for_nothing() {
        let p = policy();
        let soon = Duration::from_millis(10);
        let late = Duration::from_secs(1);
        assert!(!p.checkpoint_due(120, 30, soon, false), "90 behind, 10 ms");
        assert!(p.checkpoint_due(130, 30, soon, false), "100 behind");
        assert!(p.checkpoint_due(31, 30, late, false), "1 behind, a second");
        assert!(p.checkpoint_due(31, 30, soon, true), "forced");
        for force in [false, true] {
            assert!(!p.checkpoint_due(30, 30, late, force), "nothing behind");
        }
    }

    #[test]
    fn compaction_keeps_the_tail_and_never_passes_the_checkpoint() {
        let p = policy();
        assert_eq!(p.compact_to(49, 1), None, "48 entries: not yet");
        assert_eq!(
            p.compact_to(51, 1),
            Some(41),
            "keeps 10 before the checkpoint"
        );
        assert_eq!(p.compact_to(200, 41), Some(190));
        // Never before the first index, never a no-op.
        let keep_all = CheckpointPolicy {
            keep_entries: 1_000,
            ..p
        };
        assert_eq!(keep_all.compact_to(200, 41), None);
        // Whatever the settings, entries after the checkpoint stay.
        let keep_none = CheckpointPolicy {
            keep_entries: 0,
            compact_after: 0,
            ..p
        };
        assert_eq!(keep_none.compact_to(200, 41), Some(200));
        assert_eq!(keep_none.compact_to(41, 41), None);
    }
}
