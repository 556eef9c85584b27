//! Crashes mid-append: the last segment cut or garbled at every offset reopens to exactly the
//! log as it was after some earlier batch, and takes appends again. Damage a crash cannot
//! explain is an error, and leaves the files alone.

mod support;

use std::path::{Path, PathBuf};

use raft::eraftpb::ConfState;
use spine_raft_log::{LogBatch, LogError, Options, RaftLog};
use support::{Seen, entry, hard_state, scratch_dir, seen, segment_files, small};

/// A segment file's header: magic, version, sequence number.
const HEADER_LEN: usize = 20;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// After each write: the active segment, its length, and what the log showed.
struct History {
    _dir: tempfile::TempDir,
    points: Vec<(PathBuf, u64, Seen)>,
}

fn active_file(log: &RaftLog) -> Result<(PathBuf, u64)> {
    let path = segment_files(log.dir()).pop().ok_or("no segment file")?;
    let len = std::fs::metadata(&path)?.len();
    Ok((path, len))
}

/// Writes a varied history: appends of one to three entries, conflicting rewrites, a
/// configuration change, compactions, hard states with every batch.
fn write_history(options: Options, batches: u64) -> Result<History> {
    let dir = scratch_dir()?;
    let mut log = RaftLog::open(dir.path(), options)?;
    let mut points = Vec::new();
    let mut record = |log: &RaftLog| -> Result {
        let (path, len) = active_file(log)?;
        points.push((path, len, seen(log)?));
        Ok(())
    };
    record(&log)?;
    let mut term = 1;
    for k in 1..=batches {
        let mut batch = LogBatch::new();
        let last = log.last_index();
        if k % 5 == 0 && last > log.first_index() {
            term += 1;
            batch.append(vec![entry(last - 1, term), entry(last, term)]);
        } else {
            batch.append(
                (last + 1..=last + 1 + k % 3)
                    .map(|i| entry(i, term))
                    .collect::<Vec<_>>(),
            );
        }
        if k == 8 {
            batch.set_conf_state(ConfState {
                voters: vec![1, 2, 3],
                learners: vec![4],
                ..Default::default()
            });
        }
        batch.set_hard_state(hard_state(term, 1, last));
        log.write(batch)?;
        log.sync()?;
        record(&log)?;
        if k % 7 == 0 {
            log.compact(log.first_index() + 2)?;
            log.sync()?;
            record(&log)?;
        }
    }
    Ok(History { _dir: dir, points })
}

/// What the log must open to when the last segment holds only its first `len` bytes intact.
fn expected_at(history: &History, last_segment: &Path, len: u64) -> Result<(Seen, u64)> {
    let mut best = None;
    for (path, at, seen) in &history.points {
        if path.as_path() == last_segment && *at <= len {
            best = Some((seen.clone(), *at));
        } else if path.as_path() < last_segment {
            // Before the last segment started: what a crash in its creation falls back to.
            best = Some((seen.clone(), 0));
        }
    }
    // A crash while the very first segment was being created: an empty log.
    best.or_else(|| history.points.first().map(|(_, _, seen)| (seen.clone(), 0)))
        .ok_or_else(|| "no point in history".into())
}

/// Copies the history's files into `to`, the last one replaced by `last_bytes`.
fn lay_out(history: &History, to: &Path, last_bytes: &[u8]) -> Result<PathBuf> {
    for old in segment_files(to) {
        std::fs::remove_file(old)?;
    }
    let files = segment_files(history_dir(history)?);
    let (last, earlier) = files.split_last().ok_or("no files")?;
    for f in earlier {
        std::fs::copy(f, to.join(f.file_name().ok_or("name")?))?;
    }
    let target = to.join(last.file_name().ok_or("name")?);
    std::fs::write(&target, last_bytes)?;
    Ok(target)
}

fn history_dir(history: &History) -> Result<&Path> {
    Ok(history
        .points
        .first()
        .and_then(|(p, _, _)| p.parent())
        .ok_or("no dir")?)
}

