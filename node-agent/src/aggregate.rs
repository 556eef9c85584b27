//! Aggregates on the node agent (DESIGN.md §6): the maps reachable from a root through
//! `__link_key__`, followed live, with one consistent snapshot of all of them at a time.
//!
//! ```text
//!  Agent ── replica(map) ──▶ one follow task per map ──changed──▶ Notify ─┐
//!                            (opens it, retries while it is missing)      │
//!                                                                         ▼
//!  Aggregate (handle) ◀── watch<AggregateSnapshot> ◀── owner task: read every replica,
//!   snapshot(), changed(),                              barrier through the agent, verify,
//!   check(), explain()                                  feed the AggregateIndex, follow what it wants
//! ```
//!
//! [`Aggregate::open`] holds a [`Replica`] of the root and of every map the [`AggregateIndex`]
//! wants (reachable maps, and linked maps that do not exist yet), so the agent keeps them all
//! subscribed. A linked map that does not exist is
//! listed by [`AggregateSnapshot::missing`] and tried again in the background until it is created,
//! without holding up anything else; a map that stops being linked is released.
//!
//! What a reader gets:
//!
//! - **Isolation**: [`Aggregate::snapshot`] is immutable. A reader that pins one per message keeps
//!   one version of every map of the aggregate for the whole message, whatever arrives after.
//! - **Atomicity across maps**: a published snapshot is a state the agent itself held *between* two
//!   events of its subscription, so updates that committed together (one change set, or one
//!   request spanning several maps of one writer) are never shown half-applied. The owner task
//!   reads the newest version of every followed map, then sends a command through the agent's
//!   queue and waits for the answer (the agent applies each event's updates in one go before it
//!   looks at its queue), then checks that no version moved meanwhile; if one did, it reads again.
//!   Every change notification pending when it reads is thus folded into one snapshot.
//! - **Revocation is immediate**: a snapshot that shows a map at version `v` shows everything `v`
//!   did, including links it removed (the unlinked maps' values are gone from that snapshot).
//! - **Additions follow**: a map newly linked by version `v` joins once its own first version
//!   arrives at the agent (one subscription round trip, usually the next snapshot); until then it
//!   is listed by `missing()`. Grants through a new link may thus appear a snapshot late; nothing
//!   is ever granted early.
//! - **Fairness**: `snapshot()` always returns the newest published snapshot; readers holding old
//!   ones hold back nobody.
//!
//! The background tasks stop when the last clone of the [`Aggregate`] is dropped, releasing
//! every replica. The decisions (which maps to follow, what a snapshot contains) are made by a
//! pure core (`Following`: the index plus the set of followed maps) that is unit-tested without
//! an agent; the tasks only move versions and replicas around.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use authz_aggregate::{AggregateIndex, Caller, Context, Denial, Policy, Rule};
use sharing_map::{AppName, CaName, MapName, SharingMap};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::agent::{Agent, AgentError, Replica};

pub use authz_aggregate::{AggregateSnapshot, Decision, Explanation, Found, Grant};

/// How long [`Aggregate::open`] waits for the reachable maps after the root has arrived.
pub const DEFAULT_LOAD_DEADLINE: Duration = Duration::from_secs(10);

/// A missing map is asked for at most this often (the agent's own first-version timeout usually
/// paces the retries; this bounds them when that timeout is short).
const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// The method name [`decide`] asks the aggregate rule about; the rule matches every method that is
/// not a system method.
const CHECKED_METHOD: &str = "check";

/// A live aggregate rooted at one map, followed through the node agent. Clone it freely; the
/// aggregate is followed while any clone lives.
#[derive(Clone, Debug)]
pub struct Aggregate {
    app: AppName,
    root: MapName,
    published: watch::Receiver<AggregateSnapshot>,
    loaded: watch::Receiver<bool>,
}

