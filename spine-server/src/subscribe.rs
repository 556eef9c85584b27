//! Subscriptions: which maps a stream follows and what to send it, as a pure core
//! ([`SubscriptionSet`]), and the async session that feeds one gRPC stream ([`run_session`]).
//!
//! Per map, the stream gets strictly ordered, gap-free events: the deltas after the version the
//! client asked for when they are retained, otherwise a snapshot of the newest version followed by
//! deltas. Updates that committed together (one log entry) arrive in one event. A subscriber that
//! falls behind the shared event ring is not waited for: its backlog is replaced by snapshots of
//! the newest state, so it costs neither other subscribers' latency nor unbounded memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sharing_map::{AppName, ChangeSet, SharingMap};
use spine_proto::v1 as pb;
use spine_wire::{SubscriptionSpec, convert};
use tokio::sync::{broadcast, mpsc};

use crate::metrics::Metrics;
use crate::node::{AppliedEvent, NodeHandle};
use crate::state::{Change, MapKey, State};

/// One thing to send for one map.
#[derive(Clone, Debug)]
pub enum Out {
    /// The change set after the version last sent.
    Delta(AppName, Arc<ChangeSet>),
    /// A full copy of a version (first contact, catch-up beyond history, or a slow subscriber).
    Snapshot(AppName, SharingMap),
}

impl Out {
    fn to_pb(&self) -> pb::MapEvent {
        match self {
            Out::Delta(app, cs) => pb::MapEvent {
                app: app.to_string(),
                kind: Some(pb::map_event::Kind::Delta(convert::change_set_to_pb(cs))),
            },
            Out::Snapshot(app, map) => pb::MapEvent {
                app: app.to_string(),
                kind: Some(pb::map_event::Kind::Snapshot(convert::dump_to_pb(
                    &map.dump(),
                ))),
            },
        }
    }
}

/// The maps one stream follows and the last version it was sent of each.
#[derive(Debug, Default)]
pub struct SubscriptionSet {
    exact: BTreeSet<MapKey>,
    /// Prefix subscriptions, one per target (expected to be few).
    prefixes: Vec<SubscriptionSpec>,
    last: HashMap<MapKey, u64>,
    /// Whether CAs' private state maps may be followed (admins only); else prefix
    /// subscriptions leave them out.
    private_ok: bool,
}

impl SubscriptionSet {
    /// A set for a stream whose token may (`private_ok`) or may not follow CAs' private state
    /// maps.
    pub fn new(private_ok: bool) -> Self {
        Self {
            private_ok,
            ..Self::default()
        }
    }

    fn visible(&self, key: &MapKey) -> bool {
        self.private_ok || !key.map.is_private_state()
    }

    /// Whether the stream follows `key`.
    pub fn follows(&self, key: &MapKey) -> bool {
        self.visible(key)
            && (self.exact.contains(key) || self.prefixes.iter().any(|p| p.covers(key)))
    }

    /// Number of maps with a delivered version.
    pub fn tracked(&self) -> usize {
        self.last.len()
    }

    /// Starts following; returns what to send now, from `state`.
    pub fn add(&mut self, f: SubscriptionSpec, state: &State) -> Result<Vec<Out>, String> {
        let mut out = Vec::new();
        if f.prefix {
            let keys: Vec<MapKey> = state
                .with_prefix(&f.app, &f.map)
                .map(|(k, _)| k.clone())
                .filter(|k| self.visible(k))
                .collect();
            for key in keys {
                self.catch_up(&key, f.from_version, state, &mut out);
            }
            if !self.prefixes.iter().any(|p| p.same_target(&f)) {
                self.prefixes.push(f);
            }
        } else {
            let map = f
                .map
                .parse()
                .map_err(|e: sharing_map::NameError| e.to_string())?;
            let key = MapKey { app: f.app, map };
            if !self.visible(&key) {
                return Err(format!(
                    "map {} is a CA's private state: only admin tokens may follow it",
                    key.map
                ));
            }
            self.exact.insert(key.clone());
            self.catch_up(&key, f.from_version, state, &mut out);
        }
        Ok(out)
    }

    /// Stops following; forgets versions of maps no longer followed. Removing one map costs
    /// O(log n + prefixes); removing a prefix scans the tracked maps.
    pub fn remove(&mut self, f: &SubscriptionSpec) {
        if f.prefix {
            self.prefixes.retain(|p| !p.same_target(f));
            let orphans: Vec<MapKey> = self
                .last
                .keys()
                .filter(|k| f.covers(k) && !self.follows(k))
                .cloned()
                .collect();
            for k in orphans {
                self.last.remove(&k);
            }
        } else if let Ok(map) = f.map.parse() {
            let key = MapKey {
                app: f.app.clone(),
                map,
            };
            self.exact.remove(&key);
            if !self.follows(&key) {
                self.last.remove(&key);
            }
        }
    }

