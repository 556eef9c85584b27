//! The `session` plugin (DESIGN.md §9.6, Caf.js caf_session): logical sessions named by the
//! client, notification queues that app code manages, and exactly-once requests for stateless
//! clients (nonce + memento).
//!
//! ```text
//!  method ── Sessions::of(cx).notify(args, "phone") ──▶ op in p.session.pending
//!                                                         │ end of the turn (TurnPlugin::finish)
//!                                                         ▼
//!                         SessionTable (queues, nonces, mementos) in the checkpoint (p.session)
//!                                                         │ checkpoint acknowledged
//!                                                         ▼ (TurnPlugin::committed)
//!  client ◀── stream ── Subscription ◀── Listeners::committed (what each listener was not sent)
//!  client ── @ack(seq) ──▶ a turn: the queue drops what the client received
//! ```
//!
//! The table is the plugin's checkpointed state, so a failed turn's notifications vanish with
//! it, and queues survive kill -9 and failover. Clients reach it through runtime methods,
//! called and authorized like app methods, on the session of their message: `@listen` (the
//! session's queue, sent to a new listener first), `@ack(seq)`, `@begin`, `@end(nonce)`.
//! [`table`] is the pure core; [`listeners`] the host's listening clients.

use std::sync::Arc;

use serde_json::{Value, json};
use sharing_map::CaName;

use crate::CaError;
use crate::app::{Cx, MethodError, MethodResult, arg};
use crate::turn::{Ids, Sender, TurnPlugin};

pub mod listeners;
pub mod table;

pub use listeners::{Listeners, Pushed, Subscription};
pub use table::{Begun, Bounds, Notification, Op, Session, SessionTable, Target};

/// The plugin's name: its state is `p.session` in the checkpoint.
pub const NAME: &str = "session";

/// Longest session name.
pub const MAX_SESSION_NAME: usize = 64;

/// Whether `name` may name a session: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn check_session_name(name: &str) -> Result<(), CaError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SESSION_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CaError::invalid(format!(
            "session name {name:?}: a session is named by 1 to {MAX_SESSION_NAME} letters, digits, '_', '.' or '-'"
        )))
    }
}

/// The `session` plugin: a turn plugin over each CA's [`SessionTable`].
#[derive(Debug)]
pub struct SessionPlugin {
    bounds: Bounds,
    listeners: Arc<Listeners>,
}

impl SessionPlugin {
    /// A plugin with `bounds`, pushing committed notifications to `listeners`.
    pub fn new(bounds: Bounds, listeners: Arc<Listeners>) -> Arc<Self> {
        Arc::new(Self { bounds, listeners })
    }
}

fn pending(state: &mut Value) -> &mut Vec<Value> {
    if !state.is_object() {
        *state = json!({});
    }
    let entry = &mut state["pending"];
    if !entry.is_array() {
        *entry = json!([]);
    }
    match entry {
        Value::Array(a) => a,
        _ => unreachable!("made an array just above"),
    }
}

fn push_op(state: &mut Value, op: Op) -> MethodResult<()> {
    let op = serde_json::to_value(op).map_err(|e| MethodError::Failed(e.to_string()))?;
    pending(state).push(op);
    Ok(())
}

/// Session `name` as the turns before this one left it.
fn session_of(state: &Value, name: &str) -> MethodResult<Option<Session>> {
    match state.get("sessions").and_then(|s| s.get(name)) {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| MethodError::Failed(format!("session {name}: {e}"))),
    }
}

fn client_session<'s>(sender: &'s Sender, method: &str) -> MethodResult<&'s str> {
    sender.session().ok_or_else(|| {
        MethodError::Failed(format!(
            "{method} needs a client's session; the system sent this"
        ))
    })
}

