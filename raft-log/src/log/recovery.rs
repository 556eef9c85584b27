//! Opening a log: reading every segment back into the index, and cutting off a torn tail.

use std::fs::{self, OpenOptions};
use std::path::Path;

use crate::error::LogError;
use crate::format::{self, Frame, HeaderCheck, Record, SEGMENT_HEADER_LEN};
use crate::index::{Change, Slot};

use super::{RaftLog, Segment, corrupt};

/// What [`RaftLog::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segment files read.
    pub segments: usize,
    /// Bytes dropped from the end of the last segment: a batch that was being written when the
    /// process stopped (never synced, so never acknowledged).
    pub torn_bytes: u64,
    /// The last segment file was being created when the process stopped and held no complete
    /// record; it was removed.
    pub removed_segment: bool,
}

/// How one segment file replayed.
enum Replayed {
    /// Its records up to `valid_end` (bytes) were applied; anything after is a torn batch
    /// (only possible in the last segment).
    Upto(usize),
    /// The last segment, with no complete batch: a file whose creation never finished.
    Unfinished,
}

impl RaftLog {
    pub(super) fn recover(&mut self, seqs: &[u64]) -> Result<(), LogError> {
        // Read everything first; change files only once all of it made sense.
        let mut replayed: Vec<(u64, usize, usize)> = Vec::new(); // seq, valid end, file length
        let mut unfinished = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = self.segment_path(seq);
            let bytes = fs::read(&path).map_err(|e| LogError::io("read", &path, e))?;
            let is_last = i + 1 == seqs.len();
            let follows = replayed.last().is_some_and(|&(prev, _, _)| prev + 1 == seq);
            match self.replay_segment(seq, &path, &bytes, is_last, follows)? {
                Replayed::Upto(end) => replayed.push((seq, end, bytes.len())),
                Replayed::Unfinished => unfinished = Some(seq),
            }
        }
        self.recovery.segments = seqs.len();
        if let Err((first, last)) = self.index.finish() {
            return Err(LogError::MissingEntries {
                dir: self.dir.clone(),
                first,
                last,
            });
        }
        if let Some(seq) = unfinished {
            let path = self.segment_path(seq);
            fs::remove_file(&path).map_err(|e| LogError::io("remove", &path, e))?;
            self.recovery.removed_segment = true;
            self.dir_unsynced = true;
        }
        let last = replayed.len().checked_sub(1);
        for (i, &(seq, end, len)) in replayed.iter().enumerate() {
            let path = self.segment_path(seq);
            let active = Some(i) == last;
            let file = OpenOptions::new()
                .read(true)
                .write(active)
                .open(&path)
                .map_err(|e| LogError::io("open", &path, e))?;
            if active {
                if end < len {
                    file.set_len(end as u64)
                        .map_err(|e| LogError::io("truncate", &path, e))?;
                    self.recovery.torn_bytes = (len - end) as u64;
                }
                self.active = seq;
                self.active_len = end as u64;
                // Sealing is about this segment holding more than its start; recovered
                // segments count as holding something.
                self.active_start = SEGMENT_HEADER_LEN as u64;
                self.unsynced = true;
            }
            self.segments.insert(seq, Segment { path, file });
        }
        if self.segments.is_empty() {
            let seq = seqs.last().map_or(1, |s| s + 1);
            self.create_segment(seq)?;
        }
        // Segments a compaction freed just before a crash: the sync makes the compaction
        // durable (again), then removes them.
        self.plan_purge();
        self.sync()
    }

    fn replay_segment(
        &mut self,
        seq: u64,
        path: &Path,
        bytes: &[u8],
        is_last: bool,
        follows_replayed: bool,
    ) -> Result<Replayed, LogError> {
        match format::check_segment_header(bytes, seq) {
            HeaderCheck::Ok => {}
            HeaderCheck::Torn if is_last => return Ok(Replayed::Unfinished),
            HeaderCheck::Torn => {
                return Err(corrupt(path, 0, "incomplete header in a sealed segment"));
            }
            HeaderCheck::Bad(reason) => return Err(corrupt(path, 0, reason)),
        }
        let mut pos = SEGMENT_HEADER_LEN;
        let mut valid_end = None;
        let mut pending: Vec<(Record, usize, u32)> = Vec::new();
        loop {
            match format::read_frame(bytes, pos) {
                Frame::Ok {
                    kind,
                    payload,
                    next,
                } => {
                    let record =
                        format::decode_record(kind, payload).map_err(|r| corrupt(path, pos, r))?;
                    let starts_segment = valid_end.is_none() && pending.is_empty();
                    if matches!(record, Record::State(_)) != starts_segment {
                        return Err(corrupt(
                            path,
                            pos,
                            "a segment's first record, and only that, must be its state",
                        ));
                    }
                    let len = u32::try_from(next - pos).map_err(|_| corrupt(path, pos, "huge"))?;
                    pending.push((record, pos, len));
                    if format::ends_batch(kind) {
                        for (record, at, len) in pending.drain(..) {
                            self.replay_record(seq, record, at, len, follows_replayed)
                                .map_err(|r| corrupt(path, at, r))?;
                        }
                        valid_end = Some(next);
                    }
                    pos = next;
                }
                Frame::End => break,
                Frame::Bad { reason, next } => {
                    if !is_last {
                        return Err(corrupt(path, pos, format!("{reason} in a sealed segment")));
                    }
                    if let Some(next) = next
                        && matches!(format::read_frame(bytes, next), Frame::Ok { .. })
                    {
                        return Err(corrupt(
                            path,
                            pos,
                            format!(
                                "{reason}, with intact records after it: damage, not a torn write"
                            ),
                        ));
                    }
                    break;
                }
            }
        }
        match valid_end {
            Some(end) if end == bytes.len() || is_last => Ok(Replayed::Upto(end)),
            None if is_last => Ok(Replayed::Unfinished),
            _ => Err(corrupt(
                path,
                valid_end.unwrap_or(SEGMENT_HEADER_LEN),
                "a sealed segment ends in an incomplete batch",
            )),
        }
    }

    fn replay_record(
        &mut self,
        seq: u64,
        record: Record,
        at: usize,
        len: u32,
        follows_replayed: bool,
    ) -> Result<(), String> {
        match record {
            Record::Entry(p) => {
                let slot = Slot {
                    term: p.term,
                    segment: seq,
                    offset: at as u64,
                    len,
                };
                self.index.apply(Change::Entry {
                    index: p.index,
                    slot,
                })?;
            }
            Record::State(state) => {
                self.index.apply(Change::State {
                    state: &state,
                    follows_replayed,
                })?;
            }
            Record::HardState(hs) => self.index.apply(Change::HardState(&hs))?,
            Record::ConfState(cs) => self.index.apply(Change::ConfState(&cs))?,
            Record::Compact(p) => self.index.apply(Change::Compact(p))?,
            Record::Restore(p) => self.index.apply(Change::Restore(p))?,
        }
        Ok(())
    }
}
