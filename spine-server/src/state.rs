//! The replicated state machine: a pure function from (state, command) to (state, outcome).
//!
//! Every node applies the same committed commands in the same order and so computes the same
//! state and the same outcome; the node that proposed a command answers its client from its own
//! apply. The state is built from persistent structures, so publishing it to readers after each
//! batch is a reference-count bump.

use std::collections::BTreeMap;
use std::sync::Arc;

use rpds::{QueueSync, RedBlackTreeMapSync};
use serde::{Deserialize, Serialize};
use sharing_map::{
    AppName, Applied, ApplyError, ChangeSet, Entry, LimitError, Limits, MapDump, MapName,
    SharingMap,
};

/// A map's identity (sharing-map's; stored in snapshots and checkpoints as it always was).
pub use sharing_map::MapKey;

/// One map's master copy and its recent change sets.
#[derive(Clone, Debug)]
pub struct MapState {
    /// The newest version.
    pub map: SharingMap,
    /// The most recent change sets, oldest first, contiguous and ending at `map.version()`.
    pub history: QueueSync<Arc<ChangeSet>>,
}

impl MapState {
    /// The change sets after `version`, if all of them are still retained.
    pub fn deltas_after(&self, version: u64) -> Option<Vec<Arc<ChangeSet>>> {
        let current = self.map.version();
        if version >= current {
            return Some(Vec::new());
        }
        let oldest = self.history.peek().map(|cs| cs.version())?;
        if version < oldest {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|cs| cs.version() >= version)
                .cloned()
                .collect(),
        )
    }

    /// The version before the oldest retained change set (history covers what follows it).
    pub fn oldest_retained(&self) -> u64 {
        self.history
            .peek()
            .map(|cs| cs.version())
            .unwrap_or(self.map.version())
    }
}

/// Who is in the Raft group and where they listen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Voting members.
    pub voters: Vec<u64>,
    /// Non-voting members.
    pub learners: Vec<u64>,
    /// Advertised address of each member.
    pub addrs: BTreeMap<u64, String>,
}

/// What one node has applied.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Index of the last applied log entry.
    pub applied_index: u64,
    /// Term of that entry.
    pub applied_term: u64,
    /// Membership as of the applied index.
    pub membership: Membership,
    /// Every map, ordered by app then name (so prefixes are ranges).
    pub maps: RedBlackTreeMapSync<MapKey, MapState>,
}

/// A command carried by one Raft log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create a map if absent.
    Create {
        /// The map.
        key: MapKey,
        /// Its initial content.
        initial: Vec<(Arc<str>, Entry)>,
    },
    /// Apply change sets to maps of one writer, all or none.
    Update {
        /// The app namespace.
        app: AppName,
        /// The change sets, one per map.
        change_sets: Vec<ChangeSet>,
    },
    /// No effect; proposed to commit an entry in a new term.
    Noop,
    /// Independent updates committed as one entry (group commit): each applies or not on its
    /// own, as [`Command::Update`] would.
    Batch {
        /// The updates, in request order.
        updates: Vec<Update>,
    },
}

/// One update of a [`Command::Batch`]: change sets of maps of one writer, all or none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// The app namespace.
    pub app: AppName,
    /// The change sets, one per map.
    pub change_sets: Vec<ChangeSet>,
}

/// The log entry payload: a command plus who is waiting for its outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The node that proposed it.
    pub origin: u64,
    /// The proposer's request number.
    pub request: u64,
    /// What to do.
    pub command: Command,
}

/// The result of applying a command, returned to the client that proposed it.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A map was created, or already existed.
    Created {
        /// Its version.
        version: u64,
        /// Whether this command created it.
        created: bool,
    },
    /// Change sets were applied (or were retries of the last update).
    Updated {
        /// The version each change set produced, in request order.
        versions: Vec<u64>,
    },
    /// Nothing changed.
    Rejected(Rejection),
    /// A no-op was applied.
    Nothing,
    /// The outcome of each update of a batch, in request order.
    Batch(Vec<Outcome>),
}

/// Why a command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The map does not exist.
    #[error("map {map} does not exist in app {app}")]
    NotFound {
        /// The app.
        app: String,
        /// The map.
        map: String,
    },
    /// Compare-and-swap failed, or a limit was broken.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
}

