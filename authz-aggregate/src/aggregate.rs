//! The aggregate index: every map reachable from a root through `__link_key__`, and for each key
//! its values across all of them, maintained incrementally as map versions arrive.
//!
//! The index is a pure state machine: the shell (the node agent's reader side) feeds it map
//! versions ([`AggregateIndex::update_map`]) or deltas ([`AggregateIndex::apply_change`]) and
//! follows the maps [`AggregateIndex::wanted`] names. Lookups never walk the link graph: the
//! index keeps `key -> values` for the reachable maps in a persistent hash trie, so a pinned
//! [`AggregateSnapshot`] costs a few reference-count bumps and a lookup is one trie probe.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use foldhash::fast::RandomState;
use rpds::HashTrieMapSync;
use sharing_map::{Applied, ApplyError, ChangeSet, Entry, Json, MapName, SharingMap};

/// The reserved key whose value lists the maps a map links to: a JSON array of full map names.
/// Any other value, and any element that is not a valid map name, is ignored.
pub const LINK_KEY: &str = "__link_key__";

/// Why the index could not take a delta.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// A delta arrived for a map the index holds no version of; feed a full version first.
    #[error(
        "no version of map {map} is held by the aggregate rooted at {root}; feed the map's full version before its deltas"
    )]
    UnknownMap {
        /// The aggregate's root.
        root: String,
        /// The map the delta was for.
        map: String,
    },
    /// The delta skips versions: resynchronize the map with a full version.
    #[error(
        "delta for map {map} applies to version {got} but the aggregate holds version {have}; resynchronize it with a full version"
    )]
    Gap {
        /// The map.
        map: String,
        /// The version held.
        have: u64,
        /// The version the delta applies to.
        got: u64,
    },
    /// Applying the delta failed for another reason.
    #[error(transparent)]
    Apply(ApplyError),
}

/// One value of a key in an aggregate, with the map it came from.
#[derive(Clone, PartialEq, Debug)]
pub struct Found {
    map: MapName,
    value: Json,
}

impl Found {
    /// The map holding the value.
    pub fn map(&self) -> &MapName {
        &self.map
    }
    /// The value.
    pub fn value(&self) -> &serde_json::Value {
        self.value.get()
    }
}

/// One value of a key and the link path that brought its map into the aggregate.
#[derive(Clone, PartialEq, Debug)]
pub struct Explanation {
    /// The map holding the value.
    pub map: MapName,
    /// The value.
    pub value: Json,
    /// A shortest chain of links from the root to `map`, both included (`[root]` for the root).
    pub path: Vec<MapName>,
}

/// How one update changed the set of maps in the aggregate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// Maps that became reachable, sorted.
    pub entered: Vec<MapName>,
    /// Maps that stopped being reachable, sorted.
    pub left: Vec<MapName>,
}

impl Update {
    /// Whether the set of maps in the aggregate is unchanged.
    pub fn is_empty(&self) -> bool {
        self.entered.is_empty() && self.left.is_empty()
    }
}

type Maps = HashTrieMapSync<MapName, SharingMap, RandomState>;
type Index = HashTrieMapSync<Arc<str>, Arc<Vec<Found>>, RandomState>;

/// Which maps are reachable, and how.
#[derive(Debug, Default)]
struct Reach {
    /// Every reachable map that exists, with the map it was first reached from (`None`: the root).
    parent: HashMap<MapName, Option<MapName>>,
    /// Linked maps (or the root) that do not exist yet.
    missing: BTreeSet<MapName>,
}

