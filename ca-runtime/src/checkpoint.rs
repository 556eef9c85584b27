//! A CA's checkpoint: its private state map in the Spine (DESIGN.md §9.2), decoded.
//!
//! CA `alice-phone` of an app keeps its checkpoint in map `alice-phone-castate` of that app,
//! written only by its host (the Spine reserves the `castate` map name for hosts and admins).
//! Entries:
//! - `m`: the [`Meta`] (state version of the app code that wrote it, checkpoint count);
//! - `s.<key>`: one entry per top-level key of the CA's state object, so a checkpoint carries
//!   only the keys that changed (a delta);
//! - `i.<intent key>`: a pending [`Intent`], removed by a later checkpoint once carried out;
//! - `p.<plugin>`: the state of a turn plugin (sessions, timers, ...).
//!
//! Everything here is pure: decoding a map, and the operations that turn one checkpoint into the
//! next.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sharing_map::{CaName, Entry, MapName, SharingMap};

use crate::CaError;

/// The local map name every CA's private state map has (reserved by the Spine).
pub const STATE_MAP: &str = sharing_map::PRIVATE_STATE_MAP;
const META_KEY: &str = "m";
const STATE_PREFIX: &str = "s.";
const INTENT_PREFIX: &str = "i.";
const PLUGIN_PREFIX: &str = "p.";

/// The private state map of `ca`.
pub fn state_map_name(ca: &CaName) -> Result<MapName, CaError> {
    MapName::parse(&format!("{ca}-{STATE_MAP}"))
        .map_err(|e| CaError::invalid(format!("CA {ca} has no valid state map name: {e}")))
}

/// What the runtime records about the checkpoint itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The state version (semver) of the app code that wrote this checkpoint.
    pub state_version: semver::Version,
    /// The version of the app's code map the CA last ran (scripted apps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_version: Option<u64>,
    /// How many checkpoints this CA has had; it changes with every checkpoint, so the state map's
    /// compare-and-swap fences every checkpoint, even one that changes no state key.
    pub checkpoints: u64,
}

/// An effect a turn decided, carried out by a plugin only after the turn's checkpoint committed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// `app/ca/version/index`: the checkpoint version that recorded it and its index there.
    /// Plugins make a redo harmless with it (an idempotency key).
    pub key: String,
    /// The plugin that carries it out.
    pub plugin: String,
    /// What to do, for the plugin.
    pub payload: Value,
    /// Failed attempts so far.
    #[serde(default)]
    pub failures: u32,
    /// Given up after too many failures; kept for admins to see, never retried.
    #[serde(default)]
    pub parked: bool,
}

/// A decoded checkpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CaState {
    /// Absent until the CA's first turn (`__ca_init__`) committed.
    pub meta: Option<Meta>,
    /// The CA's state object.
    pub state: serde_json::Map<String, Value>,
    /// Pending and parked intents, by key.
    pub intents: BTreeMap<String, Intent>,
    /// Turn plugins' states, by plugin name (`Null` is not stored).
    pub plugins: BTreeMap<String, Value>,
}

/// A state map that is not a checkpoint.
#[derive(Debug, thiserror::Error)]
#[error("map {map} is not a CA checkpoint: {reason}")]
pub struct CheckpointError {
    map: String,
    reason: String,
}

impl CaState {
    /// Decodes a state map.
    pub fn decode(map: &SharingMap) -> Result<Self, CheckpointError> {
        let bad = |reason: String| CheckpointError {
            map: map.name().to_string(),
            reason,
        };
        let mut out = CaState::default();
        for (key, entry) in map.iter() {
            let value = entry
                .as_value()
                .ok_or_else(|| bad(format!("key {key:?} holds a method")))?;
            if &**key == META_KEY {
                let meta = serde_json::from_value(value.clone())
                    .map_err(|e| bad(format!("bad meta entry: {e}")))?;
                out.meta = Some(meta);
            } else if let Some(k) = key.strip_prefix(STATE_PREFIX) {
                out.state.insert(k.to_string(), value.clone());
            } else if let Some(k) = key.strip_prefix(PLUGIN_PREFIX) {
                out.plugins.insert(k.to_string(), value.clone());
            } else if let Some(k) = key.strip_prefix(INTENT_PREFIX) {
                let intent: Intent = serde_json::from_value(value.clone())
                    .map_err(|e| bad(format!("bad intent {k:?}: {e}")))?;
                out.intents.insert(k.to_string(), intent);
            } else {
                return Err(bad(format!("unknown key {key:?}")));
            }
        }
        Ok(out)
    }

