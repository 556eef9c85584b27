//! The pure core of a resuming subscription: which subscriptions are active, the last version
//! delivered per map, what to send to a fresh node to resume, and whether an arriving update is
//! new, a duplicate, or a gap.
//!
//! No I/O here: [`crate::Subscription`] feeds it the server's events and sends the requests it
//! produces.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use sharing_map::{AppName, MapKey, MapName};
use spine_proto::v1 as pb;

use crate::ClientError;
use crate::subscribe::{MapUpdate, SubscriptionEvent, SubscriptionSpec};

/// Bookkeeping that turns a sequence of (possibly overlapping, repeated) server streams into one
/// stream with, per map, strictly increasing versions, contiguous deltas, and every version
/// delivered at most once.
///
/// Scales to many exact subscriptions: they are indexed by map, so adding, removing and
/// accepting an update of one costs O(log n) plus a scan of the prefix subscriptions only.
#[derive(Clone, Debug, Default)]
pub struct ResumeState {
    /// The caller's exact subscriptions, by map.
    exact: BTreeMap<MapKey, SubscriptionSpec>,
    /// The caller's prefix subscriptions, in the order added (expected to be few).
    prefixes: Vec<SubscriptionSpec>,
    /// The version the caller has of each map it received anything of. Every key is covered by
    /// some subscription.
    last: BTreeMap<MapKey, u64>,
    /// Exact subscriptions added on the current stream, beyond the caller's, to resume maps seen
    /// under a prefix from their last versions.
    implicit: BTreeSet<MapKey>,
    /// Highest applied index delivered.
    applied_index: u64,
}

/// What [`ResumeState::accept`] decided about one server event.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    /// What to deliver: the new updates, or progress; `None` when nothing is new.
    pub event: Option<SubscriptionEvent>,
    /// A delta skipped a version: the stream can no longer be trusted and must be resumed (on a
    /// new stream, from the last versions delivered).
    pub resync: bool,
}

fn request(op: pb::subscribe_request::Op) -> pb::SubscribeRequest {
    pb::SubscribeRequest { op: Some(op) }
}

fn wire(app: &AppName, map: &str, prefix: bool, from_version: Option<u64>) -> pb::Subscription {
    pb::Subscription {
        app: app.to_string(),
        map: map.to_string(),
        prefix,
        from_version,
    }
}

fn remove_request(app: &AppName, map: &str, prefix: bool) -> pb::SubscribeRequest {
    request(pb::subscribe_request::Op::Remove(wire(
        app, map, prefix, None,
    )))
}

