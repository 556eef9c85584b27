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
use std::sync::Arc;

use semver::{Version, VersionReq};
use serde_json::Value;
use sharing_map::{AppName, CaName, ChangeSet, SharingMap, Transaction, UpdateId};

use crate::CaError;
use crate::app::{App, CodeVersion, Cx, MethodError, NewIntent, TurnMeter};
use crate::checkpoint::{CaState, Intent, Meta};
use crate::reads::Pins;

/// What takes part in every turn, and what a turn must respect to be prepared.
#[derive(Clone, Debug)]
pub struct TurnRules {
    /// Largest state object, as compact JSON.
    pub max_state_bytes: usize,
    /// The plugins intents may name (those that carry intents out after commit).
    pub intent_plugins: BTreeSet<String>,
    /// The plugins taking part in every turn, in order.
    pub turn_plugins: Vec<Arc<dyn TurnPlugin>>,
}

impl Default for TurnRules {
    fn default() -> Self {
        Self {
            max_state_bytes: 1024 * 1024,
            intent_plugins: BTreeSet::new(),
            turn_plugins: Vec::new(),
        }
    }
}

/// What a turn did, for plugins to judge at prepare.
#[derive(Debug)]
pub struct TurnEffects<'a> {
    /// Whose turn it is.
    pub ids: Ids<'a>,
    /// The CA's state after the method.
    pub state: &'a serde_json::Map<String, Value>,
    /// The intents recorded since the last checkpoint, this turn's last.
    pub intents: &'a [NewIntent],
}

/// A plugin's part in every turn (DESIGN.md §9.3): pure hooks over the plugin's own state,
/// which is checkpointed with the CA (entry `p.<name>`) and rolled back with the turn. App code
/// reaches that state through [`Cx::plugin`]; effects outside the CA are intents, carried out
/// after commit by an [`IntentPlugin`](crate::plugins::IntentPlugin), or happen in
/// [`TurnPlugin::committed`] (delivering what a committed checkpoint holds, such as
/// notifications to listening clients).
pub trait TurnPlugin: Send + Sync + std::fmt::Debug + 'static {
    /// The plugin's name (its state's key).
    fn name(&self) -> &str;
    /// In the first turn of an activation, before the app's `__ca_init__`/`__ca_resume__`:
    /// may repair or upgrade the plugin's state (`Null` for a new CA).
    fn resume(&self, _state: &mut Value) -> Result<(), String> {
        Ok(())
    }
    /// Whether `message` runs at all: `Some(reply)` answers it with `reply` and runs nothing
    /// (a repeat of a message the plugin already took, such as a duplicate event). Asked before
    /// any plugin's `begin`.
    fn admit(&self, _state: &Value, _message: &Message) -> Option<Value> {
        None
    }
    /// Before the method runs, with the message it will run.
    fn begin(&self, _state: &mut Value, _message: &Message) {}
    /// When (Unix milliseconds) the plugin next sends the CA a message of its own (a timer),
    /// given its state: the activation wakes then to call [`TurnPlugin::take_due`], and the host
    /// keeps this time in its wake index so that a CA nobody calls is activated for it
    /// ([`crate::wakeups`]).
    fn next_wake(&self, _ids: Ids<'_>, _state: &Value) -> Option<u64> {
        None
    }
    /// At `now_ms` (Unix milliseconds): takes from the plugin's state what is due and returns
    /// the messages to run, in order. Runs between turns: what it takes is gone even if a
    /// message's turn then fails (as a completed intent is, so a failing handler is not fed
    /// forever), and joins the next checkpoint together with the messages' effects.
    fn take_due(&self, _ids: Ids<'_>, _state: &mut Value, _now_ms: u64) -> Vec<Message> {
        Vec::new()
    }
    /// After the method returned: an error refuses the turn (a prepare failure, retryable).
    fn prepare(&self, _state: &Value, _turn: &TurnEffects<'_>) -> Result<(), String> {
        Ok(())
    }
    /// The turn was rolled back; the plugin's state already is as before it. An error here
    /// stops the activation (the last rung of the error ladder): whatever the plugin holds
    /// outside the checkpoint can no longer be trusted.
    fn abort(&self, _ids: Ids<'_>) -> Result<(), String> {
        Ok(())
    }
    /// A checkpoint holding the plugin's `state` was acknowledged by the Spine. An error stops
    /// the activation and its callers get the retryable `commit` error (the turn did commit;
    /// the next activation loads it).
    fn committed(&self, _ids: Ids<'_>, _state: &Value) -> Result<(), String> {
        Ok(())
    }
    /// A runtime method the plugin answers: a method whose name starts with
    /// [`PLUGIN_METHOD_PREFIX`] (`@ack`, `@begin`...), called by a client like an app method
    /// (and authorized like one), run on the plugin's state in the turn. `None`: not this
    /// plugin's.
    fn method(
        &self,
        _state: &mut Value,
        _sender: &Sender,
        _method: &str,
        _args: &[Value],
    ) -> Option<Result<Value, MethodError>> {
        None
    }
    /// After the method (every call of a multi-call) succeeded, before prepare: effects the
    /// plugin defers to the end of the turn take effect here (a new session nonce, say, so that
    /// the turn itself still saw the old one).
    fn finish(&self, _state: &mut Value) {}
}