impl Reach {
    /// Breadth-first from the root over existing maps, so every parent chain is a shortest path.
    fn compute(root: &MapName, maps: &Maps, links: &HashMap<MapName, Vec<MapName>>) -> Self {
        let mut reach = Reach::default();
        if !maps.contains_key(root) {
            reach.missing.insert(root.clone());
            return reach;
        }
        reach.parent.insert(root.clone(), None);
        let mut queue = VecDeque::from([root.clone()]);
        while let Some(map) = queue.pop_front() {
            for next in links.get(&map).into_iter().flatten() {
                if reach.parent.contains_key(next) || reach.missing.contains(next) {
                    continue;
                }
                if maps.contains_key(next) {
                    reach.parent.insert(next.clone(), Some(map.clone()));
                    queue.push_back(next.clone());
                } else {
                    reach.missing.insert(next.clone());
                }
            }
        }
        reach
    }
}

/// The maps a map links to: its `__link_key__` array's valid map names, in order, without repeats.
pub fn links_of(map: &SharingMap) -> Vec<MapName> {
    let Some(serde_json::Value::Array(items)) = map.get_value(LINK_KEY) else {
        return Vec::new();
    };
    let mut links: Vec<MapName> = Vec::with_capacity(items.len());
    for item in items {
        if let Some(text) = item.as_str()
            && let Ok(name) = MapName::parse(text)
            && !links.contains(&name)
        {
            links.push(name);
        }
    }
    links
}

/// One consistent view of an aggregate: one version of every map in it, and the key index over
/// exactly those versions. Immutable; cloning it is cheap.
#[derive(Clone)]
pub struct AggregateSnapshot {
    root: MapName,
    maps: Maps,
    reach: Arc<Reach>,
    index: Index,
}

impl AggregateSnapshot {
    /// The root map's name.
    pub fn root(&self) -> &MapName {
        &self.root
    }

    /// The values of `key` in every map of the aggregate that holds data under it, sorted by map
    /// name. Methods are code, not values, and are not returned.
    pub fn get_all(&self, key: &str) -> &[Found] {
        self.index.get(key).map_or(&[], |found| found.as_slice())
    }

    /// Whether any map of the aggregate holds a value under `key`.
    pub fn has_value(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The values of `key`, each with a shortest link path from the root to its map.
    pub fn explain(&self, key: &str) -> Vec<Explanation> {
        self.get_all(key)
            .iter()
            .map(|found| Explanation {
                map: found.map.clone(),
                value: found.value.clone(),
                path: self.path_to(&found.map),
            })
            .collect()
    }

    /// A shortest link path from the root to `map` (both included), or empty when `map` is not
    /// in the aggregate.
    pub fn path_to(&self, map: &MapName) -> Vec<MapName> {
        let mut path = Vec::new();
        let mut at = Some(map);
        while let Some(name) = at {
            let Some(parent) = self.reach.parent.get(name) else {
                return Vec::new();
            };
            path.push(name.clone());
            at = parent.as_ref();
        }
        path.reverse();
        path
    }

    /// The version of every map in the aggregate.
    pub fn version_vector(&self) -> BTreeMap<MapName, u64> {
        self.reach
            .parent
            .keys()
            .filter_map(|name| self.maps.get(name).map(|m| (name.clone(), m.version())))
            .collect()
    }

    /// The maps in the aggregate (reachable from the root and existing).
    pub fn reachable(&self) -> BTreeSet<MapName> {
        self.reach.parent.keys().cloned().collect()
    }

    /// Whether `map` is in the aggregate.
    pub fn contains_map(&self, map: &MapName) -> bool {
        self.reach.parent.contains_key(map)
    }

    /// Maps that are linked (or the root itself) but do not exist yet; they join the aggregate
    /// when they are created.
    pub fn missing(&self) -> &BTreeSet<MapName> {
        &self.reach.missing
    }

    /// The version of `map` in this view, if it is in the aggregate.
    pub fn map(&self, map: &MapName) -> Option<&SharingMap> {
        self.reach
            .parent
            .contains_key(map)
            .then(|| self.maps.get(map))
            .flatten()
    }
}

impl fmt::Debug for AggregateSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateSnapshot")
            .field("root", &self.root)
            .field("versions", &self.version_vector())
            .field("missing", &self.reach.missing)
            .field("keys", &self.index.size())
            .finish()
    }
}

