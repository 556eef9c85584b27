//! The log on disk: segment files in one directory, the write path, reads and purge; opening
//! (recovery) is in `recovery.rs`, the removal thread in `janitor.rs`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use raft::eraftpb::{ConfState, Entry, HardState};

use crate::batch::{Item, LogBatch};
use crate::cache::RecentEntries;
use crate::error::LogError;
use crate::format::{self, Frame, FrameWriter, Position, RecordRef};
use crate::index::{Change, LogIndex, Slot};

mod janitor;
mod recovery;

use janitor::{Janitor, remove_segment};
pub use recovery::Recovery;

/// Tuning. The defaults suit a Raft group that compacts every few thousand entries.
#[derive(Clone, Debug)]
pub struct Options {
    /// A segment that has reached this size is sealed and the next write starts a new one.
    /// Compaction frees disk space a whole segment at a time, and recovery reads every segment
    /// that is still there, so this bounds both.
    pub segment_bytes: u64,
    /// How many bytes of the newest entries to keep decoded in memory for reads. The cache
    /// holds entries written since the log was opened (recovery reads only positions, which
    /// keeps it fast); older ones are read from the segment files.
    pub cache_bytes: usize,
    /// Remove segment files freed by compaction on a thread of the log's own instead of in
    /// [`RaftLog::sync`]: a removal costs milliseconds on ext4 (the blocks are freed, and
    /// trimmed under `-o discard`), which a Raft loop should not wait for. Failures are
    /// collected for [`RaftLog::take_removal_errors`]; a file left behind is removed at the
    /// next open.
    pub remove_in_background: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 32 << 20,
            cache_bytes: 32 << 20,
            remove_in_background: true,
        }
    }
}

impl Drop for RaftLog {
    fn drop(&mut self) {
        if let Some(janitor) = self.janitor.take() {
            janitor.finish();
        }
    }
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: File,
}

/// A Raft log in a directory of segment files. See the crate documentation for the format and
/// the durability contract.
///
/// One `RaftLog` per directory: nothing stops a second process from opening the same directory,
/// so the caller must hold a lock of its own (spine-server's data directory is locked by sled).
#[derive(Debug)]
pub struct RaftLog {
    dir: PathBuf,
    options: Options,
    index: LogIndex,
    cache: RecentEntries,
    /// Every segment whose file is kept, the active one included.
    segments: BTreeMap<u64, Segment>,
    /// The segment writes go to: the newest.
    active: u64,
    /// Its length: where the next write goes.
    active_len: u64,
    /// Its length after its header and State record: a segment no longer than this holds
    /// nothing to seal.
    active_start: u64,
    /// Written to the active segment since its last fdatasync.
    unsynced: bool,
    /// A segment file was created since the directory's last fsync.
    dir_unsynced: bool,
    /// Segments that compaction freed, removed at the next sync, once the compaction record is
    /// durable (were they removed first, a crash could leave entries that are live in no file).
    doomed: Vec<PathBuf>,
    /// The first write or sync failure; the log takes no more writes after one.
    failed: Option<String>,
    /// Started at the first background removal.
    janitor: Option<Janitor>,
    writer: FrameWriter,
    recovery: Recovery,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn corrupt(path: &Path, offset: usize, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.into(),
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io("fsync directory", dir, e))
}

