//! The bytes on disk: segment headers, frames, and the records inside them. Pure functions over
//! byte slices; the file handling is in [`crate::log`].
//!
//! ```text
//! segment file  00000000000000000007.seg
//! ┌──────────────────────────────┬────────┬────────┬─────┬────────┐
//! │ header: "SPINERLG" v1 seq=7  │ frame  │ frame  │ ... │ frame  │
//! └──────────────────────────────┴────────┴────────┴─────┴────────┘
//!   20 bytes                      the first frame is a State record (the log's metadata as of
//!                                 the segment's creation); the rest are what writes appended
//!
//! frame
//! ┌─────────┬─────────┬──────┬──────────────┐
//! │ len u32 │ crc u32 │ kind │ payload      │   len = 1 + payload bytes; little-endian
//! └─────────┴─────────┴──────┴──────────────┘   crc = CRC32 (IEEE) of len bytes, kind, payload
//!                      kind: low 7 bits the record type, high bit "last record of its batch"
//! ```
//!
//! A batch (one [`crate::LogBatch`], one `write(2)`) is a run of frames whose last one carries
//! the end-of-batch bit; recovery applies batches whole or not at all.

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};

/// The first bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"SPINERLG";
/// Bumped on any incompatible change of the layout above.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Magic, version, sequence number.
pub(crate) const SEGMENT_HEADER_LEN: usize = 8 + 4 + 8;
/// Length and CRC.
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// The largest `len` a frame may declare. Anything larger is damage, not data (and a write of
/// a larger entry is refused).
pub(crate) const MAX_FRAME_LEN: usize = 256 << 20;

const END_OF_BATCH: u8 = 0x80;

/// An entry's position: its index and term.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Position {
    pub index: u64,
    pub term: u64,
}

/// The log's metadata, written as the first record of every segment so that any suffix of the
/// segment files describes the whole log (older files can then be deleted freely).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SegmentState {
    /// The last compacted entry (index 0 term 0 for a log never compacted).
    pub compacted: Position,
    /// The last index when the segment was created.
    pub last_index: u64,
    pub hard_state: HardState,
    pub conf_state: ConfState,
}

/// One record, decoded.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Record {
    State(SegmentState),
    /// An entry, by position only (recovery needs no more; reads decode the whole record). It
    /// replaces any entry at its index or later.
    Entry(Position),
    HardState(HardState),
    ConfState(ConfState),
    /// Entries up to and including this position are discarded.
    Compact(Position),
    /// The log is replaced by a snapshot ending at this position: every entry is discarded.
    Restore(Position),
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    State = 1,
    Entry = 2,
    HardState = 3,
    ConfState = 4,
    Compact = 5,
    Restore = 6,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b & !END_OF_BATCH {
            1 => Kind::State,
            2 => Kind::Entry,
            3 => Kind::HardState,
            4 => Kind::ConfState,
            5 => Kind::Compact,
            6 => Kind::Restore,
            _ => return None,
        })
    }
}

/// Encodes records as frames onto a buffer.
#[derive(Debug, Default)]
pub(crate) struct FrameWriter {
    pub buf: Vec<u8>,
}

impl FrameWriter {
    /// Appends one record's frame; returns its start offset in the buffer and its total length.
    pub fn push(
        &mut self,
        record: RecordRef<'_>,
        end_of_batch: bool,
    ) -> Result<(usize, u32), String> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        let kind = record.kind() as u8 | if end_of_batch { END_OF_BATCH } else { 0 };
        self.buf.push(kind);
        record.encode_payload(&mut self.buf)?;
        let len = self.buf.len() - start - FRAME_HEADER_LEN;
        if len > MAX_FRAME_LEN {
            self.buf.truncate(start);
            return Err(format!(
                "a record of {len} bytes is over the {MAX_FRAME_LEN}-byte limit"
            ));
        }
        let len32 = u32::try_from(len).map_err(|_| format!("record of {len} bytes"))?;
        self.buf[start..start + 4].copy_from_slice(&len32.to_le_bytes());
        let crc = frame_crc(
            &self.buf[start..start + 4],
            &self.buf[start + FRAME_HEADER_LEN..],
        );
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok((
            start,
            u32::try_from(self.buf.len() - start).unwrap_or(u32::MAX),
        ))
    }
}

fn frame_crc(len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(body);
    h.finalize()
}

