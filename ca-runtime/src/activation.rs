//! One active CA: the async shell around the turn engine (DESIGN.md §9.2, §9.4).
//!
//! An activation loads the CA's checkpoint, runs its first turn (`__ca_init__`, or upgrade and
//! `__ca_resume__`), redoes its pending intents, then takes messages one at a time from its
//! queue. Turns run while the previous checkpoint is in flight (the Spine has not answered), so a
//! hot CA is not bound by commit latency; but nothing of a turn escapes (reply, error, intent)
//! before the checkpoint holding it is acknowledged. At most one checkpoint per CA is in flight,
//! and it holds every turn run since the last one.
//!
//! Before each message, the activation pins one version of every map and aggregate the message
//! reads ([`Reader`]): the turn, every method of a multi-call, sees only those (Isolation), and
//! the next message pins the newest the node has (Fairness). A turn run while a checkpoint is
//! in flight pins its own. For a scripted app the pins include its code map: the turn runs the
//! code version they name (upgrading first if its state version changed), and writable maps that
//! version declares are opened before it runs.
//!
//! A checkpoint that fails stops the activation: the callers of its turns get a retryable error
//! (`moved` after a conflict, `checkpoint` otherwise), and the next activation loads whatever was
//! committed. After an idle timeout the activation checkpoints what is left (intents carried
//! out) and ends; an inactive CA costs no memory.
//!
//! Wake-ups: the activation also sleeps until the earliest time its turn plugins want to send
//! the CA a message of their own ([`TurnPlugin::next_wake`](crate::turn::TurnPlugin), timers),
//! then takes those messages ([`TurnPlugin::take_due`](crate::turn::TurnPlugin)) and runs them
//! like any other. A checkpoint whose earliest wake-up the host's wake index does not cover yet
//! waits for the index to be lowered first, and an activation that ends idle settles the index
//! ([`crate::wakeups`]), so a CA with timers is activated for them even when nobody calls it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;
use sharing_map::{AppName, CaName, MapName, SharingMap, UpdateId};
use tokio::sync::{mpsc, oneshot};

use crate::CaError;
use crate::app::App;
use crate::checkpoint::{CaState, Intent, state_map_name};
use crate::committer::CommitError;
use crate::host::HostInner;
use crate::plugins::Courier;
use crate::reads::{Pins, ReadSpec, ReadTarget, Reader};
use crate::turn::{Call, Checkpoint, Committed, Ids, Message, Working};

/// Failed attempts after which an intent is parked.
pub const MAX_INTENT_ATTEMPTS: u32 = 8;

/// After an activation with wake-ups stopped on an error, the host tries again this much later.
const WAKE_RETRY_MS: u64 = 5_000;

/// What a successful call returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The (last) method's result.
    pub result: Value,
    /// The version of the CA's state map that holds the call's effects.
    pub version: u64,
}

/// A message to an activation.
#[derive(Debug)]
pub(crate) enum Envelope {
    /// A message (a client's calls, or a plugin's), as one turn.
    Call {
        message: Message,
        reply: oneshot::Sender<Result<Reply, CaError>>,
        arrived: Instant,
    },
    /// A plugin carried out an intent (or gave up on it).
    IntentFinished { key: String, parked: bool },
    /// Nothing to run: the host activates the CA for wake-ups due (its timers).
    Wake,
}

struct Waiter {
    reply: oneshot::Sender<Result<Reply, CaError>>,
    outcome: Result<Value, CaError>,
    arrived: Instant,
}

struct InFlight {
    rx: oneshot::Receiver<Result<Vec<u64>, CommitError>>,
    checkpoint: Checkpoint,
    waiters: Vec<Waiter>,
}

