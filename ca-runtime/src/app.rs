//! The app API in Rust (DESIGN.md §9.10): a behaviour an app implements, and the context its
//! methods get.

use std::collections::BTreeMap;

use semver::Version;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sharing_map::{AppName, CaName, Snapshot, Transaction};

pub use crate::reads::ReadSpec;
use crate::reads::{AggregateSnapshot, Pins};
use crate::turn::Sender;

/// How a method fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    /// The app refuses the call (an application error): the turn is rolled back and the caller
    /// gets this message; the CA goes on.
    #[error("{0}")]
    App(String),
    /// The app has no such method.
    #[error("this app has no method {0:?}")]
    UnknownMethod(String),
    /// The arguments do not fit the method.
    #[error("bad arguments: {0}")]
    BadArgs(String),
    /// The method failed inside (a broken invariant, a limit): an exception, like a panic.
    #[error("{0}")]
    Failed(String),
}

/// What methods return.
pub type MethodResult<T> = Result<T, MethodError>;

/// The code a message runs on: what its CA's checkpoint records, and what upgrades compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeVersion {
    /// The version (semver) of the state layout the code reads and writes.
    pub state_version: Version,
    /// The version of the app's code map the code came from (`None`: compiled into the host).
    pub code: Option<u64>,
}

/// An app: its state version, life-cycle hooks and methods. Methods run one at a time per CA;
/// each call is one transaction, so a method that returns an error (or panics) leaves no trace.
pub trait App: Send + Sync + 'static {
    /// The version of the state layout this code reads and writes (semver).
    fn state_version(&self) -> Version;

    /// The code a message whose reads are pinned as `reads` runs on. A Rust app has one
    /// ([`App::state_version`]); a scripted app's is the code map version pinned for the message,
    /// which may change between two messages of an active CA: the turn engine compares it with
    /// the checkpoint's before every message and upgrades first (`__ca_upgrade__`) when the state
    /// versions differ.
    fn version_for(&self, _reads: &Pins) -> Result<CodeVersion, crate::CaError> {
        Ok(CodeVersion {
            state_version: self.state_version(),
            code: None,
        })
    }

    /// The writable maps a message whose reads are pinned as `reads` may write: those of
    /// [`App::maps`] unless the code changes with the message (a scripted app). The activation
    /// opens the ones it does not hold yet before the message runs.
    fn maps_for(&self, _reads: &Pins) -> Vec<String> {
        self.maps()
    }

    /// Local names of the Sharing Maps each CA writes (`prices` is `alice-phone-prices` for CA
    /// `alice-phone`): created at activation, written through [`Cx::map`], committed atomically
    /// with the checkpoint.
    fn maps(&self) -> Vec<String> {
        Vec::new()
    }

    /// What every message of a CA reads through the node agent (other writers' maps,
    /// aggregates), besides what [`App::reads_for`] adds per call: pinned once per message,
    /// before it runs, and read through [`Cx::read`] and [`Cx::aggregate`]. These are pinned for
    /// the first turn (`__ca_init__`, `__ca_resume__`) too: if one does not exist, the CA does
    /// not activate (its callers get `not_found`) until it does.
    fn reads(&self) -> Vec<ReadSpec> {
        Vec::new()
    }

    /// What a call of `method` with `args` reads, besides [`App::reads`]: turns are synchronous,
    /// so a method that picks what it reads from its arguments says so here, and the runtime
    /// pins it before the message runs.
    fn reads_for(&self, _method: &str, _args: &[Value]) -> Vec<ReadSpec> {
        Vec::new()
    }

    /// `__ca_init__`: the first turn of a new CA.
    fn init(&self, _cx: &mut Cx<'_>) -> MethodResult<()> {
        Ok(())
    }

    /// `__ca_resume__`: the first turn of every later activation, after upgrades.
    fn resume(&self, _cx: &mut Cx<'_>) -> MethodResult<()> {
        Ok(())
    }

    /// `__ca_upgrade__`: the checkpoint was written by state version `old`, this code is `new`.
    /// `None` (the default) takes the default rule: a compatible version (`^old`) is accepted,
    /// anything else (a downgrade, a breaking bump) refuses to activate the CA.
    fn upgrade(
        &self,
        _cx: &mut Cx<'_>,
        _old: &Version,
        _new: &Version,
    ) -> Option<MethodResult<()>> {
        None
    }

    /// Runs method `method` with `args`.
    fn call(&self, cx: &mut Cx<'_>, method: &str, args: &[Value]) -> MethodResult<Value>;
}

/// An effect a method asks for: carried out by `plugin` after the turn commits.
#[derive(Clone, Debug, PartialEq)]
pub struct NewIntent {
    /// The plugin that carries it out.
    pub plugin: String,
    /// What it should do.
    pub payload: Value,
}