/// A record to encode, borrowing its contents.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RecordRef<'a> {
    State(&'a SegmentState),
    Entry(&'a Entry),
    HardState(&'a HardState),
    ConfState(&'a ConfState),
    Compact(Position),
    Restore(Position),
}

impl RecordRef<'_> {
    fn kind(&self) -> Kind {
        match self {
            RecordRef::State(_) => Kind::State,
            RecordRef::Entry(_) => Kind::Entry,
            RecordRef::HardState(_) => Kind::HardState,
            RecordRef::ConfState(_) => Kind::ConfState,
            RecordRef::Compact(_) => Kind::Compact,
            RecordRef::Restore(_) => Kind::Restore,
        }
    }

    fn encode_payload(&self, buf: &mut Vec<u8>) -> Result<(), String> {
        match self {
            RecordRef::State(s) => {
                put_position(buf, s.compacted);
                buf.extend_from_slice(&s.last_index.to_le_bytes());
                put_message(buf, &s.hard_state)?;
                put_message(buf, &s.conf_state)?;
            }
            RecordRef::Entry(e) => e.write_to_vec(buf).map_err(|e| e.to_string())?,
            RecordRef::HardState(hs) => hs.write_to_vec(buf).map_err(|e| e.to_string())?,
            RecordRef::ConfState(cs) => cs.write_to_vec(buf).map_err(|e| e.to_string())?,
            RecordRef::Compact(p) | RecordRef::Restore(p) => put_position(buf, *p),
        }
        Ok(())
    }
}

fn put_position(buf: &mut Vec<u8>, p: Position) {
    buf.extend_from_slice(&p.index.to_le_bytes());
    buf.extend_from_slice(&p.term.to_le_bytes());
}

/// A length-prefixed protobuf message (inside a State record, which holds two).
fn put_message(buf: &mut Vec<u8>, m: &dyn protobuf::Message) -> Result<(), String> {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    m.write_to_vec(buf).map_err(|e| e.to_string())?;
    let len = u32::try_from(buf.len() - at - 4).map_err(|_| "message over 4 GiB".to_string())?;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// The segment header for sequence number `seq`.
pub(crate) fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    h
}

/// What the first bytes of a segment file say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderCheck {
    Ok,
    /// The header is incomplete, and what is there is the start of the right header followed
    /// by nothing but zeros to the end of the file: the file was being created when the
    /// process died (its size may have reached the disk before its data).
    Torn,
    Bad(String),
}

pub(crate) fn check_segment_header(bytes: &[u8], seq: u64) -> HeaderCheck {
    let want = segment_header(seq);
    if bytes.len() >= SEGMENT_HEADER_LEN && bytes[..SEGMENT_HEADER_LEN] == want {
        return HeaderCheck::Ok;
    }
    let written = bytes
        .iter()
        .zip(want.iter())
        .take_while(|(a, b)| a == b)
        .count();
    if bytes[written..].iter().all(|&b| b == 0) {
        return HeaderCheck::Torn;
    }
    let head = &bytes[..bytes.len().min(SEGMENT_HEADER_LEN)];
    if head.len() >= 8 && head[..8] != SEGMENT_MAGIC[..] {
        return HeaderCheck::Bad("not a segment file (wrong magic bytes)".into());
    }
    if head.len() >= 12 && head[8..12] != want[8..12] {
        let mut v = [0u8; 4];
        v.copy_from_slice(&head[8..12]);
        return HeaderCheck::Bad(format!(
            "format version {} (this build reads {FORMAT_VERSION})",
            u32::from_le_bytes(v)
        ));
    }
    HeaderCheck::Bad("the header's sequence number does not match the file name".into())
}

/// One frame read from a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A frame whose CRC matches.
    Ok {
        kind: u8,
        payload: &'a [u8],
        /// Offset just past the frame.
        next: usize,
    },
    /// No frame starts here: the bytes end.
    End,
    /// The bytes here are not a whole, intact frame. `next` is where the frame would end if its
    /// length field is believable, to look for intact frames after it.
    Bad { reason: String, next: Option<usize> },
}

/// Reads the frame starting at `pos`.
pub(crate) fn read_frame(bytes: &[u8], pos: usize) -> Frame<'_> {
    let rest = bytes.get(pos..).unwrap_or(&[]);
    if rest.is_empty() {
        return Frame::End;
    }
    if rest.len() < FRAME_HEADER_LEN + 1 {
        return Frame::Bad {
            reason: format!("{} bytes left, too few for a record", rest.len()),
            next: None,
        };
    }
    let mut len4 = [0u8; 4];
    len4.copy_from_slice(&rest[..4]);
    let len = u32::from_le_bytes(len4) as usize;
    let mut crc4 = [0u8; 4];
    crc4.copy_from_slice(&rest[4..8]);
    let crc = u32::from_le_bytes(crc4);
    if len == 0 || len > MAX_FRAME_LEN {
        return Frame::Bad {
            reason: format!("record length {len} is not valid"),
            next: None,
        };
    }
    let Some(body) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Frame::Bad {
            reason: format!(
                "record of {len} bytes but only {} left",
                rest.len() - FRAME_HEADER_LEN
            ),
            next: None,
        };
    };
    let next = pos + FRAME_HEADER_LEN + len;
    if frame_crc(&rest[..4], body) != crc {
        return Frame::Bad {
            reason: "checksum mismatch".into(),
            next: Some(next),
        };
    }
    Frame::Ok {
        kind: body[0],
        payload: &body[1..],
        next,
    }
}