impl Aggregate {
    /// Follows the aggregate rooted at `root` in `app`. Returns once the root's first version is
    /// in and every map reachable from it has loaded or proved missing, or after
    /// [`DEFAULT_LOAD_DEADLINE`] (the aggregate keeps loading; see [`Aggregate::is_loaded`]).
    ///
    /// Fails with [`AgentError::NoVersion`] when the root itself does not exist within the agent's
    /// first-version timeout.
    pub async fn open(agent: &Agent, app: AppName, root: MapName) -> Result<Self, AgentError> {
        Self::open_within(agent, app, root, DEFAULT_LOAD_DEADLINE).await
    }

    /// [`Aggregate::open`], waiting at most `load_deadline` for the maps beyond the root.
    pub async fn open_within(
        agent: &Agent,
        app: AppName,
        root: MapName,
        load_deadline: Duration,
    ) -> Result<Self, AgentError> {
        let root_replica = agent.replica(&app, &root).await?;
        let following = Following::new(root.clone());
        let (published_tx, mut published) = watch::channel(following.snapshot());
        let (loaded_tx, mut loaded) = watch::channel(false);
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let mut shell = Shell {
            agent: agent.clone(),
            app: app.clone(),
            following,
            replicas: BTreeMap::new(),
            tasks: JoinSet::new(),
            followers: BTreeMap::new(),
            inbox: inbox_tx,
            changed: Arc::new(Notify::new()),
            published: published_tx,
            loaded: loaded_tx,
        };
        let plan = shell.following.plan();
        shell.carry_out(plan, Some(root_replica));
        tokio::spawn(shell.run(inbox));

        published
            .wait_for(|s| s.contains_map(&root))
            .await
            .map_err(|_| AgentError::Stopped)?;
        match tokio::time::timeout(load_deadline, loaded.wait_for(|l| *l)).await {
            Ok(Err(_)) => return Err(AgentError::Stopped),
            Ok(Ok(_)) => {}
            Err(_) => tracing::debug!(%root, ?load_deadline, "aggregate still loading"),
        }
        published.borrow_and_update();
        Ok(Self {
            app,
            root,
            published,
            loaded,
        })
    }

    /// The app of the aggregate's maps.
    pub fn app(&self) -> &AppName {
        &self.app
    }

    /// The root map.
    pub fn root(&self) -> &MapName {
        &self.root
    }

    /// The newest published snapshot: one version of every map in the aggregate, immutable while
    /// held. Take one per message.
    pub fn snapshot(&self) -> AggregateSnapshot {
        self.published.borrow().clone()
    }

    /// Waits for a snapshot newer than the last one this handle returned from `open` or
    /// `changed`, and returns it (the newest, skipping any published meanwhile).
    pub async fn changed(&mut self) -> Result<AggregateSnapshot, AgentError> {
        self.published
            .changed()
            .await
            .map_err(|_| AgentError::Stopped)?;
        Ok(self.published.borrow_and_update().clone())
    }

    /// Whether every map the aggregate follows has either arrived or proved missing once (a map
    /// linked a moment ago may still be on its way).
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// [`check`] on the newest snapshot. Inside a message, check the snapshot pinned for it.
    pub fn check(&self, caller: &CaName) -> bool {
        check(&self.snapshot(), caller)
    }

    /// [`AggregateSnapshot::explain`] on the newest snapshot.
    pub fn explain(&self, key: &str) -> Vec<Explanation> {
        self.snapshot().explain(key)
    }
}

/// Whether an aggregate rule over `snapshot` grants `caller`: its owner (`bob`) or its full name
/// (`bob-phone`) has a value in some map of the aggregate. See [`decide`].
pub fn check(snapshot: &AggregateSnapshot, caller: &CaName) -> bool {
    decide(snapshot, caller).is_allowed()
}

/// The decision of the aggregate rule `{"aggregate": <root>, "method": "*"}` for `caller`, with
/// the key and map that granted it. It is [`Policy::is_authorized`] itself, so it agrees with
/// every policy using that rule.
pub fn decide(snapshot: &AggregateSnapshot, caller: &CaName) -> Decision {
    let root = snapshot.root();
    // `"*"` is a valid method pattern, so this does not fail; if it ever did, deny.
    let Ok(rule) = Rule::aggregate(root.clone(), "*") else {
        return Decision::Deny(Denial::NoMatchingRule {
            unavailable: Vec::new(),
        });
    };
    Policy::new(vec![rule]).is_authorized(
        &Caller::Ca(caller.clone()),
        CHECKED_METHOD,
        &Context::new(root).with_aggregate(snapshot),
    )
}