/// The aggregate rooted at one map, maintained incrementally.
///
/// It holds the versions fed to it (reachable or not, so that a map linked later joins without
/// being fetched again; the shell drops what it no longer follows with
/// [`remove_map`](Self::remove_map)). Each update costs the size of the change, plus a
/// breadth-first walk over the reachable maps when links change or a linked map appears or
/// disappears; lookups cost one hash-trie probe. Cloning shares the persistent maps and index.
#[derive(Clone)]
pub struct AggregateIndex {
    view: AggregateSnapshot,
    /// The parsed `__link_key__` of every held map.
    links: HashMap<MapName, Vec<MapName>>,
}

impl AggregateIndex {
    /// An empty aggregate rooted at `root` (which may not exist yet).
    pub fn new(root: MapName) -> Self {
        let mut reach = Reach::default();
        reach.missing.insert(root.clone());
        Self {
            view: AggregateSnapshot {
                root,
                maps: HashTrieMapSync::new_with_hasher_and_ptr_kind(RandomState::default()),
                reach: Arc::new(reach),
                index: HashTrieMapSync::new_with_hasher_and_ptr_kind(RandomState::default()),
            },
            links: HashMap::new(),
        }
    }

    /// Pins the current version of every map in the aggregate. O(1).
    pub fn snapshot(&self) -> AggregateSnapshot {
        self.view.clone()
    }

    /// See [`AggregateSnapshot::root`].
    pub fn root(&self) -> &MapName {
        self.view.root()
    }
    /// See [`AggregateSnapshot::get_all`].
    pub fn get_all(&self, key: &str) -> &[Found] {
        self.view.get_all(key)
    }
    /// See [`AggregateSnapshot::has_value`].
    pub fn has_value(&self, key: &str) -> bool {
        self.view.has_value(key)
    }
    /// See [`AggregateSnapshot::explain`].
    pub fn explain(&self, key: &str) -> Vec<Explanation> {
        self.view.explain(key)
    }
    /// See [`AggregateSnapshot::version_vector`].
    pub fn version_vector(&self) -> BTreeMap<MapName, u64> {
        self.view.version_vector()
    }
    /// See [`AggregateSnapshot::reachable`].
    pub fn reachable(&self) -> BTreeSet<MapName> {
        self.view.reachable()
    }
    /// See [`AggregateSnapshot::missing`].
    pub fn missing(&self) -> &BTreeSet<MapName> {
        self.view.missing()
    }

    /// The maps the shell should follow: those in the aggregate and those linked but missing.
    pub fn wanted(&self) -> BTreeSet<MapName> {
        let mut wanted = self.view.reachable();
        wanted.extend(self.view.reach.missing.iter().cloned());
        wanted
    }

    /// The version held of `map`, reachable or not.
    pub fn held(&self, map: &MapName) -> Option<&SharingMap> {
        self.view.maps.get(map)
    }

    /// Takes a full version of a map (a new map, or a resynchronization). A version older than
    /// the one held is ignored. Costs the size of the map when it is in the aggregate (entries are
    /// compared with the held version; unchanged values are skipped by pointer).
    pub fn update_map(&mut self, map: SharingMap) -> Update {
        let name = map.name().clone();
        let old = self.view.maps.get(&name).cloned();
        if old
            .as_ref()
            .is_some_and(|old| map.version() < old.version())
        {
            return Update::default();
        }
        let in_aggregate = self.view.reach.parent.contains_key(&name);
        if in_aggregate && let Some(old) = &old {
            self.index_diff(old, &map);
        }
        let new_links = links_of(&map);
        let links_changed = self.links.get(&name) != Some(&new_links);
        let was_missing = self.view.reach.missing.contains(&name);
        self.view.maps.insert_mut(name.clone(), map);
        self.links.insert(name, new_links);
        if was_missing || (in_aggregate && links_changed) {
            self.recompute_reach()
        } else {
            Update::default()
        }
    }