/// What a command changed, for persistence and subscribers.
#[derive(Clone, Debug)]
pub enum Change {
    /// A map was created at version 0.
    Created {
        /// The map.
        key: MapKey,
        /// Its first version.
        map: SharingMap,
    },
    /// A change set was applied.
    Delta {
        /// The map.
        key: MapKey,
        /// The change set.
        change_set: Arc<ChangeSet>,
        /// History versions dropped from retention by this change.
        dropped_history: Vec<u64>,
    },
}

/// Checks an update request before it is proposed: at least one change set, one map each, all
/// maps of one writer, every key and value within `limits`.
pub fn validate_update(change_sets: &[ChangeSet], limits: &Limits) -> Result<(), Rejection> {
    let Some(first) = change_sets.first() else {
        return Err(Rejection::Invalid(
            "an update needs at least one change set".into(),
        ));
    };
    let writer = first.map().writer();
    let mut seen = std::collections::BTreeSet::new();
    for cs in change_sets {
        if cs.map().writer() != writer {
            return Err(Rejection::Invalid(format!(
                "all change sets of one update must be for maps of one writer: {} is written by {}, {} by {}",
                first.map(),
                writer,
                cs.map(),
                cs.map().writer()
            )));
        }
        if !seen.insert(cs.map().clone()) {
            return Err(Rejection::Invalid(format!(
                "map {} appears twice in one update; merge its change sets",
                cs.map()
            )));
        }
        limits
            .check_change_set(cs)
            .map_err(|e| Rejection::Apply(ApplyError::Limit(e)))?;
    }
    Ok(())
}

/// Checks a create request's initial content against `limits`.
pub fn validate_create(
    map: &MapName,
    initial: &[(Arc<str>, Entry)],
    limits: &Limits,
) -> Result<(), LimitError> {
    for (k, e) in initial {
        limits.check_entry(k, e)?;
    }
    if initial.len() > limits.max_entries {
        return Err(LimitError::TooManyEntries {
            map: map.to_string(),
            count: initial.len(),
            max: limits.max_entries,
        });
    }
    let size: usize = initial.iter().map(|(k, e)| k.len() + e.encoded_len()).sum();
    if size > limits.max_change_set_bytes {
        return Err(LimitError::ChangeSetTooLarge {
            map: map.to_string(),
            len: size,
            max: limits.max_change_set_bytes,
        });
    }
    Ok(())
}

/// Settings that every node must share, because they change what apply computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyConfig {
    /// Change sets retained per map for catch-up.
    pub history_len: usize,
    /// Size limits.
    pub limits: Limits,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        Self {
            history_len: 1000,
            limits: Limits::default(),
        }
    }
}

impl State {
    /// Looks a map up.
    pub fn get(&self, app: &AppName, map: &MapName) -> Option<&MapState> {
        self.maps.get(&MapKey {
            app: app.clone(),
            map: map.clone(),
        })
    }