impl RaftLog {
    /// Opens the log in `dir`, creating the directory and an empty log if there is none.
    ///
    /// Recovery reads every segment, checks every record's CRC, and rebuilds the index
    /// (entry positions only; the cache fills with what is written from now on). A batch that
    /// the process was writing when it stopped (incomplete or damaged records at the end of the
    /// last segment, with nothing intact after them) is cut off the file. Damage anywhere else
    /// is [`LogError::Corrupt`], and nothing is changed on disk: a process crash never leaves
    /// intact records after damaged ones (the page cache keeps a file's writes), so silently
    /// cutting there could drop synced entries. (A power loss while an unsynced batch of
    /// several pages was being written back could leave such a hole too; that is also
    /// refused, for an operator or the peers to settle.) What was recovered is fsynced before
    /// this returns, so that nothing is decided on state a power loss could still take back.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<RaftLog, LogError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| LogError::io("create directory", &dir, e))?;
        let mut seqs = Vec::new();
        for item in fs::read_dir(&dir).map_err(|e| LogError::io("list", &dir, e))? {
            let item = item.map_err(|e| LogError::io("list", &dir, e))?;
            if let Some(seq) = item.file_name().to_str().and_then(parse_segment_name) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut log = RaftLog {
            cache: RecentEntries::new(options.cache_bytes),
            dir,
            options,
            index: LogIndex::default(),
            segments: BTreeMap::new(),
            active: 0,
            active_len: 0,
            active_start: 0,
            unsynced: false,
            dir_unsynced: false,
            doomed: Vec::new(),
            failed: None,
            janitor: None,
            writer: FrameWriter::default(),
            recovery: Recovery::default(),
        };
        log.recover(&seqs)?;
        Ok(log)
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_name(seq))
    }

    /// Creates segment `seq` with its header and State record and makes it the active one.
    /// Durable at the next [`sync`](Self::sync) (which also fsyncs the directory).
    fn create_segment(&mut self, seq: u64) -> Result<(), LogError> {
        let path = self.segment_path(seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LogError::io("create", &path, e))?;
        let mut w = std::mem::take(&mut self.writer);
        w.buf.clear();
        w.buf.extend_from_slice(&format::segment_header(seq));
        let state = self.index.state();
        let pushed = w.push(RecordRef::State(&state), true);
        let written = pushed.map_err(LogError::invalid).and_then(|_| {
            file.write_all_at(&w.buf, 0)
                .map_err(|e| LogError::io("write", &path, e))
        });
        let len = w.buf.len() as u64;
        self.writer = w;
        written?;
        self.segments.insert(seq, Segment { path, file });
        self.active = seq;
        self.active_len = len;
        self.active_start = len;
        self.unsynced = true;
        self.dir_unsynced = true;
        Ok(())
    }

    /// Seals the active segment (fdatasync, so no newer segment describes data it may lose)
    /// and starts the next.
    fn roll(&mut self) -> Result<(), LogError> {
        self.sync_active()?;
        self.create_segment(self.active + 1)
    }

    fn active_segment(&self) -> Result<&Segment, LogError> {
        self.segments
            .get(&self.active)
            .ok_or_else(|| LogError::Failed {
                cause: "no active segment".into(),
            })
    }

    fn sync_active(&mut self) -> Result<(), LogError> {
        if self.unsynced {
            let seg = self.active_segment()?;
            seg.file
                .sync_data()
                .map_err(|e| LogError::io("fdatasync", &seg.path, e))?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn usable(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(cause) => Err(LogError::Failed {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Remembers the first failure and passes the error on.
    fn fail(&mut self, e: LogError) -> LogError {
        if self.failed.is_none() {
            self.failed = Some(e.to_string());
        }
        e
    }

    /// Appends a batch with one `write(2)`. It is visible to reads at once and durable once
    /// [`sync`](Self::sync) returns; after a crash it is recovered whole or not at all.
    ///
    /// A batch that does not fit the log (an entry at or below the compaction point, a gap
    /// after the last entry) is refused with [`LogError::InvalidBatch`] and nothing is
    /// written. An I/O failure leaves the log [`Failed`](LogError::Failed).
    pub fn write(&mut self, batch: LogBatch) -> Result<(), LogError> {
        self.usable()?;
        if batch.is_empty() {
            return Ok(());
        }
        self.check(&batch)?;
        if self.active_len >= self.options.segment_bytes && self.active_len > self.active_start {
            self.roll().map_err(|e| self.fail(e))?;
        }
        let mut w = std::mem::take(&mut self.writer);
        let encoded = encode(&mut w, &batch);
        let result = encoded.and_then(|frames| {
            let seg = self.active_segment()?;
            seg.file
                .write_all_at(&w.buf, self.active_len)
                .map_err(|e| self.fail_io("write", e))?;
            Ok(frames)
        });
        let written = w.buf.len() as u64;
        self.writer = w;
        let frames = match result {
            Ok(frames) => frames,
            Err(e @ LogError::InvalidBatch { .. }) => return Err(e),
            Err(e) => return Err(self.fail(e)),
        };
        let base = self.active_len;
        self.active_len += written;
        self.unsynced = true;
        // `check` let the batch through, so it applies; were it not to, memory and disk
        // would disagree, and only a reopen can tell what the disk holds.
        self.apply(batch, &frames, base).map_err(|e| self.fail(e))
    }

    fn fail_io(&self, op: &'static str, e: std::io::Error) -> LogError {
        LogError::io(op, self.segment_path(self.active), e)
    }

    /// Checks that every item fits the log as it will be when the items before it are applied.
    fn check(&self, batch: &LogBatch) -> Result<(), LogError> {
        let mut compacted = self.index.compacted().index;
        let mut last = self.index.last_index();
        for item in &batch.items {
            match item {
                Item::Restore(p) => {
                    compacted = p.index;
                    last = p.index;
                }
                Item::Entries(entries) => {
                    for e in entries {
                        if e.index <= compacted {
                            return Err(LogError::invalid(format!(
                                "entry {} is at or below the compacted index {compacted}",
                                e.index
                            )));
                        }
                        if e.index > last + 1 {
                            return Err(LogError::invalid(format!(
                                "entry {} leaves a gap after entry {last}",
                                e.index
                            )));
                        }
                        last = e.index;
                    }
                }
                Item::Compact(p) => {
                    if p.index < compacted || p.index > last {
                        return Err(LogError::invalid(format!(
                            "compaction to {} outside {compacted}..={last}",
                            p.index
                        )));
                    }
                    compacted = p.index;
                }
                Item::HardState(_) | Item::ConfState(_) => {}
            }
        }
        Ok(())
    }

    /// Applies a written batch to the index and the cache. `frames` are the records' offsets
    /// and lengths in the write, in order; `base` is where the write started.
    fn apply(
        &mut self,
        batch: LogBatch,
        frames: &[(usize, u32)],
        base: u64,
    ) -> Result<(), LogError> {
        let mut frames = frames.iter().copied();
        let mut next_frame = || {
            frames.next().ok_or_else(|| LogError::Failed {
                cause: "fewer frames than records".into(),
            })
        };
        let mut purge = false;
        for item in batch.items {
            if let Item::Entries(entries) = item {
                for e in entries {
                    let (at, len) = next_frame()?;
                    let slot = Slot {
                        term: e.term,
                        segment: self.active,
                        offset: base + at as u64,
                        len,
                    };
                    self.index
                        .apply(Change::Entry {
                            index: e.index,
                            slot,
                        })
                        .map_err(LogError::invalid)?;
                    self.cache.push(e);
                }
                continue;
            }
            next_frame()?;
            match item {
                Item::HardState(hs) => self.index.apply(Change::HardState(&hs)),
                Item::ConfState(cs) => self.index.apply(Change::ConfState(&cs)),
                Item::Compact(p) => {
                    purge = true;
                    self.cache.compact(p.index + 1);
                    self.index.apply(Change::Compact(p))
                }
                Item::Restore(p) => {
                    purge = true;
                    self.cache.clear();
                    self.index.apply(Change::Restore(p))
                }
                Item::Entries(_) => Ok(()),
            }
            .map_err(LogError::invalid)?;
        }
        if purge {
            self.plan_purge();
        }
        Ok(())
    }

    /// Dooms every segment older than the one holding the first live entry (and than the
    /// active one): they hold nothing live, and every newer segment starts with the state.
    fn plan_purge(&mut self) {
        let keep_from = self
            .index
            .first_slot()
            .map_or(self.active, |s| s.segment)
            .min(self.active);
        let dead: Vec<u64> = self.segments.range(..keep_from).map(|(&s, _)| s).collect();
        for seq in dead {
            if let Some(seg) = self.segments.remove(&seq) {
                self.doomed.push(seg.path);
            }
        }
    }

    /// Makes everything written so far durable: one `fdatasync` of the active segment (plus
    /// an fsync of the directory when a segment file was created since the last sync). Then
    /// the segment files that compaction freed are removed, or handed to the removal thread
    /// (see [`Options::remove_in_background`]).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.usable()?;
        self.sync_active().map_err(|e| self.fail(e))?;
        if self.dir_unsynced {
            sync_dir(&self.dir).map_err(|e| self.fail(e))?;
            self.dir_unsynced = false;
        }
        self.remove_doomed()
    }

    /// Removes the segment files freed by compactions now durable.
    fn remove_doomed(&mut self) -> Result<(), LogError> {
        if self.doomed.is_empty() {
            return Ok(());
        }
        if self.options.remove_in_background && self.janitor.is_none() {
            // Without the thread, removal falls back to this one.
            self.janitor = Janitor::start().ok();
        }
        if let Some(janitor) = self
            .janitor
            .as_ref()
            .filter(|_| self.options.remove_in_background)
        {
            while let Some(path) = self.doomed.pop() {
                if let Err(mpsc::SendError(path)) = janitor.files.send(path) {
                    self.doomed.push(path);
                    if let Some(gone) = self.janitor.take() {
                        gone.finish();
                    }
                    break;
                }
            }
        }
        while let Some(path) = self.doomed.last() {
            remove_segment(path)?;
            self.doomed.pop();
        }
        Ok(())
    }

    /// Failures of background removals since the last call (see
    /// [`Options::remove_in_background`]). None of them affects durability.
    pub fn take_removal_errors(&mut self) -> Vec<LogError> {
        match &self.janitor {
            Some(j) => std::mem::take(&mut *j.errors.lock().unwrap_or_else(|p| p.into_inner())),
            None => Vec::new(),
        }
    }

    /// Appends entries (see [`LogBatch::append`]) in a batch of their own.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        let mut batch = LogBatch::new();
        batch.append(entries);
        self.write(batch)
    }

    /// Records the hard state in a batch of its own.
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogError> {
        let mut batch = LogBatch::new();
        batch.set_hard_state(hs.clone());
        self.write(batch)
    }

    /// Drops the entries before `index`, which becomes the first index (raft-rs's
    /// `MemStorage::compact`). A small record is written (durable with the next
    /// [`sync`](Self::sync)); segments that then hold no live entry are deleted by that sync.
    /// `index` at or before the first index does nothing; past the last index + 1 is refused.
    pub fn compact(&mut self, index: u64) -> Result<(), LogError> {
        self.usable()?;
        if index <= self.first_index() {
            return Ok(());
        }
        if index > self.last_index() + 1 {
            return Err(LogError::invalid(format!(
                "compaction to {index} past the last index {} + 1",
                self.last_index()
            )));
        }
        let term = self.index.term(index - 1)?;
        self.write(LogBatch {
            items: vec![Item::Compact(Position {
                index: index - 1,
                term,
            })],
        })
    }

    /// The first index in the log: one past the compaction point.
    pub fn first_index(&self) -> u64 {
        self.index.first_index()
    }

    /// The last index in the log; `first_index() - 1` when it holds no entry.
    pub fn last_index(&self) -> u64 {
        self.index.last_index()
    }

    /// The term of entry `index`, or of the compaction point (`first_index() - 1`).
    pub fn term(&self, index: u64) -> Result<u64, LogError> {
        self.index.term(index)
    }

    /// The latest hard state written.
    pub fn hard_state(&self) -> &HardState {
        self.index.hard_state()
    }

    /// The latest configuration written.
    pub fn conf_state(&self) -> &ConfState {
        self.index.conf_state()
    }

    /// What opening the log found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many segment files hold live data (the active one included).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Entries `low..high`, with raft-rs's size limit: at least one entry, then as many as fit
    /// in `max_size` bytes of encoded entries (`None` or `raft::NO_LIMIT`: all). Recent
    /// entries come from memory, older ones from the segment files (each record's CRC is
    /// checked again).
    pub fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, LogError> {
        if low > high {
            return Err(LogError::invalid(format!("entries {low}..{high}")));
        }
        if low < self.first_index() {
            return Err(LogError::Compacted {
                index: low,
                first_index: self.first_index(),
            });
        }
        if high > self.last_index() + 1 {
            return Err(LogError::Unavailable {
                index: high - 1,
                last_index: self.last_index(),
            });
        }
        let max = max_size.filter(|&m| m != raft::NO_LIMIT);
        let mut end = low;
        let mut size = 0u64;
        while end < high {
            let Some(slot) = self.index.slot(end) else {
                break;
            };
            size += slot.entry_size();
            if end > low && max.is_some_and(|m| size > m) {
                break;
            }
            end += 1;
        }
        let mut out = Vec::with_capacity((end - low) as usize);
        let cached_from = self.cache.first().unwrap_or(u64::MAX).clamp(low, end);
        self.read_from_disk(low, cached_from, &mut out)?;
        for index in cached_from..end {
            let e = self.cache.get(index).ok_or_else(|| LogError::Failed {
                cause: format!("entry {index} missing from the cache"),
            })?;
            out.push(e.clone());
        }
        Ok(out)
    }

    /// Reads entries `low..high` from their segments, one read per run of entries in the same
    /// segment (up to [`READ_SPAN`] bytes).
    fn read_from_disk(&self, low: u64, high: u64, out: &mut Vec<Entry>) -> Result<(), LogError> {
        const READ_SPAN: u64 = 1 << 20;
        let slot = |index| {
            self.index
                .slot(index)
                .copied()
                .ok_or(LogError::Unavailable {
                    index,
                    last_index: self.last_index(),
                })
        };
        let mut i = low;
        let mut buf = Vec::new();
        while i < high {
            let first = slot(i)?;
            let mut j = i + 1;
            let mut span_end = first.offset + u64::from(first.len);
            while j < high {
                let s = slot(j)?;
                let end = s.offset + u64::from(s.len);
                if s.segment != first.segment || end - first.offset > READ_SPAN {
                    break;
                }
                span_end = end;
                j += 1;
            }
            let seg = self
                .segments
                .get(&first.segment)
                .ok_or_else(|| LogError::Failed {
                    cause: format!("entry {i} is in segment {} which is gone", first.segment),
                })?;
            buf.resize((span_end - first.offset) as usize, 0);
            seg.file
                .read_exact_at(&mut buf, first.offset)
                .map_err(|e| LogError::io("read", &seg.path, e))?;
            for index in i..j {
                let s = slot(index)?;
                let at = (s.offset - first.offset) as usize;
                let bad = |reason: String| corrupt(&seg.path, s.offset as usize, reason);
                let Frame::Ok { payload, .. } = format::read_frame(&buf, at) else {
                    return Err(bad(format!("entry {index}'s record is damaged")));
                };
                let e = format::decode_entry(payload).map_err(bad)?;
                if e.index != index || e.term != s.term {
                    return Err(bad(format!(
                        "expected entry {index} term {}, found entry {} term {}",
                        s.term, e.index, e.term
                    )));
                }
                out.push(e);
            }
            i = j;
        }
        Ok(())
    }
}

/// Encodes a batch's records; returns each record's offset and length in the buffer.
fn encode(w: &mut FrameWriter, batch: &LogBatch) -> Result<Vec<(usize, u32)>, LogError> {
    w.buf.clear();
    let total: usize = batch
        .items
        .iter()
        .map(|i| match i {
            Item::Entries(es) => es.len(),
            _ => 1,
        })
        .sum();
    let mut frames = Vec::with_capacity(total);
    let mut push = |w: &mut FrameWriter, r: RecordRef<'_>| {
        let last = frames.len() + 1 == total;
        let frame = w.push(r, last).map_err(LogError::invalid)?;
        frames.push(frame);
        Ok::<(), LogError>(())
    };
    for item in &batch.items {
        match item {
            Item::Entries(es) => {
                for e in es {
                    push(w, RecordRef::Entry(e))?;
                }
            }
            Item::HardState(hs) => push(w, RecordRef::HardState(hs))?,
            Item::ConfState(cs) => push(w, RecordRef::ConfState(cs))?,
            Item::Compact(p) => push(w, RecordRef::Compact(*p))?,
            Item::Restore(p) => push(w, RecordRef::Restore(*p))?,
        }
    }
    Ok(frames)
}