fn new_nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl TurnPlugin for SessionPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn resume(&self, state: &mut Value) -> Result<(), String> {
        let mut table = SessionTable::from_value(state)?;
        // A turn's ops never outlive it; a checkpoint holding some is folded as that turn was.
        table.fold(&self.bounds);
        *state = table.to_value();
        Ok(())
    }

    fn method(
        &self,
        state: &mut Value,
        sender: &Sender,
        method: &str,
        args: &[Value],
    ) -> Option<Result<Value, MethodError>> {
        let mut answer = || -> MethodResult<Value> {
            let session = client_session(sender, method)?.to_string();
            match method {
                "@listen" => {
                    let queue = session_of(state, &session)?
                        .map(|s| s.queue.into_iter().collect::<Vec<_>>())
                        .unwrap_or_default();
                    Ok(json!({"session": session, "queue": queue}))
                }
                "@ack" => {
                    let seq: u64 = arg(args, 0, "seq")?;
                    push_op(state, Op::Ack { session, seq })?;
                    Ok(Value::Null)
                }
                "@begin" => {
                    let s = session_of(state, &session)?;
                    let (begun, op) = table::begin(s.as_ref(), &session, new_nonce());
                    push_op(state, op)?;
                    serde_json::to_value(begun).map_err(|e| MethodError::Failed(e.to_string()))
                }
                "@end" => {
                    let nonce: String = arg(args, 0, "nonce")?;
                    let s = session_of(state, &session)?;
                    let (ended, op) = table::end(s.as_ref(), &session, &nonce);
                    if let Some(op) = op {
                        push_op(state, op)?;
                    }
                    Ok(json!(ended))
                }
                other => Err(MethodError::UnknownMethod(other.to_string())),
            }
        };
        match method {
            "@listen" | "@ack" | "@begin" | "@end" => Some(answer()),
            _ => None,
        }
    }

    fn finish(&self, state: &mut Value) {
        let has_ops = state
            .get("pending")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if !has_ops {
            return;
        }
        // Ops recorded through this module's API decode; a table that does not is left as it is
        // and refused by `prepare`.
        if let Ok(mut table) = SessionTable::from_value(state) {
            table.fold(&self.bounds);
            *state = table.to_value();
        }
    }

    fn prepare(&self, state: &Value, _turn: &crate::turn::TurnEffects<'_>) -> Result<(), String> {
        if state.get("pending").is_some_and(|p| !p.is_null()) {
            return Err("the session table holds ops it could not apply".into());
        }
        Ok(())
    }

    fn committed(&self, ids: Ids<'_>, state: &Value) -> Result<(), String> {
        if !self.listeners.has(ids.app, ids.ca) {
            return Ok(());
        }
        let table = SessionTable::from_value(state)?;
        self.listeners.committed(ids.app, ids.ca, &table);
        Ok(())
    }
}

/// What app code does with its CA's sessions (DESIGN.md §9.6), over the method's [`Cx`]:
/// `Sessions::of(cx).notify(json!(["hello"]), "phone")`. Effects take place when the turn ends
/// and commit with it; reads see the sessions as the turns before left them.
#[derive(Debug)]
pub struct Sessions<'c> {
    /// The plugin's checkpointed state (`None`: the host has no session plugin).
    state: Option<&'c mut Value>,
    sender: &'c Sender,
}

impl<'c> Sessions<'c> {
    /// The sessions of the CA whose method runs.
    pub fn of(cx: &'c mut Cx<'_>) -> Self {
        Self {
            state: cx.plugins.get_mut(NAME),
            sender: cx.sender,
        }
    }

    /// The sessions in turn plugins' `states`, for a message from `sender` (scripted apps reach
    /// them this way, outside a [`Cx`]).
    pub fn over(
        states: &'c mut std::collections::BTreeMap<String, Value>,
        sender: &'c Sender,
    ) -> Self {
        Self {
            state: states.get_mut(NAME),
            sender,
        }
    }

    fn state(&mut self) -> MethodResult<&mut Value> {
        self.state.as_deref_mut().ok_or_else(|| {
            MethodError::Failed(
                "this host has no session plugin (component `session` in the host's plugins)"
                    .into(),
            )
        })
    }

    /// The session of the message this method runs for (`None`: the system sent it).
    pub fn session_id(&self) -> Option<String> {
        self.sender.session().map(str::to_string)
    }

    fn session_or_current(&self, session: Option<&str>) -> MethodResult<String> {
        match session {
            Some(s) => {
                check_session_name(s).map_err(|e| MethodError::BadArgs(e.message))?;
                Ok(s.to_string())
            }
            None => self.session_id().ok_or_else(|| {
                MethodError::Failed("no session named, and the system sent this message".into())
            }),
        }
    }

    /// Queues a notification (`args`, a JSON array) for session `to`, or for every existing
    /// session whose name matches `to` if it holds a `*`; it joins the queue when the turn
    /// commits, and never if the turn fails.
    pub fn notify(&mut self, args: Value, to: &str) -> MethodResult<()> {
        if !to.contains('*') {
            check_session_name(to).map_err(|e| MethodError::BadArgs(e.message))?;
        }
        let args = match args {
            Value::Array(a) => Value::Array(a),
            other => json!([other]),
        };
        let op = Op::Notify {
            to: Target::parse(to),
            args,
        };
        push_op(self.state()?, op)
    }

