//! The pure core of the agent: which maps are followed, their version windows, leases, pins,
//! idle times and lag. No I/O and no clock: callers pass `now`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use sharing_map::{AppName, MapKey, MapName, MethodRuntime, SharingMap, Snapshot, VersionWindow};
use spine_client::MapUpdate;
use tokio::sync::watch;

/// What readers of one map share: the newest snapshot (none before the first version arrives)
/// and a count of snapshots pinned from it.
#[derive(Clone, Debug)]
pub struct Shared {
    /// The newest snapshot.
    pub newest: watch::Receiver<Option<Snapshot>>,
    /// Snapshots currently pinned by readers.
    pub pins: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Followed {
    window: Option<VersionWindow>,
    newest: watch::Sender<Option<Snapshot>>,
    pins: Arc<AtomicUsize>,
    leases: usize,
    idle_since: Option<Instant>,
    applied_at: Option<Instant>,
    spine_version: Option<u64>,
    behind_since: Option<Instant>,
    updates: u64,
    snapshots: u64,
}

/// Per-map figures for status output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MapStatus {
    /// The app.
    pub app: String,
    /// The map.
    pub map: String,
    /// Newest local version (none before the first arrives).
    pub version: Option<u64>,
    /// Versions retained in the window.
    pub retained: usize,
    /// Snapshots pinned by readers right now.
    pub pinned: usize,
    /// Readers holding the map open.
    pub leases: usize,
    /// Versions the Spine had beyond the local one at the last probe.
    pub versions_behind: u64,
    /// How long the local copy has been behind the Spine, in milliseconds (0 when current).
    pub behind_ms: u64,
    /// Deltas applied.
    pub updates: u64,
    /// Full snapshots applied (first contact, catch-up beyond the Spine's history).
    pub snapshots: u64,
}

/// What applying an update did to a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The map is not followed (it was dropped meanwhile): ignored.
    NotFollowed,
    /// Old news: ignored.
    Ignored,
    /// A new version; `first` when it is the map's first.
    Version {
        /// The new version.
        version: u64,
        /// Whether readers were waiting for a first version.
        first: bool,
    },
    /// The update skips versions; the subscription must resynchronize this map.
    Gap,
}

/// Every followed map.
#[derive(Debug)]
pub struct Registry {
    maps: HashMap<MapKey, Followed>,
    versions_kept: usize,
    idle_timeout: Duration,
    runtime: Option<Arc<MethodRuntime>>,
}

impl Registry {
    /// An empty registry keeping `versions_kept` versions per map and dropping maps no reader
    /// used for `idle_timeout`; methods run on `runtime` (`None`: `no_exec`).
    pub fn new(
        versions_kept: usize,
        idle_timeout: Duration,
        runtime: Option<Arc<MethodRuntime>>,
    ) -> Self {
        Self {
            maps: HashMap::new(),
            versions_kept: versions_kept.max(1),
            idle_timeout,
            runtime,
        }
    }

    /// Number of followed maps.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Whether no map is followed.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Takes a lease on a map. Returns whether the map is new (the caller must subscribe to it)
    /// and what its readers share.
    pub fn open(&mut self, key: &MapKey) -> (bool, Shared) {
        let new = !self.maps.contains_key(key);
        let f = self.maps.entry(key.clone()).or_insert_with(|| Followed {
            window: None,
            newest: watch::channel(None).0,
            pins: Arc::new(AtomicUsize::new(0)),
            leases: 0,
            idle_since: None,
            applied_at: None,
            spine_version: None,
            behind_since: None,
            updates: 0,
            snapshots: 0,
        });
        f.leases += 1;
        f.idle_since = None;
        (
            new,
            Shared {
                newest: f.newest.subscribe(),
                pins: f.pins.clone(),
            },
        )
    }

    /// Returns a lease; the map becomes idle when no lease and no pin remains.
    pub fn release(&mut self, key: &MapKey, now: Instant) {
        if let Some(f) = self.maps.get_mut(key) {
            f.leases = f.leases.saturating_sub(1);
            if f.leases == 0 {
                f.idle_since = Some(now);
            }
        }
    }

    /// The newest version of a map, if one arrived.
    pub fn version(&self, key: &MapKey) -> Option<u64> {
        self.maps
            .get(key)
            .and_then(|f| f.window.as_ref())
            .map(VersionWindow::version)
    }