/// Whether a frame's kind byte ends its batch.
pub(crate) fn ends_batch(kind: u8) -> bool {
    kind & END_OF_BATCH != 0
}

/// Decodes an intact frame's record. An error here is never a torn write (the CRC matched): it
/// is a file from another format or a bug.
pub(crate) fn decode_record(kind: u8, payload: &[u8]) -> Result<Record, String> {
    let kind = Kind::from_byte(kind).ok_or_else(|| format!("unknown record type {kind:#04x}"))?;
    let mut r = Reader(payload);
    let record = match kind {
        Kind::State => {
            let compacted = r.position()?;
            let last_index = r.u64()?;
            let hs_len = r.u32()? as usize;
            let hard_state = parse::<HardState>(r.take(hs_len)?)?;
            let cs_len = r.u32()? as usize;
            let conf_state = parse::<ConfState>(r.take(cs_len)?)?;
            Record::State(SegmentState {
                compacted,
                last_index,
                hard_state,
                conf_state,
            })
        }
        Kind::Entry => return Ok(Record::Entry(entry_position(payload)?)),
        Kind::HardState => return Ok(Record::HardState(parse(payload)?)),
        Kind::ConfState => return Ok(Record::ConfState(parse(payload)?)),
        Kind::Compact => Record::Compact(r.position()?),
        Kind::Restore => Record::Restore(r.position()?),
    };
    if !r.0.is_empty() {
        return Err(format!("{} bytes after the {kind:?} record", r.0.len()));
    }
    Ok(record)
}

/// Decodes an entry record's payload.
pub(crate) fn decode_entry(payload: &[u8]) -> Result<Entry, String> {
    parse(payload)
}

/// An encoded entry's index and term (protobuf fields 3 and 2), read without decoding the rest:
/// recovery reads every entry, and allocating its data only to drop it was most of the time
/// it took.
fn entry_position(payload: &[u8]) -> Result<Position, String> {
    let mut r = Reader(payload);
    let mut p = Position::default();
    while !r.0.is_empty() {
        let key = r.varint()?;
        match (key >> 3, key & 7) {
            (2, 0) => p.term = r.varint()?,
            (3, 0) => p.index = r.varint()?,
            (_, 0) => {
                r.varint()?;
            }
            (_, 1) => {
                r.take(8)?;
            }
            (_, 2) => {
                let n = usize::try_from(r.varint()?).map_err(|_| "huge field".to_string())?;
                r.take(n)?;
            }
            (_, 5) => {
                r.take(4)?;
            }
            (field, wire) => return Err(format!("entry field {field} has wire type {wire}")),
        }
    }
    Ok(p)
}

