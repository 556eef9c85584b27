//! Change sets: one transaction's effect on one map, and the limits they must respect.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Entry, LimitError, MapName};

/// Longest accepted update id, in bytes.
pub const MAX_UPDATE_ID_LEN: usize = 128;

/// The writer's id for one commit; a retry of the last applied id succeeds idempotently.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpdateId(Arc<str>);

impl UpdateId {
    /// Validates an id: 1 to [`MAX_UPDATE_ID_LEN`] bytes of printable ASCII.
    pub fn parse(id: &str) -> Result<Self, LimitError> {
        if id.is_empty()
            || id.len() > MAX_UPDATE_ID_LEN
            || !id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(LimitError::BadUpdateId {
                id: id.chars().take(MAX_UPDATE_ID_LEN + 8).collect(),
                max: MAX_UPDATE_ID_LEN,
            });
        }
        Ok(Self(Arc::from(id)))
    }
    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UpdateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for UpdateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpdateId({:?})", &*self.0)
    }
}
impl Serialize for UpdateId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for UpdateId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Size limits on keys, values, change sets and maps. Every limit has a default and gives a clear
/// error when broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value (compact JSON text) or method (body and argument names), in bytes.
    pub max_value_bytes: usize,
    /// Largest change set: the sum of its keys and values, in bytes.
    pub max_change_set_bytes: usize,
    /// Most entries one map may hold.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 1024,
            max_value_bytes: 256 * 1024,
            max_change_set_bytes: 1024 * 1024,
            max_entries: 1_000_000,
        }
    }
}