/// What the shell must do to follow what the index wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Start following these.
    open: Vec<MapName>,
    /// Stop following these.
    release: Vec<MapName>,
}

/// The pure core of an aggregate's shell: the index, the maps followed (held or being opened),
/// and which of those have not answered their first open yet.
#[derive(Debug)]
struct Following {
    index: AggregateIndex,
    followed: BTreeSet<MapName>,
    unanswered: BTreeSet<MapName>,
}

impl Following {
    fn new(root: MapName) -> Self {
        Self {
            index: AggregateIndex::new(root),
            followed: BTreeSet::new(),
            unanswered: BTreeSet::new(),
        }
    }

    fn snapshot(&self) -> AggregateSnapshot {
        self.index.snapshot()
    }

    fn follows(&self, map: &MapName) -> bool {
        self.followed.contains(map)
    }

    /// The version of `map` the index holds.
    fn held_version(&self, map: &MapName) -> Option<u64> {
        self.index.held(map).map(SharingMap::version)
    }

    /// Records that `map`'s first open answered (with a version, or with "not there yet").
    fn answered(&mut self, map: &MapName) {
        self.unanswered.remove(map);
    }

    /// Whether every followed map has answered its first open.
    fn is_loaded(&self) -> bool {
        self.unanswered.is_empty()
    }

    /// Feeds versions that together form one state of the agent, then plans what to follow.
    /// Maps no longer wanted are dropped from the index.
    fn absorb(&mut self, versions: impl IntoIterator<Item = SharingMap>) -> Plan {
        for map in versions {
            self.index.update_map(map);
        }
        self.plan()
    }

    /// What to open and release so that exactly the maps the index wants are followed.
    fn plan(&mut self) -> Plan {
        let wanted = self.index.wanted();
        let plan = Plan {
            open: wanted.difference(&self.followed).cloned().collect(),
            release: self.followed.difference(&wanted).cloned().collect(),
        };
        for map in &plan.open {
            self.followed.insert(map.clone());
            self.unanswered.insert(map.clone());
        }
        for map in &plan.release {
            self.followed.remove(map);
            self.unanswered.remove(map);
            // Not reachable (it is not wanted), so the view does not change.
            self.index.remove_map(map);
        }
        plan
    }
}

/// What a follow task tells the owner task.
#[derive(Debug)]
enum Note {
    /// The map's first version is in.
    Opened(MapName, Replica),
    /// No version arrived in time; the task keeps trying.
    NotYet(MapName),
}

/// The owner task's state.
#[derive(Debug)]
struct Shell {
    agent: Agent,
    app: AppName,
    following: Following,
    /// The replicas of followed maps that have a version.
    replicas: BTreeMap<MapName, Replica>,
    /// The follow task of every followed map.
    tasks: JoinSet<()>,
    followers: BTreeMap<MapName, AbortHandle>,
    inbox: mpsc::UnboundedSender<Note>,
    changed: Arc<Notify>,
    published: watch::Sender<AggregateSnapshot>,
    loaded: watch::Sender<bool>,
}

