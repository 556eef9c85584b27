//! Model-based property test of the aggregate index: random link edits (cycles, links to maps
//! that appear later, junk links, removals), grants and revocations, fed as full versions or as
//! deltas, against a naive recursive closure over plain `BTreeMap`s. After every operation
//! `get_all` equals the model for every key, the reachable set, missing set and version vector
//! agree, every explanation is a shortest link path, and snapshots pinned earlier still show
//! exactly what the model showed when they were taken.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use authz_aggregate::{AggregateIndex, AggregateSnapshot, LINK_KEY};
use proptest::prelude::*;
use serde_json::{Value, json};
use sharing_map::{Applied, ChangeSet, Entry, MapName, SharingMap, UpdateId};

const MAPS: usize = 6;
const KEYS: [&str; 5] = ["alice", "bob", "carol", "alice-phone", LINK_KEY];
/// A valid map name that never exists: links to it stay missing.
const NEVER: &str = "acme-zz-roles";

fn map_name(i: usize) -> String {
    format!("acme-m{i}-roles")
}

#[derive(Clone, Debug)]
enum Op {
    /// Sets map `from`'s links (optionally with junk elements around them).
    Link {
        from: usize,
        to: Vec<usize>,
        junk: bool,
        delta: bool,
    },
    /// Sets a `__link_key__` that is not an array: ignored.
    BadLinks {
        from: usize,
        delta: bool,
    },
    /// Removes `__link_key__`.
    Unlink {
        from: usize,
        delta: bool,
    },
    Grant {
        map: usize,
        key: usize,
        value: u8,
        delta: bool,
    },
    Revoke {
        map: usize,
        key: usize,
        delta: bool,
    },
    /// A method under a key: not a value.
    Method {
        map: usize,
        key: usize,
        delta: bool,
    },
    Create {
        map: usize,
    },
    Delete {
        map: usize,
    },
    /// Feeds the held version again (a resynchronization that changes nothing).
    Resync {
        map: usize,
    },
    Pin,
}

fn op() -> impl Strategy<Value = Op> {
    let m = 0..MAPS;
    let k = 0..KEYS.len() - 1;
    prop_oneof![
        4 => (m.clone(), prop::collection::vec(0..MAPS, 0..4), any::<bool>(), any::<bool>())
            .prop_map(|(from, to, junk, delta)| Op::Link { from, to, junk, delta }),
        1 => (m.clone(), any::<bool>()).prop_map(|(from, delta)| Op::BadLinks { from, delta }),
        1 => (m.clone(), any::<bool>()).prop_map(|(from, delta)| Op::Unlink { from, delta }),
        4 => (m.clone(), k.clone(), 0u8..4, any::<bool>())
            .prop_map(|(map, key, value, delta)| Op::Grant { map, key, value, delta }),
        2 => (m.clone(), k.clone(), any::<bool>()).prop_map(|(map, key, delta)| Op::Revoke { map, key, delta }),
        1 => (m.clone(), k, any::<bool>()).prop_map(|(map, key, delta)| Op::Method { map, key, delta }),
        2 => m.clone().prop_map(|map| Op::Create { map }),
        1 => m.clone().prop_map(|map| Op::Delete { map }),
        1 => m.prop_map(|map| Op::Resync { map }),
        1 => Just(Op::Pin),
    ]
}

/// The model of one map: its version and its entries (`None` stands for a method).
#[derive(Clone, Debug, Default)]
struct ModelMap {
    version: u64,
    entries: BTreeMap<String, Option<Value>>,
}

type Model = BTreeMap<String, ModelMap>;

fn model_links(map: &ModelMap) -> Vec<String> {
    let Some(Some(Value::Array(items))) = map.entries.get(LINK_KEY) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(Value::as_str)
        .filter(|s| *s == NEVER || (0..MAPS).any(|i| map_name(i) == *s))
        .map(str::to_string)
        .collect()
}

