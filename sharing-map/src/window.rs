//! The replica's side: a window of the newest few versions, and pinned snapshots.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::{Applied, ApplyError, ChangeSet, MapDump, MethodError, MethodRuntime, SharingMap};

/// An immutable view of one map version, held by a reader for a whole message.
///
/// It stays valid and unchanged while held, whatever the replica applies afterwards; when the last
/// holder drops it and the window no longer retains it, its memory is freed.
#[derive(Clone, Debug)]
pub struct Snapshot {
    map: SharingMap,
    runtime: Option<Arc<MethodRuntime>>,
}

impl Snapshot {
    /// A snapshot of `map`; methods run on `runtime`, or are refused when it is `None` (`no_exec`).
    pub fn new(map: SharingMap, runtime: Option<Arc<MethodRuntime>>) -> Self {
        Self { map, runtime }
    }
    /// The pinned version.
    pub fn version(&self) -> u64 {
        self.map.version()
    }
    /// The pinned map.
    pub fn map(&self) -> &SharingMap {
        &self.map
    }
    /// The JSON value under `key` in this version.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.map.get_value(key)
    }
    /// Runs the method under `key` with `this` bound to this snapshot.
    pub fn invoke(
        &self,
        key: &str,
        args: &[serde_json::Value],
    ) -> Result<serde_json::Value, MethodError> {
        match &self.runtime {
            None => Err(MethodError::ExecDisabled {
                map: self.map.name().to_string(),
            }),
            Some(rt) => rt.invoke(&self.map, key, args),
        }
    }
}

impl std::ops::Deref for Snapshot {
    type Target = SharingMap;
    fn deref(&self) -> &SharingMap {
        &self.map
    }
}

/// What feeding a delta to a [`VersionWindow`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// Applied; the window's newest version is now this one.
    Applied(u64),
    /// Older than (or equal to) what the window has: ignored.
    Ignored,
    /// It skips versions: the replica must resynchronize from a full dump.
    Gap {
        /// The newest version held.
        have: u64,
        /// The version the delta applies to.
        got: u64,
    },
}

/// The newest `capacity` versions of one map on a replica.
///
/// Deltas are applied strictly in order; an old one is ignored and one that skips a version is a
/// gap. A reader [`pin`](Self::pin)s the newest version for the duration of a message.
#[derive(Debug)]
pub struct VersionWindow {
    versions: VecDeque<SharingMap>,
    capacity: usize,
    runtime: Option<Arc<MethodRuntime>>,
}

impl VersionWindow {
    /// A window starting at `initial`, keeping at most `capacity` (at least 1) versions, running
    /// methods on the default runtime.
    pub fn new(initial: SharingMap, capacity: usize) -> Self {
        Self::with_runtime(initial, capacity, Some(MethodRuntime::shared_default()))
    }

    /// Like [`new`](Self::new) with an explicit method runtime; `None` opens the replica
    /// `no_exec`.
    pub fn with_runtime(
        initial: SharingMap,
        capacity: usize,
        runtime: Option<Arc<MethodRuntime>>,
    ) -> Self {
        let mut versions = VecDeque::with_capacity(capacity.max(1));
        versions.push_back(initial);
        Self {
            versions,
            capacity: capacity.max(1),
            runtime,
        }
    }

    fn newest(&self) -> &SharingMap {
        // The window is never empty: it starts with one version and only trims down to one.
        &self.versions[self.versions.len() - 1]
    }

    /// The newest version number held.
    pub fn version(&self) -> u64 {
        self.newest().version()
    }

    /// The oldest version number still retained.
    pub fn oldest_version(&self) -> u64 {
        self.versions[0].version()
    }

    /// Number of versions retained (pinned snapshots may keep more alive).
    pub fn retained(&self) -> usize {
        self.versions.len()
    }

    /// A snapshot of the newest version.
    pub fn pin(&self) -> Snapshot {
        Snapshot::new(self.newest().clone(), self.runtime.clone())
    }

    /// A snapshot of a retained version.
    pub fn pin_version(&self, version: u64) -> Option<Snapshot> {
        self.versions
            .iter()
            .find(|m| m.version() == version)
            .map(|m| Snapshot::new(m.clone(), self.runtime.clone()))
    }