    /// Applies one delta to the held version of its map, in O(size of the change) (plus a walk
    /// over the reachable maps when it changes `__link_key__`). A delta the held version already
    /// includes is ignored; one that skips versions is [`AggregateError::Gap`].
    pub fn apply_change(&mut self, cs: &ChangeSet) -> Result<Update, AggregateError> {
        let name = cs.map().clone();
        let Some(old) = self.view.maps.get(&name) else {
            return Err(AggregateError::UnknownMap {
                root: self.view.root.to_string(),
                map: name.to_string(),
            });
        };
        let next = match old.apply(cs) {
            Ok(Applied::New(next)) => next,
            Ok(Applied::Duplicate { .. }) | Err(ApplyError::Conflict { .. }) => {
                return Ok(Update::default());
            }
            Err(ApplyError::Gap {
                map, current, got, ..
            }) => {
                return Err(AggregateError::Gap {
                    map,
                    have: current,
                    got,
                });
            }
            Err(e) => return Err(AggregateError::Apply(e)),
        };
        if self.view.reach.parent.contains_key(&name) {
            for key in cs.removes() {
                self.index_unset(&name, key);
            }
            for (key, entry) in cs.puts() {
                self.index_set(&name, key, entry);
            }
        }
        let touches_links = cs.removes().iter().any(|k| &**k == LINK_KEY)
            || cs.puts().iter().any(|(k, _)| &**k == LINK_KEY);
        let new_links = touches_links.then(|| links_of(&next));
        self.view.maps.insert_mut(name.clone(), next);
        match new_links {
            Some(links) if self.links.get(&name) != Some(&links) => {
                self.links.insert(name.clone(), links);
                if self.view.reach.parent.contains_key(&name) {
                    return Ok(self.recompute_reach());
                }
                Ok(Update::default())
            }
            _ => Ok(Update::default()),
        }
    }

    /// Forgets a map (it was deleted, or the shell stopped following it). If it is linked it
    /// becomes missing and joins again when a version of it is fed.
    pub fn remove_map(&mut self, name: &MapName) -> Update {
        let Some(old) = self.view.maps.get(name).cloned() else {
            return Update::default();
        };
        let in_aggregate = self.view.reach.parent.contains_key(name);
        if in_aggregate {
            self.index_remove_all(&old);
        }
        self.view.maps.remove_mut(name);
        self.links.remove(name);
        if in_aggregate {
            self.recompute_reach()
        } else {
            Update::default()
        }
    }

    fn recompute_reach(&mut self) -> Update {
        let reach = Reach::compute(&self.view.root, &self.view.maps, &self.links);
        let old = Arc::clone(&self.view.reach);
        let mut update = Update::default();
        for name in old.parent.keys() {
            if !reach.parent.contains_key(name) {
                update.left.push(name.clone());
                // A map removed from the store has had its entries unindexed already.
                if let Some(map) = self.view.maps.get(name).cloned() {
                    self.index_remove_all(&map);
                }
            }
        }
        for name in reach.parent.keys() {
            if !old.parent.contains_key(name) {
                update.entered.push(name.clone());
                if let Some(map) = self.view.maps.get(name).cloned() {
                    self.index_add_all(&map);
                }
            }
        }
        update.left.sort_unstable();
        update.entered.sort_unstable();
        self.view.reach = Arc::new(reach);
        update
    }

    fn index_add_all(&mut self, map: &SharingMap) {
        for (key, entry) in map.iter() {
            self.index_set(map.name(), key, entry);
        }
    }

    fn index_remove_all(&mut self, map: &SharingMap) {
        for (key, _) in map.iter() {
            self.index_unset(map.name(), key);
        }
    }