/// Opens what `lay_out` left and checks it against the history, then that the log takes an
/// append and keeps it.
fn check_recovers(
    history: &History,
    dir: &Path,
    options: &Options,
    intact: u64,
    len: u64,
) -> Result {
    let last_segment = segment_files(history_dir(history)?)
        .pop()
        .ok_or("no files")?;
    let (want, at) = expected_at(history, &last_segment, intact)?;
    let mut log = RaftLog::open(dir, options.clone())
        .map_err(|e| format!("{intact} intact of {len}: {e}"))?;
    assert_eq!(seen(&log)?, want, "{intact} intact bytes of {len}");
    if at > 0 {
        assert_eq!(log.recovery().torn_bytes, len - at, "{intact} of {len}");
    }
    let next = entry(log.last_index() + 1, want.hard_state.term.max(1));
    log.append(std::slice::from_ref(&next))?;
    log.sync()?;
    drop(log);
    let log = RaftLog::open(dir, options.clone())?;
    let mut more = want.clone();
    more.last += 1;
    more.entries.push(next);
    assert_eq!(
        seen(&log)?,
        more,
        "appending after recovery from {intact} of {len}"
    );
    Ok(())
}

fn last_file_bytes(history: &History) -> Result<Vec<u8>> {
    let last = segment_files(history_dir(history)?)
        .pop()
        .ok_or("no files")?;
    Ok(std::fs::read(last)?)
}

#[test]
fn a_cut_at_any_offset_of_a_single_segment_reopens_to_a_prefix() -> Result {
    let history = write_history(Options::default(), 24)?;
    let bytes = last_file_bytes(&history)?;
    assert!(history.points.len() > 20);
    let scratch = scratch_dir()?;
    for cut in 0..=bytes.len() {
        lay_out(&history, scratch.path(), &bytes[..cut])?;
        check_recovers(
            &history,
            scratch.path(),
            &Options::default(),
            cut as u64,
            cut as u64,
        )?;
    }
    Ok(())
}

#[test]
fn a_cut_at_any_offset_of_the_last_of_many_segments_reopens_to_a_prefix() -> Result {
    let history = write_history(small(), 60)?;
    assert!(segment_files(history_dir(&history)?).len() > 3);
    let bytes = last_file_bytes(&history)?;
    let scratch = scratch_dir()?;
    for cut in 0..=bytes.len() {
        lay_out(&history, scratch.path(), &bytes[..cut])?;
        check_recovers(&history, scratch.path(), &small(), cut as u64, cut as u64)?;
    }
    Ok(())
}

