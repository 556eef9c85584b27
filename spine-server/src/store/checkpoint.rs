//! The state machine's checkpoints in sled (tree `state`): per map a record of its version and
//! last update id, one record per entry, and the applied position (index, term, membership) the
//! maps describe, all written in one batch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sharing_map::{MapDump, SharingMap, UpdateId, codec};

use super::{Store, StoreError};
use crate::state::{Change, MapKey, MapState, Membership, State, StateImage};

// Starts with a byte no map record starts with.
const STATE_META: &[u8] = b"\0meta";

#[derive(Serialize, Deserialize)]
struct MapMeta {
    version: u64,
    last_update_id: Option<UpdateId>,
}

#[derive(Serialize, Deserialize)]
struct StateMeta {
    applied_index: u64,
    applied_term: u64,
    membership: Membership,
}

fn map_prefix(tag: u8, key: &MapKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.app.as_str().len() + key.map.as_str().len() + 1);
    k.push(tag);
    k.extend_from_slice(key.app.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(key.map.as_str().as_bytes());
    k
}

fn entry_key(key: &MapKey, entry: &str) -> Vec<u8> {
    let mut k = map_prefix(b'e', key);
    k.push(0);
    k.extend_from_slice(entry.as_bytes());
    k
}

/// Splits `tag app \0 map [\0 rest]` into its parts.
fn parse_map_key(bytes: &[u8]) -> Option<(MapKey, &[u8])> {
    let body = bytes.get(1..)?;
    let app_end = body.iter().position(|&b| b == 0)?;
    let app = std::str::from_utf8(&body[..app_end]).ok()?;
    let rest = &body[app_end + 1..];
    let map_end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let map = std::str::from_utf8(&rest[..map_end]).ok()?;
    let tail = rest.get(map_end + 1..).unwrap_or(&[]);
    Some((
        MapKey {
            app: app.parse().ok()?,
            map: map.parse().ok()?,
        },
        tail,
    ))
}

/// What changed in the applied state since the last checkpoint: per map, whether it was created
/// and which keys were put or removed.
#[derive(Debug, Default)]
pub struct Dirty {
    maps: BTreeMap<MapKey, DirtyMap>,
}

#[derive(Debug, Default)]
struct DirtyMap {
    created: bool,
    keys: BTreeSet<Arc<str>>,
}

impl Dirty {
    /// Notes what `changes` touched.
    pub fn record(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::Created { key, .. } => {
                    let d = self.maps.entry(key.clone()).or_default();
                    d.created = true;
                    d.keys.clear();
                }
                Change::Delta {
                    key, change_set, ..
                } => {
                    let d = self.maps.entry(key.clone()).or_default();
                    if !d.created {
                        d.keys.extend(change_set.removes().iter().cloned());
                        d.keys
                            .extend(change_set.puts().iter().map(|(k, _)| k.clone()));
                    }
                }
            }
        }
    }

    /// Maps changed since the last checkpoint.
    pub fn maps(&self) -> usize {
        self.maps.len()
    }
}

/// The applied state machine in sled.
#[derive(Clone, Debug)]
pub struct StateStore {
    store: Store,
    tree: sled::Tree,
}

fn corrupt(key: &[u8], reason: impl ToString) -> StoreError {
    super::corrupt("state", key, reason)
}