    /// Feeds one delta from the Spine.
    pub fn apply_delta(&mut self, cs: &ChangeSet) -> Result<DeltaOutcome, ApplyError> {
        match self.newest().apply(cs) {
            Ok(Applied::New(next)) => {
                let v = next.version();
                self.push(next);
                Ok(DeltaOutcome::Applied(v))
            }
            Ok(Applied::Duplicate { .. }) | Err(ApplyError::Conflict { .. }) => {
                Ok(DeltaOutcome::Ignored)
            }
            Err(ApplyError::Gap { current, got, .. }) => {
                Ok(DeltaOutcome::Gap { have: current, got })
            }
            Err(e) => Err(e),
        }
    }

    /// Resynchronizes from a full dump; a dump older than the newest version is ignored.
    pub fn reset(&mut self, dump: MapDump) -> Result<DeltaOutcome, ApplyError> {
        if &dump.name != self.newest().name() {
            return Err(ApplyError::WrongMap {
                map: self.newest().name().to_string(),
                got: dump.name.to_string(),
            });
        }
        if dump.version <= self.version() && self.version() > 0 {
            return Ok(DeltaOutcome::Ignored);
        }
        let map = SharingMap::restore(dump);
        let v = map.version();
        self.push(map);
        Ok(DeltaOutcome::Applied(v))
    }

    fn push(&mut self, map: SharingMap) {
        self.versions.push_back(map);
        while self.versions.len() > self.capacity {
            self.versions.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, MapName, UpdateId};
    use serde_json::json;

    fn delta(version: u64, key: &str, v: i64) -> ChangeSet {
        ChangeSet::from_ops(
            MapName::parse("bob-tv-x").unwrap_or_else(|e| panic!("{e}")),
            version,
            UpdateId::parse(&format!("u{version}")).unwrap_or_else(|e| panic!("{e}")),
            [(Arc::from(key), Some(Entry::value(json!(v))))],
        )
    }

    fn window(k: usize) -> VersionWindow {
        let name = MapName::parse("bob-tv-x").unwrap_or_else(|e| panic!("{e}"));
        VersionWindow::new(SharingMap::new(name), k)
    }

    #[test]
    fn a_pinned_snapshot_never_changes() -> Result<(), ApplyError> {
        let mut w = window(3);
        w.apply_delta(&delta(0, "a", 1))?;
        let pinned = w.pin();
        for v in 1..100 {
            w.apply_delta(&delta(v, "a", v as i64 + 1))?;
        }
        assert_eq!(pinned.version(), 1);
        assert_eq!(pinned.get("a"), Some(&json!(1)));
        assert_eq!(w.pin().get("a"), Some(&json!(100)));
        assert_eq!(w.retained(), 3);
        assert_eq!(w.oldest_version(), 98);
        Ok(())
    }

    #[test]
    fn old_deltas_are_ignored_and_skips_are_gaps() -> Result<(), ApplyError> {
        let mut w = window(2);
        assert_eq!(w.apply_delta(&delta(0, "a", 1))?, DeltaOutcome::Applied(1));
        assert_eq!(w.apply_delta(&delta(0, "a", 1))?, DeltaOutcome::Ignored);
        assert_eq!(
            w.apply_delta(&delta(5, "a", 1))?,
            DeltaOutcome::Gap { have: 1, got: 5 }
        );
        assert_eq!(w.version(), 1);
        Ok(())
    }

    #[test]
    fn reset_moves_forward_only() -> Result<(), ApplyError> {
        let name = MapName::parse("bob-tv-x").unwrap_or_else(|e| panic!("{e}"));
        let mut writer = SharingMap::new(name);
        for v in 0..5 {
            if let Applied::New(next) = writer.apply(&delta(v, "k", v as i64))? {
                writer = next;
            }
        }
        let mut w = window(2);
        assert_eq!(w.reset(writer.dump())?, DeltaOutcome::Applied(5));
        assert_eq!(w.pin().map(), &writer);
        assert_eq!(w.reset(writer.dump())?, DeltaOutcome::Ignored);
        Ok(())
    }

    #[test]
    fn no_exec_refuses_methods() {
        let name = MapName::parse("bob-tv-x").unwrap_or_else(|e| panic!("{e}"));
        let map = SharingMap::with_entries(name, [(Arc::from("m"), Entry::method(vec![], "1"))]);
        let w = VersionWindow::with_runtime(map, 2, None);
        assert!(matches!(
            w.pin().invoke("m", &[]),
            Err(MethodError::ExecDisabled { .. })
        ));
    }
}