impl Shell {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Note>) {
        loop {
            let dirty = tokio::select! {
                biased;
                () = self.published.closed() => return,
                note = inbox.recv() => match note {
                    Some(Note::Opened(map, replica)) => {
                        self.following.answered(&map);
                        // A late answer for a map released meanwhile is dropped with its lease.
                        let follows = self.following.follows(&map);
                        if follows {
                            self.replicas.insert(map, replica);
                        }
                        follows
                    }
                    Some(Note::NotYet(map)) => {
                        self.following.answered(&map);
                        false
                    }
                    None => return,
                },
                () = self.changed.notified() => true,
            };
            if dirty && self.refresh().await.is_err() {
                // The agent stopped: readers keep the last snapshot; `changed` reports it.
                return;
            }
            let loaded = self.following.is_loaded();
            self.loaded
                .send_if_modified(|l| std::mem::replace(l, loaded) != loaded);
        }
    }

    /// Publishes the newest state of every followed map, once it is known to be one state of the
    /// agent (see the module documentation).
    async fn refresh(&mut self) -> Result<(), AgentError> {
        loop {
            if self.published.is_closed() {
                return Ok(());
            }
            let mut seen: Vec<(MapName, u64)> = Vec::with_capacity(self.replicas.len());
            let mut fresh: Vec<SharingMap> = Vec::new();
            for (name, replica) in &self.replicas {
                let version = replica.version();
                if self.following.held_version(name) == Some(version) {
                    seen.push((name.clone(), version));
                } else {
                    let pinned = replica.pin();
                    seen.push((name.clone(), pinned.version()));
                    fresh.push(pinned.map().clone());
                }
            }
            if fresh.is_empty() {
                return Ok(());
            }
            // The agent answers only between two events of its subscription: once it has, no
            // event is half-applied, and if no version moved since the reads above they were
            // all of that one state.
            self.agent.status().await?;
            let settled = seen.iter().all(|(name, version)| {
                self.replicas.get(name).map(Replica::version) == Some(*version)
            });
            if settled {
                let plan = self.following.absorb(fresh);
                self.carry_out(plan, None);
                self.published.send_replace(self.following.snapshot());
                return Ok(());
            }
        }
    }

    /// Starts and stops follow tasks. `opened` is a replica already open (the root's, from
    /// `open`), used instead of opening it again.
    fn carry_out(&mut self, plan: Plan, mut opened: Option<Replica>) {
        for map in plan.release {
            self.replicas.remove(&map);
            if let Some(task) = self.followers.remove(&map) {
                task.abort();
            }
        }
        for map in plan.open {
            let replica = opened.take_if(|r| r.map() == &map);
            let task = self.tasks.spawn(follow(
                self.agent.clone(),
                self.app.clone(),
                map.clone(),
                replica,
                self.inbox.clone(),
                self.changed.clone(),
            ));
            if let Some(old) = self.followers.insert(map, task) {
                old.abort();
            }
        }
        // Reap finished (aborted) tasks so the set does not grow.
        while self.tasks.try_join_next().is_some() {}
    }
}

