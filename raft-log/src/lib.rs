//! The Spine's Raft log: an append-only log of raft-rs [`Entry`](raft::eraftpb::Entry) records,
//! with the hard state and configuration beside them, so that one fsync per raft-rs `Ready`
//! makes all of it durable. It replaces a log kept in sled one key per entry.
//!
//! ```text
//!  Ready ──▶ LogBatch { restore(snapshot)?, append(entries), set_hard_state(hs) }
//!              │
//!              ▼ RaftLog::write: one write(2) of CRC'd frames to the active segment
//!              │                 in-memory index (index → segment, offset) + recent entries
//!              ▼ RaftLog::sync:  one fdatasync ──▶ send persisted messages, advance
//!
//!  dir/00000000000000000003.seg   sealed (only its live entries are read, and compaction
//!  dir/00000000000000000004.seg   active  deletes whole files once nothing in them is live)
//! ```
//!
//! The main types: [`RaftLog`] (open, write, sync, reads, compact), [`LogBatch`] (what one
//! write appends), [`Options`], [`Recovery`] (what opening found) and [`LogError`]. The file
//! format is in the `format` module's documentation (see `src/format.rs`).
//!
//! # Durability contract
//!
//! - [`RaftLog::write`] appends a batch; its records are visible to reads at once but durable
//!   only once [`RaftLog::sync`] returns `Ok`. Acknowledge, vote or send `persisted_messages`
//!   only after that.
//! - After a crash the log opens to a prefix of the batches written, in order: every synced
//!   batch, and perhaps some later ones. A batch is recovered whole or not at all (its hard
//!   state never without its entries). The batch being written when the process died is cut
//!   off the last segment (a torn tail); [`Recovery::torn_bytes`] says how much.
//! - Damage that a torn write cannot explain (a bad record in a sealed segment, or a bad record
//!   followed by intact ones, or missing segment files) makes [`RaftLog::open`] fail with
//!   [`LogError::Corrupt`] or [`LogError::MissingEntries`] and changes nothing on disk; no
//!   garbage is ever returned as an entry.
//! - [`RaftLog::compact`] takes effect at once for reads; the compaction record is durable with
//!   the next sync, and the segment files it freed are deleted only after that sync's fsync
//!   (by a thread of the log's own unless [`Options::remove_in_background`] is off).
//! - After any failed write or fsync the log refuses further writes ([`LogError::Failed`]):
//!   what reached the disk is unknown until it is reopened.
//! - A snapshot's data is not in this log. To install one, store the state machine's image
//!   durably first, then write a batch with [`LogBatch::restore`]: a crash in between leaves a
//!   newer state machine over an older log, which a node handles by skipping entries at or below
//!   its applied index (as spine-server's apply loop does); the other order could leave a log that starts after a state
//!   machine that is not there.
//!
//! # Example
//!
//! ```
//! use raft::eraftpb::{Entry, HardState};
//! use spine_raft_log::{LogBatch, Options, RaftLog};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let entry = |index, term| Entry { index, term, data: b"x".to_vec().into(), ..Default::default() };
//!
//! let mut log = RaftLog::open(dir.path(), Options::default())?;
//! // One Ready: entries and the hard state, one write, one fsync.
//! let mut batch = LogBatch::new();
//! batch
//!     .append(vec![entry(1, 1), entry(2, 1), entry(3, 1)])
//!     .set_hard_state(HardState { term: 1, vote: 1, commit: 2, ..Default::default() });
//! log.write(batch)?;
//! log.sync()?;
//!
//! // A new leader's entries replace the conflicting suffix.
//! log.append(&[entry(3, 2)])?;
//! log.compact(2)?; // entries before 2 are gone; term(1) is still known
//! log.sync()?;
//! drop(log);
//!
//! let log = RaftLog::open(dir.path(), Options::default())?;
//! assert_eq!((log.first_index(), log.last_index()), (2, 3));
//! assert_eq!((log.term(1)?, log.term(3)?), (1, 2));
//! assert_eq!(log.hard_state().commit, 2);
//! assert_eq!(log.entries(2, 4, None)?.len(), 2);
//! # Ok(())
//! # }
//! ```

mod batch;
mod cache;
mod error;
mod format;
mod index;
mod log;

pub use batch::LogBatch;
pub use error::LogError;
pub use log::{Options, RaftLog, Recovery};