impl Limits {
    /// Checks one key.
    pub fn check_key(&self, key: &str) -> Result<(), LimitError> {
        if key.is_empty() {
            return Err(LimitError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(LimitError::KeyTooLarge {
                key: preview(key),
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Checks one entry under a key.
    pub fn check_entry(&self, key: &str, entry: &Entry) -> Result<(), LimitError> {
        self.check_key(key)?;
        let len = entry.encoded_len();
        if len > self.max_value_bytes {
            return Err(LimitError::ValueTooLarge {
                key: preview(key),
                len,
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Checks every key and value of a change set and its total size.
    pub fn check_change_set(&self, cs: &ChangeSet) -> Result<(), LimitError> {
        for key in &cs.remove {
            self.check_key(key)?;
        }
        for (key, entry) in &cs.put {
            self.check_entry(key, entry)?;
        }
        let len = cs.encoded_len();
        if len > self.max_change_set_bytes {
            return Err(LimitError::ChangeSetTooLarge {
                map: cs.map.to_string(),
                len,
                max: self.max_change_set_bytes,
            });
        }
        Ok(())
    }
}

/// The start of a long key, for error messages.
fn preview(key: &str) -> String {
    const SHOWN: usize = 40;
    if key.len() <= SHOWN {
        return key.to_string();
    }
    let mut end = SHOWN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

/// One transaction's effect on one map: `{map, version, update_id, remove, put}`.
///
/// Always normalized: every key appears at most once, in `remove` or in `put`, and both lists are
/// sorted by key. Applying it to the map at exactly `version` yields `version + 1`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(try_from = "ChangeSetWire")]
pub struct ChangeSet {
    map: MapName,
    version: u64,
    update_id: UpdateId,
    remove: Vec<Arc<str>>,
    put: Vec<(Arc<str>, Entry)>,
}

/// The unnormalized form a change set arrives in: removes are taken first, then puts in order.
#[derive(Deserialize)]
struct ChangeSetWire {
    map: MapName,
    version: u64,
    update_id: UpdateId,
    #[serde(default)]
    remove: Vec<Arc<str>>,
    #[serde(default)]
    put: Vec<(Arc<str>, Entry)>,
}

impl TryFrom<ChangeSetWire> for ChangeSet {
    type Error = LimitError;
    fn try_from(w: ChangeSetWire) -> Result<Self, LimitError> {
        let ops = w
            .remove
            .into_iter()
            .map(|k| (k, None))
            .chain(w.put.into_iter().map(|(k, e)| (k, Some(e))));
        Ok(ChangeSet::from_ops(w.map, w.version, w.update_id, ops))
    }
}

impl ChangeSet {
    /// Builds a normalized change set from operations in order: `(key, None)` removes the key,
    /// `(key, Some(entry))` puts it; the last operation on a key wins.
    pub fn from_ops(
        map: MapName,
        version: u64,
        update_id: UpdateId,
        ops: impl IntoIterator<Item = (Arc<str>, Option<Entry>)>,
    ) -> Self {
        let last: BTreeMap<Arc<str>, Option<Entry>> = ops.into_iter().collect();
        let mut remove = Vec::new();
        let mut put = Vec::new();
        for (key, op) in last {
            match op {
                None => remove.push(key),
                Some(entry) => put.push((key, entry)),
            }
        }
        Self {
            map,
            version,
            update_id,
            remove,
            put,
        }
    }

    /// The map this change set is for.
    pub fn map(&self) -> &MapName {
        &self.map
    }
    /// The version it applies to (the version before it).
    pub fn version(&self) -> u64 {
        self.version
    }
    /// The version it produces.
    pub fn next_version(&self) -> u64 {
        self.version + 1
    }
    /// The writer's id for this commit.
    pub fn update_id(&self) -> &UpdateId {
        &self.update_id
    }
    /// Keys removed, sorted.
    pub fn removes(&self) -> &[Arc<str>] {
        &self.remove
    }
    /// Keys put with their new entries, sorted by key.
    pub fn puts(&self) -> &[(Arc<str>, Entry)] {
        &self.put
    }
    /// Number of keys touched.
    pub fn len(&self) -> usize {
        self.remove.len() + self.put.len()
    }
    /// Whether it touches no key (it still bumps the version when applied).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes counted against the change-set size limit.
    pub fn encoded_len(&self) -> usize {
        self.remove.iter().map(|k| k.len()).sum::<usize>()
            + self
                .put
                .iter()
                .map(|(k, e)| k.len() + e.encoded_len())
                .sum::<usize>()
    }
    /// The same operations re-based onto another version (used by writers that retry after a
    /// conflict they have resolved).
    pub fn rebased(mut self, version: u64, update_id: UpdateId) -> Self {
        self.version = version;
        self.update_id = update_id;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(s: &str) -> UpdateId {
        UpdateId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn last_operation_per_key_wins() -> Result<(), crate::NameError> {
        let ops = vec![
            (Arc::from("a"), Some(Entry::value(json!(1)))),
            (Arc::from("b"), Some(Entry::value(json!(2)))),
            (Arc::from("a"), None),
            (Arc::from("b"), Some(Entry::value(json!(3)))),
            (Arc::from("c"), None),
            (Arc::from("c"), Some(Entry::value(json!(4)))),
        ];
        let cs = ChangeSet::from_ops(MapName::parse("bob-tv-x")?, 7, id("u1"), ops);
        assert_eq!(cs.removes(), &[Arc::from("a")]);
        let puts: Vec<_> = cs.puts().iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(puts, ["b", "c"]);
        assert_eq!(cs.puts()[0].1, Entry::value(json!(3)));
        assert_eq!(cs.next_version(), 8);
        Ok(())
    }

    #[test]
    fn wire_form_is_normalized() -> Result<(), serde_json::Error> {
        let cs: ChangeSet = serde_json::from_value(json!({
            "map": "bob-tv-x", "version": 0, "update_id": "u",
            "remove": ["k", "k", "z"],
            "put": [["k", {"value": 1}], ["k", {"value": 2}]]
        }))?;
        assert_eq!(cs.removes(), &[Arc::from("z")]);
        assert_eq!(cs.puts().len(), 1);
        assert_eq!(cs.puts()[0].1, Entry::value(json!(2)));
        let bad = serde_json::from_value::<ChangeSet>(json!({
            "map": "bob-tv-x", "version": 0, "update_id": ""
        }));
        assert!(bad.is_err());
        Ok(())
    }

    #[test]
    fn limits_reject_with_clear_errors() -> Result<(), crate::NameError> {
        let limits = Limits {
            max_key_bytes: 4,
            max_value_bytes: 8,
            max_change_set_bytes: 12,
            max_entries: 10,
        };
        let map = MapName::parse("bob-tv-x")?;
        let one = |k: &str, v: serde_json::Value| {
            ChangeSet::from_ops(
                map.clone(),
                0,
                id("u"),
                [(Arc::from(k), Some(Entry::value(v)))],
            )
        };
        let err = limits.check_change_set(&one("toolong", json!(1)));
        assert!(matches!(
            err,
            Err(LimitError::KeyTooLarge { len: 7, max: 4, .. })
        ));
        let err = limits.check_change_set(&one("k", json!("0123456789")));
        assert!(matches!(
            err,
            Err(LimitError::ValueTooLarge {
                len: 12,
                max: 8,
                ..
            })
        ));
        assert!(matches!(
            limits.check_change_set(&one("", json!(1))),
            Err(LimitError::EmptyKey)
        ));
        let big = ChangeSet::from_ops(
            map.clone(),
            0,
            id("u"),
            (0..4).map(|i| (Arc::from(format!("k{i}")), Some(Entry::value(json!(1000))))),
        );
        let err = limits.check_change_set(&big);
        assert!(matches!(
            err,
            Err(LimitError::ChangeSetTooLarge { len: 24, .. })
        ));
        assert!(limits.check_change_set(&one("k", json!(1))).is_ok());
        Ok(())
    }
}
