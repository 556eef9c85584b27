//! `this`: what a scripted method sees, one documented object.
//!
//! | property | what it is |
//! | --- | --- |
//! | `this.state` | the CA's state, an object map: read and write it; checkpointed with the turn, rolled back if the turn fails |
//! | `this.scratch` | memory only: lost when the CA deactivates, kept across failed turns |
//! | `this.ca`, `this.app` | the CA's and the app's names |
//! | `this.sender` | who sent the message: `#{kind: "client", session: "default", caller: "alice-phone"}` or `#{kind: "system", by: "timers"}` |
//! | `this.code` | the code version the message runs on: `version`, `state_version`, `digest`, its data entries (`get(name)`, `get(name, field)`, `keys()`) |
//! | `this.sharing` | the `sharing` plugin: other writers' maps and aggregates as pinned for the message, and the CA's own writable maps ([`sharing`]) |
//! | `this.log` | the `log` plugin: `append(value)` records an intent, carried out once after commit ([`log`]) |
//! | `this.session` | the `session` plugin: notifications to the CA's sessions, their queues, exactly-once instances (`begin`, `remember`, `end`) ([`session`]) |
//!
//! Every plugin is a property of `this` named after it, whose functions are methods of a Rhai
//! type of its own. Adding one (timers, HTTP calls, events) is a file here with a
//! [`ScriptPlugin`] and one line in [`plugins`]: its functions reach the turn through a
//! [`TurnRef`] (the CA's pinned reads, writable maps, intents and plugins' checkpointed states),
//! so what they do commits or rolls back with the turn.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rhai::{Dynamic, Engine, EvalAltResult};
use serde_json::Value;
use sharing_map::{AppName, CaName, Transaction};

use crate::app::NewIntent;
use crate::reads::Pins;
use crate::turn::Sender;

pub mod log;
pub mod session;
pub mod sharing;

/// A plugin's part of `this`.
pub trait ScriptPlugin: Send + Sync + std::fmt::Debug + 'static {
    /// The property of `this` it is reached by (`sharing` for `this.sharing`).
    fn property(&self) -> &'static str;
    /// Registers its Rhai type and its functions.
    fn register(&self, engine: &mut Engine);
    /// The value of `this.<property>` for one call.
    fn handle(&self, turn: &TurnRef) -> Dynamic;
}

/// The plugins scripts reach through `this`, in order.
pub fn plugins() -> Vec<Box<dyn ScriptPlugin>> {
    vec![
        Box::new(sharing::SharingApi),
        Box::new(log::LogApi),
        Box::new(session::SessionApi),
    ]
}

/// What a call's plugin functions work on: the parts of the turn they may touch, moved out of
/// the method's context for the call and back after it.
#[derive(Debug)]
pub struct TurnSide {
    /// The CA.
    pub ca: CaName,
    /// Its app.
    pub app: AppName,
    /// What the message pinned.
    pub reads: Pins,
    /// The CA's writable maps' transactions, by local name.
    pub maps: BTreeMap<String, Transaction>,
    /// Intents recorded since the last checkpoint.
    pub intents: Vec<NewIntent>,
    /// Turn plugins' checkpointed states.
    pub plugins: BTreeMap<String, Value>,
    /// Who sent the message.
    pub sender: Sender,
    open: bool,
}

/// A handle on the [`TurnSide`] of the call running now; plugin handles hold one. Once the call
/// returns it is closed: a handle a script kept (it cannot: `this.state` and `this.scratch`
/// hold only JSON) would fail.
#[derive(Clone, Debug)]
pub struct TurnRef(Arc<Mutex<TurnSide>>);

impl TurnRef {
    pub(crate) fn open(side: TurnSide) -> Self {
        Self(Arc::new(Mutex::new(TurnSide { open: true, ..side })))
    }

    /// Runs `f` on the turn; a Rhai error (an exception of the call) if it fails or the call
    /// has returned.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut TurnSide) -> Result<T, String>,
    ) -> Result<T, Box<EvalAltResult>> {
        let mut side = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !side.open {
            return Err("this handle belongs to a call that has returned".into());
        }
        f(&mut side).map_err(Into::into)
    }

    /// Closes the handle and gives the turn's parts back.
    pub(crate) fn close(&self) -> TurnSide {
        let mut side = self.0.lock().unwrap_or_else(|p| p.into_inner());
        side.open = false;
        TurnSide {
            ca: side.ca.clone(),
            app: side.app.clone(),
            reads: std::mem::take(&mut side.reads),
            maps: std::mem::take(&mut side.maps),
            intents: std::mem::take(&mut side.intents),
            plugins: std::mem::take(&mut side.plugins),
            sender: side.sender.clone(),
            open: false,
        }
    }
}

impl TurnSide {
    /// A side holding these parts.
    pub(crate) fn new(
        ca: CaName,
        app: AppName,
        reads: Pins,
        maps: BTreeMap<String, Transaction>,
        intents: Vec<NewIntent>,
        plugins: BTreeMap<String, Value>,
        sender: Sender,
    ) -> Self {
        Self {
            ca,
            app,
            reads,
            maps,
            intents,
            plugins,
            sender,
            open: false,
        }
    }
}

/// A JSON value as a script sees it.
pub fn to_script(value: &Value) -> Result<Dynamic, Box<EvalAltResult>> {
    rhai::serde::to_dynamic(value)
}

/// A script's value as JSON; `what` names it in the error.
pub fn from_script(value: &Dynamic, what: &str) -> Result<Value, String> {
    rhai::serde::from_dynamic(value)
        .map_err(|_| format!("{what} is a {}, not a JSON value", value.type_name()))
}