    /// Applies one update from the subscription.
    pub fn apply(&mut self, update: &MapUpdate, now: Instant) -> Applied {
        let key = MapKey {
            app: update.app().clone(),
            map: update.map().clone(),
        };
        let Some(f) = self.maps.get_mut(&key) else {
            return Applied::NotFollowed;
        };
        let first = f.window.is_none();
        let outcome = match (update, f.window.as_mut()) {
            (MapUpdate::Snapshot { dump, .. }, None) => {
                let map = SharingMap::restore(dump.clone());
                let v = map.version();
                f.window = Some(VersionWindow::with_runtime(
                    map,
                    self.versions_kept,
                    self.runtime.clone(),
                ));
                f.snapshots += 1;
                Some(v)
            }
            (MapUpdate::Snapshot { dump, .. }, Some(w)) => match w.reset(dump.clone()) {
                Ok(sharing_map::DeltaOutcome::Applied(v)) => {
                    f.snapshots += 1;
                    Some(v)
                }
                _ => None,
            },
            (MapUpdate::Delta { .. }, None) => return Applied::Gap,
            (MapUpdate::Delta { change_set, .. }, Some(w)) => match w.apply_delta(change_set) {
                Ok(sharing_map::DeltaOutcome::Applied(v)) => {
                    f.updates += 1;
                    Some(v)
                }
                Ok(sharing_map::DeltaOutcome::Gap { .. }) => return Applied::Gap,
                _ => None,
            },
        };
        let Some(version) = outcome else {
            return Applied::Ignored;
        };
        if let Some(w) = &f.window {
            f.newest.send_replace(Some(w.pin()));
        }
        f.applied_at = Some(now);
        if f.spine_version.is_some_and(|s| s <= version) {
            f.behind_since = None;
        }
        Applied::Version { version, first }
    }

    /// Records the Spine's versions of some maps (from a periodic probe), for lag reporting.
    pub fn observe_spine(&mut self, key: &MapKey, spine_version: u64, now: Instant) {
        if let Some(f) = self.maps.get_mut(key) {
            let local = f.window.as_ref().map(VersionWindow::version);
            f.spine_version = Some(spine_version);
            if local.is_some_and(|l| l >= spine_version) {
                f.behind_since = None;
            } else if f.behind_since.is_none() {
                f.behind_since = Some(now);
            }
        }
    }

