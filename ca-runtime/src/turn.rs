//! The turn engine: one message = one transaction (DESIGN.md §9.2), as a pure core (no I/O, no
//! clock).
//!
//! A [`Working`] copy is the CA as it will be once everything already run commits: the state,
//! intents, and one open transaction per writable map. A turn runs on a clone of it: on success
//! the clone replaces it; on any failure the clone is dropped, so state, map writes and intents
//! of that turn vanish (the abort). [`Working::prepare_checkpoint`] turns everything run since
//! the last checkpoint into one atomic Spine update: a delta of the private state map, CAS on
//! its version (the fence of single activation), and the change sets of the writable maps.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use semver::{Version, VersionReq};
use serde_json::Value;
use sharing_map::{AppName, CaName, ChangeSet, SharingMap, Transaction, UpdateId};

use crate::CaError;
use crate::app::{App, Cx, MethodError, NewIntent};
use crate::checkpoint::{CaState, Intent, Meta};

/// What every turn must respect to be prepared.
#[derive(Clone, Debug)]
pub struct TurnLimits {
    /// Largest state object, as compact JSON.
    pub max_state_bytes: usize,
    /// The plugins intents may name.
    pub plugins: BTreeSet<String>,
}

impl Default for TurnLimits {
    fn default() -> Self {
        Self {
            max_state_bytes: 1024 * 1024,
            plugins: BTreeSet::new(),
        }
    }
}

/// One method call of a message.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The method.
    pub method: String,
    /// Its arguments.
    pub args: Vec<Value>,
}

/// The CA as committed in the Spine.
#[derive(Clone, Debug)]
pub struct Committed {
    /// The private state map.
    pub state_map: SharingMap,
    /// Its decoding.
    pub state: CaState,
    /// The writable maps, by local name.
    pub maps: BTreeMap<String, SharingMap>,
}

/// The CA as it will be once every turn already run commits.
#[derive(Clone, Debug)]
pub struct Working {
    /// The checkpoint to be.
    pub state: CaState,
    /// One transaction per writable map, on its committed version.
    pub maps: BTreeMap<String, Transaction>,
    /// Intents of turns not yet checkpointed, in order.
    pub new_intents: Vec<NewIntent>,
}

/// One checkpoint, ready to be sent.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The change sets of one update of the CA's maps: the state map's first.
    pub change_sets: Vec<ChangeSet>,
    /// The CA as committed once the Spine acknowledges them.
    pub next: Committed,
    /// The intents this checkpoint records, to carry out once it is acknowledged.
    pub intents: Vec<Intent>,
}

/// Who is running: the app's identity for the context.
#[derive(Clone, Copy, Debug)]
pub struct Ids<'a> {
    /// The app.
    pub app: &'a AppName,
    /// The CA.
    pub ca: &'a CaName,
}

impl Working {
    /// The working copy of what is committed.
    pub fn from_committed(c: &Committed) -> Self {
        Self {
            state: c.state.clone(),
            maps: c
                .maps
                .iter()
                .map(|(k, m)| (k.clone(), Transaction::new(m.clone())))
                .collect(),
            new_intents: Vec::new(),
        }
    }

    /// Whether anything awaits a checkpoint.
    pub fn differs_from(&self, c: &Committed) -> bool {
        self.state != c.state
            || !self.new_intents.is_empty()
            || self
                .maps
                .values()
                .any(|t| matches!(t.prepare(placeholder_id()), Ok(Some(_)) | Err(_)))
    }

    /// Runs `calls` as one turn: all or nothing, returning the last result.
    pub fn run_calls(
        &mut self,
        app: &dyn App,
        ids: Ids<'_>,
        scratch: &mut serde_json::Map<String, Value>,
        calls: &[Call],
        limits: &TurnLimits,
    ) -> Result<Value, CaError> {
        self.run(ids, scratch, limits, |cx| {
            let mut last = Value::Null;
            for call in calls {
                last = app
                    .call(cx, &call.method, &call.args)
                    .map_err(|e| method_error(&call.method, e))?;
            }
            Ok(last)
        })
    }

    /// The first turn of a new CA: `__ca_init__`, then its state version is recorded.
    pub fn run_init(
        &mut self,
        app: &dyn App,
        ids: Ids<'_>,
        scratch: &mut serde_json::Map<String, Value>,
        limits: &TurnLimits,
    ) -> Result<(), CaError> {
        let version = app.state_version();
        self.run(ids, scratch, limits, |cx| {
            app.init(cx).map_err(|e| method_error("__ca_init__", e))
        })?;
        self.state.meta = Some(Meta {
            state_version: version,
            checkpoints: 0,
        });
        Ok(())
    }

    /// The first turn of a later activation: `__ca_upgrade__` (or the default rule) when the
    /// checkpoint's state version differs from the code's, then `__ca_resume__`, in one turn.
    pub fn run_resume(
        &mut self,
        app: &dyn App,
        ids: Ids<'_>,
        scratch: &mut serde_json::Map<String, Value>,
        limits: &TurnLimits,
    ) -> Result<(), CaError> {
        let new = app.state_version();
        let old = self
            .state
            .meta
            .as_ref()
            .map(|m| m.state_version.clone())
            .ok_or_else(|| CaError::exception("resume of a CA that was never initialized"))?;
        self.run(ids, scratch, limits, |cx| {
            if old != new {
                match app.upgrade(cx, &old, &new) {
                    Some(r) => r.map_err(|e| method_error("__ca_upgrade__", e))?,
                    None => default_upgrade(&old, &new)?,
                }
            }
            app.resume(cx).map_err(|e| method_error("__ca_resume__", e))
        })?;
        if let Some(meta) = self.state.meta.as_mut() {
            meta.state_version = new;
        }
        Ok(())
    }

