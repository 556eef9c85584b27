//! The log through its public API: what survives a reopen, conflicts, compaction and purge,
//! snapshots, size limits, and refused writes.

mod support;

use raft::eraftpb::ConfState;
use spine_raft_log::{LogBatch, LogError, Options, RaftLog};
use support::{all_entries, entries, entry, hard_state, segment_files, small};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

#[test]
fn a_reopened_log_has_its_entries_hard_state_and_configuration() -> Result {
    let dir = tempfile::tempdir()?;
    let written = {
        let mut log = RaftLog::open(dir.path(), Options::default())?;
        assert_eq!((log.first_index(), log.last_index()), (1, 0));
        let mut batch = LogBatch::new();
        batch
            .set_conf_state(ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            })
            .append(entries(1..=10, 1))
            .set_hard_state(hard_state(1, 2, 7));
        log.write(batch)?;
        log.sync()?;
        all_entries(&log)?
    };
    let log = RaftLog::open(dir.path(), Options::default())?;
    assert_eq!(log.recovery().torn_bytes, 0);
    assert_eq!(all_entries(&log)?, written);
    assert_eq!(written, entries(1..=10, 1));
    assert_eq!(log.hard_state(), &hard_state(1, 2, 7));
    assert_eq!(log.conf_state().voters, vec![1, 2, 3]);
    Ok(())
}

#[test]
fn writes_not_yet_synced_are_still_there_when_the_process_did_not_crash() -> Result {
    let dir = tempfile::tempdir()?;
    {
        let mut log = RaftLog::open(dir.path(), small())?;
        log.append(&entries(1..=30, 1))?;
    }
    let log = RaftLog::open(dir.path(), small())?;
    assert_eq!(all_entries(&log)?, entries(1..=30, 1));
    Ok(())
}

#[test]
fn a_conflicting_append_replaces_the_suffix_even_in_older_segments() -> Result {
    let dir = tempfile::tempdir()?;
    let mut log = RaftLog::open(dir.path(), small())?;
    for i in 1..=40 {
        log.append(&[entry(i, 1)])?;
    }
    assert!(log.segment_count() > 3, "{} segments", log.segment_count());
    // A new leader's log diverges at 5, back in the first segment.
    log.append(&entries(5..=8, 2))?;
    let mut expected = entries(1..=4, 1);
    expected.extend(entries(5..=8, 2));
    assert_eq!(all_entries(&log)?, expected);
    log.sync()?;
    drop(log);
    let mut log = RaftLog::open(dir.path(), small())?;
    assert_eq!(all_entries(&log)?, expected);
    log.append(&entries(9..=12, 2))?;
    expected.extend(entries(9..=12, 2));
    assert_eq!(all_entries(&log)?, expected);
    Ok(())
}

#[test]
fn compaction_deletes_whole_segments_at_the_next_sync_and_the_log_reopens() -> Result {
    let dir = tempfile::tempdir()?;
    let mut log = RaftLog::open(dir.path(), small())?;
    for i in 1..=100 {
        log.append(&[entry(i, 1 + i / 50)])?;
    }
    log.set_hard_state(&hard_state(3, 1, 90))?;
    log.sync()?;
    let before = segment_files(dir.path()).len();
    log.compact(80)?;
    assert_eq!(log.first_index(), 80);
    assert_eq!(log.term(79)?, 2);
    assert!(matches!(
        log.term(78),
        Err(LogError::Compacted {
            index: 78,
            first_index: 80
        })
    ));
    assert!(matches!(
        log.entries(79, 81, None),
        Err(LogError::Compacted { .. })
    ));
    // Nothing is deleted before the compaction record is durable.
    assert_eq!(segment_files(dir.path()).len(), before);
    log.sync()?;
    let after = segment_files(dir.path()).len();
    assert!(after < before / 2, "{before} segments, then {after}");
    assert_eq!(after, log.segment_count());
    drop(log);

    let mut log = RaftLog::open(dir.path(), small())?;
    assert_eq!((log.first_index(), log.last_index()), (80, 100));
    assert_eq!(log.term(79)?, 2);
    assert_eq!(log.hard_state(), &hard_state(3, 1, 90));
    let expected: Vec<_> = (80..=100).map(|i| entry(i, 1 + i / 50)).collect();
    assert_eq!(all_entries(&log)?, expected);
    // Everything compacted: the log is empty but still knows where it is.
    log.compact(101)?;
    log.sync()?;
    drop(log);
    let mut log = RaftLog::open(dir.path(), small())?;
    assert_eq!((log.first_index(), log.last_index()), (101, 100));
    assert_eq!(log.term(100)?, 3);
    assert_eq!(segment_files(dir.path()).len(), 1);
    log.append(&[entry(101, 3)])?;
    assert_eq!(all_entries(&log)?, vec![entry(101, 3)]);
    Ok(())
}

