//! The log against a deliberately simple model (a `Vec` of entries after a compaction point):
//! random appends with conflicting suffixes, hard and configuration states, compactions,
//! snapshots, syncs and reopens, with several segment sizes and cache budgets. After every step
//! everything the log shows must be what the model shows.

mod support;

use proptest::prelude::*;
use raft::eraftpb::{ConfState, Entry, HardState};
use spine_raft_log::{LogBatch, Options, RaftLog};
use support::{Seen, entry, hard_state, scratch_dir, seen};

#[derive(Clone, Debug)]
enum Op {
    /// Entries from `back` before the end (a conflicting suffix when > 0), a new term then.
    Append {
        back: u64,
        count: u64,
    },
    HardState {
        commit: u64,
    },
    ConfState {
        voters: Vec<u64>,
    },
    /// Compact to the first index + `ahead` (modulo the number of entries + 1).
    Compact {
        ahead: u64,
    },
    /// A snapshot `ahead` past the last index.
    Restore {
        ahead: u64,
    },
    /// Entries and hard state in one batch, as a Ready writes them.
    Ready {
        count: u64,
        commit: u64,
    },
    Sync,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4u64, 1..6u64).prop_map(|(back, count)| Op::Append { back, count }),
        2 => (0..30u64).prop_map(|commit| Op::HardState { commit }),
        1 => proptest::collection::vec(1..6u64, 1..4).prop_map(|voters| Op::ConfState { voters }),
        2 => (0..12u64).prop_map(|ahead| Op::Compact { ahead }),
        1 => (0..20u64).prop_map(|ahead| Op::Restore { ahead }),
        3 => (1..8u64, 0..30u64).prop_map(|(count, commit)| Op::Ready { count, commit }),
        2 => Just(Op::Sync),
        2 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Default)]
struct Model {
    compacted: (u64, u64),
    entries: Vec<Entry>,
    hard_state: HardState,
    conf_state: ConfState,
    term: u64,
}

impl Model {
    fn last(&self) -> u64 {
        self.compacted.0 + self.entries.len() as u64
    }

    fn term_of(&self, index: u64) -> u64 {
        if index == self.compacted.0 {
            return self.compacted.1;
        }
        self.entries[(index - self.compacted.0 - 1) as usize].term
    }

    /// The entries an append of `count` from `back` before the end writes.
    fn new_entries(&mut self, back: u64, count: u64) -> Vec<Entry> {
        let back = back.min(self.entries.len() as u64);
        if back > 0 || self.term == 0 {
            self.term += 1;
        }
        let from = self.last() + 1 - back;
        (from..from + count).map(|i| entry(i, self.term)).collect()
    }

    fn append(&mut self, new: &[Entry]) {
        if let Some(first) = new.first() {
            self.entries
                .truncate((first.index - self.compacted.0 - 1) as usize);
            self.entries.extend_from_slice(new);
        }
    }

    fn seen(&self) -> Seen {
        Seen {
            first: self.compacted.0 + 1,
            last: self.last(),
            compacted_term: self.compacted.1,
            entries: self.entries.clone(),
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        }
    }
}

fn run(options: Options, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let fail = |e: &dyn std::fmt::Display| TestCaseError::fail(e.to_string());
    let dir = scratch_dir().map_err(|e| fail(&e))?;
    let mut log = RaftLog::open(dir.path(), options.clone()).map_err(|e| fail(&e))?;
    let mut model = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append { back, count } => {
                let new = model.new_entries(back, count);
                log.append(&new).map_err(|e| fail(&e))?;
                model.append(&new);
            }
            Op::HardState { commit } => {
                let hs = hard_state(model.term, 1, commit.min(model.last()));
                log.set_hard_state(&hs).map_err(|e| fail(&e))?;
                model.hard_state = hs;
            }
            Op::ConfState { voters } => {
                let cs = ConfState {
                    voters,
                    ..Default::default()
                };
                let mut batch = LogBatch::new();
                batch.set_conf_state(cs.clone());
                log.write(batch).map_err(|e| fail(&e))?;
                model.conf_state = cs;
            }
            Op::Compact { ahead } => {
                let to = model.compacted.0 + 1 + ahead % (model.entries.len() as u64 + 1);
                log.compact(to).map_err(|e| fail(&e))?;
                if to > model.compacted.0 + 1 {
                    let term = model.term_of(to - 1);
                    model.entries.drain(..(to - 1 - model.compacted.0) as usize);
                    model.compacted = (to - 1, term);
                }
            }
            Op::Restore { ahead } => {
                model.term += 1;
                let at = (model.last() + ahead, model.term);
                let mut batch = LogBatch::new();
                batch.restore(at.0, at.1);
                log.write(batch).map_err(|e| fail(&e))?;
                model.compacted = at;
                model.entries.clear();
            }
            Op::Ready { count, commit } => {
                let new = model.new_entries(0, count);
                model.append(&new);
                let hs = hard_state(model.term, 1, commit.min(model.last()));
                let mut batch = LogBatch::new();
                batch.append(new).set_hard_state(hs.clone());
                log.write(batch).map_err(|e| fail(&e))?;
                model.hard_state = hs;
            }
            Op::Sync => log.sync().map_err(|e| fail(&e))?,
            Op::Reopen => {
                drop(log);
                log = RaftLog::open(dir.path(), options.clone()).map_err(|e| fail(&e))?;
                prop_assert_eq!(log.recovery().torn_bytes, 0);
            }
        }
        let got = seen(&log).map_err(|e| fail(&e))?;
        prop_assert_eq!(&got, &model.seen(), "after step {}", step);
    }
    // Whatever was done, a final sync and reopen shows the same log.
    log.sync().map_err(|e| fail(&e))?;
    drop(log);
    let log = RaftLog::open(dir.path(), options).map_err(|e| fail(&e))?;
    prop_assert_eq!(seen(&log).map_err(|e| fail(&e))?, model.seen());
    Ok(())
}

fn options() -> impl Strategy<Value = Options> {
    (
        prop_oneof![Just(200u64), Just(1000), Just(32 << 20)],
        prop_oneof![Just(0usize), Just(600), Just(32 << 20)],
    )
        .prop_map(|(segment_bytes, cache_bytes)| Options {
            segment_bytes,
            cache_bytes,
            ..Options::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_a_vec(options in options(), ops in proptest::collection::vec(op(), 1..60)) {
        run(options, ops)?;
    }
}