    /// The notifications queued for `session` (`None`: this message's), oldest first.
    pub fn outq(&mut self, session: Option<&str>) -> MethodResult<Vec<Notification>> {
        let name = self.session_or_current(session)?;
        Ok(session_of(self.state()?, &name)?
            .map(|s| s.queue.into_iter().collect())
            .unwrap_or_default())
    }

    /// Sets the queue limit of `session` (`None`: this message's): the oldest notifications
    /// beyond `n` are dropped; `n ≤ 0` is unbounded. It also exempts the session from eviction.
    pub fn limit_queue(&mut self, n: i64, session: Option<&str>) -> MethodResult<()> {
        let session = self.session_or_current(session)?;
        push_op(self.state()?, Op::Limit { session, n })
    }

    /// The names of the CA's sessions.
    pub fn all_session_ids(&mut self) -> MethodResult<Vec<String>> {
        Ok(self
            .state()?
            .get("sessions")
            .and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// Starts a new exactly-once instance of this message's session: its nonce (in force once
    /// the turn commits) and the memento of the previous instance if that one did not end.
    pub fn begin(&mut self) -> MethodResult<Begun> {
        let session = self.session_or_current(None)?;
        let state = self.state()?;
        let s = session_of(state, &session)?;
        let (begun, op) = table::begin(s.as_ref(), &session, new_nonce());
        push_op(state, op)?;
        Ok(begun)
    }

    /// Stores `memento` with this turn if `nonce` is the current instance of this message's
    /// session; `false` for a stale instance (the method should then fail, so the turn aborts).
    pub fn remember(&mut self, nonce: &str, memento: Value) -> MethodResult<bool> {
        let session = self.session_or_current(None)?;
        let state = self.state()?;
        let s = session_of(state, &session)?;
        match table::remember(s.as_ref(), &session, nonce, memento) {
            Some(op) => push_op(state, op).map(|()| true),
            None => Ok(false),
        }
    }

    /// The memento the current instance of this message's session remembered before this
    /// turn, if `nonce` is that instance (`None` otherwise, or if it remembered nothing yet).
    pub fn memento(&mut self, nonce: &str) -> MethodResult<Option<Value>> {
        let session = self.session_or_current(None)?;
        let s = session_of(self.state()?, &session)?;
        Ok(s.filter(|s| s.nonce.as_deref() == Some(nonce))
            .and_then(|s| s.memento))
    }

    /// Ends instance `nonce` of this message's session (idempotent): `false` if another
    /// instance is current.
    pub fn end(&mut self, nonce: &str) -> MethodResult<bool> {
        let session = self.session_or_current(None)?;
        let state = self.state()?;
        let s = session_of(state, &session)?;
        let (ended, op) = table::end(s.as_ref(), &session, nonce);
        if let Some(op) = op {
            push_op(state, op)?;
        }
        Ok(ended)
    }
}

/// The caller of a client's message, if a client sent it.
pub fn caller_of(sender: &Sender) -> Option<&CaName> {
    match sender {
        Sender::Client { caller, .. } => Some(caller),
        Sender::System { .. } => None,
    }
}

/// The host's listening clients, as a component (`ca-runtime#session-listeners`): the session
/// plugin pushes to them, the client endpoints (gRPC, WebSocket) subscribe to them.
#[derive(Debug)]
pub struct ListenersPart(pub Arc<Listeners>);
impl components::Component for ListenersPart {}

/// Registers the factories of this plugin: `ca-runtime#session-listeners`, and
/// `ca-runtime#session` (env `listeners`: that part's name; `queue_limit`, `max_sessions`).
pub(crate) fn register(r: &mut components::Registry) -> Result<(), components::Error> {
    use crate::assembly::{PluginPart, u64_of};
    use components::{BoxError, FactoryArgs};
    r.register(
        "ca-runtime#session-listeners",
        |_a: FactoryArgs| async move { Ok::<_, BoxError>(ListenersPart(Listeners::new())) },
    )?;
    r.register("ca-runtime#session", |a: FactoryArgs| async move {
        let name = crate::assembly::str_of(&a.env, "listeners")?;
        let listeners = a.context.get::<ListenersPart>(&name).ok_or_else(|| {
            format!(
                "env listeners: no session-listeners component {name:?} before {}",
                a.name()
            )
        })?;
        let bounds = Bounds {
            queue_limit: u64_of(&a.env, "queue_limit")?.max(1) as usize,
            max_sessions: u64_of(&a.env, "max_sessions")?.max(1) as usize,
        };
        let plugin: Arc<dyn TurnPlugin> = SessionPlugin::new(bounds, listeners.0.clone());
        Ok::<_, BoxError>(PluginPart {
            intent: None,
            turn: Some(plugin),
        })
    })?;
    Ok(())
}
