//! Helpers shared by the integration tests.
#![allow(dead_code)]

use raft::eraftpb::{Entry, HardState};
use spine_raft_log::{LogError, Options, RaftLog};

/// An entry whose data names its index and term, so a wrong entry cannot pass for a right one.
pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index} of term {term} ........")
            .into_bytes()
            .into(),
        ..Default::default()
    }
}

pub fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

pub fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

/// Small segments, so that a few entries span several files; freed files are removed by the
/// sync that frees them, so tests can count files right after it.
pub fn small() -> Options {
    Options {
        segment_bytes: 512,
        cache_bytes: 1024,
        remove_in_background: false,
    }
}

/// Every entry from the first to the last index, read one at a time and all at once; both must
/// agree with `term`.
pub fn all_entries(log: &RaftLog) -> Result<Vec<Entry>, LogError> {
    let all = log.entries(log.first_index(), log.last_index() + 1, None)?;
    for e in &all {
        assert_eq!(log.term(e.index)?, e.term);
        assert_eq!(log.entries(e.index, e.index + 1, None)?, vec![e.clone()]);
    }
    Ok(all)
}

/// The segment files in `dir`, oldest first.
pub fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A scratch directory for tests that open a log thousands of times: in memory when the machine
/// has a tmpfs at /dev/shm (every open fsyncs, which on a disk would dominate the test), else the
/// usual temporary directory. What these tests check is the parsing, not the disk.
pub fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return Ok(dir);
    }
    tempfile::tempdir()
}

/// What a log holds, as far as a caller can see.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub first: u64,
    pub last: u64,
    pub compacted_term: u64,
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
    pub conf_state: raft::eraftpb::ConfState,
}

pub fn seen(log: &RaftLog) -> Result<Seen, LogError> {
    Ok(Seen {
        first: log.first_index(),
        last: log.last_index(),
        compacted_term: log.term(log.first_index() - 1)?,
        entries: all_entries(log)?,
        hard_state: log.hard_state().clone(),
        conf_state: log.conf_state().clone(),
    })
}