    fn run<T>(
        &mut self,
        ids: Ids<'_>,
        scratch: &mut serde_json::Map<String, Value>,
        limits: &TurnLimits,
        body: impl FnOnce(&mut Cx<'_>) -> Result<T, CaError>,
    ) -> Result<T, CaError> {
        let mut next = self.clone();
        let outcome = {
            let mut cx = Cx {
                app: ids.app,
                ca: ids.ca,
                state: &mut next.state.state,
                scratch,
                maps: &mut next.maps,
                intents: &mut next.new_intents,
            };
            catch_unwind(AssertUnwindSafe(|| body(&mut cx)))
        };
        let value = match outcome {
            Ok(r) => r?,
            Err(panic) => {
                return Err(CaError::exception(format!(
                    "panic: {}",
                    panic_text(&*panic)
                )));
            }
        };
        // Prepare: the turn's effects must fit before they may join the checkpoint.
        let bytes = next.state.state_bytes();
        if bytes > limits.max_state_bytes {
            return Err(CaError::prepare(format!(
                "the state would be {bytes} bytes, over its limit of {} bytes",
                limits.max_state_bytes
            )));
        }
        for intent in &next.new_intents {
            if !limits.plugins.contains(&intent.plugin) {
                return Err(CaError::prepare(format!(
                    "the turn recorded an intent for plugin {:?}, which this host does not have",
                    intent.plugin
                )));
            }
        }
        for (local, t) in &next.maps {
            t.prepare(placeholder_id())
                .map_err(|e| CaError::prepare(format!("map {}-{local}: {e}", ids.ca)))?;
        }
        *self = next;
        Ok(value)
    }

    /// Everything run since `committed` as one checkpoint (`None` if nothing changed), and the
    /// working copy re-based on what the Spine will hold once it is acknowledged.
    pub fn prepare_checkpoint(
        &mut self,
        ids: Ids<'_>,
        committed: &Committed,
        update_id: &UpdateId,
    ) -> Result<Option<Checkpoint>, CaError> {
        if !self.differs_from(committed) {
            return Ok(None);
        }
        let version = committed.state_map.version() + 1;
        let mut intents = Vec::new();
        for (index, new) in std::mem::take(&mut self.new_intents)
            .into_iter()
            .enumerate()
        {
            let key = format!("{}/{}/{version}/{index}", ids.app, ids.ca);
            let intent = Intent {
                key: key.clone(),
                plugin: new.plugin,
                payload: new.payload,
                failures: 0,
                parked: false,
            };
            intents.push(intent.clone());
            self.state.intents.insert(key, intent);
        }
        if let Some(meta) = self.state.meta.as_mut() {
            meta.checkpoints += 1;
        }
        let ops = committed.state.ops_to(&self.state);
        let state_cs = ChangeSet::from_ops(
            committed.state_map.name().clone(),
            committed.state_map.version(),
            update_id.clone(),
            ops,
        );
        let state_map = applied(&committed.state_map, &state_cs)?;
        let mut change_sets = vec![state_cs];
        let mut maps = BTreeMap::new();
        for (local, t) in &self.maps {
            let next = match t
                .prepare(update_id.clone())
                .map_err(|e| CaError::prepare(format!("map {}-{local}: {e}", ids.ca)))?
            {
                Some(cs) => {
                    let next = applied(t.base(), &cs)?;
                    change_sets.push(cs);
                    next
                }
                None => t.base().clone(),
            };
            maps.insert(local.clone(), next);
        }
        let next = Committed {
            state_map,
            state: self.state.clone(),
            maps,
        };
        *self = Working::from_committed(&next);
        Ok(Some(Checkpoint {
            change_sets,
            next,
            intents,
        }))
    }
}

fn applied(map: &SharingMap, cs: &ChangeSet) -> Result<SharingMap, CaError> {
    match map.apply(cs) {
        Ok(sharing_map::Applied::New(m)) => Ok(m),
        Ok(sharing_map::Applied::Duplicate { .. }) => Err(CaError::prepare(format!(
            "map {} already holds update {}",
            map.name(),
            cs.update_id()
        ))),
        Err(e) => Err(CaError::prepare(format!("map {}: {e}", map.name()))),
    }
}

/// The default rule of upgrades: a compatible version (`^old`) is accepted; a downgrade or a
/// breaking bump refuses to activate the CA.
pub fn default_upgrade(old: &Version, new: &Version) -> Result<(), CaError> {
    let compatible = VersionReq::parse(&format!("^{old}"))
        .map(|req| req.matches(new))
        .unwrap_or(false);
    if compatible && new >= old {
        Ok(())
    } else {
        Err(CaError::version(format!(
            "the CA's checkpoint has state version {old} and this app's code is {new}, which is not compatible (^{old}) and has no upgrade hook for it: the CA does not start"
        )))
    }
}

fn method_error(method: &str, e: MethodError) -> CaError {
    match e {
        MethodError::App(m) => CaError::app(m),
        MethodError::UnknownMethod(_) | MethodError::BadArgs(_) => {
            CaError::invalid(format!("{method}: {e}"))
        }
        MethodError::Failed(m) => CaError::exception(format!("{method}: {m}")),
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

fn placeholder_id() -> UpdateId {
    // A constant that always parses; only its validity matters where it is used.
    UpdateId::parse("check").unwrap_or_else(|_| unreachable!("a constant id parses"))
}
