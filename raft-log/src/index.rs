//! The in-memory picture of the log: where each live entry's record is, the compaction point,
//! the hard and configuration state. No I/O: the write path and recovery both feed it
//! [`Change`]s, so a log rebuilt from its files is the log that was written.

use std::collections::VecDeque;

use raft::eraftpb::{ConfState, HardState};

use crate::error::LogError;
use crate::format::{FRAME_HEADER_LEN, Position, SegmentState};

/// Where an entry's record is, and its term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub term: u64,
    /// The segment's sequence number.
    pub segment: u64,
    /// Offset of the record's frame in the segment.
    pub offset: u64,
    /// The frame's length, header included.
    pub len: u32,
}

impl Slot {
    /// The entry's encoded size, which is what raft-rs's `compute_size` says of it: the frame
    /// holds exactly the protobuf encoding after its header and kind byte.
    pub fn entry_size(&self) -> u64 {
        u64::from(self.len).saturating_sub(FRAME_HEADER_LEN as u64 + 1)
    }
}

/// One thing that happened to the log.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Change<'a> {
    /// Entry `index` was written at `slot`; entries from `index` on are replaced.
    Entry {
        index: u64,
        slot: Slot,
    },
    HardState(&'a HardState),
    ConfState(&'a ConfState),
    Compact(Position),
    Restore(Position),
    /// A segment's first record. `follows_replayed` says the segment right before it (sequence
    /// number one less) was replayed, so the state must agree with what replay built; otherwise
    /// (the oldest file, or files missing in between) the state is taken as it is.
    State {
        state: &'a SegmentState,
        follows_replayed: bool,
    },
}

/// The log's index.
#[derive(Clone, Debug)]
pub(crate) struct LogIndex {
    compacted: Position,
    /// The index of `slots[0]`. Always past `compacted`; further past it only during recovery,
    /// while the entries in between are known to be in segment files not read (yet).
    base: u64,
    slots: VecDeque<Slot>,
    hard_state: HardState,
    conf_state: ConfState,
}

impl Default for LogIndex {
    fn default() -> Self {
        LogIndex {
            compacted: Position::default(),
            base: 1,
            slots: VecDeque::new(),
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
        }
    }
}

impl LogIndex {
    pub fn first_index(&self) -> u64 {
        self.compacted.index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.base + self.slots.len() as u64 - 1
    }

    pub fn compacted(&self) -> Position {
        self.compacted
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The term of entry `index`, which may be the compaction point.
    pub fn term(&self, index: u64) -> Result<u64, LogError> {
        if index == self.compacted.index {
            return Ok(self.compacted.term);
        }
        if index < self.compacted.index {
            return Err(LogError::Compacted {
                index,
                first_index: self.first_index(),
            });
        }
        self.slot(index)
            .map(|s| s.term)
            .ok_or(LogError::Unavailable {
                index,
                last_index: self.last_index(),
            })
    }

    pub fn slot(&self, index: u64) -> Option<&Slot> {
        let i = index.checked_sub(self.base)?;
        self.slots.get(usize::try_from(i).ok()?)
    }

    /// The first live entry's slot.
    pub fn first_slot(&self) -> Option<&Slot> {
        self.slots.front()
    }

    /// The metadata a new segment starts with.
    pub fn state(&self) -> SegmentState {
        SegmentState {
            compacted: self.compacted,
            last_index: self.last_index(),
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        }
    }

    /// Applies one change. An error means the change does not fit the log (which replay
    /// reports as corruption; the write path checks its batches first, so never sees one).
    pub fn apply(&mut self, change: Change<'_>) -> Result<(), String> {
        match change {
            Change::Entry { index, slot } => {
                if index <= self.compacted.index {
                    return Err(format!(
                        "entry {index} is at or below the compacted index {}",
                        self.compacted.index
                    ));
                }
                let last = self.last_index();
                if index > last + 1 {
                    return Err(format!("entry {index} leaves a gap after entry {last}"));
                }
                if index < self.base {
                    // It replaces entries that are in files not read: they, and what came
                    // after them, are gone.
                    self.slots.clear();
                    self.base = index;
                } else {
                    self.slots.truncate((index - self.base) as usize);
                }
                self.slots.push_back(slot);
            }
            Change::HardState(hs) => self.hard_state = hs.clone(),
            Change::ConfState(cs) => self.conf_state = cs.clone(),
            Change::Compact(p) => {
                if p.index < self.compacted.index {
                    return Err(format!(
                        "compaction to {} after compaction to {}",
                        p.index, self.compacted.index
                    ));
                }
                if p.index > self.last_index() {
                    return Err(format!(
                        "compaction to {} past the last entry {}",
                        p.index,
                        self.last_index()
                    ));
                }
                if p.index >= self.base {
                    let drop = (p.index - self.base + 1) as usize;
                    if let Some(s) = self.slots.get(drop - 1)
                        && s.term != p.term
                    {
                        return Err(format!(
                            "compaction to {} at term {} but the entry has term {}",
                            p.index, p.term, s.term
                        ));
                    }
                    self.slots.drain(..drop);
                    self.base = p.index + 1;
                }
                self.compacted = p;
            }
            Change::Restore(p) => {
                self.compacted = p;
                self.slots.clear();
                self.base = p.index + 1;
            }
            Change::State {
                state,
                follows_replayed,
            } => {
                if follows_replayed {
                    let built = self.state();
                    if &built != state {
                        return Err(format!(
                            "the segment starts from {state:?} but the segments before it end at {built:?}"
                        ));
                    }
                } else {
                    if state.last_index < state.compacted.index {
                        return Err(format!(
                            "last index {} below the compacted index {}",
                            state.last_index, state.compacted.index
                        ));
                    }
                    self.compacted = state.compacted;
                    self.slots.clear();
                    self.base = state.last_index + 1;
                    self.hard_state = state.hard_state.clone();
                    self.conf_state = state.conf_state.clone();
                }
            }
        }
        Ok(())
    }

    /// Ends recovery: every live entry must have been found.
    pub fn finish(&self) -> Result<(), (u64, u64)> {
        if self.base > self.compacted.index + 1 {
            return Err((self.compacted.index + 1, self.base - 1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(term: u64, segment: u64) -> Slot {
        Slot {
            term,
            segment,
            offset: 0,
            len: 20,
        }
    }

    fn put(ix: &mut LogIndex, index: u64, term: u64) -> Result<(), String> {
        ix.apply(Change::Entry {
            index,
            slot: slot(term, 1),
        })
    }

    fn terms(ix: &LogIndex) -> Vec<u64> {
        (ix.first_index()..=ix.last_index())
            .filter_map(|i| ix.term(i).ok())
            .collect()
    }

    #[test]
    fn entries_replace_their_suffix_and_may_not_leave_gaps() -> Result<(), String> {
        let mut ix = LogIndex::default();
        for i in 1..=5 {
            put(&mut ix, i, 1)?;
        }
        put(&mut ix, 3, 2)?;
        assert_eq!((ix.first_index(), ix.last_index()), (1, 3));
        assert_eq!(terms(&ix), [1, 1, 2]);
        assert!(put(&mut ix, 5, 2).is_err());
        assert!(matches!(ix.term(0), Ok(0)));
        assert!(matches!(
            ix.term(4),
            Err(LogError::Unavailable {
                index: 4,
                last_index: 3
            })
        ));
        Ok(())
    }

    #[test]
    fn compaction_keeps_the_term_of_the_compaction_point() -> Result<(), String> {
        let mut ix = LogIndex::default();
        for i in 1..=5 {
            put(&mut ix, i, i)?;
        }
        ix.apply(Change::Compact(Position { index: 3, term: 3 }))?;
        assert_eq!((ix.first_index(), ix.last_index()), (4, 5));
        assert!(matches!(ix.term(3), Ok(3)));
        assert!(matches!(
            ix.term(2),
            Err(LogError::Compacted {
                index: 2,
                first_index: 4
            })
        ));
        assert!(put(&mut ix, 3, 9).is_err(), "below the compaction point");
        assert!(
            ix.apply(Change::Compact(Position { index: 4, term: 9 }))
                .is_err(),
            "wrong term"
        );
        assert!(
            ix.apply(Change::Compact(Position { index: 6, term: 5 }))
                .is_err(),
            "past the end"
        );
        ix.apply(Change::Compact(Position { index: 5, term: 5 }))?;
        assert_eq!((ix.first_index(), ix.last_index()), (6, 5));
        put(&mut ix, 6, 5)?;
        assert_eq!(terms(&ix), [5]);
        Ok(())
    }

    #[test]
    fn restore_replaces_everything() -> Result<(), String> {
        let mut ix = LogIndex::default();
        for i in 1..=5 {
            put(&mut ix, i, 1)?;
        }
        ix.apply(Change::Restore(Position {
            index: 100,
            term: 7,
        }))?;
        assert_eq!((ix.first_index(), ix.last_index()), (101, 100));
        assert!(matches!(ix.term(100), Ok(7)));
        put(&mut ix, 101, 7)?;
        assert_eq!(ix.last_index(), 101);
        Ok(())
    }

    #[test]
    fn a_segment_state_after_missing_files_leaves_entries_to_find() -> Result<(), String> {
        // The oldest surviving file says: compacted to 10, entries up to 20 (in older files).
        let state = SegmentState {
            compacted: Position { index: 10, term: 2 },
            last_index: 20,
            ..Default::default()
        };
        let mut ix = LogIndex::default();
        ix.apply(Change::State {
            state: &state,
            follows_replayed: false,
        })?;
        assert_eq!(ix.finish(), Err((11, 20)));
        for i in 21..=25 {
            put(&mut ix, i, 3)?;
        }
        // A compaction inside the unread range: still missing 16..=20.
        ix.apply(Change::Compact(Position { index: 15, term: 2 }))?;
        assert_eq!(ix.finish(), Err((16, 20)));
        // A rewrite from 18 drops the unread entries from 18 on.
        put(&mut ix, 18, 4)?;
        assert_eq!(ix.finish(), Err((16, 17)));
        ix.apply(Change::Compact(Position { index: 17, term: 2 }))?;
        assert_eq!(ix.finish(), Ok(()));
        assert_eq!((ix.first_index(), ix.last_index()), (18, 18));
        Ok(())
    }

    #[test]
    fn a_segment_state_after_a_replayed_segment_must_agree_with_it() -> Result<(), String> {
        let mut ix = LogIndex::default();
        put(&mut ix, 1, 1)?;
        let agrees = ix.state();
        ix.apply(Change::State {
            state: &agrees,
            follows_replayed: true,
        })?;
        let mut disagrees = ix.state();
        disagrees.last_index = 7;
        assert!(
            ix.apply(Change::State {
                state: &disagrees,
                follows_replayed: true,
            })
            .is_err()
        );
        Ok(())
    }
}