/// Methods with this prefix are runtime methods answered by turn plugins, not by the app.
pub const PLUGIN_METHOD_PREFIX: &str = "@";

/// Who sent a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sender {
    /// A client, over one of its logical sessions (`default` if it named none).
    Client {
        /// The session's name.
        session: String,
        /// Who calls: the CA the client's token speaks for (the called CA itself for its owner's
        /// and admins' tokens). Only the CA's owner (a caller with the same owner) creates it;
        /// other callers need a rule of the app's access policy.
        caller: CaName,
    },
    /// The runtime or a plugin (a timer, an external call's response, an event): it may call
    /// system methods (`__ca_*`).
    System {
        /// What sent it (a plugin's name).
        by: String,
    },
}

impl Sender {
    /// A client's message from `caller`, over `session` (`default` unless it named one).
    pub fn client(session: Option<&str>, caller: CaName) -> Self {
        Sender::Client {
            session: session
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_SESSION)
                .to_string(),
            caller,
        }
    }

    /// The session of a client's message (`None` for the system's).
    pub fn session(&self) -> Option<&str> {
        match self {
            Sender::Client { session, .. } => Some(session),
            Sender::System { .. } => None,
        }
    }
}

/// The session of clients that name none.
pub const DEFAULT_SESSION: &str = "default";

/// One message: one or more method calls run as one turn.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The calls (a multi-call if several), all or nothing; the last result is the reply.
    pub calls: Vec<Call>,
    /// Who sent it.
    pub sender: Sender,
    /// The key of a pending intent this message completes (an external call's response): the
    /// intent is removed in the same checkpoint as the message's effects, and a message whose
    /// intent is no longer pending (a redelivery) is dropped without running. The intent is
    /// removed even if the message's turn fails, so a failing handler is not fed forever.
    pub completes: Option<String>,
}

impl Message {
    /// A client's message: `caller`'s, over `session`.
    pub fn from_client(calls: Vec<Call>, session: Option<&str>, caller: CaName) -> Self {
        Self {
            calls,
            sender: Sender::client(session, caller),
            completes: None,
        }
    }