/// Deterministic junk, different at every offset.
fn junk(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn garbage_from_any_offset_to_the_end_reopens_to_a_prefix() -> Result {
    for options in [Options::default(), small()] {
        let history = write_history(options.clone(), 30)?;
        let bytes = last_file_bytes(&history)?;
        let scratch = scratch_dir()?;
        for from in 0..bytes.len() {
            let tail = bytes.len() - from;
            for fill in [vec![0u8; tail], vec![0xff; tail], junk(from as u64, tail)] {
                let mut garbled = bytes[..from].to_vec();
                garbled.extend_from_slice(&fill);
                lay_out(&history, scratch.path(), &garbled)?;
                if from < HEADER_LEN && fill.iter().any(|&b| b != 0) {
                    // Not how a file being created looks after a crash (a short file, or
                    // zeros): a foreign or damaged file, which is not deleted on a guess.
                    refuses(scratch.path(), options.clone(), |e| {
                        matches!(e, LogError::Corrupt { offset: 0, .. })
                    })?;
                    continue;
                }
                // The fill may happen to repeat the bytes it replaced.
                let intact = from
                    + bytes[from..]
                        .iter()
                        .zip(&fill)
                        .take_while(|(a, b)| a == b)
                        .count();
                check_recovers(
                    &history,
                    scratch.path(),
                    &options,
                    intact as u64,
                    bytes.len() as u64,
                )?;
            }
        }
    }
    Ok(())
}

#[test]
fn zeros_after_the_last_record_are_a_torn_tail() -> Result {
    // The file's size reached the disk but its last blocks did not.
    let history = write_history(Options::default(), 10)?;
    let mut bytes = last_file_bytes(&history)?;
    let len = bytes.len() as u64;
    bytes.extend_from_slice(&[0; 4096]);
    let scratch = scratch_dir()?;
    lay_out(&history, scratch.path(), &bytes)?;
    let log = RaftLog::open(scratch.path(), Options::default())?;
    assert_eq!(log.recovery().torn_bytes, 4096);
    let (_, _, last) = history.points.last().ok_or("empty")?;
    assert_eq!(&seen(&log)?, last);
    drop(log);
    assert_eq!(
        std::fs::metadata(segment_files(scratch.path()).pop().ok_or("none")?)?.len(),
        len
    );
    Ok(())
}

fn snapshot_files(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    segment_files(dir)
        .into_iter()
        .map(|p| Ok((p.clone(), std::fs::read(p)?)))
        .collect()
}

/// Opening fails as `check` expects, and touches no file.
fn refuses(dir: &Path, options: Options, check: impl Fn(&LogError) -> bool) -> Result {
    let before = snapshot_files(dir)?;
    match RaftLog::open(dir, options) {
        Ok(_) => return Err("the damaged log opened".into()),
        Err(e) => assert!(check(&e), "unexpected error: {e}"),
    }
    assert_eq!(snapshot_files(dir)?, before, "files changed");
    Ok(())
}

#[test]
fn a_damaged_byte_in_a_sealed_segment_is_corruption() -> Result {
    let history = write_history(small(), 40)?;
    let files = segment_files(history_dir(&history)?);
    assert!(files.len() > 3);
    let scratch = scratch_dir()?;
    let last = last_file_bytes(&history)?;
    let victim_name = files[1].file_name().ok_or("name")?.to_owned();
    let original = std::fs::read(&files[1])?;
    // Every byte of the second segment, one at a time.
    for at in 0..original.len() {
        lay_out(&history, scratch.path(), &last)?;
        let mut bad = original.clone();
        bad[at] ^= 0x5a;
        std::fs::write(scratch.path().join(&victim_name), &bad)?;
        refuses(scratch.path(), small(), |e| {
            matches!(e, LogError::Corrupt { .. })
        })?;
    }
    // Cut short.
    lay_out(&history, scratch.path(), &last)?;
    std::fs::write(
        scratch.path().join(&victim_name),
        &original[..original.len() - 3],
    )?;
    refuses(scratch.path(), small(), |e| {
        matches!(e, LogError::Corrupt { .. })
    })?;
    Ok(())
}

#[test]
fn a_damaged_record_with_intact_records_after_it_is_corruption_even_in_the_last_segment() -> Result
{
    let history = write_history(Options::default(), 20)?;
    let bytes = last_file_bytes(&history)?;
    let scratch = scratch_dir()?;
    let ends: Vec<u64> = history.points.iter().map(|(_, at, _)| *at).collect();
    // A byte in the body of every batch but the last two: intact batches follow it.
    let mut tried = 0;
    for w in ends.windows(2).take(ends.len().saturating_sub(3)) {
        let at = ((w[0] + w[1]) / 2) as usize;
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        lay_out(&history, scratch.path(), &bad)?;
        refuses(
            scratch.path(),
            Options::default(),
            |e| matches!(e, LogError::Corrupt { reason, .. } if reason.contains("intact records after")),
        )?;
        tried += 1;
    }
    assert!(tried > 10);
    Ok(())
}

#[test]
fn missing_segment_files_are_reported() -> Result {
    let history = write_history(small(), 40)?;
    let files = segment_files(history_dir(&history)?);
    assert!(files.len() > 4);
    let last = last_file_bytes(&history)?;
    let scratch = scratch_dir()?;
    for victim in [0, files.len() / 2] {
        lay_out(&history, scratch.path(), &last)?;
        std::fs::remove_file(
            scratch
                .path()
                .join(files[victim].file_name().ok_or("name")?),
        )?;
        refuses(scratch.path(), small(), |e| {
            matches!(e, LogError::MissingEntries { .. })
        })?;
    }
    Ok(())
}

#[test]
fn a_file_of_another_format_version_is_refused() -> Result {
    let dir = scratch_dir()?;
    {
        let mut log = RaftLog::open(dir.path(), Options::default())?;
        log.append(&[entry(1, 1)])?;
        log.sync()?;
    }
    let path = segment_files(dir.path()).pop().ok_or("none")?;
    let mut bytes = std::fs::read(&path)?;
    bytes[8] = 9;
    std::fs::write(&path, &bytes)?;
    refuses(
        dir.path(),
        Options::default(),
        |e| matches!(e, LogError::Corrupt { reason, .. } if reason.contains("version 9")),
    )
}