    fn index_diff(&mut self, old: &SharingMap, new: &SharingMap) {
        for (key, entry) in new.iter() {
            match (old.get(key), entry) {
                (Some(Entry::Value(a)), Entry::Value(b)) if a == b => {}
                (Some(Entry::Method(a)), Entry::Method(b)) if Arc::ptr_eq(a, b) => {}
                _ => self.index_set(new.name(), key, entry),
            }
        }
        for (key, _) in old.iter() {
            if !new.contains_key(key) {
                self.index_unset(old.name(), key);
            }
        }
    }

    fn index_set(&mut self, map: &MapName, key: &Arc<str>, entry: &Entry) {
        let Entry::Value(value) = entry else {
            // A key holds data or a method; a method replacing data removes the value.
            self.index_unset(map, key);
            return;
        };
        let mut found: Vec<Found> = self
            .view
            .index
            .get(&**key)
            .map(|f| f.as_ref().clone())
            .unwrap_or_default();
        let item = Found {
            map: map.clone(),
            value: value.clone(),
        };
        match found.binary_search_by(|f| f.map.cmp(map)) {
            Ok(at) => found[at] = item,
            Err(at) => found.insert(at, item),
        }
        self.view.index.insert_mut(key.clone(), Arc::new(found));
    }

    fn index_unset(&mut self, map: &MapName, key: &Arc<str>) {
        let Some(found) = self.view.index.get(&**key) else {
            return;
        };
        let Ok(at) = found.binary_search_by(|f| f.map.cmp(map)) else {
            return;
        };
        if found.len() == 1 {
            self.view.index.remove_mut(&**key);
        } else {
            let mut found = found.as_ref().clone();
            found.remove(at);
            self.view.index.insert_mut(key.clone(), Arc::new(found));
        }
    }
}

