//! The read-only half of the `sharing` plugin (DESIGN.md §9.2 step 1, §9.3): Sharing Maps of
//! other writers and aggregates, read through the host's node agent.
//!
//! ```text
//!  App::reads() + App::reads_for(call) ──▶ ReadSpec ──resolve(ca)──▶ map / aggregate root
//!                                                                        │
//!  Activation (before each message)   Reader: replicas and aggregates, leased from the Agent
//!       │                                 │ pin() each one, once            (cached per activation)
//!       └──────────── Pins ◀──────────────┘
//!                      │  (one immutable version of every map read, for the whole message)
//!  Turn ── Cx::read / Cx::aggregate / Cx::check ──▶ only that version
//! ```
//!
//! Turns are synchronous, so everything a message reads is acquired and pinned *before* the
//! turn runs: [`Pins`] is the message's view, immutable while the turn (every method of a
//! multi-call) runs — **Isolation**. The next message pins again and gets the newest version the
//! node's agent has — **Fairness**. A turn run while the previous checkpoint is in flight pins
//! its own view like any other.
//!
//! A map that does not exist (no version arrives within the agent's first-version timeout)
//! fails the *message* that reads it with a `not_found` error naming the map, after that bounded
//! wait; the CA goes on. Reads are in the CA's own app. Maps and aggregates are opened on first
//! use and kept leased by the activation (at most [`MAX_HELD`]); only that first open waits, and
//! while it does the activation takes no other message (a map that stays missing costs each
//! message that reads it the full wait).

use std::collections::BTreeMap;

use node_agent::{Agent, AgentError, Aggregate, Pinned, Replica};
use sharing_map::{AppName, CaName, MapName, Snapshot};

use crate::CaError;

pub use node_agent::aggregate::AggregateSnapshot;

/// Replicas and aggregates an activation keeps leased, beyond which the least recently used is
/// released.
pub const MAX_HELD: usize = 64;

/// What a CA reads through the node agent. A name may hold `{ca}` (the CA's name, `alice-phone`)
/// and `{owner}` (its owner, `alice`), e.g. `{ca}-prices` or `{owner}-acl-root`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReadSpec {
    /// A Sharing Map, by full name.
    Map(String),
    /// The aggregate rooted at this map (an ACL map; DESIGN.md §6).
    Aggregate(String),
}

/// A [`ReadSpec`] with its name resolved for one CA.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReadTarget {
    /// A Sharing Map.
    Map(MapName),
    /// An aggregate, by its root.
    Aggregate(MapName),
}

impl ReadSpec {
    /// The map (or root) this spec names for CA `ca`.
    pub fn resolve(&self, ca: &CaName) -> Result<ReadTarget, CaError> {
        let (pattern, aggregate) = match self {
            ReadSpec::Map(p) => (p, false),
            ReadSpec::Aggregate(p) => (p, true),
        };
        let text = pattern
            .replace("{ca}", ca.as_str())
            .replace("{owner}", ca.owner());
        let name = MapName::parse(&text).map_err(|e| {
            CaError::invalid(format!("a read of map {text:?} (from {pattern:?}): {e}"))
        })?;
        Ok(if aggregate {
            ReadTarget::Aggregate(name)
        } else {
            ReadTarget::Map(name)
        })
    }
}

/// One message's view of what it reads: one pinned version of every map and aggregate, immutable
/// for the whole message. Pure data: a turn given `Pins` reads only what they hold.
#[derive(Clone, Debug, Default)]
pub struct Pins {
    maps: BTreeMap<MapName, Snapshot>,
    aggregates: BTreeMap<MapName, AggregateSnapshot>,
    // Keeps the agent's pin counts while the message runs (the snapshots above are their clones).
    held: Vec<Pinned>,
}

impl Pins {
    /// Adds a snapshot of a map (tests and callers without an agent).
    pub fn with_map(mut self, snapshot: Snapshot) -> Self {
        self.maps.insert(snapshot.map().name().clone(), snapshot);
        self
    }

    /// Adds a snapshot of an aggregate.
    pub fn with_aggregate(mut self, snapshot: AggregateSnapshot) -> Self {
        self.aggregates.insert(snapshot.root().clone(), snapshot);
        self
    }

    fn with_pinned(mut self, pinned: Pinned) -> Self {
        self.maps
            .insert(pinned.map().name().clone(), (*pinned).clone());
        self.held.push(pinned);
        self
    }

    /// The pinned version of map `name`, if this message reads it.
    pub fn map(&self, name: &str) -> Option<&Snapshot> {
        let name = MapName::parse(name).ok()?;
        self.maps.get(&name)
    }

