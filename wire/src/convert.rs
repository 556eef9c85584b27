//! Conversions between wire messages and sharing-map's domain types.
//!
//! Every conversion from the wire validates what it reads and says which field was wrong.

use std::sync::Arc;

use sharing_map::{ChangeSet, Entry, MapDump, MapName, UpdateId};
use spine_proto::v1 as pb;

/// A wire message could not be turned into a domain value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    /// A name broke the naming rules.
    #[error(transparent)]
    Name(#[from] sharing_map::NameError),
    /// A key, value or update id broke a limit.
    #[error(transparent)]
    Limit(#[from] sharing_map::LimitError),
    /// A field is missing or malformed.
    #[error("malformed {field}: {reason}")]
    Malformed {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn malformed(field: impl Into<String>, reason: impl Into<String>) -> ConvertError {
    ConvertError::Malformed {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An entry to the wire.
pub fn entry_to_pb(entry: &Entry) -> pb::Entry {
    let kind = match entry {
        Entry::Value(v) => pb::entry::Kind::Json(v.get().to_string()),
        Entry::Method(m) => pb::entry::Kind::Method(pb::Method {
            args: m.args.clone(),
            body: m.body.clone(),
        }),
    };
    pb::Entry { kind: Some(kind) }
}

/// An entry from the wire; `key` names it in errors.
pub fn entry_from_pb(key: &str, entry: Option<pb::Entry>) -> Result<Entry, ConvertError> {
    match entry.and_then(|e| e.kind) {
        None => Err(malformed(
            format!("entry of key {key:?}"),
            "neither a JSON value nor a method",
        )),
        Some(pb::entry::Kind::Json(text)) => serde_json::from_str(&text)
            .map(Entry::value)
            .map_err(|e| malformed(format!("JSON value of key {key:?}"), e.to_string())),
        Some(pb::entry::Kind::Method(m)) => Ok(Entry::method(m.args, m.body)),
    }
}

/// Key/entry pairs to the wire.
pub fn entries_to_pb<'a>(
    entries: impl IntoIterator<Item = (&'a Arc<str>, &'a Entry)>,
) -> Vec<pb::KeyEntry> {
    entries
        .into_iter()
        .map(|(k, e)| pb::KeyEntry {
            key: k.to_string(),
            entry: Some(entry_to_pb(e)),
        })
        .collect()
}

/// Key/entry pairs from the wire.
pub fn entries_from_pb(entries: Vec<pb::KeyEntry>) -> Result<Vec<(Arc<str>, Entry)>, ConvertError> {
    entries
        .into_iter()
        .map(|ke| {
            let entry = entry_from_pb(&ke.key, ke.entry)?;
            Ok((Arc::from(ke.key), entry))
        })
        .collect()
}

/// A change set to the wire.
pub fn change_set_to_pb(cs: &ChangeSet) -> pb::ChangeSet {
    pb::ChangeSet {
        map: cs.map().to_string(),
        version: cs.version(),
        update_id: cs.update_id().to_string(),
        remove: cs.removes().iter().map(|k| k.to_string()).collect(),
        put: entries_to_pb(cs.puts().iter().map(|(k, e)| (k, e))),
    }
}

/// A change set from the wire, normalized (removes first, then puts in order; last op wins).
pub fn change_set_from_pb(cs: pb::ChangeSet) -> Result<ChangeSet, ConvertError> {
    let map = MapName::parse(&cs.map)?;
    let update_id = UpdateId::parse(&cs.update_id)?;
    let puts = entries_from_pb(cs.put)?;
    let ops = cs
        .remove
        .into_iter()
        .map(|k| (Arc::from(k), None))
        .chain(puts.into_iter().map(|(k, e)| (k, Some(e))));
    Ok(ChangeSet::from_ops(map, cs.version, update_id, ops))
}

/// A map dump to the wire.
pub fn dump_to_pb(dump: &MapDump) -> pb::MapSnapshot {
    pb::MapSnapshot {
        map: dump.name.to_string(),
        version: dump.version,
        last_update_id: dump
            .last_update_id
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_default(),
        entries: entries_to_pb(dump.entries.iter().map(|(k, e)| (k, e))),
    }
}

/// A map dump from the wire.
pub fn dump_from_pb(snap: pb::MapSnapshot) -> Result<MapDump, ConvertError> {
    Ok(MapDump {
        name: MapName::parse(&snap.map)?,
        version: snap.version,
        last_update_id: if snap.last_update_id.is_empty() {
            None
        } else {
            Some(UpdateId::parse(&snap.last_update_id)?)
        },
        entries: entries_from_pb(snap.entries)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn change_sets_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let cs = ChangeSet::from_ops(
            MapName::parse("bob-tv-x")?,
            4,
            UpdateId::parse("u4")?,
            [
                (Arc::from("a"), Some(Entry::value(json!({"n": [1, "x"]})))),
                (Arc::from("b"), None),
                (
                    Arc::from("m"),
                    Some(Entry::method(vec!["q".into()], "q + 1")),
                ),
            ],
        );
        assert_eq!(change_set_from_pb(change_set_to_pb(&cs))?, cs);
        Ok(())
    }

    #[test]
    fn malformed_input_names_the_field() {
        let bad_json = pb::ChangeSet {
            map: "bob-tv-x".into(),
            version: 0,
            update_id: "u".into(),
            remove: vec![],
            put: vec![pb::KeyEntry {
                key: "k".into(),
                entry: Some(pb::Entry {
                    kind: Some(pb::entry::Kind::Json("{nope".into())),
                }),
            }],
        };
        let err = change_set_from_pb(bad_json).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("JSON value of key \"k\"")));
        let bad_name = pb::ChangeSet {
            map: "Bob".into(),
            ..Default::default()
        };
        assert!(matches!(
            change_set_from_pb(bad_name),
            Err(ConvertError::Name(_))
        ));
        let missing = entry_from_pb("k", Some(pb::Entry { kind: None }));
        assert!(matches!(missing, Err(ConvertError::Malformed { .. })));
    }
}