/// Naive recursive closure from the root over existing maps.
fn closure(model: &Model) -> BTreeSet<String> {
    fn visit(name: &str, model: &Model, seen: &mut BTreeSet<String>) {
        let Some(map) = model.get(name) else { return };
        if !seen.insert(name.to_string()) {
            return;
        }
        for next in model_links(map) {
            visit(&next, model, seen);
        }
    }
    let mut seen = BTreeSet::new();
    visit(&map_name(0), model, &mut seen);
    seen
}

fn model_missing(model: &Model) -> BTreeSet<String> {
    let mut missing = BTreeSet::new();
    if !model.contains_key(&map_name(0)) {
        missing.insert(map_name(0));
    }
    for name in closure(model) {
        for next in model_links(&model[&name]) {
            if !model.contains_key(&next) {
                missing.insert(next);
            }
        }
    }
    missing
}

fn model_get_all(model: &Model, key: &str) -> Vec<(String, Value)> {
    closure(model)
        .into_iter()
        .filter_map(|name| match model[&name].entries.get(key) {
            Some(Some(v)) => Some((name, v.clone())),
            _ => None,
        })
        .collect()
}

fn model_versions(model: &Model) -> BTreeMap<String, u64> {
    closure(model)
        .into_iter()
        .map(|name| {
            let v = model[&name].version;
            (name, v)
        })
        .collect()
}

/// Link distance from the root to every reachable map.
fn distances(model: &Model) -> BTreeMap<String, usize> {
    let mut dist = BTreeMap::new();
    if !model.contains_key(&map_name(0)) {
        return dist;
    }
    dist.insert(map_name(0), 0);
    let mut queue = VecDeque::from([map_name(0)]);
    while let Some(name) = queue.pop_front() {
        let d = dist[&name];
        for next in model_links(&model[&name]) {
            if model.contains_key(&next) && !dist.contains_key(&next) {
                dist.insert(next.clone(), d + 1);
                queue.push_back(next);
            }
        }
    }
    dist
}

fn observed(view: &AggregateSnapshot, key: &str) -> Vec<(String, Value)> {
    view.get_all(key)
        .iter()
        .map(|f| (f.map().to_string(), f.value().clone()))
        .collect()
}

fn check(agg: &AggregateIndex, model: &Model) -> Result<(), TestCaseError> {
    let view = agg.snapshot();
    for key in KEYS {
        prop_assert_eq!(
            observed(&view, key),
            model_get_all(model, key),
            "key {}",
            key
        );
        prop_assert_eq!(agg.has_value(key), !model_get_all(model, key).is_empty());
    }
    let reachable: BTreeSet<String> = agg.reachable().iter().map(|n| n.to_string()).collect();
    prop_assert_eq!(reachable, closure(model));
    let missing: BTreeSet<String> = agg.missing().iter().map(|n| n.to_string()).collect();
    prop_assert_eq!(missing, model_missing(model));
    let versions: BTreeMap<String, u64> = agg
        .version_vector()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    prop_assert_eq!(versions, model_versions(model));
    let dist = distances(model);
    for key in KEYS {
        for e in agg.explain(key) {
            let path: Vec<String> = e.path.iter().map(|n| n.to_string()).collect();
            prop_assert_eq!(path.first(), Some(&map_name(0)));
            prop_assert_eq!(path.last(), Some(&e.map.to_string()));
            prop_assert_eq!(
                path.len(),
                dist[&e.map.to_string()] + 1,
                "not shortest: {:?}",
                path
            );
            for hop in path.windows(2) {
                prop_assert!(model_links(&model[&hop[0]]).contains(&hop[1]), "{:?}", path);
            }
        }
    }
    Ok(())
}

fn name(i: usize) -> MapName {
    MapName::parse(&map_name(i)).unwrap_or_else(|e| panic!("{e}"))
}