/// Opens `map` (retrying while it does not exist), hands the replica to the owner task, then
/// wakes it on every new version. The replica's lease lives as long as this task.
async fn follow(
    agent: Agent,
    app: AppName,
    map: MapName,
    opened: Option<Replica>,
    inbox: mpsc::UnboundedSender<Note>,
    changed: Arc<Notify>,
) {
    let mut replica = match opened {
        Some(replica) => replica,
        None => loop {
            let started = Instant::now();
            match agent.replica(&app, &map).await {
                Ok(replica) => break replica,
                Err(AgentError::Stopped) => return,
                Err(e) => {
                    tracing::debug!(%map, error = %e, "linked map not there yet; still waiting");
                    if inbox.send(Note::NotYet(map.clone())).is_err() {
                        return;
                    }
                    tokio::time::sleep(RETRY_INTERVAL.saturating_sub(started.elapsed())).await;
                }
            }
        },
    };
    if inbox.send(Note::Opened(map, replica.clone())).is_err() {
        return;
    }
    while replica.changed().await.is_ok() {
        changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz_aggregate::LINK_KEY;
    use serde_json::json;
    use sharing_map::Entry;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn name(s: &str) -> Result<MapName, sharing_map::NameError> {
        MapName::parse(s)
    }

    fn map(
        n: &str,
        version: u64,
        entries: &[(&str, serde_json::Value)],
    ) -> Result<SharingMap, Box<dyn std::error::Error>> {
        let mut m = SharingMap::with_entries(
            name(n)?,
            entries
                .iter()
                .map(|(k, v)| (Arc::from(*k), Entry::value(v.clone()))),
        );
        // Versions other than 0 are reached by applying empty change sets.
        for v in 0..version {
            let cs = sharing_map::ChangeSet::from_ops(
                m.name().clone(),
                v,
                sharing_map::UpdateId::parse(&format!("u{v}"))?,
                [],
            );
            m = match m.apply(&cs)? {
                sharing_map::Applied::New(next) => next,
                sharing_map::Applied::Duplicate { .. } => m,
            };
        }
        Ok(m)
    }

    #[test]
    fn follows_the_root_then_what_it_links_and_releases_what_it_unlinks() -> TestResult {
        let root = name("acme-admin-roles")?;
        let mut f = Following::new(root.clone());
        assert_eq!(
            f.plan(),
            Plan {
                open: vec![root.clone()],
                release: vec![]
            }
        );
        assert!(!f.is_loaded());
        f.answered(&root);
        assert!(f.is_loaded());

        let plan = f.absorb([map(
            "acme-admin-roles",
            0,
            &[(LINK_KEY, json!(["acme-shop-roles", "acme-late-roles"]))],
        )?]);
        assert_eq!(
            plan.open,
            [name("acme-late-roles")?, name("acme-shop-roles")?]
        );
        assert!(!f.is_loaded());
        f.answered(&name("acme-shop-roles")?);
        f.answered(&name("acme-late-roles")?);
        assert!(f.is_loaded());
        // Planning again asks for nothing new.
        assert_eq!(f.plan(), Plan::default());

        let plan = f.absorb([map("acme-shop-roles", 0, &[("bob", json!(["admin"]))])?]);
        assert_eq!(plan, Plan::default());
        assert!(check(&f.snapshot(), &CaName::parse("bob-phone")?));
        assert_eq!(f.held_version(&name("acme-shop-roles")?), Some(0));

        let plan = f.absorb([map(
            "acme-admin-roles",
            1,
            &[(LINK_KEY, json!(["acme-late-roles"]))],
        )?]);
        assert_eq!(plan.release, [name("acme-shop-roles")?]);
        assert!(!f.follows(&name("acme-shop-roles")?));
        assert!(!check(&f.snapshot(), &CaName::parse("bob-phone")?));
        assert_eq!(f.held_version(&name("acme-shop-roles")?), None, "dropped");
        Ok(())
    }

    #[test]
    fn cycles_are_followed_once() -> TestResult {
        let mut f = Following::new(name("acme-admin-roles")?);
        f.plan();
        let plan = f.absorb([
            map(
                "acme-admin-roles",
                0,
                &[(LINK_KEY, json!(["acme-a-roles"]))],
            )?,
            map("acme-a-roles", 0, &[(LINK_KEY, json!(["acme-b-roles"]))])?,
            map(
                "acme-b-roles",
                0,
                &[
                    (LINK_KEY, json!(["acme-a-roles", "acme-admin-roles"])),
                    ("carol", json!(["clerk"])),
                ],
            )?,
        ]);
        assert_eq!(plan.open, [name("acme-a-roles")?, name("acme-b-roles")?]);
        assert_eq!(f.plan(), Plan::default());
        let path = &f.snapshot().explain("carol")[0].path;
        assert_eq!(
            path,
            &[
                name("acme-admin-roles")?,
                name("acme-a-roles")?,
                name("acme-b-roles")?
            ]
        );
        Ok(())
    }

    #[test]
    fn check_is_the_aggregate_rule_for_owner_or_full_name() -> TestResult {
        let mut f = Following::new(name("acme-admin-roles")?);
        f.plan();
        f.absorb([map(
            "acme-admin-roles",
            0,
            &[
                ("alice", json!(["admin"])),
                ("bob-phone", json!(["clerk"])),
                ("dave", json!([])),
            ],
        )?]);
        let snap = f.snapshot();
        let cases = [
            ("alice-phone", true),
            ("alice-tablet", true),
            ("bob-phone", true),
            ("bob-tablet", false),
            ("carol-phone", false),
            // "Any value" is the rule: an empty role list is still a value.
            ("dave-phone", true),
        ];
        for (caller, granted) in cases {
            assert_eq!(check(&snap, &CaName::parse(caller)?), granted, "{caller}");
        }
        assert!(matches!(
            decide(&snap, &CaName::parse("bob-phone")?),
            Decision::Allow(Grant::Aggregate { ref key, .. }) if key == "bob-phone"
        ));
        Ok(())
    }
}