    fn catch_up(&mut self, key: &MapKey, from: Option<u64>, state: &State, out: &mut Vec<Out>) {
        let Some(ms) = state.maps.get(key) else {
            return;
        };
        let current = ms.map.version();
        let have = from.or_else(|| self.last.get(key).copied());
        match have
            .filter(|v| *v <= current)
            .and_then(|v| ms.deltas_after(v))
        {
            Some(deltas) => {
                for cs in deltas {
                    out.push(Out::Delta(key.app.clone(), cs));
                }
            }
            None => out.push(Out::Snapshot(key.app.clone(), ms.map.clone())),
        }
        self.last.insert(key.clone(), current);
    }

    /// What to send for one applied entry. `state` is at least as new as the event.
    pub fn on_event(&mut self, event: &AppliedEvent, state: &State) -> Vec<Out> {
        if event.reset {
            return self.resync(state);
        }
        let mut out = Vec::new();
        for change in &event.changes {
            match change {
                Change::Created { key, map } => {
                    if self.follows(key) && !self.last.contains_key(key) {
                        self.last.insert(key.clone(), map.version());
                        out.push(Out::Snapshot(key.app.clone(), map.clone()));
                    }
                }
                Change::Delta {
                    key, change_set, ..
                } => {
                    if !self.follows(key) {
                        continue;
                    }
                    match self.last.get(key).copied() {
                        Some(last) if change_set.version() == last => {
                            self.last.insert(key.clone(), change_set.next_version());
                            out.push(Out::Delta(key.app.clone(), change_set.clone()));
                        }
                        Some(last) if change_set.version() < last => {}
                        // Never sent, or a gap: send the newest state instead.
                        _ => self.catch_up(key, None, state, &mut out),
                    }
                }
            }
        }
        out
    }

    /// Brings every followed map up to `state` with snapshots (or nothing if current).
    pub fn resync(&mut self, state: &State) -> Vec<Out> {
        let mut out = Vec::new();
        let mut keys: BTreeSet<MapKey> = self.exact.iter().cloned().collect();
        for p in &self.prefixes {
            keys.extend(state.with_prefix(&p.app, &p.map).map(|(k, _)| k.clone()));
        }
        for key in keys {
            let Some(ms) = state.maps.get(&key) else {
                continue;
            };
            let current = ms.map.version();
            if self.last.get(&key) != Some(&current) {
                self.last.insert(key.clone(), current);
                out.push(Out::Snapshot(key.app.clone(), ms.map.clone()));
            }
        }
        out
    }
}

fn follow_from_pb(s: pb::Subscription) -> Result<SubscriptionSpec, tonic::Status> {
    SubscriptionSpec::from_pb(s).map_err(|e| tonic::Status::invalid_argument(e.to_string()))
}

/// How often an idle stream gets a progress event.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Most applied events a session takes from the ring per wakeup (each still goes out as its own
/// message, in order).
const EVENTS_PER_WAKEUP: usize = 64;