pub(crate) struct Activation {
    host: Arc<HostInner>,
    app_name: AppName,
    ca: CaName,
    generation: u64,
    app: Arc<dyn App>,
    nonce: u64,
    seq: u64,
    scratch: serde_json::Map<String, Value>,
    waiters: Vec<Waiter>,
    in_flight: Option<InFlight>,
    running_intents: usize,
    reader: Reader,
    me: mpsc::WeakSender<Envelope>,
    /// The earliest wake-up of the working state, as last computed.
    wake: Option<u64>,
    /// Wake-ups due before this are not looked at again (a plugin that said something was due
    /// and then had nothing: not a busy loop).
    wake_floor: u64,
}

impl Activation {
    pub(crate) fn new(
        host: Arc<HostInner>,
        app_name: AppName,
        ca: CaName,
        generation: u64,
        app: Arc<dyn App>,
        me: mpsc::WeakSender<Envelope>,
    ) -> Self {
        let reader = Reader::new(host.agent.clone(), app_name.clone());
        Self {
            host,
            app_name,
            ca,
            generation,
            app,
            nonce: rand::rng().random(),
            seq: 0,
            scratch: serde_json::Map::new(),
            waiters: Vec::new(),
            in_flight: None,
            running_intents: 0,
            reader,
            me,
            wake: None,
            wake_floor: 0,
        }
    }