impl fmt::Debug for AggregateIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateIndex")
            .field("view", &self.view)
            .field("held", &self.view.maps.size())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sharing_map::UpdateId;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn name(s: &str) -> MapName {
        MapName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn map(n: &str, entries: &[(&str, serde_json::Value)]) -> SharingMap {
        SharingMap::with_entries(
            name(n),
            entries
                .iter()
                .map(|(k, v)| (Arc::from(*k), Entry::value(v.clone()))),
        )
    }

    fn values(found: &[Found]) -> Vec<(String, serde_json::Value)> {
        found
            .iter()
            .map(|f| (f.map().to_string(), f.value().clone()))
            .collect()
    }

    fn delta(m: &SharingMap, ops: Vec<(&str, Option<Entry>)>) -> ChangeSet {
        ChangeSet::from_ops(
            m.name().clone(),
            m.version(),
            UpdateId::parse(&format!("u{}", m.version())).unwrap_or_else(|e| panic!("{e}")),
            ops.into_iter().map(|(k, e)| (Arc::from(k), e)),
        )
    }

    #[test]
    fn values_come_from_every_reachable_map_and_cycles_terminate() {
        let mut agg = AggregateIndex::new(name("acme-admin-roles"));
        agg.update_map(map(
            "acme-admin-roles",
            &[
                ("bob", json!("admin")),
                (LINK_KEY, json!(["acme-shop-roles", "nope", 3])),
            ],
        ));
        agg.update_map(map(
            "acme-shop-roles",
            &[
                ("bob", json!("clerk")),
                (LINK_KEY, json!(["acme-admin-roles", "acme-shop-roles"])),
            ],
        ));
        agg.update_map(map("acme-other-roles", &[("bob", json!("x"))]));
        assert_eq!(
            values(agg.get_all("bob")),
            [
                ("acme-admin-roles".into(), json!("admin")),
                ("acme-shop-roles".into(), json!("clerk")),
            ]
        );
        let explained = agg.explain("bob");
        assert_eq!(
            explained[1].path,
            [name("acme-admin-roles"), name("acme-shop-roles")]
        );
        assert_eq!(agg.version_vector().len(), 2);
        assert!(agg.missing().is_empty());
    }

    #[test]
    fn missing_maps_join_when_created_and_leave_when_unlinked() -> TestResult {
        let mut agg = AggregateIndex::new(name("acme-admin-roles"));
        assert_eq!(agg.missing().iter().next(), Some(&name("acme-admin-roles")));
        let root = map(
            "acme-admin-roles",
            &[(LINK_KEY, json!(["acme-late-roles"]))],
        );
        let up = agg.update_map(root.clone());
        assert_eq!(up.entered, [name("acme-admin-roles")]);
        assert!(agg.missing().contains(&name("acme-late-roles")));
        assert!(agg.get_all("carol").is_empty());

        let up = agg.update_map(map("acme-late-roles", &[("carol", json!(1))]));
        assert_eq!(up.entered, [name("acme-late-roles")]);
        assert_eq!(agg.get_all("carol").len(), 1);

        let before = agg.snapshot();
        let up = agg.apply_change(&delta(&root, vec![(LINK_KEY, None)]))?;
        assert_eq!(up.left, [name("acme-late-roles")]);
        assert!(agg.get_all("carol").is_empty());
        // The pinned view is unchanged.
        assert_eq!(before.get_all("carol").len(), 1);
        assert_eq!(before.version_vector()[&name("acme-admin-roles")], 0);
        assert_eq!(agg.version_vector()[&name("acme-admin-roles")], 1);
        Ok(())
    }

    #[test]
    fn deltas_update_the_index_in_place() -> TestResult {
        let mut agg = AggregateIndex::new(name("acme-admin-roles"));
        let root = map("acme-admin-roles", &[("a", json!(1)), ("b", json!(2))]);
        agg.update_map(root.clone());
        let cs = delta(
            &root,
            vec![
                ("a", None),
                ("b", Some(Entry::method(vec![], "1"))),
                ("c", Some(Entry::value(json!(3)))),
            ],
        );
        agg.apply_change(&cs)?;
        assert!(agg.get_all("a").is_empty());
        assert!(agg.get_all("b").is_empty(), "methods are not values");
        assert_eq!(agg.get_all("c")[0].value(), &json!(3));
        // Replayed and skipping deltas.
        assert!(agg.apply_change(&cs)?.is_empty());
        let skip = ChangeSet::from_ops(root.name().clone(), 7, UpdateId::parse("z")?, []);
        assert!(matches!(
            agg.apply_change(&skip),
            Err(AggregateError::Gap {
                have: 1,
                got: 7,
                ..
            })
        ));
        let other = ChangeSet::from_ops(name("bob-tv-x"), 0, UpdateId::parse("z")?, []);
        assert!(matches!(
            agg.apply_change(&other),
            Err(AggregateError::UnknownMap { .. })
        ));
        Ok(())
    }

    #[test]
    fn removing_a_linked_map_makes_it_missing() {
        let mut agg = AggregateIndex::new(name("acme-admin-roles"));
        agg.update_map(map(
            "acme-admin-roles",
            &[(LINK_KEY, json!(["acme-shop-roles"]))],
        ));
        agg.update_map(map("acme-shop-roles", &[("bob", json!(1))]));
        let up = agg.remove_map(&name("acme-shop-roles"));
        assert_eq!(up.left, [name("acme-shop-roles")]);
        assert!(agg.get_all("bob").is_empty());
        assert!(agg.wanted().contains(&name("acme-shop-roles")));
        assert!(agg.missing().contains(&name("acme-shop-roles")));
    }

    #[test]
    fn links_that_are_not_arrays_of_names_are_ignored() {
        let mut agg = AggregateIndex::new(name("acme-admin-roles"));
        agg.update_map(map("acme-shop-roles", &[("bob", json!(1))]));
        for bad in [
            json!("acme-shop-roles"),
            json!({"a": "acme-shop-roles"}),
            json!([["acme-shop-roles"]]),
        ] {
            agg.update_map(map("acme-admin-roles", &[(LINK_KEY, bad)]));
            assert!(agg.get_all("bob").is_empty());
        }
    }
}
