//! The Raft log as versions before spine-raft-log kept it, in sled's tree `raft`: one record per
//! entry (`l` + big-endian index, a protobuf `Entry`), the hard state (`hs`) and configuration
//! (`cs`) as protobuf, and the last snapshot or compaction position (`sm`: index and term, 16
//! bytes). The floor of reserved request numbers (`rq`) stays in that tree.
//!
//! [`migrate`] moves such a log into the new one at the first start of this version. The sled
//! log stays the truth until the move is complete: the new log is written and synced in full,
//! then one sled batch removes the old records and marks the tree ([`LOG_MOVED`]), and sled is
//! synced. A crash before that batch is durable leaves the old log in place, and the next start
//! moves it again from scratch.

use std::path::Path;

use raft::eraftpb::{ConfState, Entry, HardState};
use spine_raft_log::LogBatch;

use super::{Store, StoreError};

const HARD_STATE: &[u8] = b"hs";
const CONF_STATE: &[u8] = b"cs";
const SNAP_META: &[u8] = b"sm";
const LOG_PREFIX: u8 = b'l';

/// Where the old versions kept the snapshot position, this version keeps a marker saying that
/// the Raft log is in its own directory. It is not 16 bytes, so an older version refuses to
/// start on this data directory ("corrupt record sm") instead of starting with an empty log
/// over these checkpoints.
pub(super) const LOG_MOVED: &[u8] = b"the raft log is in raft-log/";

/// What the tree `raft` says of the Raft log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// The log is in its own directory (this version wrote the tree).
    Moved,
    /// The log is in this tree (an older version wrote it).
    InSled,
    /// Neither: a new data directory (or one whose old log was still empty).
    None,
}

pub(super) fn layout(store: &Store, tree: &sled::Tree) -> Result<Layout, StoreError> {
    let get = |k: &[u8]| tree.get(k).map_err(|e| store.err(e));
    if get(SNAP_META)?.is_some_and(|v| v == LOG_MOVED) {
        return Ok(Layout::Moved);
    }
    let mut entries = tree.scan_prefix([LOG_PREFIX]).keys();
    let any_entry = entries.next().transpose().map_err(|e| store.err(e))?;
    let in_sled = get(HARD_STATE)?.is_some()
        || get(CONF_STATE)?.is_some()
        || get(SNAP_META)?.is_some()
        || any_entry.is_some();
    Ok(if in_sled {
        Layout::InSled
    } else {
        Layout::None
    })
}

/// Marks the tree as describing a log kept in its own directory, durably.
pub(super) fn mark_moved(store: &Store, tree: &sled::Tree) -> Result<(), StoreError> {
    tree.insert(SNAP_META, LOG_MOVED)
        .map_err(|e| store.err(e))?;
    store.sync()
}

fn decode_pb<M: protobuf::Message>(key: &[u8], bytes: &[u8]) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes).map_err(|e| super::corrupt("raft", key, e))
}

/// Entries moved per batch of the new log: the old log can be large (nothing bounds it between
/// checkpoints), and it is never held in memory whole.
const BATCH_BYTES: usize = 4 << 20;

/// What a move did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Moved {
    /// Entries moved.
    pub entries: u64,
    /// The first entry's index is one past this snapshot or compaction point.
    pub snapshot_index: u64,
}

/// Moves the sled log into `log` (which must be empty: a new directory), syncs it, then removes
/// the sled records and marks the tree as moved, durably.
pub(super) fn migrate(
    store: &Store,
    tree: &sled::Tree,
    log: &mut spine_raft_log::RaftLog,
    log_dir: &Path,
) -> Result<Moved, StoreError> {
    let get = |k: &[u8]| tree.get(k).map_err(|e| store.err(e));
    let hard_state: HardState = match get(HARD_STATE)? {
        Some(b) => decode_pb(HARD_STATE, &b)?,
        None => HardState::default(),
    };
    let conf_state: Option<ConfState> = match get(CONF_STATE)? {
        Some(b) => Some(decode_pb(CONF_STATE, &b)?),
        None => None,
    };
    let (snap_index, snap_term) = match get(SNAP_META)? {
        Some(b) => {
            let bytes: [u8; 16] = b.as_ref().try_into().map_err(|_| {
                super::corrupt("raft", SNAP_META, format!("{} bytes, expected 16", b.len()))
            })?;
            (
                u64::from_be_bytes(std::array::from_fn(|i| bytes[i])),
                u64::from_be_bytes(std::array::from_fn(|i| bytes[8 + i])),
            )
        }
        None => (0, 0),
    };
    let mut batch = LogBatch::new();
    if snap_index > 0 {
        batch.restore(snap_index, snap_term);
    }
    if let Some(cs) = conf_state {
        batch.set_conf_state(cs);
    }
    let mut moved = Moved {
        entries: 0,
        snapshot_index: snap_index,
    };
    let mut entries = Vec::new();
    let mut bytes = 0;
    for item in tree.scan_prefix([LOG_PREFIX]) {
        let (k, v) = item.map_err(|e| store.err(e))?;
        let entry: Entry = decode_pb(&k, &v)?;
        bytes += v.len();
        entries.push(entry);
        moved.entries += 1;
        if bytes >= BATCH_BYTES {
            batch.append(std::mem::take(&mut entries));
            log.write(std::mem::take(&mut batch))?;
            bytes = 0;
        }
    }
    batch.append(entries);
    batch.set_hard_state(hard_state);
    log.write(batch)?;
    log.sync()?;

    let mut clear = sled::Batch::default();
    for k in [HARD_STATE, CONF_STATE] {
        clear.remove(k);
    }
    for k in tree.scan_prefix([LOG_PREFIX]).keys() {
        clear.remove(k.map_err(|e| store.err(e))?);
    }
    clear.insert(SNAP_META, LOG_MOVED);
    tree.apply_batch(clear).map_err(|e| store.err(e))?;
    store.sync()?;
    tracing::info!(
        entries = moved.entries,
        after = snap_index,
        dir = %log_dir.display(),
        "moved the Raft log out of sled into its own directory"
    );
    Ok(moved)
}

/// Writes a log as the versions before this one did, for tests of the move.
#[cfg(test)]
pub(super) mod write {
    use super::*;

    fn encode_pb<M: protobuf::Message>(m: &M) -> Vec<u8> {
        m.write_to_bytes().unwrap_or_default()
    }

    fn log_key(index: u64) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = LOG_PREFIX;
        k[1..].copy_from_slice(&index.to_be_bytes());
        k
    }

    /// The old `RaftStore`'s writes, with its record layout.
    pub fn log(
        tree: &sled::Tree,
        hs: &HardState,
        cs: &ConfState,
        snapshot: (u64, u64),
        entries: &[Entry],
    ) -> Result<(), sled::Error> {
        tree.insert(HARD_STATE, encode_pb(hs))?;
        tree.insert(CONF_STATE, encode_pb(cs))?;
        if snapshot.0 > 0 {
            let mut sm = Vec::with_capacity(16);
            sm.extend_from_slice(&snapshot.0.to_be_bytes());
            sm.extend_from_slice(&snapshot.1.to_be_bytes());
            tree.insert(SNAP_META, sm)?;
        }
        for e in entries {
            tree.insert(log_key(e.index), encode_pb(e))?;
        }
        Ok(())
    }
}