/// Applies one write to map `i`: to the model, to the writer's master copy, and to the index
/// (as a delta or as the full new version). A write to a map that does not exist creates it.
fn write(
    i: usize,
    key: &str,
    entry: Option<Entry>,
    delta: bool,
    masters: &mut BTreeMap<usize, SharingMap>,
    model: &mut Model,
    agg: &mut AggregateIndex,
) -> Result<(), TestCaseError> {
    let as_model = entry.as_ref().map(|e| e.as_value().cloned());
    match masters.get(&i).cloned() {
        None => {
            let created =
                SharingMap::with_entries(name(i), entry.into_iter().map(|e| (Arc::from(key), e)));
            let mut m = ModelMap::default();
            if let Some(v) = as_model {
                m.entries.insert(key.to_string(), v);
            }
            model.insert(map_name(i), m);
            masters.insert(i, created.clone());
            agg.update_map(created);
        }
        Some(master) => {
            let update = UpdateId::parse(&format!("u{}", master.version()))
                .unwrap_or_else(|e| panic!("{e}"));
            let cs =
                ChangeSet::from_ops(name(i), master.version(), update, [(Arc::from(key), entry)]);
            let Ok(Applied::New(next)) = master.apply(&cs) else {
                return Err(TestCaseError::fail("master rejected its own delta"));
            };
            let m = model.entry(map_name(i)).or_default();
            m.version += 1;
            match as_model {
                Some(v) => m.entries.insert(key.to_string(), v),
                None => m.entries.remove(key),
            };
            masters.insert(i, next.clone());
            if delta {
                agg.apply_change(&cs)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            } else {
                agg.update_map(next);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn get_all_equals_the_naive_closure(ops in prop::collection::vec(op(), 1..60)) {
        let mut agg = AggregateIndex::new(name(0));
        let mut masters: BTreeMap<usize, SharingMap> = BTreeMap::new();
        let mut model = Model::new();
        let mut pinned: Vec<(AggregateSnapshot, Model)> = Vec::new();
        check(&agg, &model)?;
        for op in ops {
            match op {
                Op::Link { from, to, junk, delta } => {
                    let mut links: Vec<Value> = to.iter().map(|&j| json!(map_name(j))).collect();
                    if junk {
                        links.insert(0, json!(7));
                        links.push(json!("Not-A-Map"));
                        links.push(Value::Null);
                        links.push(json!(NEVER));
                    }
                    let entry = Entry::value(Value::Array(links));
                    write(from, LINK_KEY, Some(entry), delta, &mut masters, &mut model, &mut agg)?;
                }
                Op::BadLinks { from, delta } => {
                    let entry = Entry::value(json!(map_name((from + 1) % MAPS)));
                    write(from, LINK_KEY, Some(entry), delta, &mut masters, &mut model, &mut agg)?;
                }
                Op::Unlink { from, delta } => {
                    write(from, LINK_KEY, None, delta, &mut masters, &mut model, &mut agg)?;
                }
                Op::Grant { map, key, value, delta } => {
                    let entry = Entry::value(json!({"role": value}));
                    write(map, KEYS[key], Some(entry), delta, &mut masters, &mut model, &mut agg)?;
                }
                Op::Revoke { map, key, delta } => {
                    write(map, KEYS[key], None, delta, &mut masters, &mut model, &mut agg)?;
                }
                Op::Method { map, key, delta } => {
                    let entry = Entry::method(vec![], "1");
                    write(map, KEYS[key], Some(entry), delta, &mut masters, &mut model, &mut agg)?;
                }
                Op::Create { map } => {
                    if let std::collections::btree_map::Entry::Vacant(slot) = masters.entry(map) {
                        let created = slot.insert(SharingMap::new(name(map))).clone();
                        model.insert(map_name(map), ModelMap::default());
                        agg.update_map(created);
                    }
                }
                Op::Delete { map } => {
                    masters.remove(&map);
                    model.remove(&map_name(map));
                    agg.remove_map(&name(map));
                }
                Op::Resync { map } => {
                    if let Some(master) = masters.get(&map) {
                        prop_assert!(agg.update_map(master.clone()).is_empty());
                    }
                }
                Op::Pin => pinned.push((agg.snapshot(), model.clone())),
            }
            check(&agg, &model)?;
        }
        for (snapshot, then) in &pinned {
            for key in KEYS {
                prop_assert_eq!(observed(snapshot, key), model_get_all(then, key));
            }
            let versions: BTreeMap<String, u64> = snapshot
                .version_vector()
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            prop_assert_eq!(versions, model_versions(then));
        }
    }
}