    /// Maps of `app` whose names start with `prefix`, in name order.
    pub fn with_prefix<'a>(
        &'a self,
        app: &'a AppName,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a MapKey, &'a MapState)> + 'a {
        self.maps
            .iter()
            .skip_while(move |(k, _)| &k.app < app)
            .take_while(move |(k, _)| &k.app == app)
            .filter(move |(k, _)| k.map.as_str().starts_with(prefix))
    }

    /// Applies one command; the caller records the log position.
    pub fn apply(&mut self, command: &Command, cfg: &ApplyConfig) -> (Outcome, Vec<Change>) {
        match command {
            Command::Noop => (Outcome::Nothing, Vec::new()),
            Command::Create { key, initial } => {
                if let Some(existing) = self.maps.get(key) {
                    let version = existing.map.version();
                    return (
                        Outcome::Created {
                            version,
                            created: false,
                        },
                        Vec::new(),
                    );
                }
                let map = SharingMap::with_entries(key.map.clone(), initial.iter().cloned());
                self.maps.insert_mut(
                    key.clone(),
                    MapState {
                        map: map.clone(),
                        history: QueueSync::new_sync(),
                    },
                );
                (
                    Outcome::Created {
                        version: 0,
                        created: true,
                    },
                    vec![Change::Created {
                        key: key.clone(),
                        map,
                    }],
                )
            }
            Command::Update { app, change_sets } => self.apply_update(app, change_sets, cfg),
            Command::Batch { updates } => {
                let mut outcomes = Vec::with_capacity(updates.len());
                let mut changes = Vec::new();
                for u in updates {
                    let (outcome, ch) = self.apply_update(&u.app, &u.change_sets, cfg);
                    outcomes.push(outcome);
                    changes.extend(ch);
                }
                (Outcome::Batch(outcomes), changes)
            }
        }
    }

    fn apply_update(
        &mut self,
        app: &AppName,
        change_sets: &[ChangeSet],
        cfg: &ApplyConfig,
    ) -> (Outcome, Vec<Change>) {
        // Check everything first, so that either all change sets apply or none does.
        let mut next = Vec::with_capacity(change_sets.len());
        let mut versions = Vec::with_capacity(change_sets.len());
        for cs in change_sets {
            let key = MapKey {
                app: app.clone(),
                map: cs.map().clone(),
            };
            let Some(state) = self.maps.get(&key) else {
                return (
                    Outcome::Rejected(Rejection::NotFound {
                        app: app.to_string(),
                        map: cs.map().to_string(),
                    }),
                    Vec::new(),
                );
            };
            match state.map.apply_checked(cs, &cfg.limits) {
                Ok(Applied::New(map)) => {
                    versions.push(map.version());
                    next.push((key, map, cs));
                }
                Ok(Applied::Duplicate { version }) => versions.push(version),
                Err(ApplyError::Gap { map, current, got }) => {
                    // To a writer, a change set for a future version is as stale as an old one.
                    return (
                        Outcome::Rejected(Rejection::Apply(ApplyError::Conflict {
                            map,
                            current,
                            expected: got,
                        })),
                        Vec::new(),
                    );
                }
                Err(e) => return (Outcome::Rejected(Rejection::Apply(e)), Vec::new()),
            }
        }
        let mut changes = Vec::with_capacity(next.len());
        for (key, map, cs) in next {
            let cs = Arc::new(cs.clone());
            let mut history = self
                .maps
                .get(&key)
                .map(|s| s.history.clone())
                .unwrap_or_else(QueueSync::new_sync);
            history.enqueue_mut(cs.clone());
            let mut dropped_history = Vec::new();
            while history.len() > cfg.history_len {
                if let Some(old) = history.peek() {
                    dropped_history.push(old.version());
                }
                history.dequeue_mut();
            }
            self.maps.insert_mut(key.clone(), MapState { map, history });
            changes.push(Change::Delta {
                key,
                change_set: cs,
                dropped_history,
            });
        }
        (Outcome::Updated { versions }, changes)
    }

    /// A self-contained image of the state, for Raft snapshots.
    pub fn image(&self) -> StateImage {
        StateImage {
            applied_index: self.applied_index,
            applied_term: self.applied_term,
            membership: self.membership.clone(),
            maps: self
                .maps
                .iter()
                .map(|(k, s)| MapImage {
                    app: k.app.clone(),
                    dump: s.map.dump(),
                    history: s.history.iter().map(|cs| (**cs).clone()).collect(),
                })
                .collect(),
        }
    }

    /// Rebuilds a state from an image.
    pub fn from_image(image: StateImage) -> Self {
        let mut maps = RedBlackTreeMapSync::new_sync();
        for m in image.maps {
            let key = MapKey {
                app: m.app,
                map: m.dump.name.clone(),
            };
            let mut history = QueueSync::new_sync();
            for cs in m.history {
                history.enqueue_mut(Arc::new(cs));
            }
            maps.insert_mut(
                key,
                MapState {
                    map: SharingMap::restore(m.dump),
                    history,
                },
            );
        }
        Self {
            applied_index: image.applied_index,
            applied_term: image.applied_term,
            membership: image.membership,
            maps,
        }
    }

    /// A digest of every map's content and version, equal on replicas that applied the same log.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        for (k, s) in self.maps.iter() {
            k.hash(&mut h);
            s.map.digest().hash(&mut h);
        }
        h.finish()
    }
}