/// What a method sees: its CA, its state (checkpointed, rolled back on error), its scratch
/// (memory only, never rolled back), its writable maps, the maps and aggregates it reads (one
/// version each for the whole message), and the intents it records.
#[derive(Debug)]
pub struct Cx<'a> {
    pub(crate) app: &'a AppName,
    pub(crate) ca: &'a CaName,
    /// The CA's state: a JSON object, checkpointed with the turn.
    pub state: &'a mut serde_json::Map<String, Value>,
    /// Memory only: lost on deactivation, kept across failed turns.
    pub scratch: &'a mut serde_json::Map<String, Value>,
    pub(crate) maps: &'a mut BTreeMap<String, Transaction>,
    pub(crate) intents: &'a mut Vec<NewIntent>,
    pub(crate) plugins: &'a mut BTreeMap<String, Value>,
    pub(crate) reads: &'a Pins,
    pub(crate) sender: &'a Sender,
    pub(crate) meter: &'a mut TurnMeter,
}

/// What the turn has used so far of budgets that hold per turn, not per call: every method of a
/// multi-call, and the hooks run in the same turn, draw on one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnMeter {
    /// Script operations run (scripted apps).
    pub operations: u64,
}

impl Cx<'_> {
    /// The app.
    pub fn app(&self) -> &AppName {
        self.app
    }

    /// The CA.
    pub fn ca(&self) -> &CaName {
        self.ca
    }

    /// Who sent the message this method runs for: a client (and its session), or the runtime or
    /// a plugin (timers, external calls' responses, events).
    pub fn sender(&self) -> &Sender {
        self.sender
    }

    /// The transaction on this CA's writable map `local` (one the app declared in
    /// [`App::maps`]); its writes commit with the turn.
    pub fn map(&mut self, local: &str) -> MethodResult<&mut Transaction> {
        let ca = self.ca;
        self.maps.get_mut(local).ok_or_else(|| {
            MethodError::Failed(format!(
                "map {ca}-{local} is not one of the maps this app declares"
            ))
        })
    }

    /// The version of map `name` (a full name) pinned for this message: the same in every method
    /// of the message, the newest the node had when it began. Only maps the app declared in
    /// [`App::reads`] or [`App::reads_for`] are pinned. This is the committed state the node's
    /// agent has: the CA's own writable maps, with its uncommitted writes, are [`Cx::map`]'s.
    pub fn read(&self, name: &str) -> MethodResult<&Snapshot> {
        self.reads.map(name).ok_or_else(|| {
            MethodError::Failed(format!(
                "map {name} is not read by this message (declare it in App::reads or App::reads_for)"
            ))
        })
    }

    /// The aggregate rooted at `root` as pinned for this message (one version of every map in
    /// it), for `get_all` and `explain`; declared like [`Cx::read`]'s maps.
    pub fn aggregate(&self, root: &str) -> MethodResult<&AggregateSnapshot> {
        self.reads.aggregate(root).ok_or_else(|| {
            MethodError::Failed(format!(
                "aggregate {root} is not read by this message (declare it in App::reads or App::reads_for)"
            ))
        })
    }

    /// Whether the aggregate rule over `root`, as pinned for this message, grants `caller` (its
    /// owner or full name has a value in some map of the aggregate).
    pub fn check(&self, root: &str, caller: &CaName) -> MethodResult<bool> {
        Ok(node_agent::aggregate::check(self.aggregate(root)?, caller))
    }

    /// What the turn has used of its per-turn budgets so far.
    pub fn meter(&mut self) -> &mut TurnMeter {
        self.meter
    }

    /// The state of turn plugin `name` (see [`TurnPlugin`](crate::turn::TurnPlugin)), if the
    /// host has it: checkpointed with the CA and rolled back with the turn.
    pub fn plugin(&mut self, name: &str) -> Option<&mut Value> {
        self.plugins.get_mut(name)
    }

    /// Records an intent for `plugin`: it is carried out after this turn's checkpoint commits,
    /// exactly once by its idempotency key, and vanishes if the turn aborts.
    pub fn intent(&mut self, plugin: &str, payload: Value) {
        self.intents.push(NewIntent {
            plugin: plugin.to_string(),
            payload,
        });
    }
}

/// Argument `index` of `args`, named `name` in errors; a missing argument is JSON `null`, so an
/// `Option<T>` argument may be left out.
pub fn arg<T: DeserializeOwned>(args: &[Value], index: usize, name: &str) -> MethodResult<T> {
    let value = args.get(index).cloned().unwrap_or(Value::Null);
    serde_json::from_value(value)
        .map_err(|e| MethodError::BadArgs(format!("argument {} ({name}): {e}", index + 1)))
}