    /// Drops maps idle longer than the timeout (no lease, no pin); returns them so the caller
    /// unsubscribes.
    pub fn sweep(&mut self, now: Instant) -> Vec<MapKey> {
        let timeout = self.idle_timeout;
        let expired: Vec<MapKey> = self
            .maps
            .iter()
            .filter(|(_, f)| {
                f.leases == 0
                    && f.pins.load(Ordering::SeqCst) == 0
                    && f.idle_since
                        .is_some_and(|t| now.duration_since(t) >= timeout)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.maps.remove(k);
        }
        expired
    }

    /// Apps with followed maps.
    pub fn apps(&self) -> Vec<AppName> {
        let mut apps: Vec<AppName> = self.maps.keys().map(|k| k.app.clone()).collect();
        apps.sort();
        apps.dedup();
        apps
    }

    /// Followed maps of `app`.
    pub fn maps_of(&self, app: &AppName) -> Vec<MapName> {
        self.maps
            .keys()
            .filter(|k| &k.app == app)
            .map(|k| k.map.clone())
            .collect()
    }

    /// Whether a map is followed.
    pub fn follows(&self, key: &MapKey) -> bool {
        self.maps.contains_key(key)
    }

    /// Per-map status, sorted by app and map.
    pub fn status(&self, now: Instant) -> Vec<MapStatus> {
        let mut all: Vec<MapStatus> = self
            .maps
            .iter()
            .map(|(k, f)| {
                let version = f.window.as_ref().map(VersionWindow::version);
                MapStatus {
                    app: k.app.to_string(),
                    map: k.map.to_string(),
                    version,
                    retained: f.window.as_ref().map_or(0, VersionWindow::retained),
                    pinned: f.pins.load(Ordering::SeqCst),
                    leases: f.leases,
                    versions_behind: f
                        .spine_version
                        .map_or(0, |s| s.saturating_sub(version.unwrap_or(0))),
                    behind_ms: f
                        .behind_since
                        .map_or(0, |t| now.duration_since(t).as_millis() as u64),
                    updates: f.updates,
                    snapshots: f.snapshots,
                }
            })
            .collect();
        all.sort_by(|a, b| (&a.app, &a.map).cmp(&(&b.app, &b.map)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sharing_map::{ChangeSet, Entry, UpdateId};

    fn key(map: &str) -> MapKey {
        MapKey {
            app: AppName::parse("acme-shop").unwrap_or_else(|e| panic!("{e}")),
            map: MapName::parse(map).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    fn snapshot(map: &str, version: u64) -> MapUpdate {
        let mut m = SharingMap::new(key(map).map);
        for v in 0..version {
            if let Ok(sharing_map::Applied::New(next)) = m.apply(&delta_cs(map, v)) {
                m = next;
            }
        }
        MapUpdate::Snapshot {
            app: key(map).app,
            dump: m.dump(),
        }
    }

    fn delta_cs(map: &str, version: u64) -> ChangeSet {
        ChangeSet::from_ops(
            key(map).map,
            version,
            UpdateId::parse(&format!("u{version}")).unwrap_or_else(|e| panic!("{e}")),
            [(Arc::from("k"), Some(Entry::value(json!(version))))],
        )
    }

    fn delta(map: &str, version: u64) -> MapUpdate {
        MapUpdate::Delta {
            app: key(map).app,
            change_set: delta_cs(map, version),
        }
    }

    #[test]
    fn readers_share_the_newest_snapshot_and_pins_hold_old_ones() {
        let now = Instant::now();
        let mut r = Registry::new(2, Duration::from_secs(1), None);
        let (new, shared) = r.open(&key("bob-tv-x"));
        assert!(new);
        assert!(shared.newest.borrow().is_none());
        assert_eq!(
            r.apply(&snapshot("bob-tv-x", 3), now),
            Applied::Version {
                version: 3,
                first: true
            }
        );
        let held = shared.newest.borrow().clone();
        for v in 3..10 {
            assert!(matches!(
                r.apply(&delta("bob-tv-x", v), now),
                Applied::Version { first: false, .. }
            ));
        }
        assert_eq!(held.as_ref().map(|s| s.version()), Some(3));
        assert_eq!(
            held.as_ref().and_then(|s| s.get("k").cloned()),
            Some(json!(2))
        );
        assert_eq!(
            shared.newest.borrow().as_ref().map(|s| s.version()),
            Some(10)
        );
        assert_eq!(r.apply(&delta("bob-tv-x", 4), now), Applied::Ignored);
        assert_eq!(r.apply(&delta("bob-tv-x", 12), now), Applied::Gap);
        assert_eq!(r.status(now)[0].retained, 2);
    }

    #[test]
    fn idle_maps_are_swept_only_without_leases_or_pins() {
        let t0 = Instant::now();
        let mut r = Registry::new(2, Duration::from_secs(10), None);
        let k = key("bob-tv-x");
        let (_, shared) = r.open(&k);
        r.apply(&snapshot("bob-tv-x", 1), t0);
        assert!(r.sweep(t0 + Duration::from_secs(60)).is_empty(), "leased");
        r.release(&k, t0);
        shared.pins.fetch_add(1, Ordering::SeqCst);
        assert!(r.sweep(t0 + Duration::from_secs(60)).is_empty(), "pinned");
        shared.pins.fetch_sub(1, Ordering::SeqCst);
        assert!(
            r.sweep(t0 + Duration::from_secs(5)).is_empty(),
            "not idle long enough"
        );
        assert_eq!(r.sweep(t0 + Duration::from_secs(11)), vec![k.clone()]);
        assert!(r.is_empty());
        assert_eq!(r.apply(&delta("bob-tv-x", 1), t0), Applied::NotFollowed);
        // Reopening a swept map starts over.
        assert!(r.open(&k).0);
    }

    #[test]
    fn lag_is_measured_against_the_spine() {
        let t0 = Instant::now();
        let mut r = Registry::new(2, Duration::from_secs(10), None);
        let k = key("bob-tv-x");
        r.open(&k);
        r.apply(&snapshot("bob-tv-x", 2), t0);
        r.observe_spine(&k, 5, t0);
        let s = &r.status(t0 + Duration::from_millis(300))[0];
        assert_eq!((s.versions_behind, s.behind_ms), (3, 300));
        for v in 2..5 {
            r.apply(&delta("bob-tv-x", v), t0);
        }
        let s = &r.status(t0 + Duration::from_millis(400))[0];
        assert_eq!((s.versions_behind, s.behind_ms), (0, 0));
    }
}