impl ResumeState {
    /// No subscriptions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The active subscriptions, as the caller gave them: the exact ones ordered by app and map,
    /// then the prefixes in the order they were added.
    pub fn specs(&self) -> impl Iterator<Item = &SubscriptionSpec> + '_ {
        self.exact.values().chain(&self.prefixes)
    }

    /// The version of `map` last delivered (or the `from_version` it was subscribed from).
    pub fn last_version(&self, app: &AppName, map: &MapName) -> Option<u64> {
        self.last
            .get(&MapKey::new(app.clone(), map.clone()))
            .copied()
    }

    /// Highest applied index delivered so far.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    fn covered_by_prefix(&self, key: &MapKey) -> bool {
        self.prefixes.iter().any(|s| s.covers(key))
    }

    fn covered(&self, key: &MapKey) -> bool {
        self.exact.contains_key(key) || self.covered_by_prefix(key)
    }

    /// Adds a subscription; returns what to send on the current stream. Adding one that is
    /// already active (same app, map or prefix, and kind) changes nothing.
    pub fn add(
        &mut self,
        spec: SubscriptionSpec,
    ) -> Result<Vec<pb::SubscribeRequest>, ClientError> {
        if spec.prefix {
            if self.prefixes.iter().any(|s| s.same_target(&spec)) {
                return Ok(Vec::new());
            }
            let add = spec.to_pb();
            self.prefixes.push(spec);
            return Ok(vec![request(pb::subscribe_request::Op::Add(add))]);
        }
        let key = MapKey::new(spec.app.clone(), MapName::parse(&spec.map)?);
        let Entry::Vacant(slot) = self.exact.entry(key.clone()) else {
            return Ok(Vec::new());
        };
        // Never go back on a map already delivered: the caller has its last version.
        let from = match self.last.get(&key) {
            Some(&last) => Some(last),
            None => {
                if let Some(v) = spec.from_version {
                    self.last.insert(key.clone(), v);
                }
                spec.from_version
            }
        };
        slot.insert(spec);
        // An implicit exact subscription for this map is already on the stream: it becomes the
        // caller's, with nothing to send.
        if self.implicit.remove(&key) {
            return Ok(Vec::new());
        }
        let add = wire(&key.app, key.map.as_str(), false, from);
        Ok(vec![request(pb::subscribe_request::Op::Add(add))])
    }

    /// Removes a subscription (matched by app, map or prefix, and kind); returns what to send on
    /// the current stream. Maps no longer covered by any subscription are forgotten, so
    /// subscribing to them again starts afresh.
    ///
    /// Removing an exact subscription touches only its map; removing a prefix scans the maps.
    pub fn remove(&mut self, spec: &SubscriptionSpec) -> Vec<pb::SubscribeRequest> {
        if spec.prefix {
            self.remove_prefix(spec)
        } else {
            self.remove_exact(spec)
        }
    }

    fn remove_exact(&mut self, spec: &SubscriptionSpec) -> Vec<pb::SubscribeRequest> {
        // A name that does not parse was never added.
        let Ok(map) = MapName::parse(&spec.map) else {
            return Vec::new();
        };
        let key = MapKey::new(spec.app.clone(), map);
        let Some(removed) = self.exact.remove(&key) else {
            return Vec::new();
        };
        let mut out = vec![remove_request(&removed.app, &removed.map, false)];
        if !self.covered_by_prefix(&key) {
            self.last.remove(&key);
            if self.implicit.remove(&key) {
                out.push(remove_request(&key.app, key.map.as_str(), false));
            }
        }
        out
    }

    fn remove_prefix(&mut self, spec: &SubscriptionSpec) -> Vec<pb::SubscribeRequest> {
        let Some(at) = self.prefixes.iter().position(|s| s.same_target(spec)) else {
            return Vec::new();
        };
        let removed = self.prefixes.remove(at);
        let mut out = vec![remove_request(&removed.app, &removed.map, true)];
        let orphans: Vec<MapKey> = self
            .implicit
            .iter()
            .filter(|key| removed.covers(key) && !self.covered(key))
            .cloned()
            .collect();
        for key in orphans {
            self.implicit.remove(&key);
            out.push(remove_request(&key.app, key.map.as_str(), false));
        }
        let (exact, prefixes) = (&self.exact, &self.prefixes);
        self.last.retain(|key, _| {
            !removed.covers(key)
                || exact.contains_key(key)
                || prefixes.iter().any(|s| s.covers(key))
        });
        out
    }

    /// What to send on a fresh stream to resume every subscription: exact ones from the last
    /// version delivered, prefixes as given plus an exact subscription from its last version for
    /// each map already seen under them.
    pub fn resume_requests(&mut self) -> Vec<pb::SubscribeRequest> {
        self.implicit.clear();
        let mut out = Vec::with_capacity(self.exact.len() + self.prefixes.len());
        for (key, spec) in &self.exact {
            let from = self.last.get(key).copied().or(spec.from_version);
            out.push(wire(&key.app, key.map.as_str(), false, from));
        }
        if !self.prefixes.is_empty() {
            for (key, &version) in &self.last {
                if !self.exact.contains_key(key) && self.covered_by_prefix(key) {
                    self.implicit.insert(key.clone());
                    out.push(wire(&key.app, key.map.as_str(), false, Some(version)));
                }
            }
        }
        for spec in &self.prefixes {
            out.push(spec.to_pb());
        }
        out.into_iter()
            .map(|s| request(pb::subscribe_request::Op::Add(s)))
            .collect()
    }

    /// Decides about one server event: keeps the updates that are new for the caller (and records
    /// them as delivered), drops duplicates and updates of maps no longer subscribed, and flags
    /// a gap.
    pub fn accept(&mut self, applied_index: u64, updates: Vec<MapUpdate>) -> Accepted {
        let mut fresh = Vec::new();
        let mut resync = false;
        for update in updates {
            let key = MapKey::new(update.app().clone(), update.map().clone());
            if !self.covered(&key) {
                continue;
            }
            let last = self.last.get(&key).copied();
            let deliver = match (&update, last) {
                (_, None) => true,
                (MapUpdate::Delta { change_set, .. }, Some(last)) => {
                    if change_set.version() > last {
                        resync = true;
                    }
                    change_set.version() == last
                }
                (MapUpdate::Snapshot { dump, .. }, Some(last)) => dump.version > last,
            };
            if deliver {
                self.last.insert(key, update.version());
                fresh.push(update);
            }
        }
        if fresh.is_empty() && applied_index <= self.applied_index {
            return Accepted {
                event: None,
                resync,
            };
        }
        self.applied_index = self.applied_index.max(applied_index);
        Accepted {
            event: Some(SubscriptionEvent {
                applied_index,
                updates: fresh,
            }),
            resync,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use serde_json::json;
    use sharing_map::{ChangeSet, Entry, MapDump, UpdateId};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn app() -> AppName {
        AppName::parse("acme-shop").unwrap_or_else(|e| panic!("{e}"))
    }

    fn name(map: &str) -> MapName {
        MapName::parse(map).unwrap_or_else(|e| panic!("{e}"))
    }

    fn delta(map: &str, version: u64) -> MapUpdate {
        let cs = ChangeSet::from_ops(
            name(map),
            version,
            UpdateId::parse(&format!("u{version}")).unwrap_or_else(|e| panic!("{e}")),
            [(Arc::from("k"), Some(Entry::value(json!(version + 1))))],
        );
        MapUpdate::Delta {
            app: app(),
            change_set: cs,
        }
    }

    fn snapshot(map: &str, version: u64) -> MapUpdate {
        MapUpdate::Snapshot {
            app: app(),
            dump: MapDump {
                name: name(map),
                version,
                last_update_id: None,
                entries: vec![],
            },
        }
    }

    /// (map, version after) of what an accepted event delivers.
    fn delivered(a: &Accepted) -> Vec<(String, u64)> {
        a.event
            .iter()
            .flat_map(|e| &e.updates)
            .map(|u| (u.map().to_string(), u.version()))
            .collect()
    }

    fn adds(requests: &[pb::SubscribeRequest]) -> Vec<(String, bool, Option<u64>)> {
        requests
            .iter()
            .filter_map(|r| match &r.op {
                Some(pb::subscribe_request::Op::Add(s)) => {
                    Some((s.map.clone(), s.prefix, s.from_version))
                }
                _ => None,
            })
            .collect()
    }

    fn removes(requests: &[pb::SubscribeRequest]) -> Vec<(String, bool)> {
        requests
            .iter()
            .filter_map(|r| match &r.op {
                Some(pb::subscribe_request::Op::Remove(s)) => Some((s.map.clone(), s.prefix)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_update_is_taken_then_only_the_next_version() -> TestResult {
        let mut s = ResumeState::new();
        s.add(SubscriptionSpec::map(app(), &name("bob-tv-x")))?;
        let a = s.accept(10, vec![snapshot("bob-tv-x", 3)]);
        assert_eq!(delivered(&a), [("bob-tv-x".to_string(), 3)]);
        // A replay of older versions and of the snapshot itself is dropped.
        let a = s.accept(
            11,
            vec![
                delta("bob-tv-x", 1),
                delta("bob-tv-x", 2),
                snapshot("bob-tv-x", 3),
            ],
        );
        assert_eq!(delivered(&a), []);
        assert_eq!(
            a.event.map(|e| e.applied_index),
            Some(11),
            "progress still reported"
        );
        let a = s.accept(12, vec![delta("bob-tv-x", 3), delta("bob-tv-x", 4)]);
        assert_eq!(
            delivered(&a),
            [("bob-tv-x".to_string(), 4), ("bob-tv-x".to_string(), 5)]
        );
        assert!(!a.resync);
        assert_eq!(s.last_version(&app(), &name("bob-tv-x")), Some(5));
        Ok(())
    }

    #[test]
    fn progress_is_reported_only_when_newer() -> TestResult {
        let mut s = ResumeState::new();
        s.add(SubscriptionSpec::map(app(), &name("bob-tv-x")).from_version(0))?;
        assert_eq!(s.accept(5, vec![]).event.map(|e| e.applied_index), Some(5));
        assert_eq!(s.accept(5, vec![]).event, None);
        // Another node, behind this one, reports an older index: nothing new.
        assert_eq!(s.accept(3, vec![]).event, None);
        // ...but its updates are delivered with its own index.
        let a = s.accept(4, vec![delta("bob-tv-x", 0)]);
        assert_eq!(a.event.map(|e| e.applied_index), Some(4));
        assert_eq!(s.applied_index(), 5);
        Ok(())
    }

    #[test]
    fn a_skipped_version_is_not_delivered_and_asks_for_resync() -> TestResult {
        let mut s = ResumeState::new();
        s.add(SubscriptionSpec::map(app(), &name("bob-tv-x")).from_version(2))?;
        s.add(SubscriptionSpec::map(app(), &name("bob-tv-y")))?;
        let a = s.accept(9, vec![delta("bob-tv-y", 0), delta("bob-tv-x", 3)]);
        assert!(a.resync);
        assert_eq!(delivered(&a), [("bob-tv-y".to_string(), 1)]);
        assert_eq!(s.last_version(&app(), &name("bob-tv-x")), Some(2));
        // A newer snapshot is no gap: it replaces everything before it.
        let a = s.accept(10, vec![snapshot("bob-tv-x", 7)]);
        assert!(!a.resync);
        assert_eq!(delivered(&a), [("bob-tv-x".to_string(), 7)]);
        Ok(())
    }

    #[test]
    fn resuming_asks_each_map_from_its_last_version() -> TestResult {
        let mut s = ResumeState::new();
        let first = s.add(SubscriptionSpec::map(app(), &name("bob-tv-x")))?;
        assert_eq!(adds(&first), [("bob-tv-x".to_string(), false, None)]);
        s.add(SubscriptionSpec::prefix(app(), "ann-"))?;
        s.add(SubscriptionSpec::prefix(app(), "cat-").from_version(4))?;
        s.accept(
            3,
            vec![
                snapshot("bob-tv-x", 2),
                snapshot("ann-a-m", 6),
                delta("ann-b-m", 0),
            ],
        );
        let resume = s.resume_requests();
        assert_eq!(
            adds(&resume),
            [
                ("bob-tv-x".to_string(), false, Some(2)),
                ("ann-a-m".to_string(), false, Some(6)),
                ("ann-b-m".to_string(), false, Some(1)),
                ("ann-".to_string(), true, None),
                ("cat-".to_string(), true, Some(4)),
            ]
        );
        // The new stream replays what the old one delivered, then continues.
        let a = s.accept(
            4,
            vec![
                snapshot("ann-a-m", 6),
                delta("ann-b-m", 0),
                delta("ann-b-m", 1),
                snapshot("bob-tv-x", 2),
                delta("ann-a-m", 6),
            ],
        );
        assert_eq!(
            delivered(&a),
            [("ann-b-m".to_string(), 2), ("ann-a-m".to_string(), 7)]
        );
        Ok(())
    }

    #[test]
    fn resuming_before_anything_arrived_repeats_the_request() -> TestResult {
        let mut s = ResumeState::new();
        s.add(SubscriptionSpec::map(app(), &name("bob-tv-x")).from_version(8))?;
        s.add(SubscriptionSpec::map(app(), &name("bob-tv-y")))?;
        assert_eq!(
            adds(&s.resume_requests()),
            [
                ("bob-tv-x".to_string(), false, Some(8)),
                ("bob-tv-y".to_string(), false, None)
            ]
        );
        // From version 8 means the caller has 8: a delta for 7 -> 8 is old news.
        assert_eq!(delivered(&s.accept(1, vec![delta("bob-tv-x", 7)])), []);
        Ok(())
    }

    #[test]
    fn removing_forgets_and_unsubscribes_implicit_maps() -> TestResult {
        let mut s = ResumeState::new();
        let ann = SubscriptionSpec::prefix(app(), "ann-");
        s.add(ann.clone())?;
        s.accept(1, vec![snapshot("ann-a-m", 1), snapshot("ann-b-m", 1)]);
        s.resume_requests();
        // Making one of the implicit subscriptions explicit sends nothing new.
        assert_eq!(
            s.add(SubscriptionSpec::map(app(), &name("ann-a-m")))?,
            vec![]
        );
        let out = s.remove(&ann);
        assert_eq!(
            removes(&out),
            [("ann-".to_string(), true), ("ann-b-m".to_string(), false)]
        );
        assert_eq!(s.last_version(&app(), &name("ann-b-m")), None);
        assert_eq!(s.last_version(&app(), &name("ann-a-m")), Some(1));
        // Updates of maps nobody subscribes to any more are dropped.
        assert_eq!(delivered(&s.accept(2, vec![delta("ann-b-m", 1)])), []);
        assert_eq!(s.remove(&ann), vec![]);
        Ok(())
    }

    #[test]
    fn duplicates_and_bad_names_are_refused_at_add() -> TestResult {
        let mut s = ResumeState::new();
        let spec = SubscriptionSpec::map(app(), &name("bob-tv-x"));
        assert_eq!(s.add(spec.clone())?.len(), 1);
        assert_eq!(s.add(spec)?.len(), 0);
        let bad = SubscriptionSpec {
            app: app(),
            map: "Bob".into(),
            prefix: false,
            from_version: None,
        };
        assert!(matches!(s.add(bad), Err(ClientError::Name(_))));
        assert_eq!(s.specs().count(), 1);
        Ok(())
    }

    /// A model check: whatever order and repetition streams deliver a map's history in, the
    /// caller sees each version once, in order, deltas contiguous.
    #[test]
    fn any_replay_yields_each_version_once_in_order() -> TestResult {
        let mut s = ResumeState::new();
        s.add(SubscriptionSpec::map(app(), &name("bob-tv-x")).from_version(0))?;
        // Three streams: one that dies after v3, one resuming from a lagging node that sends a
        // snapshot of v2 then deltas, one replaying from 0.
        let streams = [
            vec![
                delta("bob-tv-x", 0),
                delta("bob-tv-x", 1),
                delta("bob-tv-x", 2),
            ],
            vec![
                snapshot("bob-tv-x", 2),
                delta("bob-tv-x", 2),
                delta("bob-tv-x", 3),
            ],
            (0..8).map(|v| delta("bob-tv-x", v)).collect(),
        ];
        let mut seen = Vec::new();
        for stream in streams {
            s.resume_requests();
            for update in stream {
                let a = s.accept(0, vec![update]);
                assert!(!a.resync);
                seen.extend(delivered(&a).into_iter().map(|(_, v)| v));
            }
        }
        assert_eq!(seen, (1..=8).collect::<Vec<_>>());
        Ok(())
    }

    #[test]
    fn removing_an_exact_map_under_a_prefix_keeps_its_version() -> TestResult {
        let mut s = ResumeState::new();
        s.add(SubscriptionSpec::prefix(app(), "ann-"))?;
        let a_m = SubscriptionSpec::map(app(), &name("ann-a-m"));
        let bob = SubscriptionSpec::map(app(), &name("bob-tv-x"));
        s.add(a_m.clone())?;
        s.add(bob.clone())?;
        s.accept(1, vec![snapshot("ann-a-m", 4), snapshot("bob-tv-x", 2)]);
        assert_eq!(removes(&s.remove(&a_m)), [("ann-a-m".to_string(), false)]);
        assert_eq!(s.last_version(&app(), &name("ann-a-m")), Some(4));
        assert_eq!(removes(&s.remove(&bob)), [("bob-tv-x".to_string(), false)]);
        assert_eq!(s.last_version(&app(), &name("bob-tv-x")), None);
        assert_eq!(s.remove(&bob), vec![]);
        // The map still under the prefix resumes from its version, implicitly.
        assert_eq!(
            adds(&s.resume_requests()),
            [
                ("ann-a-m".to_string(), false, Some(4)),
                ("ann-".to_string(), true, None),
            ]
        );
        Ok(())
    }

    /// A node agent follows thousands of maps over one subscription, each added and removed on
    /// its own: every step must cost about the same however many maps there are.
    #[test]
    fn ten_thousand_exact_maps_come_and_go() -> TestResult {
        const MAPS: usize = 10_000;
        let maps: Vec<String> = (0..MAPS).map(|i| format!("bob-tv-m{i:05}")).collect();
        let mut s = ResumeState::new();
        for map in &maps {
            assert_eq!(s.add(SubscriptionSpec::map(app(), &name(map)))?.len(), 1);
        }
        assert_eq!(s.specs().count(), MAPS);
        for (i, map) in maps.iter().enumerate() {
            let a = s.accept(i as u64 + 1, vec![snapshot(map, 1)]);
            assert_eq!(delivered(&a), [(map.clone(), 1)]);
        }
        let a = s.accept(
            MAPS as u64 + 1,
            maps.iter().map(|map| delta(map, 1)).collect(),
        );
        assert_eq!(delivered(&a).len(), MAPS);
        assert!(!a.resync);
        let resume = adds(&s.resume_requests());
        assert_eq!(resume.len(), MAPS);
        assert!(
            resume
                .iter()
                .all(|(_, prefix, from)| !prefix && *from == Some(2))
        );
        assert!(resume.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        for map in &maps {
            let out = s.remove(&SubscriptionSpec::map(app(), &name(map)));
            assert_eq!(removes(&out), [(map.clone(), false)]);
            assert_eq!(s.last_version(&app(), &name(map)), None);
        }
        assert_eq!(s.specs().count(), 0);
        assert!(s.exact.is_empty() && s.prefixes.is_empty());
        assert!(s.last.is_empty() && s.implicit.is_empty());
        assert_eq!(s.resume_requests(), vec![]);
        assert_eq!(delivered(&s.accept(0, vec![delta(&maps[0], 2)])), []);
        Ok(())
    }
}