/// One map inside a [`StateImage`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapImage {
    /// The app.
    pub app: AppName,
    /// The newest version.
    pub dump: MapDump,
    /// Retained change sets, oldest first.
    pub history: Vec<ChangeSet>,
}

/// The whole state in one serializable value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateImage {
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// Its term.
    pub applied_term: u64,
    /// Membership at that index.
    pub membership: Membership,
    /// Every map.
    pub maps: Vec<MapImage>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sharing_map::UpdateId;

    fn key(map: &str) -> MapKey {
        MapKey {
            app: AppName::parse("acme-shop").unwrap_or_else(|e| panic!("{e}")),
            map: MapName::parse(map).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    fn cs(map: &str, version: u64, id: &str, k: &str, v: i64) -> ChangeSet {
        ChangeSet::from_ops(
            MapName::parse(map).unwrap_or_else(|e| panic!("{e}")),
            version,
            UpdateId::parse(id).unwrap_or_else(|e| panic!("{e}")),
            [(Arc::from(k), Some(Entry::value(json!(v))))],
        )
    }

    fn update(map_css: Vec<ChangeSet>) -> Command {
        Command::Update {
            app: key("bob-tv-x").app,
            change_sets: map_css,
        }
    }

    fn create(state: &mut State, map: &str) {
        let cfg = ApplyConfig::default();
        let (out, _) = state.apply(
            &Command::Create {
                key: key(map),
                initial: vec![],
            },
            &cfg,
        );
        assert_eq!(
            out,
            Outcome::Created {
                version: 0,
                created: true
            }
        );
    }

    #[test]
    fn a_batch_applies_each_update_on_its_own() {
        let mut s = State::default();
        for m in ["bob-tv-x", "ann-tv-y", "cat-tv-z"] {
            create(&mut s, m);
        }
        let cfg = ApplyConfig::default();
        let app = key("bob-tv-x").app;
        let batch = |updates: Vec<ChangeSet>| Command::Batch {
            updates: updates
                .into_iter()
                .map(|c| Update {
                    app: app.clone(),
                    change_sets: vec![c],
                })
                .collect(),
        };
        let (out, changes) = s.apply(
            &batch(vec![
                cs("bob-tv-x", 0, "b1", "a", 1),
                cs("ann-tv-y", 3, "a1", "a", 1), // stale: a conflict for this one only
                cs("cat-tv-z", 0, "c1", "a", 1),
                cs("bob-tv-x", 1, "b2", "a", 2), // a later update of the same map, in order
            ]),
            &cfg,
        );
        let Outcome::Batch(outcomes) = out else {
            panic!("{out:?}")
        };
        assert_eq!(outcomes[0], Outcome::Updated { versions: vec![1] });
        assert!(matches!(
            outcomes[1],
            Outcome::Rejected(Rejection::Apply(ApplyError::Conflict { current: 0, .. }))
        ));
        assert_eq!(outcomes[2], Outcome::Updated { versions: vec![1] });
        assert_eq!(outcomes[3], Outcome::Updated { versions: vec![2] });
        assert_eq!(changes.len(), 3);
        let version = |s: &State, m: &str| s.maps.get(&key(m)).map(|m| m.map.version());
        assert_eq!(version(&s, "bob-tv-x"), Some(2));
        assert_eq!(version(&s, "ann-tv-y"), Some(0));
        // The same batch again (a retried proposal): the last update of each map is answered
        // idempotently, nothing changes.
        let (again, changes) = s.apply(&batch(vec![cs("bob-tv-x", 1, "b2", "a", 2)]), &cfg);
        assert_eq!(
            again,
            Outcome::Batch(vec![Outcome::Updated { versions: vec![2] }])
        );
        assert!(changes.is_empty());
    }

    #[test]
    fn create_is_create_if_absent() {
        let mut s = State::default();
        create(&mut s, "bob-tv-x");
        let cfg = ApplyConfig::default();
        s.apply(&update(vec![cs("bob-tv-x", 0, "u1", "a", 1)]), &cfg);
        let (out, changes) = s.apply(
            &Command::Create {
                key: key("bob-tv-x"),
                initial: vec![(Arc::from("z"), Entry::value(json!(0)))],
            },
            &cfg,
        );
        assert_eq!(
            out,
            Outcome::Created {
                version: 1,
                created: false
            }
        );
        assert!(changes.is_empty());
        assert!(
            s.get(&key("bob-tv-x").app, &key("bob-tv-x").map)
                .is_some_and(|m| !m.map.contains_key("z"))
        );
    }

    #[test]
    fn multi_map_updates_are_all_or_nothing() {
        let mut s = State::default();
        create(&mut s, "bob-tv-x");
        create(&mut s, "bob-tv-y");
        let cfg = ApplyConfig::default();
        let before = s.digest();
        let (out, changes) = s.apply(
            &update(vec![
                cs("bob-tv-x", 0, "u1", "a", 1),
                cs("bob-tv-y", 3, "u1", "a", 1),
            ]),
            &cfg,
        );
        assert!(matches!(
            out,
            Outcome::Rejected(Rejection::Apply(ApplyError::Conflict {
                current: 0,
                expected: 3,
                ..
            }))
        ));
        assert!(changes.is_empty());
        assert_eq!(s.digest(), before);
        let (out, changes) = s.apply(
            &update(vec![
                cs("bob-tv-x", 0, "u1", "a", 1),
                cs("bob-tv-y", 0, "u1", "a", 1),
            ]),
            &cfg,
        );
        assert_eq!(
            out,
            Outcome::Updated {
                versions: vec![1, 1]
            }
        );
        assert_eq!(changes.len(), 2);
        // A retry of the last update id is an idempotent success.
        let (out, changes) = s.apply(
            &update(vec![
                cs("bob-tv-x", 0, "u1", "a", 1),
                cs("bob-tv-y", 0, "u1", "a", 1),
            ]),
            &cfg,
        );
        assert_eq!(
            out,
            Outcome::Updated {
                versions: vec![1, 1]
            }
        );
        assert!(changes.is_empty());
    }

    #[test]
    fn unknown_maps_are_not_found() {
        let mut s = State::default();
        let (out, _) = s.apply(
            &update(vec![cs("bob-tv-x", 0, "u", "a", 1)]),
            &ApplyConfig::default(),
        );
        assert!(matches!(out, Outcome::Rejected(Rejection::NotFound { .. })));
    }

    #[test]
    fn history_is_bounded_and_serves_catch_up() {
        let mut s = State::default();
        create(&mut s, "bob-tv-x");
        let cfg = ApplyConfig {
            history_len: 3,
            ..ApplyConfig::default()
        };
        for v in 0..10 {
            s.apply(
                &update(vec![cs("bob-tv-x", v, &format!("u{v}"), "a", v as i64)]),
                &cfg,
            );
        }
        let k = key("bob-tv-x");
        let m = s.get(&k.app, &k.map).unwrap_or_else(|| panic!("missing"));
        assert_eq!(m.map.version(), 10);
        assert_eq!(m.oldest_retained(), 7);
        let after_8: Vec<u64> = m
            .deltas_after(8)
            .unwrap_or_default()
            .iter()
            .map(|c| c.version())
            .collect();
        assert_eq!(after_8, vec![8, 9]);
        assert!(m.deltas_after(6).is_none());
        assert_eq!(m.deltas_after(10).map(|d| d.len()), Some(0));
        let image = s.image();
        let back = State::from_image(image);
        assert_eq!(back.digest(), s.digest());
    }

    #[test]
    fn validation_catches_mixed_writers_and_duplicates() {
        let limits = Limits::default();
        assert!(validate_update(&[], &limits).is_err());
        let mixed = [
            cs("bob-tv-x", 0, "u", "a", 1),
            cs("ann-tv-x", 0, "u", "a", 1),
        ];
        assert!(matches!(
            validate_update(&mixed, &limits),
            Err(Rejection::Invalid(m)) if m.contains("one writer")
        ));
        let twice = [
            cs("bob-tv-x", 0, "u", "a", 1),
            cs("bob-tv-x", 0, "u", "b", 1),
        ];
        assert!(validate_update(&twice, &limits).is_err());
        let ok = [
            cs("bob-tv-x", 0, "u", "a", 1),
            cs("bob-tv-y", 0, "u", "a", 1),
        ];
        assert!(validate_update(&ok, &limits).is_ok());
    }
}