/// Feeds one subscription stream until the client goes away.
pub async fn run_session(
    node: NodeHandle,
    access: crate::auth::Access,
    mut inbound: tonic::Streaming<pb::SubscribeRequest>,
    out: mpsc::Sender<Result<pb::SubscribeEvent, tonic::Status>>,
    metrics: Arc<Metrics>,
) {
    metrics.subscribers.inc();
    // Subscribe to events before reading any state, so nothing falls between the two.
    let mut events = node.events();
    let mut set = SubscriptionSet::new(access.sees_private());
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut sent_since_tick = false;
    let mut inbound_open = true;
    let stopped = node.stopped();
    tokio::pin!(stopped);
    // What to send: (applied index, events, whether it is a progress event), in order.
    let mut batch: Vec<(u64, Vec<Out>, bool)> = Vec::new();
    'session: loop {
        batch.clear();
        tokio::select! {
            req = inbound.message(), if inbound_open => match req {
                Ok(Some(req)) => {
                    let state = node.state();
                    let outs = match req.op {
                        Some(pb::subscribe_request::Op::Add(s)) => {
                            match follow_from_pb(s).and_then(|f| {
                                access.read(&f.app)?;
                                if !f.prefix
                                    && let Ok(map) = f.map.parse::<sharing_map::MapName>()
                                {
                                    access.read_map(&f.app, &map)?;
                                }
                                set.add(f, &state).map_err(tonic::Status::invalid_argument)
                            }) {
                                Ok(outs) => outs,
                                Err(status) => {
                                    let _ = out.send(Err(status)).await;
                                    break;
                                }
                            }
                        }
                        Some(pb::subscribe_request::Op::Remove(s)) => {
                            if let Ok(f) = follow_from_pb(s) {
                                set.remove(&f);
                            }
                            Vec::new()
                        }
                        None => Vec::new(),
                    };
                    batch.push((state.applied_index, outs, false));
                }
                // The client closed its side: keep streaming what it follows.
                Ok(None) => { inbound_open = false; continue; }
                Err(_) => break,
            },
            ev = events.recv() => {
                // Take what else is already in the ring too: one wakeup and one state read for
                // many events when updates come fast.
                let mut state = node.state();
                let mut next = Some(ev);
                while let Some(ev) = next.take() {
                    match ev {
                        Ok(ev) => {
                            // The node publishes its state before the events it produced.
                            if ev.index > state.applied_index {
                                state = node.state();
                            }
                            metrics
                                .subscriber_lag
                                .observe(state.applied_index.saturating_sub(ev.index) as f64);
                            batch.push((ev.index, set.on_event(&ev, &state), false));
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            metrics.subscriber_resyncs.inc();
                            let state = node.state();
                            batch.push((state.applied_index, set.resync(&state), false));
                            break;
                        }
                        Err(broadcast::error::RecvError::Closed) => break 'session,
                    }
                    if batch.len() < EVENTS_PER_WAKEUP {
                        next = match events.try_recv() {
                            Ok(ev) => Some(Ok(ev)),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                Some(Err(broadcast::error::RecvError::Lagged(n)))
                            }
                            Err(broadcast::error::TryRecvError::Closed) => {
                                Some(Err(broadcast::error::RecvError::Closed))
                            }
                            Err(broadcast::error::TryRecvError::Empty) => None,
                        };
                    }
                }
            },
            _ = progress.tick() => {
                if sent_since_tick {
                    sent_since_tick = false;
                    continue;
                }
                batch.push((node.state().applied_index, Vec::new(), true));
            }
            _ = out.closed() => break,
            _ = &mut stopped => break,
        };
        for (index, outs, is_progress) in batch.drain(..) {
            if outs.is_empty() && !is_progress {
                continue;
            }
            sent_since_tick |= !outs.is_empty();
            let event = pb::SubscribeEvent {
                applied_index: index,
                events: outs.iter().map(Out::to_pb).collect(),
            };
            if out.send(Ok(event)).await.is_err() {
                break 'session;
            }
        }
    }
    metrics.subscribers.dec();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ApplyConfig, Command};
    use serde_json::json;
    use sharing_map::{Entry, MapName, UpdateId};

    fn app() -> AppName {
        AppName::parse("acme-shop").unwrap_or_else(|e| panic!("{e}"))
    }

    fn key(map: &str) -> MapKey {
        MapKey {
            app: app(),
            map: MapName::parse(map).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    struct World {
        state: State,
        cfg: ApplyConfig,
        index: u64,
    }

    impl World {
        fn new(history_len: usize) -> Self {
            Self {
                state: State::default(),
                cfg: ApplyConfig {
                    history_len,
                    ..ApplyConfig::default()
                },
                index: 0,
            }
        }
        fn run(&mut self, command: Command) -> AppliedEvent {
            let (_, changes) = self.state.apply(&command, &self.cfg);
            self.index += 1;
            self.state.applied_index = self.index;
            AppliedEvent {
                index: self.index,
                changes,
                reset: false,
            }
        }
        fn create(&mut self, map: &str) -> AppliedEvent {
            self.run(Command::Create {
                key: key(map),
                initial: vec![],
            })
        }
        fn put(&mut self, map: &str, v: i64) -> AppliedEvent {
            let version = self
                .state
                .maps
                .get(&key(map))
                .map(|m| m.map.version())
                .unwrap_or(0);
            self.run(Command::Update {
                app: app(),
                change_sets: vec![ChangeSet::from_ops(
                    key(map).map,
                    version,
                    UpdateId::parse(&format!("u{version}")).unwrap_or_else(|e| panic!("{e}")),
                    [(Arc::from("k"), Some(Entry::value(json!(v))))],
                )],
            })
        }
    }

    fn versions(outs: &[Out]) -> Vec<String> {
        outs.iter()
            .map(|o| match o {
                Out::Delta(_, cs) => format!("d{}", cs.next_version()),
                Out::Snapshot(_, m) => format!("s{}", m.version()),
            })
            .collect()
    }

    fn follow(map: &str, prefix: bool, from: Option<u64>) -> SubscriptionSpec {
        SubscriptionSpec {
            app: app(),
            map: map.into(),
            prefix,
            from_version: from,
        }
    }

    #[test]
    fn private_state_maps_are_followed_only_by_admins() -> Result<(), String> {
        let mut w = World::new(3);
        w.create("bob-tv-x");
        w.create("bob-tv-castate");
        let mut set = SubscriptionSet::default();
        let outs = set.add(follow("bob-tv", true, None), &w.state)?;
        assert_eq!(
            versions(&outs),
            ["s0"],
            "the prefix leaves the private map out"
        );
        assert!(versions(&set.on_event(&w.put("bob-tv-castate", 1), &w.state)).is_empty());
        assert_eq!(
            versions(&set.on_event(&w.put("bob-tv-x", 1), &w.state)),
            ["d1"]
        );
        assert!(
            set.add(follow("bob-tv-castate", false, None), &w.state)
                .is_err()
        );
        let mut admin = SubscriptionSet::new(true);
        let outs = admin.add(follow("bob-tv", true, None), &w.state)?;
        assert_eq!(outs.len(), 2);
        Ok(())
    }

    #[test]
    fn resume_uses_deltas_when_retained_and_a_snapshot_otherwise() -> Result<(), String> {
        let mut w = World::new(3);
        w.create("bob-tv-x");
        for v in 0..6 {
            w.put("bob-tv-x", v);
        }
        let mut set = SubscriptionSet::default();
        let outs = set.add(follow("bob-tv-x", false, Some(4)), &w.state)?;
        assert_eq!(versions(&outs), ["d5", "d6"]);
        let mut set = SubscriptionSet::default();
        let outs = set.add(follow("bob-tv-x", false, Some(1)), &w.state)?;
        assert_eq!(versions(&outs), ["s6"]);
        let mut set = SubscriptionSet::default();
        let outs = set.add(follow("bob-tv-x", false, None), &w.state)?;
        assert_eq!(versions(&outs), ["s6"]);
        let e = w.put("bob-tv-x", 9);
        assert_eq!(versions(&set.on_event(&e, &w.state)), ["d7"]);
        Ok(())
    }

    #[test]
    fn events_already_covered_are_skipped_and_gaps_become_snapshots() -> Result<(), String> {
        let mut w = World::new(10);
        w.create("bob-tv-x");
        let early = w.put("bob-tv-x", 1);
        let mut set = SubscriptionSet::default();
        set.add(follow("bob-tv-x", false, None), &w.state)?;
        // An event the snapshot already covered is ignored.
        assert!(set.on_event(&early, &w.state).is_empty());
        w.put("bob-tv-x", 2);
        let skipped_to = w.put("bob-tv-x", 3);
        // The event for version 2 was missed: the gap is filled from the retained history.
        assert_eq!(versions(&set.on_event(&skipped_to, &w.state)), ["d2", "d3"]);
        // Beyond the retained history, the newest state is sent instead.
        let mut w = World::new(1);
        w.create("bob-tv-x");
        let mut set = SubscriptionSet::default();
        set.add(follow("bob-tv-x", false, None), &w.state)?;
        w.put("bob-tv-x", 1);
        w.put("bob-tv-x", 2);
        let skipped_to = w.put("bob-tv-x", 3);
        assert_eq!(versions(&set.on_event(&skipped_to, &w.state)), ["s3"]);
        Ok(())
    }

    #[test]
    fn prefixes_pick_up_new_maps_and_ignore_others() -> Result<(), String> {
        let mut w = World::new(10);
        w.create("bob-tv-a");
        let mut set = SubscriptionSet::default();
        let outs = set.add(follow("bob-tv-", true, None), &w.state)?;
        assert_eq!(versions(&outs), ["s0"]);
        let created = w.create("bob-tv-b");
        assert_eq!(versions(&set.on_event(&created, &w.state)), ["s0"]);
        let other = w.create("ann-tv-b");
        assert!(set.on_event(&other, &w.state).is_empty());
        let e = w.put("bob-tv-b", 1);
        assert_eq!(versions(&set.on_event(&e, &w.state)), ["d1"]);
        set.remove(&follow("bob-tv-", true, None));
        let e = w.put("bob-tv-b", 2);
        assert!(set.on_event(&e, &w.state).is_empty());
        assert_eq!(set.tracked(), 0);
        Ok(())
    }

    #[test]
    fn resync_sends_only_what_moved() -> Result<(), String> {
        let mut w = World::new(10);
        w.create("bob-tv-a");
        w.create("bob-tv-b");
        let mut set = SubscriptionSet::default();
        set.add(follow("bob-tv-", true, None), &w.state)?;
        w.put("bob-tv-b", 1);
        w.put("bob-tv-b", 2);
        assert_eq!(versions(&set.resync(&w.state)), ["s2"]);
        assert!(set.resync(&w.state).is_empty());
        Ok(())
    }
}
