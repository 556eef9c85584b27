//! The Sharing Map itself: an immutable, versioned, persistent map.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use foldhash::fast::RandomState;
use rpds::HashTrieMapSync;
use serde::{Deserialize, Serialize};

use crate::{ApplyError, ChangeSet, Entry, LimitError, Limits, MapName, UpdateId};

type Entries = HashTrieMapSync<Arc<str>, Entry, RandomState>;

/// One version of a map: `{name, version, entries}` plus the id of the update that produced it.
///
/// Values are immutable: applying a change set returns a new `SharingMap` that shares every
/// unchanged node with this one, so keeping several versions costs little more than one, and
/// cloning is a reference-count bump.
#[derive(Clone)]
pub struct SharingMap {
    name: MapName,
    version: u64,
    last_update_id: Option<UpdateId>,
    entries: Entries,
}

/// What applying a change set did.
#[derive(Clone, Debug)]
pub enum Applied {
    /// The change set was applied; this is the new version.
    New(SharingMap),
    /// The change set is a retry of the update that produced the current version; nothing
    /// changed.
    Duplicate {
        /// The version that update produced.
        version: u64,
    },
}

impl SharingMap {
    /// An empty map at version 0.
    pub fn new(name: MapName) -> Self {
        Self {
            name,
            version: 0,
            last_update_id: None,
            entries: HashTrieMapSync::new_with_hasher_and_ptr_kind(RandomState::default()),
        }
    }

    /// A map at version 0 with initial content (create-if-absent gives this).
    pub fn with_entries(
        name: MapName,
        entries: impl IntoIterator<Item = (Arc<str>, Entry)>,
    ) -> Self {
        let mut map = Self::new(name);
        for (k, e) in entries {
            map.entries.insert_mut(k, e);
        }
        map
    }

    /// The map's name.
    pub fn name(&self) -> &MapName {
        &self.name
    }
    /// The version number.
    pub fn version(&self) -> u64 {
        self.version
    }
    /// The id of the update that produced this version (none at version 0).
    pub fn last_update_id(&self) -> Option<&UpdateId> {
        self.last_update_id.as_ref()
    }
    /// The entry under `key`.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }
    /// The JSON value under `key`, if it holds data.
    pub fn get_value(&self, key: &str) -> Option<&serde_json::Value> {
        self.get(key).and_then(Entry::as_value)
    }
    /// Whether `key` holds anything.
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.size()
    }
    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Entry)> {
        self.entries.iter()
    }
    /// All entries sorted by key.
    pub fn sorted(&self) -> Vec<(&Arc<str>, &Entry)> {
        let mut all: Vec<_> = self.entries.iter().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// Applies a change set with compare-and-swap on the version.
    ///
    /// - at exactly `cs.version()`: returns the next version;
    /// - a retry of the update that produced the current version: [`Applied::Duplicate`];
    /// - an older version: [`ApplyError::Conflict`] (a replica ignores it);
    /// - a newer version: [`ApplyError::Gap`] (a replica resynchronizes from a dump).
    pub fn apply(&self, cs: &ChangeSet) -> Result<Applied, ApplyError> {
        if cs.map() != &self.name {
            return Err(ApplyError::WrongMap {
                map: self.name.to_string(),
                got: cs.map().to_string(),
            });
        }
        if cs.version() == self.version {
            return Ok(Applied::New(self.apply_unchecked(cs)));
        }
        if cs.next_version() == self.version && self.last_update_id.as_ref() == Some(cs.update_id())
        {
            return Ok(Applied::Duplicate {
                version: self.version,
            });
        }
        if cs.version() < self.version {
            Err(ApplyError::Conflict {
                map: self.name.to_string(),
                current: self.version,
                expected: cs.version(),
            })
        } else {
            Err(ApplyError::Gap {
                map: self.name.to_string(),
                current: self.version,
                got: cs.version(),
            })
        }
    }

    /// Like [`apply`](Self::apply), and also checks the change set and the resulting map against
    /// `limits`. Used where change sets enter the system; replicas trust what the Spine accepted.
    pub fn apply_checked(&self, cs: &ChangeSet, limits: &Limits) -> Result<Applied, ApplyError> {
        limits.check_change_set(cs)?;
        let applied = self.apply(cs)?;
        if let Applied::New(next) = &applied
            && next.len() > limits.max_entries
            && next.len() > self.len()
        {
            return Err(ApplyError::Limit(LimitError::TooManyEntries {
                map: self.name.to_string(),
                count: next.len(),
                max: limits.max_entries,
            }));
        }
        Ok(applied)
    }

    fn apply_unchecked(&self, cs: &ChangeSet) -> SharingMap {
        let mut entries = self.entries.clone();
        for key in cs.removes() {
            entries.remove_mut(&**key);
        }
        for (key, entry) in cs.puts() {
            entries.insert_mut(key.clone(), entry.clone());
        }
        SharingMap {
            name: self.name.clone(),
            version: cs.next_version(),
            last_update_id: Some(cs.update_id().clone()),
            entries,
        }
    }

    /// A full, sorted copy of this version, for storage, transport and resynchronization.
    pub fn dump(&self) -> MapDump {
        MapDump {
            name: self.name.clone(),
            version: self.version,
            last_update_id: self.last_update_id.clone(),
            entries: self
                .sorted()
                .into_iter()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
        }
    }

    /// Rebuilds the version a dump was taken of.
    pub fn restore(dump: MapDump) -> Self {
        let mut map = Self::with_entries(dump.name, dump.entries);
        map.version = dump.version;
        map.last_update_id = dump.last_update_id;
        map
    }

    /// A digest of name, version and content, equal on every replica holding the same version.
    /// Stable within one build of the program (it is for comparing replicas, not for storage).
    pub fn digest(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.name.hash(&mut h);
        self.version.hash(&mut h);
        for (k, e) in self.sorted() {
            k.hash(&mut h);
            // The binary encoding of an entry is deterministic.
            crate::codec::encode(e).hash(&mut h);
        }
        h.finish()
    }
}

impl PartialEq for SharingMap {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.version == other.version
            && self.last_update_id == other.last_update_id
            && self.len() == other.len()
            && self.iter().all(|(k, e)| other.get(k) == Some(e))
    }
}

impl std::fmt::Debug for SharingMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharingMap")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("entries", &self.len())
            .finish()
    }
}

/// A full copy of one map version, entries sorted by key.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct MapDump {
    /// The map's name.
    pub name: MapName,
    /// The version dumped.
    pub version: u64,
    /// The id of the update that produced it.
    pub last_update_id: Option<UpdateId>,
    /// Every entry, sorted by key.
    pub entries: Vec<(Arc<str>, Entry)>,
}

impl Serialize for SharingMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.dump().serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharingMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        MapDump::deserialize(d).map(SharingMap::restore)
    }
}