    /// The pinned aggregate rooted at `root`, if this message reads it.
    pub fn aggregate(&self, root: &str) -> Option<&AggregateSnapshot> {
        let root = MapName::parse(root).ok()?;
        self.aggregates.get(&root)
    }

    /// The maps pinned, with their versions.
    pub fn versions(&self) -> BTreeMap<MapName, u64> {
        self.maps
            .iter()
            .map(|(n, s)| (n.clone(), s.version()))
            .collect()
    }
}

enum Held {
    Map(Replica),
    Aggregate(Aggregate),
}

/// The async shell: an activation's leases on what its CA reads, taken from the host's agent on
/// first use and pinned once per message.
pub(crate) struct Reader {
    agent: Option<Agent>,
    app: AppName,
    held: BTreeMap<ReadTarget, (Held, u64)>,
    uses: u64,
}

impl Reader {
    pub(crate) fn new(agent: Option<Agent>, app: AppName) -> Self {
        Self {
            agent,
            app,
            held: BTreeMap::new(),
            uses: 0,
        }
    }

    /// Pins the newest local version of everything in `targets`, opening what is not held yet
    /// (a bounded wait: the agent's first-version timeout).
    pub(crate) async fn pin(&mut self, targets: &[ReadTarget]) -> Result<Pins, CaError> {
        let mut pins = Pins::default();
        for target in targets {
            self.uses += 1;
            let uses = self.uses;
            if let Some((_, used)) = self.held.get_mut(target) {
                *used = uses;
            } else {
                let held = self.open(target).await?;
                self.held.insert(target.clone(), (held, uses));
                self.evict();
            }
            pins = match self.held.get(target) {
                Some((Held::Map(r), _)) => pins.with_pinned(r.pin()),
                Some((Held::Aggregate(a), _)) => pins.with_aggregate(a.snapshot()),
                None => pins,
            };
        }
        Ok(pins)
    }

    async fn open(&self, target: &ReadTarget) -> Result<Held, CaError> {
        let agent = self.agent.as_ref().ok_or_else(|| {
            CaError::exception(
                "this host has no node agent (component `agent`): it cannot read other maps",
            )
        })?;
        match target {
            ReadTarget::Map(name) => agent
                .replica(&self.app, name)
                .await
                .map(Held::Map)
                .map_err(|e| read_error(&self.app, name, e)),
            ReadTarget::Aggregate(root) => Aggregate::open(agent, self.app.clone(), root.clone())
                .await
                .map(Held::Aggregate)
                .map_err(|e| read_error(&self.app, root, e)),
        }
    }

    fn evict(&mut self) {
        while self.held.len() > MAX_HELD {
            let oldest = self
                .held
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(t, _)| t.clone());
            match oldest {
                Some(t) => self.held.remove(&t),
                None => break,
            };
        }
    }
}

fn read_error(app: &AppName, map: &MapName, e: AgentError) -> CaError {
    match e {
        AgentError::NoVersion { waited, .. } => CaError::not_found(format!(
            "map {map} of app {app} does not exist (no version arrived within {waited:?})"
        )),
        AgentError::Client(e) => CaError::prepare(format!("reading map {map} of app {app}: {e}")),
        AgentError::Stopped => CaError::shut_down("the node agent has stopped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sharing_map::SharingMap;

    #[test]
    fn specs_resolve_the_cas_name_and_owner_and_refuse_bad_names() {
        let ca = CaName::parse("alice-phone").expect("ca");
        assert_eq!(
            ReadSpec::Map("{ca}-prices".into()).resolve(&ca),
            Ok(ReadTarget::Map(
                MapName::parse("alice-phone-prices").expect("map")
            ))
        );
        assert_eq!(
            ReadSpec::Aggregate("{owner}-acl-root".into()).resolve(&ca),
            Ok(ReadTarget::Aggregate(
                MapName::parse("alice-acl-root").expect("map")
            ))
        );
        let e = ReadSpec::Map("Bad Name".into())
            .resolve(&ca)
            .expect_err("refused");
        assert_eq!(e.code, ca_client::ErrorCode::Invalid);
        assert!(e.message.contains("Bad Name"), "{e}");
    }

    #[test]
    fn pins_hold_the_versions_they_were_given() {
        let name = MapName::parse("bob-shop-prices").expect("map");
        let map = SharingMap::with_entries(
            name,
            [(
                std::sync::Arc::from("apple"),
                sharing_map::Entry::value(json!(3)),
            )],
        );
        let pins = Pins::default().with_map(Snapshot::new(map, None));
        let snap = pins.map("bob-shop-prices").expect("pinned");
        assert_eq!(snap.get("apple"), Some(&json!(3)));
        assert!(pins.map("bob-shop-other").is_none());
        assert!(pins.map("Not A Name").is_none());
    }
}