fn parse<M: protobuf::Message>(bytes: &[u8]) -> Result<M, String> {
    M::parse_from_bytes(bytes)
        .map_err(|e| format!("undecodable {}: {e}", std::any::type_name::<M>()))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("record ends {} bytes early", n - self.0.len()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first().ok_or("empty")?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint over 10 bytes".into())
    }

    fn position(&mut self) -> Result<Position, String> {
        Ok(Position {
            index: self.u64()?,
            term: self.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn records() -> Vec<Record> {
        vec![
            Record::State(SegmentState {
                compacted: Position { index: 4, term: 2 },
                last_index: 9,
                hard_state: HardState {
                    term: 3,
                    vote: 2,
                    commit: 8,
                    ..Default::default()
                },
                conf_state: ConfState {
                    voters: vec![1, 2, 3],
                    ..Default::default()
                },
            }),
            Record::Entry(Position { index: 10, term: 3 }),
            Record::HardState(HardState {
                term: 4,
                ..Default::default()
            }),
            Record::ConfState(ConfState {
                learners: vec![7],
                ..Default::default()
            }),
            Record::Compact(Position { index: 6, term: 3 }),
            Record::Restore(Position { index: 20, term: 5 }),
        ]
    }

    /// Encodes `r`; an entry record is encoded from `whole`.
    fn as_ref<'a>(r: &'a Record, whole: &'a Entry) -> RecordRef<'a> {
        match r {
            Record::State(s) => RecordRef::State(s),
            Record::Entry(_) => RecordRef::Entry(whole),
            Record::HardState(h) => RecordRef::HardState(h),
            Record::ConfState(c) => RecordRef::ConfState(c),
            Record::Compact(p) => RecordRef::Compact(*p),
            Record::Restore(p) => RecordRef::Restore(*p),
        }
    }

    #[test]
    fn every_record_round_trips_through_a_frame() -> Result<(), String> {
        let mut w = FrameWriter::default();
        let all = records();
        let whole = entry(10, 3, b"hello");
        for (i, r) in all.iter().enumerate() {
            w.push(as_ref(r, &whole), i + 1 == all.len())?;
        }
        let mut pos = 0;
        let mut back = Vec::new();
        loop {
            match read_frame(&w.buf, pos) {
                Frame::Ok {
                    kind,
                    payload,
                    next,
                } => {
                    back.push((decode_record(kind, payload)?, ends_batch(kind)));
                    pos = next;
                }
                Frame::End => break,
                Frame::Bad { reason, .. } => return Err(reason),
            }
        }
        let ends: Vec<bool> = back.iter().map(|(_, e)| *e).collect();
        assert_eq!(ends, [false, false, false, false, false, true]);
        assert_eq!(back.into_iter().map(|(r, _)| r).collect::<Vec<_>>(), all);
        Ok(())
    }

    #[test]
    fn an_entry_s_position_is_read_as_a_full_decode_reads_it() -> Result<(), String> {
        let mut odd = entry(u64::MAX, 1 << 40, &[0xff; 300]);
        odd.context = vec![7; 20].into();
        odd.set_entry_type(raft::eraftpb::EntryType::EntryConfChangeV2);
        odd.sync_log = true;
        for e in [
            entry(1, 1, b""),
            entry(0, 0, b"x"),
            entry(300, 2, &[0; 5000]),
            odd,
        ] {
            let bytes = e.write_to_bytes().map_err(|e| e.to_string())?;
            let full = decode_entry(&bytes)?;
            assert_eq!(full, e);
            let p = entry_position(&bytes)?;
            assert_eq!((p.index, p.term), (e.index, e.term));
            assert!(entry_position(&bytes[..bytes.len() - 1]).is_err());
        }
        Ok(())
    }

    #[test]
    fn damaged_frames_are_reported_not_decoded() -> Result<(), String> {
        let mut w = FrameWriter::default();
        w.push(RecordRef::Entry(&entry(1, 1, b"payload")), true)?;
        let whole = w.buf.clone();
        // Cut anywhere: never a frame.
        for cut in 1..whole.len() {
            assert!(matches!(
                read_frame(&whole[..cut], 0),
                Frame::Bad { next: None, .. }
            ));
        }
        // A flipped bit anywhere: never a frame. In the body the length still points past it.
        for at in 0..whole.len() {
            let mut bad = whole.clone();
            bad[at] ^= 0x10;
            match read_frame(&bad, 0) {
                Frame::Bad { next, .. } => {
                    if at >= 4 {
                        assert_eq!(next, Some(whole.len()));
                    }
                }
                other => return Err(format!("byte {at}: {other:?}")),
            }
        }
        assert_eq!(
            read_frame(&[0u8; 32], 0),
            Frame::Bad {
                reason: "record length 0 is not valid".into(),
                next: None
            }
        );
        Ok(())
    }

    #[test]
    fn intact_frames_of_unknown_or_malformed_records_are_errors() {
        assert!(decode_record(0x7f, b"").is_err());
        assert!(decode_record(5, &[0; 15]).is_err());
        assert!(decode_record(5, &[0; 17]).is_err());
        assert!(decode_record(2, &[0xff; 7]).is_err());
    }

    #[test]
    fn headers_tell_torn_from_foreign() {
        let h = segment_header(7);
        assert_eq!(check_segment_header(&h, 7), HeaderCheck::Ok);
        assert_eq!(check_segment_header(&h[..11], 7), HeaderCheck::Torn);
        assert_eq!(check_segment_header(&[], 7), HeaderCheck::Torn);
        assert_eq!(check_segment_header(&[0; 64], 7), HeaderCheck::Torn);
        let mut prefix_then_zeros = h[..5].to_vec();
        prefix_then_zeros.extend_from_slice(&[0; 40]);
        assert_eq!(
            check_segment_header(&prefix_then_zeros, 7),
            HeaderCheck::Torn
        );
        let mut zeros_then_data = vec![0; 30];
        zeros_then_data.push(1);
        assert!(matches!(
            check_segment_header(&zeros_then_data, 7),
            HeaderCheck::Bad(_)
        ));
        assert!(matches!(check_segment_header(&h, 8), HeaderCheck::Bad(_)));
        assert!(matches!(
            check_segment_header(b"PK\x03\x04 something else", 7),
            HeaderCheck::Bad(_)
        ));
        let mut v2 = h;
        v2[8] = 2;
        assert!(
            matches!(check_segment_header(&v2, 7), HeaderCheck::Bad(r) if r.contains("version 2"))
        );
    }
}
