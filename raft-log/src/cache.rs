//! The newest entries, decoded, so that raft-rs's reads of what it just appended (to send to
//! followers, to apply) cost a clone instead of a read and a decode.

use std::collections::VecDeque;

use raft::eraftpb::Entry;

/// A contiguous run of the log's newest entries, at most `budget` bytes (by
/// [`approx_size`]). It always ends at the log's last entry, or is empty.
#[derive(Debug)]
pub(crate) struct RecentEntries {
    entries: VecDeque<Entry>,
    bytes: usize,
    budget: usize,
}

/// What an entry holds in memory, roughly: its two byte strings and the struct.
fn approx_size(e: &Entry) -> usize {
    e.data.len() + e.context.len() + std::mem::size_of::<Entry>()
}

impl RecentEntries {
    pub fn new(budget: usize) -> Self {
        RecentEntries {
            entries: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    /// The first cached index.
    pub fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    /// Takes the log's newest entry, replacing any cached entry at its index or later. An entry
    /// that does not continue the cached run (it is before it, or the run is stale) restarts it.
    pub fn push(&mut self, entry: Entry) {
        match (self.first(), self.entries.back().map(|e| e.index)) {
            (Some(first), Some(last)) if entry.index >= first && entry.index <= last + 1 => {
                for e in self.entries.drain((entry.index - first) as usize..) {
                    self.bytes -= approx_size(&e);
                }
            }
            _ => self.clear(),
        }
        self.bytes += approx_size(&entry);
        self.entries.push_back(entry);
        while self.bytes > self.budget {
            match self.entries.pop_front() {
                Some(e) => self.bytes -= approx_size(&e),
                None => break,
            }
        }
    }

    /// Drops entries before `first_index`.
    pub fn compact(&mut self, first_index: u64) {
        while let Some(e) = self.entries.front() {
            if e.index >= first_index {
                break;
            }
            self.bytes -= approx_size(e);
            self.entries.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    pub fn get(&self, index: u64) -> Option<&Entry> {
        let first = self.first()?;
        self.entries
            .get(usize::try_from(index.checked_sub(first)?).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![0; 100].into(),
            ..Default::default()
        }
    }

    fn cached(c: &RecentEntries) -> Vec<(u64, u64)> {
        c.entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn keeps_the_newest_entries_within_budget() {
        let one = approx_size(&entry(1, 1));
        let mut c = RecentEntries::new(3 * one);
        for i in 1..=5 {
            c.push(entry(i, 1));
        }
        assert_eq!(cached(&c), [(3, 1), (4, 1), (5, 1)]);
        c.push(entry(4, 2));
        assert_eq!(cached(&c), [(3, 1), (4, 2)]);
        c.push(entry(2, 3));
        assert_eq!(cached(&c), [(2, 3)]);
        c.compact(3);
        assert_eq!(c.first(), None);
        assert_eq!(c.bytes, 0);
        let mut none = RecentEntries::new(0);
        none.push(entry(1, 1));
        assert!(none.get(1).is_none());
    }
}