    /// The map operations that turn `self` into `next`, in key order: `(key, None)` removes.
    pub fn ops_to(&self, next: &CaState) -> Vec<(Arc<str>, Option<Entry>)> {
        let mut ops = Vec::new();
        if self.meta != next.meta {
            let entry = next
                .meta
                .as_ref()
                .and_then(|m| serde_json::to_value(m).ok());
            ops.push((Arc::from(META_KEY), entry.map(Entry::value)));
        }
        diff(
            &mut ops,
            STATE_PREFIX,
            self.state.iter().map(|(k, v)| (k.as_str(), v.clone())),
            next.state.iter().map(|(k, v)| (k.as_str(), v.clone())),
        );
        diff(
            &mut ops,
            PLUGIN_PREFIX,
            plugin_entries(self).into_iter(),
            plugin_entries(next).into_iter(),
        );
        let intents = |s: &CaState| {
            s.intents
                .iter()
                .filter_map(|(k, i)| Some((k.clone(), serde_json::to_value(i).ok()?)))
                .collect::<Vec<_>>()
        };
        let (old, new) = (intents(self), intents(next));
        diff(
            &mut ops,
            INTENT_PREFIX,
            old.iter().map(|(k, v)| (k.as_str(), v.clone())),
            new.iter().map(|(k, v)| (k.as_str(), v.clone())),
        );
        ops
    }

    /// The size of the state object as compact JSON, the unit its limit is stated in.
    pub fn state_bytes(&self) -> usize {
        self.state
            .iter()
            .map(|(k, v)| k.len() + sharing_map::Json::new(v.clone()).encoded_len())
            .sum()
    }

    /// The intents still to carry out (not parked), in key order.
    pub fn pending_intents(&self) -> impl Iterator<Item = &Intent> {
        self.intents.values().filter(|i| !i.parked)
    }
}

/// The plugin states worth storing (not `Null`).
fn plugin_entries(s: &CaState) -> Vec<(&str, Value)> {
    s.plugins
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect()
}

/// Appends the operations turning the sorted `old` entries into the sorted `new` ones.
fn diff<'a>(
    ops: &mut Vec<(Arc<str>, Option<Entry>)>,
    prefix: &str,
    old: impl Iterator<Item = (&'a str, Value)>,
    new: impl Iterator<Item = (&'a str, Value)>,
) {
    let old: BTreeMap<&str, Value> = old.collect();
    let new: BTreeMap<&str, Value> = new.collect();
    for (k, v) in &new {
        if old.get(k) != Some(v) {
            ops.push((
                Arc::from(format!("{prefix}{k}")),
                Some(Entry::value(v.clone())),
            ));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            ops.push((Arc::from(format!("{prefix}{k}")), None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sharing_map::{ChangeSet, UpdateId};

    fn apply(map: &SharingMap, ops: Vec<(Arc<str>, Option<Entry>)>) -> SharingMap {
        let id = UpdateId::parse(&format!("t{}", map.version())).expect("id");
        let cs = ChangeSet::from_ops(map.name().clone(), map.version(), id, ops);
        match map.apply(&cs).expect("applies") {
            sharing_map::Applied::New(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_checkpoint_round_trips_through_its_map_and_carries_only_what_changed() {
        let name = state_map_name(&CaName::parse("alice-phone").expect("ca")).expect("map");
        assert_eq!(name.as_str(), "alice-phone-castate");
        let empty = SharingMap::new(name);
        let mut one = CaState {
            meta: Some(Meta {
                state_version: semver::Version::new(0, 1, 0),
                code_version: None,
                checkpoints: 1,
            }),
            ..CaState::default()
        };
        one.state.insert("count".into(), json!(1));
        one.state.insert("items".into(), json!(["a", "b"]));
        one.intents.insert(
            "k/1".into(),
            Intent {
                key: "k/1".into(),
                plugin: "log".into(),
                payload: json!("x"),
                failures: 0,
                parked: false,
            },
        );
        let ops = CaState::default().ops_to(&one);
        assert_eq!(ops.len(), 4, "{ops:?}");
        let map = apply(&empty, ops);
        assert_eq!(CaState::decode(&map).expect("decodes"), one);

        let mut two = one.clone();
        two.state.insert("count".into(), json!(2));
        two.intents.clear();
        if let Some(m) = two.meta.as_mut() {
            m.checkpoints = 2;
        }
        let ops = one.ops_to(&two);
        let keys: Vec<_> = ops
            .iter()
            .map(|(k, op)| (k.to_string(), op.is_some()))
            .collect();
        assert_eq!(
            keys,
            [
                ("m".to_string(), true),
                ("s.count".to_string(), true),
                ("i.k/1".to_string(), false)
            ]
        );
        let map = apply(&map, ops);
        assert_eq!(CaState::decode(&map).expect("decodes"), two);
        assert!(two.ops_to(&two).is_empty());
    }

    #[test]
    fn a_map_that_is_not_a_checkpoint_is_refused() {
        let map = SharingMap::new(MapName::parse("alice-phone-castate").expect("map"));
        let map = apply(
            &map,
            vec![(Arc::from("other"), Some(Entry::value(json!(1))))],
        );
        let e = CaState::decode(&map).expect_err("refused");
        assert!(e.to_string().contains("unknown key \"other\""), "{e}");
    }
}
