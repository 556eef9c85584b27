//! What one write puts in the log.

use raft::eraftpb::{ConfState, Entry, HardState};

use crate::format::Position;

/// The records one [`RaftLog::write`](crate::RaftLog::write) appends, atomically: after a crash
/// the log holds all of a batch or none of it. Build one per raft-rs `Ready`:
/// the snapshot (if any), then the entries, then the hard state.
#[derive(Clone, Debug, Default)]
pub struct LogBatch {
    pub(crate) items: Vec<Item>,
}

#[derive(Clone, Debug)]
pub(crate) enum Item {
    Restore(Position),
    Entries(Vec<Entry>),
    HardState(HardState),
    ConfState(ConfState),
    /// Only [`RaftLog::compact`](crate::RaftLog::compact) writes these, after looking up the
    /// term.
    Compact(Position),
}

impl LogBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the whole log with a snapshot's position: every entry is dropped, the first index
    /// becomes `index + 1` and `term(index)` answers `term`. The snapshot's data itself is the
    /// caller's to store (before this is written: see the crate's durability contract).
    pub fn restore(&mut self, index: u64, term: u64) -> &mut Self {
        self.items.push(Item::Restore(Position { index, term }));
        self
    }

    /// Appends entries with consecutive indexes. The first may be at or before the log's last
    /// index + 1: the entries from there on are replaced (raft-rs's conflicting suffix).
    pub fn append(&mut self, entries: impl Into<Vec<Entry>>) -> &mut Self {
        let entries = entries.into();
        if !entries.is_empty() {
            self.items.push(Item::Entries(entries));
        }
        self
    }

    /// Records the hard state (term, vote, commit).
    pub fn set_hard_state(&mut self, hs: HardState) -> &mut Self {
        self.items.push(Item::HardState(hs));
        self
    }

    /// Records the configuration (after a membership change is applied, or a snapshot's).
    pub fn set_conf_state(&mut self, cs: ConfState) -> &mut Self {
        self.items.push(Item::ConfState(cs));
        self
    }

    /// Whether the batch would write nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