    /// Runs the activation until it ends, then hands calls still queued back to the host.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Envelope>) {
        self.host.metrics.active.inc();
        let span = tracing::info_span!("ca", app = %self.app_name, ca = %self.ca);
        let _enter = span.enter();
        // The message the activation was started for decides whether it may create the CA.
        let first = rx.recv().await;
        let may_create = first
            .as_ref()
            .is_none_or(|envelope| envelope.may_create(&self.ca));
        let end = match self.load(may_create).await {
            Ok((committed, mut working)) => {
                let handled = match first {
                    Some(envelope) => self.handle(&mut working, envelope).await,
                    None => Ok(()),
                };
                match handled {
                    Ok(()) => self.serve(&mut rx, committed, working).await,
                    Err(e) => Some(e),
                }
            }
            // Only the caller is refused; calls queued behind it start another activation.
            Err(e) if !may_create && e.code == ca_client::ErrorCode::NotAuthorized => {
                if let Some(envelope) = first {
                    fail(envelope, &e);
                }
                None
            }
            Err(e) => {
                if let Some(envelope) = first {
                    fail(envelope, &e);
                }
                Some(e)
            }
        };
        if let Some(e) = &end {
            tracing::warn!(error = %e, code = %e.code, "activation stopped");
            self.fail_all(e);
            if self.wake.is_some() {
                // Its timers are still committed: try again a little later.
                let again = crate::plugins::timers::now_ms() + WAKE_RETRY_MS;
                self.host
                    .wakeups
                    .schedule_at(&self.app_name, &self.ca, Some(again));
            }
        }
        self.host
            .remove_slot(&self.app_name, &self.ca, self.generation);
        self.host.metrics.active.dec();
        rx.close();
        while let Ok(envelope) = rx.try_recv() {
            if let Envelope::Call { .. } = envelope {
                match &end {
                    // The calls never ran here: a new activation takes them.
                    None => self.host.clone().redispatch(
                        self.app_name.clone(),
                        self.ca.clone(),
                        envelope,
                    ),
                    Some(e) => fail(envelope, e),
                }
            }
        }
    }

    fn ids(&self) -> (AppName, CaName) {
        (self.app_name.clone(), self.ca.clone())
    }

    /// Loads (or, if `may_create`, creates) the CA's maps and runs its first turn.
    async fn load(&mut self, may_create: bool) -> Result<(Committed, Working), CaError> {
        let state_name = state_map_name(&self.ca)?;
        let state_map = self.get_or_create(&state_name, may_create).await?;
        let state = CaState::decode(&state_map).map_err(|e| CaError::exception(e.to_string()))?;
        let mut maps = std::collections::BTreeMap::new();
        for local in self.app.maps() {
            let name = MapName::parse(&format!("{}-{local}", self.ca)).map_err(|e| {
                CaError::exception(format!(
                    "the app declares map {local:?}, not a valid map name: {e}"
                ))
            })?;
            maps.insert(local, self.get_or_create(&name, true).await?);
        }
        let committed = Committed {
            state_map,
            state,
            maps,
        };
        let mut working = Working::from_committed(&committed);
        let pins = self.pin_for(&[], None).await?;
        let (app, ca) = self.ids();
        let ids = Ids { app: &app, ca: &ca };
        let limits = &self.host.config.limits;
        if committed.state.meta.is_none() {
            working.run_init(&*self.app, ids, &mut self.scratch, &pins, limits)?;
        } else {
            working.run_resume(&*self.app, ids, &mut self.scratch, &pins, limits)?;
        }
        // Intents a previous activation recorded but may not have carried out: redone first.
        let pending: Vec<Intent> = committed.state.pending_intents().cloned().collect();
        for intent in pending {
            self.carry_out(intent);
        }
        Ok((committed, working))
    }

    /// Pins what a message of `calls` reads: the app's [`App::reads`] and each call's
    /// [`App::reads_for`], one version each, the newest the node's agent has; for a caller
    /// other than the owner, also the aggregates of the app's access policy (one that does not
    /// exist grants nothing, and does not fail the message).
    async fn pin_for(&mut self, calls: &[Call], caller: Option<&CaName>) -> Result<Pins, CaError> {
        let mut specs: Vec<ReadSpec> = self.app.reads();
        for call in calls {
            specs.extend(self.app.reads_for(&call.method, &call.args));
        }
        let mut targets: std::collections::BTreeSet<ReadTarget> = specs
            .iter()
            .map(|s| s.resolve(&self.ca))
            .collect::<Result<_, _>>()?;
        if caller.is_some_and(|c| !crate::access::is_owner(c, &self.ca)) {
            let policy = self.host.config.access.get(&self.app_name).cloned();
            for spec in policy.map(|p| p.reads()).unwrap_or_default() {
                let target = spec.resolve(&self.ca)?;
                if targets.contains(&target)
                    || self.reader.pin(std::slice::from_ref(&target)).await.is_ok()
                {
                    targets.insert(target);
                }
            }
        }
        let targets: Vec<ReadTarget> = targets.into_iter().collect();
        self.reader.pin(&targets).await
    }

    /// Whether the sender of `message` may call its methods (DESIGN.md §9.9): the owner always,
    /// anyone else by the app's access policy, read at `pins`.
    fn authorize(&self, message: &Message, pins: &Pins) -> Result<(), CaError> {
        let crate::turn::Sender::Client { caller, .. } = &message.sender else {
            return Ok(());
        };
        let empty = crate::access::AccessPolicy::default();
        let policy = self
            .host
            .config
            .access
            .get(&self.app_name)
            .unwrap_or(&empty);
        policy.authorize(
            caller,
            &self.ca,
            message.calls.iter().map(|c| c.method.as_str()),
            pins,
        )
    }

    /// Opens the writable maps the message's code declares that the activation does not hold
    /// yet (a scripted app's new version may declare more): created if need be, then written
    /// like the others and committed with the turns.
    async fn open_maps(&self, working: &mut Working, pins: &Pins) -> Result<(), CaError> {
        for local in self.app.maps_for(pins) {
            if working.maps.contains_key(&local) {
                continue;
            }
            let name = MapName::parse(&format!("{}-{local}", self.ca)).map_err(|e| {
                CaError::exception(format!(
                    "the app declares map {local:?}, not a valid map name: {e}"
                ))
            })?;
            let map = self.get_or_create(&name, true).await?;
            working
                .maps
                .insert(local, sharing_map::Transaction::new(map));
        }
        Ok(())
    }

    async fn get_or_create(&self, name: &MapName, may_create: bool) -> Result<SharingMap, CaError> {
        let client = &self.host.client;
        let unavailable =
            |e: spine_client::ClientError| CaError::checkpoint(format!("loading map {name}: {e}"));
        match client.get_map(&self.app_name, name, false).await {
            Ok(map) => return Ok(map),
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(unavailable(e)),
        }
        if !may_create {
            return Err(CaError::not_authorized(format!(
                "CA {} does not exist, and only its owner {} may create it",
                self.ca,
                self.ca.owner()
            )));
        }
        client
            .create_map(&self.app_name, name, Vec::new())
            .await
            .map_err(unavailable)?;
        client
            .get_map(&self.app_name, name, false)
            .await
            .map_err(unavailable)
    }

    /// Serves messages; returns why it stopped if it failed (`None`: idle or host shutdown).
    async fn serve(
        &mut self,
        rx: &mut mpsc::Receiver<Envelope>,
        mut committed: Committed,
        mut working: Working,
    ) -> Option<CaError> {
        let idle = self.host.config.idle;
        let mut last_activity = Instant::now();
        loop {
            if let Err(e) = self.maybe_checkpoint(&committed, &mut working) {
                return Some(e);
            }
            let quiet = self.in_flight.is_none() && self.waiters.is_empty();
            let idle_at = tokio::time::Instant::from_std(last_activity + idle);
            self.wake = {
                let (app, ca) = self.ids();
                crate::wakeups::earliest(
                    &self.host.config.limits.turn_plugins,
                    Ids { app: &app, ca: &ca },
                    &working.state.plugins,
                )
            };
            let wake_at = self.wake.map(|at| {
                let now = crate::plugins::timers::now_ms();
                let at = at.max(self.wake_floor);
                tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now))
            });
            tokio::select! {
                envelope = rx.recv() => {
                    // Every sender is gone: the host is shutting down.
                    let Some(envelope) = envelope else { break };
                    last_activity = Instant::now();
                    if let Err(e) = self.handle(&mut working, envelope).await {
                        return Some(e);
                    }
                    // Take what else is queued now, so it joins the same checkpoint.
                    for _ in 0..256 {
                        match rx.try_recv() {
                            Ok(envelope) => {
                                if let Err(e) = self.handle(&mut working, envelope).await {
                                    return Some(e);
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                answer = wait(&mut self.in_flight) => {
                    last_activity = Instant::now();
                    match self.on_answer(answer) {
                        Ok(next) => committed = next,
                        Err(e) => return Some(e),
                    }
                }
                _ = sleep_until_some(wake_at) => {
                    last_activity = Instant::now();
                    if let Err(e) = self.fire_due(&mut working).await {
                        return Some(e);
                    }
                }
                _ = tokio::time::sleep_until(idle_at), if quiet && self.running_intents == 0 => {
                    if !working.differs_from(&committed) {
                        self.settle_wakeups(&committed).await;
                        return None;
                    }
                    // Leftovers (intents carried out) go in a last checkpoint first.
                    last_activity = Instant::now();
                }
            }
        }
        None
    }

    /// Takes what the turn plugins have due now (timers) and runs each as a message; their
    /// replies go nowhere (the plugin's message has no caller).
    async fn fire_due(&mut self, working: &mut Working) -> Result<(), CaError> {
        let now = crate::plugins::timers::now_ms();
        let (app, ca) = self.ids();
        let plugins = self.host.config.limits.turn_plugins.clone();
        let mut messages = Vec::new();
        for p in &plugins {
            let state = working
                .state
                .plugins
                .entry(p.name().to_string())
                .or_insert(Value::Null);
            messages.extend(p.take_due(Ids { app: &app, ca: &ca }, state, now));
            if state.is_null() {
                working.state.plugins.remove(p.name());
            }
        }
        let still =
            crate::wakeups::earliest(&plugins, Ids { app: &app, ca: &ca }, &working.state.plugins);
        if messages.is_empty() && still.is_some_and(|at| at <= now) {
            tracing::warn!(due = ?still, "a plugin had a wake-up due and nothing to run: looking again in a second");
            self.wake_floor = now + 1000;
        }
        for message in messages {
            let (reply, _unheard) = oneshot::channel();
            self.handle(
                working,
                Envelope::Call {
                    message,
                    reply,
                    arrived: Instant::now(),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// At a clean end: the wake index and the host's schedule get the committed earliest
    /// wake-up (or lose the CA).
    async fn settle_wakeups(&self, committed: &Committed) {
        let (app, ca) = self.ids();
        let wakeups = &self.host.wakeups;
        let due = wake_of(
            &self.host.config.limits.turn_plugins,
            Ids { app: &app, ca: &ca },
            &committed.state,
        );
        if due.is_none() && !wakeups.may_hold(&app, &ca) {
            return;
        }
        wakeups
            .settle(&app, &ca, due, committed.state_map.version())
            .await;
    }

    /// Runs one message (its own pins, taken now: a turn run while a checkpoint is in flight
    /// sees the newest versions too) or takes an intent's completion. An error is why the
    /// activation must stop (a plugin could not abort a turn).
    async fn handle(&mut self, working: &mut Working, envelope: Envelope) -> Result<(), CaError> {
        match envelope {
            Envelope::Call {
                message,
                reply,
                arrived,
            } => {
                let caller = match &message.sender {
                    crate::turn::Sender::Client { caller, .. } => Some(caller.clone()),
                    crate::turn::Sender::System { .. } => None,
                };
                let pins = match self.pin_for(&message.calls, caller.as_ref()).await {
                    Ok(pins) => match self.authorize(&message, &pins) {
                        Ok(()) => self.open_maps(working, &pins).await.map(|()| pins),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                let (app, ca) = self.ids();
                let method = message
                    .calls
                    .first()
                    .map(|c| c.method.as_str())
                    .unwrap_or_default();
                let _turn =
                    tracing::debug_span!("turn", method, calls = message.calls.len()).entered();
                let outcome = pins.and_then(|pins| {
                    working.run_message(
                        &*self.app,
                        Ids { app: &app, ca: &ca },
                        &mut self.scratch,
                        &pins,
                        &message,
                        &self.host.config.limits,
                    )
                });
                if let Err(e) = &outcome
                    && e.stops
                {
                    let _ = reply.send(Err(e.clone()));
                    return Err(e.clone());
                }
                self.waiters.push(Waiter {
                    reply,
                    outcome,
                    arrived,
                });
            }
            Envelope::Wake => {}
            Envelope::IntentFinished { key, parked } => {
                self.running_intents = self.running_intents.saturating_sub(1);
                if parked {
                    if let Some(i) = working.state.intents.get_mut(&key) {
                        i.parked = true;
                    }
                } else {
                    working.state.intents.remove(&key);
                }
            }
        }
        Ok(())
    }

    /// Sends what the waiting turns did as one checkpoint, unless one is in flight; turns that
    /// changed nothing are answered at once when nothing is in flight.
    fn maybe_checkpoint(
        &mut self,
        committed: &Committed,
        working: &mut Working,
    ) -> Result<(), CaError> {
        if self.in_flight.is_some() {
            return Ok(());
        }
        self.seq += 1;
        let id = UpdateId::parse(&format!("ca-{:016x}-{}", self.nonce, self.seq))
            .map_err(|e| CaError::exception(e.to_string()))?;
        let (app, ca) = self.ids();
        let Some(checkpoint) =
            working.prepare_checkpoint(Ids { app: &app, ca: &ca }, committed, &id)?
        else {
            // Nothing to commit: the answers depend only on committed state.
            let version = committed.state_map.version();
            for w in std::mem::take(&mut self.waiters) {
                self.release(w, version);
            }
            return Ok(());
        };
        let turns = self.waiters.len();
        self.host.metrics.turns_per_checkpoint.observe(turns as f64);
        let wake = wake_of(
            &self.host.config.limits.turn_plugins,
            Ids { app: &app, ca: &ca },
            &checkpoint.next.state,
        );
        let uncovered = wake.filter(|due| {
            self.host
                .wakeups
                .indexed(&app, &ca)
                .is_none_or(|e| e.due > *due)
        });
        let rx = match uncovered {
            None => self
                .host
                .committer
                .submit(self.app_name.clone(), checkpoint.change_sets.clone()),
            Some(due) => {
                // The wake index must cover the checkpoint before it may commit: a crash
                // right after the commit must not leave a timer nobody knows of.
                let (tx, rx) = oneshot::channel();
                let wakeups = self.host.wakeups.clone();
                let committer = self.host.committer.clone();
                let change_sets = checkpoint.change_sets.clone();
                let version = checkpoint.next.state_map.version();
                tokio::spawn(async move {
                    let answer = match wakeups.lower(&app, &ca, due, version).await {
                        Err(e) => Err(CommitError::Unavailable(format!(
                            "the wake index could not be written: {e}"
                        ))),
                        Ok(()) => committer
                            .submit(app, change_sets)
                            .await
                            .unwrap_or_else(|_| {
                                Err(CommitError::Unavailable("the committer stopped".into()))
                            }),
                    };
                    let _ = tx.send(answer);
                });
                rx
            }
        };
        self.in_flight = Some(InFlight {
            rx,
            checkpoint,
            waiters: std::mem::take(&mut self.waiters),
        });
        Ok(())
    }

    fn on_answer(
        &mut self,
        answer: Result<Result<Vec<u64>, CommitError>, CaError>,
    ) -> Result<Committed, CaError> {
        let Some(flight) = self.in_flight.take() else {
            return Err(CaError::exception(
                "a checkpoint answer without a checkpoint",
            ));
        };
        let failure = match answer {
            Ok(Ok(versions)) => {
                let expected = flight.checkpoint.next.state_map.version();
                if versions.first() == Some(&expected) {
                    None
                } else {
                    Some(CaError::checkpoint(format!(
                        "the Spine answered versions {versions:?} for a checkpoint at version {expected}"
                    )))
                }
            }
            Ok(Err(CommitError::Conflict(m))) => Some(CaError::moved(format!(
                "another activation of CA {} committed first; call again ({m})",
                self.ca
            ))),
            Ok(Err(e)) => Some(CaError::checkpoint(format!(
                "the checkpoint of CA {} did not commit and may have landed; call again ({e})",
                self.ca
            ))),
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            for w in flight.waiters {
                let _ = w.reply.send(Err(e.clone()));
                self.host.metrics.turn(e.code.as_str());
            }
            return Err(e);
        }
        let version = flight.checkpoint.next.state_map.version();
        let (app, ca) = self.ids();
        for p in &self.host.config.limits.turn_plugins {
            let state = flight.checkpoint.next.state.plugins.get(p.name());
            if let Err(why) = p.committed(Ids { app: &app, ca: &ca }, state.unwrap_or(&Value::Null))
            {
                // The turns committed, but what they release cannot all be: nothing of them
                // escapes, and the next activation starts from the committed checkpoint.
                let e = CaError::commit(format!(
                    "the checkpoint of CA {ca} committed at version {version}, but plugin {} could not release it ({why}); call again",
                    p.name()
                ));
                for w in flight.waiters {
                    let _ = w.reply.send(Err(e.clone()));
                    self.host.metrics.turn(e.code.as_str());
                }
                return Err(e);
            }
        }
        for w in flight.waiters {
            self.release(w, version);
        }
        for intent in flight.checkpoint.intents {
            self.carry_out(intent);
        }
        Ok(flight.checkpoint.next)
    }

    fn release(&self, w: Waiter, version: u64) {
        let metrics = &self.host.metrics;
        metrics
            .turn_seconds
            .observe(w.arrived.elapsed().as_secs_f64());
        match &w.outcome {
            Ok(_) => metrics.turn("committed"),
            Err(e) => metrics.turn(e.code.as_str()),
        }
        let _ = w
            .reply
            .send(w.outcome.map(|result| Reply { result, version }));
    }

    /// Carries out an intent in the background, retrying with backoff; tells the activation
    /// when it is done or parked (if the activation is gone, the intent stays pending in the
    /// checkpoint and the next activation redoes it).
    fn carry_out(&mut self, intent: Intent) {
        let Some(plugin) = self.host.plugins.get(&intent.plugin).cloned() else {
            tracing::warn!(key = %intent.key, plugin = %intent.plugin, "no such plugin on this host: intent left pending");
            return;
        };
        self.running_intents += 1;
        let courier: Arc<dyn Courier> = Arc::new(crate::host::HostCourier::of(&self.host));
        let me = self.me.clone();
        let metrics = self.host.metrics.clone();
        metrics.pending_intents.inc();
        tokio::spawn(async move {
            let mut parked = true;
            for attempt in 0..MAX_INTENT_ATTEMPTS {
                match plugin.carry_out(intent.clone(), courier.clone()).await {
                    Ok(()) => {
                        parked = false;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(key = %intent.key, attempt, error = %e, "intent failed");
                        let backoff = Duration::from_millis(50u64 << attempt.min(8));
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
            metrics.pending_intents.dec();
            if parked {
                metrics.parked_intents.inc();
            }
            if let Some(me) = me.upgrade() {
                let _ = me
                    .send(Envelope::IntentFinished {
                        key: intent.key,
                        parked,
                    })
                    .await;
            }
        });
    }

    fn fail_all(&mut self, e: &CaError) {
        for w in std::mem::take(&mut self.waiters) {
            let _ = w.reply.send(Err(e.clone()));
        }
        if let Some(flight) = self.in_flight.take() {
            for w in flight.waiters {
                let _ = w.reply.send(Err(e.clone()));
            }
        }
    }
}

impl Envelope {
    /// Whether this envelope may create the CA it goes to: the system's messages may, and
    /// clients' only when the caller is the CA's owner; a wake-up never does (the wake index
    /// names CAs whose checkpoints set timers).
    fn may_create(&self, ca: &CaName) -> bool {
        match self {
            Envelope::Call { message, .. } => match &message.sender {
                crate::turn::Sender::Client { caller, .. } => crate::access::is_owner(caller, ca),
                crate::turn::Sender::System { .. } => true,
            },
            Envelope::IntentFinished { .. } => true,
            Envelope::Wake => false,
        }
    }
}

fn fail(envelope: Envelope, e: &CaError) {
    if let Envelope::Call { reply, .. } = envelope {
        let _ = reply.send(Err(e.clone()));
    }
}

/// When a CA with this checkpoint must be active: its plugins' earliest wake-up, or now if it
/// has intents still to carry out (so that a crash between a commit and its effects is
/// recovered without waiting for a caller).
fn wake_of(
    plugins: &[Arc<dyn crate::turn::TurnPlugin>],
    ids: Ids<'_>,
    state: &CaState,
) -> Option<u64> {
    let wake = crate::wakeups::earliest(plugins, ids, &state.plugins);
    if state.pending_intents().next().is_some() {
        let now = crate::plugins::timers::now_ms();
        return Some(wake.map_or(now, |w| w.min(now)));
    }
    wake
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn wait(in_flight: &mut Option<InFlight>) -> Result<Result<Vec<u64>, CommitError>, CaError> {
    match in_flight {
        Some(f) => (&mut f.rx)
            .await
            .map_err(|_| CaError::checkpoint("the committer dropped the checkpoint")),
        None => std::future::pending().await,
    }
}
