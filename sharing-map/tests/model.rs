//! Model-based property tests: random operation sequences against a plain `BTreeMap`.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};
use sharing_map::{
    Applied, ApplyError, ChangeSet, DeltaOutcome, Entry, MapName, SharingMap, Transaction,
    UpdateId, VersionWindow, codec,
};

const CASES: u32 = 1000;

#[derive(Clone, Debug)]
enum Op {
    Put(u8, i64),
    Remove(u8),
    Commit,
    Abort,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12, -5i64..5).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..12).prop_map(Op::Remove),
        2 => Just(Op::Commit),
        1 => Just(Op::Abort),
    ]
}

fn name() -> MapName {
    MapName::parse("model-test-map").unwrap_or_else(|e| panic!("{e}"))
}

fn key(k: u8) -> String {
    format!("k{k}")
}

fn id(n: u64) -> UpdateId {
    UpdateId::parse(&format!("update-{n}")).unwrap_or_else(|e| panic!("{e}"))
}

fn as_model(map: &SharingMap) -> BTreeMap<String, Value> {
    map.iter()
        .map(|(k, e)| (k.to_string(), e.as_value().cloned().unwrap_or(Value::Null)))
        .collect()
}

/// Runs `ops` as a writer would, returning every version it committed and each change set.
fn write_history(ops: &[Op]) -> (Vec<SharingMap>, Vec<ChangeSet>) {
    let mut versions = vec![SharingMap::new(name())];
    let mut change_sets = Vec::new();
    let mut tx = Transaction::new(versions[0].clone());
    for op in ops {
        match op {
            Op::Put(k, v) => tx.put(&key(*k), json!(v)).unwrap_or_else(|e| panic!("{e}")),
            Op::Remove(k) => tx.remove(&key(*k)).unwrap_or_else(|e| panic!("{e}")),
            Op::Abort => {}
            Op::Commit => {
                let base = tx.base().clone();
                if let Some(cs) = tx
                    .prepare(id(base.version()))
                    .unwrap_or_else(|e| panic!("{e}"))
                {
                    match base.apply(&cs) {
                        Ok(Applied::New(next)) => {
                            versions.push(next);
                            change_sets.push(cs);
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
        if matches!(op, Op::Commit | Op::Abort) {
            let newest = versions[versions.len() - 1].clone();
            tx = Transaction::new(newest);
        }
    }
    (versions, change_sets)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// The writer's transactions behave like a BTreeMap with staged writes: commit makes them
    /// visible as exactly one new version, abort leaves no trace, reads see own writes.
    #[test]
    fn writer_matches_model(ops in proptest::collection::vec(op(), 0..80)) {
        let mut committed: BTreeMap<String, Value> = BTreeMap::new();
        let mut staged = committed.clone();
        let mut map = SharingMap::new(name());
        let mut tx = Transaction::new(map.clone());
        for op in &ops {
            match op {
                Op::Put(k, v) => {
                    tx.put(&key(*k), json!(v)).unwrap_or_else(|e| panic!("{e}"));
                    staged.insert(key(*k), json!(v));
                }
                Op::Remove(k) => {
                    tx.remove(&key(*k)).unwrap_or_else(|e| panic!("{e}"));
                    staged.remove(&key(*k));
                }
                Op::Abort => {
                    staged = committed.clone();
                    tx = Transaction::new(map.clone());
                }
                Op::Commit => {
                    let cs = tx.prepare(id(map.version())).unwrap_or_else(|e| panic!("{e}"));
                    prop_assert_eq!(cs.is_some(), staged != committed);
                    if let Some(cs) = cs {
                        let before = map.version();
                        match map.apply(&cs) {
                            Ok(Applied::New(next)) => map = next,
                            other => panic!("{other:?}"),
                        }
                        prop_assert_eq!(map.version(), before + 1);
                        // A retry of the same update is idempotent.
                        let retry = map.apply(&cs);
                        let duplicate_of = match retry { Ok(Applied::Duplicate { version }) => Some(version), _ => None };
                        prop_assert_eq!(duplicate_of, Some(before + 1));
                    }
                    committed = staged.clone();
                    tx = Transaction::new(map.clone());
                }
            }
            for k in 0..12 {
                prop_assert_eq!(tx.get_value(&key(k)), staged.get(&key(k)));
            }
            prop_assert_eq!(as_model(&map), committed.clone());
        }
        // Full dump and restore, and the binary encoding, preserve everything.
        let restored = SharingMap::restore(map.dump());
        prop_assert_eq!(&restored, &map);
        prop_assert_eq!(restored.digest(), map.digest());
        let decoded: SharingMap = codec::decode(&codec::encode(&map)).unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(decoded, map);
    }

    /// Change sets are normalized so the last operation per key wins.
    #[test]
    fn change_set_last_op_wins(ops in proptest::collection::vec((0u8..8, proptest::option::of(-3i64..3)), 0..40)) {
        let mut model: BTreeMap<String, Option<i64>> = BTreeMap::new();
        for (k, v) in &ops {
            model.insert(key(*k), *v);
        }
        let cs = ChangeSet::from_ops(
            name(), 0, id(0),
            ops.iter().map(|(k, v)| (Arc::from(key(*k)), v.map(|v| Entry::value(json!(v))))),
        );
        let removes: Vec<String> = cs.removes().iter().map(|k| k.to_string()).collect();
        let puts: Vec<(String, Value)> = cs.puts().iter()
            .map(|(k, e)| (k.to_string(), e.as_value().cloned().unwrap_or(Value::Null))).collect();
        let want_removes: Vec<String> = model.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k.clone()).collect();
        let want_puts: Vec<(String, Value)> = model.iter()
            .filter_map(|(k, v)| v.map(|v| (k.clone(), json!(v)))).collect();
        prop_assert_eq!(removes, want_removes);
        prop_assert_eq!(puts, want_puts);
        let decoded: ChangeSet = codec::decode(&codec::encode(&cs)).unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(decoded, cs);
    }

    /// A replica fed shuffled, duplicated and dropped deltas never applies out of order: every
    /// version it exposes equals the writer's at that version, and it ends equal to the writer,
    /// resynchronizing from a dump whenever it detects a gap.
    #[test]
    fn replica_survives_a_bad_network(
        ops in proptest::collection::vec(op(), 0..80),
        faults in proptest::collection::vec((0u8..10, any::<prop::sample::Index>()), 0..120),
        capacity in 1usize..5,
    ) {
        let (versions, change_sets) = write_history(&ops);
        let newest = versions[versions.len() - 1].clone();
        // Build the delivery: the in-order stream disturbed by faults.
        let mut delivery: Vec<ChangeSet> = change_sets.clone();
        let mut dropped_or_moved = false;
        for (kind, at) in &faults {
            if delivery.is_empty() {
                break;
            }
            let i = at.index(delivery.len());
            match kind {
                0..=2 => { let d = delivery[i].clone(); delivery.insert(i, d); }
                3..=4 => { delivery.remove(i); dropped_or_moved = true; }
                5..=7 => {
                    let j = (i + 1).min(delivery.len() - 1);
                    if delivery[i].version() != delivery[j].version() { dropped_or_moved = true; }
                    delivery.swap(i, j);
                }
                _ => {}
            }
        }
        let mut replica = VersionWindow::new(versions[0].clone(), capacity);
        let mut resyncs = 0;
        let mut last_seen = 0;
        for cs in &delivery {
            let outcome = replica.apply_delta(cs).unwrap_or_else(|e| panic!("{e}"));
            if let DeltaOutcome::Gap { have, got } = outcome {
                prop_assert!(got > have);
                resyncs += 1;
                replica.reset(newest.dump()).unwrap_or_else(|e| panic!("{e}"));
            }
            let pinned = replica.pin();
            prop_assert!(pinned.version() >= last_seen, "went back from {} to {}", last_seen, pinned.version());
            last_seen = pinned.version();
            prop_assert_eq!(pinned.map(), &versions[pinned.version() as usize]);
            prop_assert!(replica.retained() <= capacity);
        }
        // End of stream: a replica behind the Spine's progress resynchronizes.
        if replica.version() < newest.version() {
            resyncs += 1;
            replica.reset(newest.dump()).unwrap_or_else(|e| panic!("{e}"));
        }
        let end = replica.pin();
        prop_assert_eq!(end.map(), &newest);
        if !dropped_or_moved {
            prop_assert_eq!(resyncs, 0, "an in-order stream with duplicates needs no resync");
        }
    }

    /// Compare-and-swap: a change set for any version but the current one is refused (conflict
    /// or gap) and changes nothing.
    #[test]
    fn stale_and_future_change_sets_change_nothing(ops in proptest::collection::vec(op(), 1..60), probe in 0u64..40) {
        let (versions, _) = write_history(&ops);
        let map = versions[versions.len() - 1].clone();
        let cs = ChangeSet::from_ops(name(), probe, id(1000 + probe), [(Arc::from("x"), Some(Entry::value(json!(1))))]);
        match map.apply(&cs) {
            Ok(Applied::New(next)) => {
                prop_assert_eq!(probe, map.version());
                prop_assert_eq!(next.version(), probe + 1);
            }
            Ok(Applied::Duplicate { .. }) => prop_assert!(false, "fresh update id reported duplicate"),
            Err(ApplyError::Conflict { current, expected, .. }) => {
                prop_assert!(probe < map.version());
                prop_assert_eq!((current, expected), (map.version(), probe));
            }
            Err(ApplyError::Gap { current, got, .. }) => {
                prop_assert!(probe > map.version());
                prop_assert_eq!((current, got), (map.version(), probe));
            }
            Err(e) => panic!("{e}"),
        }
    }
}