    /// A message of the runtime or plugin `by`.
    pub fn system(by: &str, calls: Vec<Call>) -> Self {
        Self {
            calls,
            sender: Sender::System { by: by.to_string() },
            completes: None,
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

    /// Runs `message` as one turn: all or nothing, returning the last result. Every call reads
    /// the maps and aggregates of `reads`, pinned once for the whole message, and runs on the
    /// code those pins name ([`App::version_for`]): when its state version differs from the
    /// checkpoint's, `__ca_upgrade__` (or the default rule) runs first, in the same turn, so the
    /// upgrade commits with the message or not at all, once per CA and version change.
    pub fn run_message(
        &mut self,
        app: &dyn App,
        ids: Ids<'_>,
        scratch: &mut serde_json::Map<String, Value>,
        reads: &Pins,
        message: &Message,
        rules: &TurnRules,
    ) -> Result<Value, CaError> {
        if let Some(key) = &message.completes
            && self.state.intents.remove(key).is_none()
        {
            // Its intent was completed by an earlier delivery: this one is a repeat.
            return Ok(Value::Null);
        }
        for p in &rules.turn_plugins {
            let state = self.state.plugins.get(p.name()).unwrap_or(&Value::Null);
            if let Some(reply) = p.admit(state, message) {
                return Ok(reply);
            }
        }
        let target = app.version_for(reads)?;
        let upgrade_from = self
            .state
            .meta
            .as_ref()
            .map(|m| m.state_version.clone())
            .filter(|old| *old != target.state_version);
        let value = self.run(ids, scratch, reads, message, rules, |cx| {
            if let Some(old) = &upgrade_from {
                upgrade(app, cx, old, &target.state_version)?;
            }
            let mut last = Value::Null;
            for call in &message.calls {
                let answer = if call.method.starts_with(PLUGIN_METHOD_PREFIX) {
                    plugin_method(cx, rules, message, call)
                } else {
                    app.call(cx, &call.method, &call.args)
                };
                last = answer.map_err(|e| method_error(&call.method, e))?;
            }
            Ok(last)
        })?;
        self.record_version(target);
        Ok(value)
    }

    /// The first turn of a new CA: `__ca_init__`, then its code version is recorded.
    pub fn run_init(
        &mut self,
        app: &dyn App,
        ids: Ids<'_>,
        scratch: &mut serde_json::Map<String, Value>,
        reads: &Pins,
        limits: &TurnRules,
    ) -> Result<(), CaError> {
        let target = app.version_for(reads)?;
        let message = Message::system("runtime", vec![call_of("__ca_init__")]);
        self.run(ids, scratch, reads, &message, limits, |cx| {
            resume_plugins(cx, limits)?;
            app.init(cx).map_err(|e| method_error("__ca_init__", e))
        })?;
        self.state.meta = Some(Meta {
            state_version: target.state_version,
            code_version: target.code,
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
        reads: &Pins,
        limits: &TurnRules,
    ) -> Result<(), CaError> {
        let target = app.version_for(reads)?;
        let old = self
            .state
            .meta
            .as_ref()
            .map(|m| m.state_version.clone())
            .ok_or_else(|| CaError::exception("resume of a CA that was never initialized"))?;
        let new = target.state_version.clone();
        let message = Message::system("runtime", vec![call_of("__ca_resume__")]);
        self.run(ids, scratch, reads, &message, limits, |cx| {
            resume_plugins(cx, limits)?;
            if old != new {
                upgrade(app, cx, &old, &new)?;
            }
            app.resume(cx).map_err(|e| method_error("__ca_resume__", e))
        })?;
        self.record_version(target);
        Ok(())
    }

    /// The checkpoint to be names `target` as the code that last ran.
    fn record_version(&mut self, target: CodeVersion) {
        if let Some(meta) = self.state.meta.as_mut() {
            meta.state_version = target.state_version;
            meta.code_version = target.code;
        }
    }

    /// Runs `body` as one turn on a copy of `self`: kept on success, dropped on failure (the
    /// abort, with every turn plugin told). A plugin whose abort fails makes the result
    /// [`TurnError::AbortFailed`]: the activation must stop.
    fn run<T>(
        &mut self,
        ids: Ids<'_>,
        scratch: &mut serde_json::Map<String, Value>,
        reads: &Pins,
        message: &Message,
        rules: &TurnRules,
        body: impl FnOnce(&mut Cx<'_>) -> Result<T, CaError>,
    ) -> Result<T, CaError> {
        let mut next = self.clone();
        let result = next.run_on(ids, scratch, reads, message, rules, body);
        match result {
            Ok(_) => *self = next,
            Err(e) => {
                for p in &rules.turn_plugins {
                    if let Err(why) = p.abort(ids) {
                        return Err(CaError::abort_failed(format!(
                            "plugin {} could not abort the turn ({why}) after: {e}",
                            p.name()
                        )));
                    }
                }
                return Err(e);
            }
        }
        result
    }

    /// Runs `body` on `self` (a copy the caller drops on failure): plugins' begin, the method,
    /// then prepare (limits, intents' plugins, maps, plugins' prepare).
    fn run_on<T>(
        &mut self,
        ids: Ids<'_>,
        scratch: &mut serde_json::Map<String, Value>,
        reads: &Pins,
        message: &Message,
        rules: &TurnRules,
        body: impl FnOnce(&mut Cx<'_>) -> Result<T, CaError>,
    ) -> Result<T, CaError> {
        for p in &rules.turn_plugins {
            p.begin(
                self.state
                    .plugins
                    .entry(p.name().to_string())
                    .or_insert(Value::Null),
                message,
            );
        }
        let mut meter = TurnMeter::default();
        let outcome = {
            let mut cx = Cx {
                app: ids.app,
                ca: ids.ca,
                state: &mut self.state.state,
                scratch,
                maps: &mut self.maps,
                intents: &mut self.new_intents,
                plugins: &mut self.state.plugins,
                reads,
                sender: &message.sender,
                meter: &mut meter,
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
        for p in &rules.turn_plugins {
            if let Some(state) = self.state.plugins.get_mut(p.name()) {
                p.finish(state);
            }
        }
        // Prepare: the turn's effects must fit before they may join the checkpoint.
        let bytes = self.state.state_bytes();
        if bytes > rules.max_state_bytes {
            return Err(CaError::prepare(format!(
                "the state would be {bytes} bytes, over its limit of {} bytes",
                rules.max_state_bytes
            )));
        }
        for intent in &self.new_intents {
            if !rules.intent_plugins.contains(&intent.plugin) {
                return Err(CaError::prepare(format!(
                    "the turn recorded an intent for plugin {:?}, which this host does not have",
                    intent.plugin
                )));
            }
        }
        for (local, t) in &self.maps {
            t.prepare(placeholder_id())
                .map_err(|e| CaError::prepare(format!("map {}-{local}: {e}", ids.ca)))?;
        }
        let effects = TurnEffects {
            ids,
            state: &self.state.state,
            intents: &self.new_intents,
        };
        for p in &rules.turn_plugins {
            let state = self.state.plugins.get(p.name()).unwrap_or(&Value::Null);
            p.prepare(state, &effects).map_err(|e| {
                CaError::prepare(format!("plugin {} refused the turn: {e}", p.name()))
            })?;
        }
        // A plugin without state keeps none (so a turn that changed nothing changes nothing).
        self.state.plugins.retain(|_, v| !v.is_null());
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

/// A runtime method (`@...`): answered by the first turn plugin that knows it.
fn plugin_method(
    cx: &mut Cx<'_>,
    rules: &TurnRules,
    message: &Message,
    call: &Call,
) -> Result<Value, MethodError> {
    for p in &rules.turn_plugins {
        let state = cx
            .plugins
            .entry(p.name().to_string())
            .or_insert(Value::Null);
        if let Some(answer) = p.method(state, &message.sender, &call.method, &call.args) {
            return answer;
        }
    }
    Err(MethodError::UnknownMethod(call.method.clone()))
}

/// The app's upgrade hook from state version `old` to `new`, or the default rule without one.
fn upgrade(app: &dyn App, cx: &mut Cx<'_>, old: &Version, new: &Version) -> Result<(), CaError> {
    match app.upgrade(cx, old, new) {
        Some(r) => r.map_err(|e| method_error("__ca_upgrade__", e)),
        None => default_upgrade(old, new),
    }
}

fn resume_plugins(cx: &mut Cx<'_>, rules: &TurnRules) -> Result<(), CaError> {
    for p in &rules.turn_plugins {
        let state = cx
            .plugins
            .entry(p.name().to_string())
            .or_insert(Value::Null);
        p.resume(state).map_err(|e| {
            CaError::exception(format!("plugin {} could not resume: {e}", p.name()))
        })?;
    }
    Ok(())
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

fn call_of(method: &str) -> Call {
    Call {
        method: method.to_string(),
        args: Vec::new(),
    }
}

fn placeholder_id() -> UpdateId {
    // A constant that always parses; only its validity matters where it is used.
    UpdateId::parse("check").unwrap_or_else(|_| unreachable!("a constant id parses"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::counter::Counter;
    use serde_json::json;
    use sharing_map::MapName;

    struct Fixture {
        app: AppName,
        ca: CaName,
        counter: Counter,
        limits: TurnRules,
        committed: Committed,
        scratch: serde_json::Map<String, Value>,
        reads: Pins,
        seq: u64,
    }

    impl Fixture {
        fn new() -> Self {
            let ca = CaName::parse("alice-phone").expect("ca");
            let map = |local: &str| {
                SharingMap::new(MapName::parse(&format!("alice-phone-{local}")).expect("map"))
            };
            let committed = Committed {
                state_map: map("castate"),
                state: CaState::default(),
                maps: [("counter", map("counter")), ("mirror", map("mirror"))]
                    .into_iter()
                    .map(|(k, m)| (k.to_string(), m))
                    .collect(),
            };
            let mut limits = TurnRules {
                max_state_bytes: 1000,
                ..TurnRules::default()
            };
            limits.intent_plugins.insert("log".into());
            Self {
                app: AppName::parse("demo-counter").expect("app"),
                ca,
                counter: Counter::new(Counter::default_version()),
                limits,
                committed,
                scratch: serde_json::Map::new(),
                reads: Pins::default(),
                seq: 0,
            }
        }

        /// A new CA after its first turn (`__ca_init__`), not yet checkpointed.
        fn started(&self) -> Working {
            let mut w = Working::from_committed(&self.committed);
            w.run_init(
                &self.counter,
                self.ids(),
                &mut self.scratch.clone(),
                &Pins::default(),
                &self.limits,
            )
            .expect("init");
            w
        }

        fn ids(&self) -> Ids<'_> {
            Ids {
                app: &self.app,
                ca: &self.ca,
            }
        }

        fn call(&mut self, w: &mut Working, calls: &[(&str, Value)]) -> Result<Value, CaError> {
            let calls: Vec<Call> = calls
                .iter()
                .map(|(m, a)| Call {
                    method: m.to_string(),
                    args: a.as_array().cloned().unwrap_or_default(),
                })
                .collect();
            let (app, ca) = (self.app.clone(), self.ca.clone());
            w.run_message(
                &self.counter,
                Ids { app: &app, ca: &ca },
                &mut self.scratch,
                &self.reads,
                &Message::from_client(calls, None, self.ca.clone()),
                &self.limits,
            )
        }

        /// Checkpoints what `w` holds and takes it as committed.
        fn commit(&mut self, w: &mut Working) -> Option<Checkpoint> {
            self.seq += 1;
            let id = UpdateId::parse(&format!("u{}", self.seq)).expect("id");
            let ids = Ids {
                app: &self.app,
                ca: &self.ca,
            };
            let cp = w
                .prepare_checkpoint(ids, &self.committed, &id)
                .expect("prepares")?;
            self.committed = cp.next.clone();
            Some(cp)
        }
    }

    fn count(w: &Working) -> Value {
        w.state.state.get("count").cloned().unwrap_or(Value::Null)
    }

    #[test]
    fn a_failed_turn_leaves_state_maps_and_intents_as_they_were() {
        let mut f = Fixture::new();
        let mut w = f.started();
        assert_eq!(f.call(&mut w, &[("share", json!([2]))]), Ok(json!(2)));
        let before = w.clone();
        let e = f
            .call(&mut w, &[("fail", json!(["no"]))])
            .expect_err("fails");
        assert_eq!(
            (e.code, e.message.as_str()),
            (ca_client::ErrorCode::AppError, "no")
        );
        let e = f.call(&mut w, &[("panic", json!([]))]).expect_err("panics");
        assert_eq!(e.code, ca_client::ErrorCode::Exception);
        assert!(e.message.contains("panicked on purpose"), "{e}");
        let e = f
            .call(&mut w, &[("grow", json!([5000]))])
            .expect_err("too big");
        assert_eq!(e.code, ca_client::ErrorCode::Prepare);
        let e = f.call(&mut w, &[("nope", json!([]))]).expect_err("unknown");
        assert_eq!(e.code, ca_client::ErrorCode::Invalid);
        assert_eq!(w.state, before.state);
        assert!(w.new_intents.is_empty());
        let cp = f.commit(&mut w).expect("a checkpoint");
        // State map, then both maps with count 2: the failed turns wrote 3 and left no trace.
        assert_eq!(cp.change_sets.len(), 3);
        for cs in &cp.change_sets[1..] {
            assert_eq!(cs.puts()[0].1.as_value(), Some(&json!(2)));
        }
    }

    #[test]
    fn a_multi_call_is_all_or_nothing_and_returns_the_last_result() {
        let mut f = Fixture::new();
        let mut w = f.started();
        let r = f.call(
            &mut w,
            &[
                ("increment", json!([1])),
                ("increment", json!([10])),
                ("get", json!([])),
            ],
        );
        assert_eq!(r, Ok(json!(11)));
        let r = f.call(&mut w, &[("increment", json!([5])), ("fail", json!(["x"]))]);
        assert!(r.is_err());
        assert_eq!(count(&w), json!(11));
    }

    #[test]
    fn turns_run_while_a_checkpoint_is_in_flight_join_the_next_one_with_keyed_intents() {
        let mut f = Fixture::new();
        let mut w = f.started();
        f.call(&mut w, &[("log", json!(["a"]))]).expect("log");
        f.call(&mut w, &[("log", json!(["b"]))]).expect("log");
        let first = f.commit(&mut w).expect("checkpoint");
        let keys: Vec<_> = first.intents.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "demo-counter/alice-phone/1/0",
                "demo-counter/alice-phone/1/1"
            ]
        );
        assert_eq!(first.change_sets[0].version(), 0);
        // Nothing new: no checkpoint.
        assert!(f.commit(&mut w).is_none());
        // Intents carried out are removed by a later checkpoint.
        w.state.intents.clear();
        f.call(&mut w, &[("increment", json!([]))]).expect("inc");
        let second = f.commit(&mut w).expect("checkpoint");
        assert_eq!(second.change_sets[0].version(), 1);
        let removed: Vec<_> = second.change_sets[0]
            .removes()
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert_eq!(
            CaState::decode(&f.committed.state_map).expect("decodes"),
            w.state
        );
        assert_eq!(count(&w), json!(3));
    }

    /// Counts turns in its state; refuses the turn that would make it `refuse_at`.
    #[derive(Debug)]
    struct Turns {
        refuse_at: u64,
        aborts: std::sync::atomic::AtomicU64,
    }

    impl TurnPlugin for Turns {
        fn name(&self) -> &str {
            "turns"
        }
        fn resume(&self, state: &mut Value) -> Result<(), String> {
            if state.is_null() {
                *state = json!(0);
            }
            Ok(())
        }
        fn begin(&self, state: &mut Value, _message: &Message) {
            *state = json!(state.as_u64().unwrap_or(0) + 1);
        }
        fn prepare(&self, state: &Value, turn: &TurnEffects<'_>) -> Result<(), String> {
            assert!(turn.state.contains_key("count"));
            if state.as_u64() == Some(self.refuse_at) {
                return Err(format!("turn {} is refused", self.refuse_at));
            }
            Ok(())
        }
        fn abort(&self, _ids: Ids<'_>) -> Result<(), String> {
            self.aborts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn turn_plugins_keep_checkpointed_state_refuse_at_prepare_and_roll_back() {
        let mut f = Fixture::new();
        let plugin = Arc::new(Turns {
            refuse_at: 3,
            aborts: Default::default(),
        });
        f.limits.turn_plugins.push(plugin.clone());
        let mut w = f.started();
        f.call(&mut w, &[("increment", json!([]))]).expect("turn 2");
        let e = f
            .call(&mut w, &[("increment", json!([]))])
            .expect_err("turn 3 refused");
        assert_eq!(e.code, ca_client::ErrorCode::Prepare);
        assert!(e.message.contains("turn 3 is refused"), "{e}");
        let e = f
            .call(&mut w, &[("fail", json!(["x"]))])
            .expect_err("app error");
        assert_eq!(e.code, ca_client::ErrorCode::AppError);
        assert_eq!(plugin.aborts.load(std::sync::atomic::Ordering::SeqCst), 2);
        // The refused and failed turns were rolled back, the plugin's count with them.
        assert_eq!(w.state.plugins.get("turns"), Some(&json!(2)));
        assert_eq!(count(&w), json!(1));
        f.commit(&mut w).expect("checkpoint");
        let decoded = CaState::decode(&f.committed.state_map).expect("decodes");
        assert_eq!(decoded.plugins.get("turns"), Some(&json!(2)));
    }

    #[test]
    fn a_message_completing_an_intent_removes_it_once_and_a_repeat_does_not_run() {
        let mut f = Fixture::new();
        let mut w = f.started();
        f.call(&mut w, &[("log", json!(["call out"]))])
            .expect("log");
        let cp = f.commit(&mut w).expect("checkpoint");
        let key = cp.intents[0].key.clone();
        let (app, ca) = (f.app.clone(), f.ca.clone());
        let answer = |w: &mut Working, f: &mut Fixture, method: &str| {
            let mut m = Message::system(
                "test",
                vec![Call {
                    method: method.into(),
                    args: vec![json!(10)],
                }],
            );
            m.completes = Some(key.clone());
            w.run_message(
                &f.counter,
                Ids { app: &app, ca: &ca },
                &mut f.scratch,
                &Pins::default(),
                &m,
                &f.limits,
            )
        };
        // The answer runs once and takes its intent with it, in the same checkpoint.
        assert_eq!(answer(&mut w, &mut f, "increment"), Ok(json!(11)));
        assert!(!w.state.intents.contains_key(&key));
        // A redelivery finds no pending intent: nothing runs.
        assert_eq!(answer(&mut w, &mut f, "increment"), Ok(Value::Null));
        assert_eq!(count(&w), json!(11));
        let cp = f.commit(&mut w).expect("checkpoint");
        let removed: Vec<String> = cp.change_sets[0]
            .removes()
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(removed, [format!("i.{key}")]);
    }

    #[test]
    fn a_failing_answer_still_completes_its_intent() {
        let mut f = Fixture::new();
        let mut w = f.started();
        f.call(&mut w, &[("log", json!(["x"]))]).expect("log");
        let key = f.commit(&mut w).expect("checkpoint").intents[0].key.clone();
        let mut m = Message::system(
            "test",
            vec![Call {
                method: "fail".into(),
                args: vec![json!("bad answer")],
            }],
        );
        m.completes = Some(key.clone());
        let (app, ca) = (f.app.clone(), f.ca.clone());
        let r = w.run_message(
            &f.counter,
            Ids { app: &app, ca: &ca },
            &mut f.scratch,
            &Pins::default(),
            &m,
            &f.limits,
        );
        assert_eq!(r.map_err(|e| e.code), Err(ca_client::ErrorCode::AppError));
        assert!(!w.state.intents.contains_key(&key), "not fed again");
    }

    /// A plugin whose abort fails.
    #[derive(Debug)]
    struct BrokenAbort;

    impl TurnPlugin for BrokenAbort {
        fn name(&self) -> &str {
            "broken"
        }
        fn abort(&self, _ids: Ids<'_>) -> Result<(), String> {
            Err("lost track".into())
        }
    }

    #[test]
    fn an_abort_that_fails_stops_the_activation() {
        let mut f = Fixture::new();
        f.limits.turn_plugins.push(Arc::new(BrokenAbort));
        let mut w = f.started();
        let ok = f.call(&mut w, &[("increment", json!([]))]).expect("runs");
        assert_eq!(ok, json!(1));
        let e = f
            .call(&mut w, &[("fail", json!(["no"]))])
            .expect_err("fails");
        assert!(e.stops, "{e:?}");
        assert!(
            e.message.contains("lost track") && e.message.contains("no"),
            "{e}"
        );
        assert_eq!(count(&w), json!(1), "still rolled back");
    }

    #[test]
    fn system_messages_say_who_sent_them() {
        let bob = CaName::parse("bob-phone").expect("ca");
        assert_eq!(
            Sender::client(None, bob.clone()),
            Sender::Client {
                session: DEFAULT_SESSION.into(),
                caller: bob.clone(),
            }
        );
        assert_eq!(
            Sender::client(Some("phone"), bob.clone()),
            Sender::Client {
                session: "phone".into(),
                caller: bob,
            }
        );
        assert_eq!(
            Message::system("timers", vec![]).sender,
            Sender::System {
                by: "timers".into()
            }
        );
    }

    /// `bob-shop-prices` at `version`, with `price` = `version * 10`.
    fn prices_at(version: u64) -> sharing_map::Snapshot {
        let name = MapName::parse("bob-shop-prices").expect("map");
        let mut map = SharingMap::new(name.clone());
        for v in 0..version {
            let cs = ChangeSet::from_ops(
                name.clone(),
                v,
                UpdateId::parse(&format!("p{v}")).expect("id"),
                [(
                    Arc::from("price"),
                    Some(sharing_map::Entry::value(json!((v + 1) * 10))),
                )],
            );
            map = match map.apply(&cs) {
                Ok(sharing_map::Applied::New(m)) => m,
                other => panic!("applies: {other:?}"),
            };
        }
        sharing_map::Snapshot::new(map, None)
    }

    #[test]
    fn every_method_of_a_message_reads_the_version_pinned_for_it() {
        let mut f = Fixture::new();
        let mut w = f.started();
        fn read(method: &str) -> (&str, Value) {
            (method, json!(["bob-shop-prices", "price"]))
        }
        // The message was pinned at version 1; version 2 exists elsewhere, unseen by it.
        let newer = prices_at(2);
        f.reads = Pins::default().with_map(prices_at(1));
        let r = f
            .call(
                &mut w,
                &[read("read"), ("dawdle", json!([0])), read("read_again")],
            )
            .expect("reads");
        assert_eq!(
            r,
            json!({"version": 1, "value": 10, "before": {"version": 1, "value": 10}})
        );
        // The next message is given the newer version, and reads it in every method.
        f.reads = Pins::default().with_map(newer);
        let r = f
            .call(&mut w, &[read("read"), read("read_again")])
            .expect("reads");
        assert_eq!(
            r,
            json!({"version": 2, "value": 20, "before": {"version": 2, "value": 20}})
        );
        // A map the message did not pin is an exception, and the turn leaves no trace.
        let before = w.state.clone();
        let e = f
            .call(
                &mut w,
                &[
                    ("increment", json!([])),
                    ("read", json!(["carl-shop-prices", "price"])),
                ],
            )
            .expect_err("not pinned");
        assert_eq!(e.code, ca_client::ErrorCode::Exception);
        assert!(e.message.contains("carl-shop-prices"), "{e}");
        assert_eq!(w.state, before);
    }

    #[test]
    fn the_counter_declares_what_each_call_reads() {
        let c = Counter::new(Counter::default_version());
        assert_eq!(
            c.reads_for("read", &[json!("bob-shop-prices"), json!("k")]),
            vec![crate::reads::ReadSpec::Map("bob-shop-prices".into())]
        );
        assert_eq!(
            c.reads_for("allowed", &[json!("bob-acl-root"), json!("carl-phone")]),
            vec![crate::reads::ReadSpec::Aggregate("bob-acl-root".into())]
        );
        assert!(c.reads_for("increment", &[json!(1)]).is_empty());
    }

    #[test]
    fn upgrades_take_the_default_rule_or_the_apps_hook() {
        let v = |s: &str| Version::parse(s).expect("version");
        assert!(default_upgrade(&v("0.1.0"), &v("0.1.1")).is_ok());
        assert!(default_upgrade(&v("1.2.0"), &v("1.9.0")).is_ok());
        for (old, new) in [
            ("0.1.0", "0.0.9"),
            ("0.1.0", "0.2.0"),
            ("1.2.0", "2.0.0"),
            ("1.2.0", "1.1.0"),
        ] {
            let e = default_upgrade(&v(old), &v(new)).expect_err("refused");
            assert_eq!(e.code, ca_client::ErrorCode::Version);
            assert!(e.message.contains(old) && e.message.contains(new), "{e}");
        }
        let mut f = Fixture::new();
        let mut w = f.started();
        f.commit(&mut w).expect("checkpoint");
        for (code, expect) in [
            ("0.1.1", None),
            ("0.0.9", Some(ca_client::ErrorCode::Version)),
        ] {
            f.counter = Counter::new(v(code));
            let mut w = Working::from_committed(&f.committed);
            let r = w.run_resume(
                &f.counter,
                f.ids(),
                &mut f.scratch.clone(),
                &Pins::default(),
                &f.limits,
            );
            assert_eq!(r.err().map(|e| e.code), expect, "{code}");
        }
        f.counter = Counter::new(v("0.2.0"));
        let mut w = Working::from_committed(&f.committed);
        w.run_resume(
            &f.counter,
            f.ids(),
            &mut f.scratch.clone(),
            &Pins::default(),
            &f.limits,
        )
        .expect("the hook migrates");
        assert_eq!(w.state.state.get("upgraded_from"), Some(&json!("0.1.0")));
        assert_eq!(
            w.state.meta.as_ref().map(|m| m.state_version.clone()),
            Some(v("0.2.0"))
        );
    }
}