#[test]
fn freed_segments_are_removed_in_the_background_by_default() -> Result {
    let dir = tempfile::tempdir()?;
    let options = Options {
        remove_in_background: true,
        ..small()
    };
    let mut log = RaftLog::open(dir.path(), options.clone())?;
    for i in 1..=100 {
        log.append(&[entry(i, 1)])?;
    }
    log.sync()?;
    let before = segment_files(dir.path()).len();
    log.compact(95)?;
    log.sync()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while segment_files(dir.path()).len() != log.segment_count() {
        assert!(
            std::time::Instant::now() < deadline,
            "files were not removed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(log.segment_count() < before / 2);
    assert!(log.take_removal_errors().is_empty());
    drop(log);
    let log = RaftLog::open(dir.path(), options)?;
    assert_eq!(all_entries(&log)?, entries(95..=100, 1));
    Ok(())
}

#[test]
fn segments_freed_by_a_compaction_that_was_never_synced_go_at_the_next_open() -> Result {
    let dir = tempfile::tempdir()?;
    {
        let mut log = RaftLog::open(dir.path(), small())?;
        for i in 1..=60 {
            log.append(&[entry(i, 1)])?;
        }
        log.sync()?;
        log.compact(55)?;
        // Dropped before any sync: the old segments are still on disk.
    }
    let crowded = segment_files(dir.path()).len();
    assert!(crowded > 3, "{crowded} segments");
    let log = RaftLog::open(dir.path(), small())?;
    assert_eq!(log.first_index(), 55);
    assert!(segment_files(dir.path()).len() < crowded);
    assert_eq!(all_entries(&log)?, entries(55..=60, 1));
    Ok(())
}

#[test]
fn a_restored_snapshot_replaces_the_log() -> Result {
    let dir = tempfile::tempdir()?;
    let mut log = RaftLog::open(dir.path(), small())?;
    log.append(&entries(1..=50, 1))?;
    log.sync()?;
    let mut batch = LogBatch::new();
    batch
        .restore(1000, 4)
        .set_conf_state(ConfState {
            voters: vec![4, 5],
            ..Default::default()
        })
        .set_hard_state(hard_state(4, 0, 1000))
        .append(entries(1001..=1002, 4));
    log.write(batch)?;
    log.sync()?;
    assert_eq!(segment_files(dir.path()).len(), 1);
    drop(log);
    let log = RaftLog::open(dir.path(), small())?;
    assert_eq!((log.first_index(), log.last_index()), (1001, 1002));
    assert_eq!(log.term(1000)?, 4);
    assert_eq!(log.conf_state().voters, vec![4, 5]);
    assert_eq!(log.hard_state().commit, 1000);
    assert_eq!(all_entries(&log)?, entries(1001..=1002, 4));
    Ok(())
}

#[test]
fn size_limits_are_raft_rs_limits() -> Result {
    let dir = tempfile::tempdir()?;
    let mut log = RaftLog::open(dir.path(), small())?;
    let written: Vec<_> = (1..=30)
        .map(|i| {
            let mut e = entry(i, 1);
            e.data = vec![b'x'; (i as usize * 7) % 40].into();
            e
        })
        .collect();
    log.append(&written)?;
    for max in [0, 1, 20, 50, 100, 333, 1000, u64::MAX] {
        for low in [1, 7, 29] {
            let mut expected = written[low as usize - 1..].to_vec();
            raft::util::limit_size(&mut expected, Some(max));
            assert_eq!(
                log.entries(low, 31, Some(max))?,
                expected,
                "max {max} from {low}"
            );
        }
    }
    Ok(())
}

#[test]
fn reads_from_disk_equal_reads_from_memory() -> Result {
    let dir = tempfile::tempdir()?;
    let mut log = RaftLog::open(dir.path(), small())?;
    for i in 1..=200 {
        log.append(&[entry(i, 1 + i / 70)])?;
    }
    log.append(&entries(150..=160, 9))?;
    let cached = all_entries(&log)?;
    log.sync()?;
    drop(log);
    let uncached = RaftLog::open(
        dir.path(),
        Options {
            cache_bytes: 0,
            ..small()
        },
    )?;
    assert_eq!(all_entries(&uncached)?, cached);
    Ok(())
}

#[test]
fn refused_writes_leave_the_log_as_it_was() -> Result {
    let dir = tempfile::tempdir()?;
    let mut log = RaftLog::open(dir.path(), small())?;
    log.append(&entries(1..=10, 1))?;
    log.compact(5)?;
    let gap = log.append(&[entry(12, 1)]);
    assert!(matches!(gap, Err(LogError::InvalidBatch { .. })), "{gap:?}");
    let below = log.append(&[entry(4, 2)]);
    assert!(
        matches!(below, Err(LogError::InvalidBatch { .. })),
        "{below:?}"
    );
    let mut half_bad = LogBatch::new();
    half_bad
        .append(entries(11..=12, 1))
        .append(entries(14..=15, 1));
    assert!(log.write(half_bad).is_err());
    assert!(log.compact(12).is_err());
    assert!(matches!(
        log.entries(5, 12, None),
        Err(LogError::Unavailable { index: 11, .. })
    ));
    assert!(matches!(log.term(11), Err(LogError::Unavailable { .. })));
    // Still writable.
    log.append(&[entry(11, 1)])?;
    log.sync()?;
    drop(log);
    let log = RaftLog::open(dir.path(), small())?;
    assert_eq!(all_entries(&log)?, entries(5..=11, 1));
    Ok(())
}

#[test]
fn errors_become_raft_storage_errors() {
    let compacted: raft::Error = LogError::Compacted {
        index: 1,
        first_index: 2,
    }
    .into();
    assert!(matches!(
        compacted,
        raft::Error::Store(raft::StorageError::Compacted)
    ));
    let unavailable: raft::Error = LogError::Unavailable {
        index: 9,
        last_index: 2,
    }
    .into();
    assert!(matches!(
        unavailable,
        raft::Error::Store(raft::StorageError::Unavailable)
    ));
    let other: raft::Error = LogError::InvalidBatch { reason: "x".into() }.into();
    assert!(matches!(
        other,
        raft::Error::Store(raft::StorageError::Other(_))
    ));
}