impl StateStore {
    /// Opens the state part of `store`.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            tree: store.tree("state")?,
            store: store.clone(),
        })
    }

    /// Writes a checkpoint: the current content of every map in `dirty` and the applied
    /// position of `state`, in one atomic batch, then fsyncs it. Log entries up to
    /// `state.applied_index` are not needed for recovery after this returns.
    pub fn checkpoint(&self, state: &State, dirty: Dirty) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, d) in dirty.maps {
            let Some(ms) = state.maps.get(&key) else {
                continue;
            };
            self.put_meta(&mut batch, &key, &ms.map);
            if d.created {
                for (k, e) in ms.map.iter() {
                    batch.insert(entry_key(&key, k), codec::encode(e));
                }
            }
            for k in &d.keys {
                match ms.map.get(k) {
                    Some(e) => batch.insert(entry_key(&key, k), codec::encode(e)),
                    None => batch.remove(entry_key(&key, k)),
                }
            }
        }
        self.put_state_meta(&mut batch, state);
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.store.err(e))?;
        self.store.sync()
    }

    fn put_meta(&self, batch: &mut sled::Batch, key: &MapKey, map: &SharingMap) {
        batch.insert(
            map_prefix(b'm', key),
            codec::encode(&MapMeta {
                version: map.version(),
                last_update_id: map.last_update_id().cloned(),
            }),
        );
    }

    fn put_state_meta(&self, batch: &mut sled::Batch, state: &State) {
        batch.insert(
            STATE_META,
            codec::encode(&StateMeta {
                applied_index: state.applied_index,
                applied_term: state.applied_term,
                membership: state.membership.clone(),
            }),
        );
    }

    /// Replaces everything with a snapshot's image (as the snapshot carries it) in one atomic
    /// batch, syncs it, and returns the state it describes. The log's part of installing the
    /// snapshot comes after this (see [`super::LogWrite::snapshot`]).
    pub fn install(&self, image: &[u8]) -> Result<State, StoreError> {
        let (batch, state) = self.replace_batch(image)?;
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.store.err(e))?;
        self.store.sync()?;
        Ok(state)
    }

    /// A batch replacing everything with a snapshot's image, and the state it describes.
    fn replace_batch(&self, image: &[u8]) -> Result<(sled::Batch, State), StoreError> {
        let image: StateImage = codec::decode(image).map_err(|e| corrupt(b"snapshot", e))?;
        let state = State::from_image(image);
        let mut batch = sled::Batch::default();
        for k in self.tree.iter().keys() {
            batch.remove(k.map_err(|e| self.store.err(e))?);
        }
        for (key, ms) in state.maps.iter() {
            self.put_meta(&mut batch, key, &ms.map);
            for (k, e) in ms.map.iter() {
                batch.insert(entry_key(key, k), codec::encode(e));
            }
        }
        self.put_state_meta(&mut batch, &state);
        Ok((batch, state))
    }

    /// Loads the applied state.
    pub fn load(&self) -> Result<State, StoreError> {
        let mut state = State::default();
        if let Some(b) = self.tree.get(STATE_META).map_err(|e| self.store.err(e))? {
            let meta: StateMeta = codec::decode(&b).map_err(|e| corrupt(STATE_META, e))?;
            state.applied_index = meta.applied_index;
            state.applied_term = meta.applied_term;
            state.membership = meta.membership;
        }
        let mut dumps: std::collections::BTreeMap<MapKey, MapDump> = Default::default();
        let mut stale = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item.map_err(|e| self.store.err(e))?;
            match k.first() {
                Some(b'm') => {
                    let (key, _) = parse_map_key(&k).ok_or_else(|| corrupt(&k, "bad key"))?;
                    let meta: MapMeta = codec::decode(&v).map_err(|e| corrupt(&k, e))?;
                    let dump = dumps.entry(key.clone()).or_insert_with(|| MapDump {
                        name: key.map.clone(),
                        version: 0,
                        last_update_id: None,
                        entries: Vec::new(),
                    });
                    dump.version = meta.version;
                    dump.last_update_id = meta.last_update_id;
                }
                Some(b'e') => {
                    let (key, tail) = parse_map_key(&k).ok_or_else(|| corrupt(&k, "bad key"))?;
                    let entry_name = std::str::from_utf8(tail).map_err(|e| corrupt(&k, e))?;
                    let entry = codec::decode(&v).map_err(|e| corrupt(&k, e))?;
                    dumps
                        .entry(key.clone())
                        .or_insert_with(|| MapDump {
                            name: key.map.clone(),
                            version: 0,
                            last_update_id: None,
                            entries: Vec::new(),
                        })
                        .entries
                        .push((Arc::from(entry_name), entry));
                }
                // Change-set history written by earlier versions, which kept it on disk: it
                // is in memory only now, and the stale copy is dropped.
                Some(b'h') => stale.push(k),
                _ => {}
            }
        }
        for (key, dump) in dumps {
            state.maps.insert_mut(
                key,
                MapState {
                    map: SharingMap::restore(dump),
                    history: rpds::QueueSync::new_sync(),
                },
            );
        }
        if !stale.is_empty() {
            let mut batch = sled::Batch::default();
            for k in stale {
                batch.remove(k);
            }
            self.tree
                .apply_batch(batch)
                .map_err(|e| self.store.err(e))?;
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ApplyConfig, Command};
    use crate::store::{LogWrite, RaftLog, RaftStore};
    use raft::Storage as _;
    use serde_json::json;
    use sharing_map::{AppName, ChangeSet, Entry as MapEntry, MapName};

    #[test]
    fn state_round_trips_through_sled() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let states = StateStore::open(&store)?;
        let mut state = State::default();
        let cfg = ApplyConfig {
            history_len: 2,
            ..ApplyConfig::default()
        };
        let key = MapKey {
            app: AppName::parse("acme-shop")?,
            map: MapName::parse("bob-tv-x")?,
        };
        let mut dirty = Dirty::default();
        let (_, ch) = state.apply(
            &Command::Create {
                key: key.clone(),
                initial: vec![(Arc::from("k\0odd"), MapEntry::value(json!(1)))],
            },
            &cfg,
        );
        dirty.record(&ch);
        states.checkpoint(&state, std::mem::take(&mut dirty))?;
        for v in 0..4u64 {
            let cs = ChangeSet::from_ops(
                key.map.clone(),
                v,
                UpdateId::parse(&format!("u{v}"))?,
                [
                    (Arc::from(format!("k{v}")), Some(MapEntry::value(json!(v)))),
                    (Arc::from("k\0odd"), None),
                ],
            );
            let (_, ch) = state.apply(
                &Command::Update {
                    app: key.app.clone(),
                    change_sets: vec![cs],
                },
                &cfg,
            );
            state.applied_index = 10 + v;
            dirty.record(&ch);
            // Checkpoints after the second and the fourth update: each writes the keys
            // changed since the one before.
            if v % 2 == 1 {
                states.checkpoint(&state, std::mem::take(&mut dirty))?;
            }
        }
        let loaded = states.load()?;
        assert_eq!(loaded.applied_index, 13);
        assert_eq!(loaded.digest(), state.digest());
        let ms = loaded.get(&key.app, &key.map).ok_or("missing")?;
        assert_eq!(ms.map.version(), 4);
        assert_eq!(ms.map.get("k\0odd"), None);
        // History is kept in memory only; a loaded map starts with none.
        assert_eq!(ms.history.len(), 0);
        assert_eq!(ms.oldest_retained(), 4);
        // A snapshot of this state installed on a fresh node reproduces it.
        let raft = RaftStore::open(&store, &[1])?;
        raft.set_applied(Arc::new(state.clone()));
        let snap = raft.snapshot(13, 2)?;
        let dir2 = tempfile::tempdir()?;
        let store2 = Store::open(dir2.path())?;
        let raft2 = RaftStore::open(&store2, &[])?;
        let states2 = StateStore::open(&store2)?;
        let installed = states2.install(&snap.data)?;
        raft2.write(LogWrite {
            snapshot: Some(snap.get_metadata().clone()),
            ..LogWrite::default()
        })?;
        raft2.sync()?;
        assert_eq!(installed.digest(), state.digest());
        assert_eq!(states2.load()?.digest(), state.digest());
        assert_eq!(raft2.first_index()?, 14);
        assert_eq!(raft2.term(13)?, state.applied_term);
        Ok(())
    }
}
