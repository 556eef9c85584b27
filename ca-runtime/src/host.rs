//! The host: routes calls to activations, creating them on demand (DESIGN.md §9.4).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sharing_map::{AppName, CaName};
use spine_client::Client;
use tokio::sync::{mpsc, oneshot};

use crate::CaError;
use crate::activation::{Activation, Envelope, Reply};
use crate::app::App;
use crate::committer::{Committer, CommitterConfig};
use crate::metrics::Metrics;
use crate::placement::{Placement, Route};
use crate::plugins::{Courier, Plugins};
use crate::turn::{Call, Message, Sender, TurnPlugin, TurnRules};
use crate::wakeups::{DEFAULT_PARTITIONS, Wakeups};

/// The prefix of system methods, which no client may call.
pub const SYSTEM_PREFIX: &str = "__ca_";

/// How a host runs its CAs.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// An activation with nothing to do for this long ends.
    pub idle: Duration,
    /// Limits of every turn (state size); the plugin list is filled in from the host's plugins.
    pub limits: TurnRules,
    /// Most method calls in one multi-call.
    pub max_calls: usize,
    /// Largest arguments of one call, as JSON text.
    pub max_args_bytes: usize,
    /// Calls queued per activation before callers wait.
    pub mailbox: usize,
    /// Group commit bounds.
    pub committer: CommitterConfig,
    /// Who besides a CA's owner may call it, by app (none listed: owners only).
    pub access: crate::access::Access,
    /// How often the host looks for partitions with wake-ups (timers) that no live host holds.
    pub wake_scan: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60),
            limits: TurnRules::default(),
            max_calls: 100,
            max_args_bytes: 256 * 1024,
            mailbox: 1024,
            committer: CommitterConfig::default(),
            access: Default::default(),
            wake_scan: Duration::from_secs(2),
        }
    }
}

/// Apps a host finds when they are first called, besides those compiled into it: scripted apps,
/// found by their code maps (no restart to deploy one).
pub trait AppResolver: Send + Sync + std::fmt::Debug + 'static {
    /// The app, if an earlier call resolved it (no waiting).
    fn cached(&self, app: &AppName) -> Option<Arc<dyn App>>;
    /// Finds the app, or says why there is none (`not_found`).
    fn resolve(
        &self,
        app: &AppName,
    ) -> futures::future::BoxFuture<'_, Result<Arc<dyn App>, CaError>>;
}

struct Slot {
    tx: mpsc::Sender<Envelope>,
    generation: u64,
}

/// What activations share.
pub(crate) struct HostInner {
    pub(crate) config: HostConfig,
    pub(crate) client: Client,
    pub(crate) committer: Committer,
    pub(crate) plugins: Plugins,
    pub(crate) metrics: Arc<Metrics>,
    /// The node agent activations read other maps and aggregates through (`None`: reads fail
    /// with a clear error).
    pub(crate) agent: Option<node_agent::Agent>,
    /// Which CAs must be activated for their wake-ups (timers), here and in the Spine.
    pub(crate) wakeups: Arc<Wakeups>,
    placement: Option<Arc<Placement>>,
    apps: BTreeMap<AppName, Arc<dyn App>>,
    /// Where apps not compiled in are found (set once, before serving).
    resolver: std::sync::OnceLock<Arc<dyn AppResolver>>,
    slots: Mutex<HashMap<(AppName, CaName), Slot>>,
    generations: AtomicU64,
}

/// A CA host.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

impl std::fmt::Debug for HostInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostInner")
            .field("apps", &self.apps.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("apps", &self.inner.apps.keys().collect::<Vec<_>>())
            .field("active", &self.active())
            .finish()
    }
}

impl Host {
    /// A host serving `apps`, checkpointing through `client`, reading other maps through
    /// `agent`, carrying out intents with `plugins` and running `turn_plugins` in every turn
    /// (in order), placing CAs with `placement` (or serving every CA here without leases if
    /// `None`). Starts its committer and lease renewal on the current tokio runtime.
    pub fn new(
        client: Client,
        agent: Option<node_agent::Agent>,
        apps: Vec<(AppName, Arc<dyn App>)>,
        plugins: Plugins,
        turn_plugins: Vec<Arc<dyn TurnPlugin>>,
        placement: Option<Arc<Placement>>,
        mut config: HostConfig,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let committer = Committer::start(client.clone(), config.committer, metrics.clone());
        config
            .limits
            .intent_plugins
            .extend(plugins.names().map(str::to_string));
        config.limits.turn_plugins.extend(turn_plugins);
        let partitions = placement
            .as_ref()
            .map_or(DEFAULT_PARTITIONS, |p| p.config().partitions);
        let wakeups = Wakeups::start(client.clone(), partitions);
        let wake_scan = config.wake_scan;
        let inner = Arc::new(HostInner {
            config,
            client,
            committer,
            plugins,
            metrics,
            agent,
            wakeups: wakeups.clone(),
            placement,
            apps: apps.into_iter().collect(),
            resolver: std::sync::OnceLock::new(),
            slots: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
        });
        if let Some(placement) = inner.placement.clone() {
            tokio::spawn(renew_leases(Arc::downgrade(&inner), placement));
        }
        tokio::spawn(crate::wakeups::drive(
            Arc::downgrade(&inner),
            wakeups,
            inner.placement.clone(),
            wake_scan,
        ));
        Self { inner }
    }

    /// Serves the apps `resolver` finds (scripted apps) besides the compiled-in ones, which come
    /// first. Set once, before the host serves; a second resolver is refused.
    pub fn resolve_apps_with(&self, resolver: Arc<dyn AppResolver>) -> Result<(), CaError> {
        self.inner
            .resolver
            .set(resolver)
            .map_err(|_| CaError::invalid("this host already has an app resolver"))
    }

    /// Where calls of a CA go: here, or the host holding its partition.
    pub async fn route(&self, app: &AppName, ca: &CaName) -> Result<Route, CaError> {
        match &self.inner.placement {
            Some(p) => p.route(app, ca).await,
            None => Ok(Route::Local),
        }
    }

    /// Where the host holding a CA's partition serves HTTP (`None`: unknown, or no placement).
    pub fn holder_http(&self, app: &AppName, ca: &CaName) -> Option<String> {
        let p = self.inner.placement.as_ref()?;
        p.holder_http(p.partition(app, ca))
    }

    /// Forgets who holds a CA's partition (its holder did not answer).
    pub fn forget_route(&self, app: &AppName, ca: &CaName) {
        if let Some(p) = &self.inner.placement {
            p.forget(p.partition(app, ca));
        }
    }

    /// The host's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// The apps it serves.
    pub fn apps(&self) -> Vec<AppName> {
        self.inner.apps.keys().cloned().collect()
    }

    /// CAs this host will activate for their wake-ups (timers) when they are due.
    pub fn scheduled_wakeups(&self) -> usize {
        self.inner.wakeups.scheduled()
    }

    /// Active CAs.
    pub fn active(&self) -> usize {
        self.inner.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Calls methods of a CA as they arrive from a client of this process that speaks as the CA
    /// itself (its owner), over `session` (`None`: `default`): names as text, arguments as JSON
    /// array text. Bad input gets an `invalid` (or `not_found`) error and changes nothing.
    pub async fn call(
        &self,
        app: &str,
        ca: &str,
        calls: Vec<(String, String)>,
        session: Option<&str>,
    ) -> Result<Reply, CaError> {
        let (_, owner) = parse_names(app, ca)?;
        self.call_as(app, ca, calls, session, &owner).await
    }

    /// Like [`call`](Self::call), from client `caller` (the CA its token speaks for): a caller
    /// other than the CA's owner needs a rule of the app's access policy.
    pub async fn call_as(
        &self,
        app: &str,
        ca: &str,
        calls: Vec<(String, String)>,
        session: Option<&str>,
        caller: &CaName,
    ) -> Result<Reply, CaError> {
        let (app, ca) = parse_names(app, ca)?;
        let calls = self.parse_calls(calls)?;
        if let Some(s) = session.filter(|s| !s.is_empty()) {
            crate::plugins::session::check_session_name(s)?;
        }
        self.send(
            app,
            ca,
            Message::from_client(calls, session, caller.clone()),
        )
        .await
    }

    /// The host's Spine client (admin reads, such as `Inspect`).
    pub fn spine(&self) -> &Client {
        &self.inner.client
    }

    /// A courier for plugins: delivers their messages to this host's CAs.
    pub fn courier(&self) -> Arc<dyn Courier> {
        Arc::new(HostCourier::of(&self.inner))
    }

    fn parse_calls(&self, calls: Vec<(String, String)>) -> Result<Vec<Call>, CaError> {
        let config = &self.inner.config;
        if calls.is_empty() {
            return Err(CaError::invalid("a call needs at least one method"));
        }
        if calls.len() > config.max_calls {
            return Err(CaError::invalid(format!(
                "{} method calls in one request; at most {} are allowed",
                calls.len(),
                config.max_calls
            )));
        }
        calls
            .into_iter()
            .map(|(method, args_json)| {
                if method.starts_with(SYSTEM_PREFIX) {
                    return Err(CaError::invalid(format!(
                        "{method} is a system method ({SYSTEM_PREFIX}*): no client may call it"
                    )));
                }
                if method.is_empty() {
                    return Err(CaError::invalid("the method name is empty"));
                }
                if args_json.len() > config.max_args_bytes {
                    return Err(CaError::invalid(format!(
                        "the arguments of {method} are {} bytes; at most {} are allowed",
                        args_json.len(),
                        config.max_args_bytes
                    )));
                }
                let args = if args_json.trim().is_empty() {
                    Vec::new()
                } else {
                    match serde_json::from_str::<Value>(&args_json) {
                        Ok(Value::Array(args)) => args,
                        Ok(_) => {
                            return Err(CaError::invalid(format!(
                                "the arguments of {method} must be a JSON array"
                            )));
                        }
                        Err(e) => {
                            return Err(CaError::invalid(format!(
                                "the arguments of {method} are not JSON: {e}"
                            )));
                        }
                    }
                };
                Ok(Call { method, args })
            })
            .collect()
    }

    /// Runs `message` on a CA as one transaction; answers once its checkpoint committed. A
    /// client's message may not call system methods.
    pub async fn send(&self, app: AppName, ca: CaName, message: Message) -> Result<Reply, CaError> {
        if let Sender::Client { .. } = message.sender
            && let Some(call) = message
                .calls
                .iter()
                .find(|c| c.method.starts_with(SYSTEM_PREFIX))
        {
            return Err(CaError::invalid(format!(
                "{} is a system method ({SYSTEM_PREFIX}*): no client may call it",
                call.method
            )));
        }
        if message.calls.is_empty() {
            return Err(CaError::invalid("a call needs at least one method"));
        }
        if !self.inner.apps.contains_key(&app) {
            if let Some(resolver) = self.inner.resolver.get() {
                resolver.resolve(&app).await?;
            } else {
                return Err(CaError::not_found(format!(
                    "this host serves no app {app} (it serves: {})",
                    self.apps()
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let (reply, rx) = oneshot::channel();
        let envelope = Envelope::Call {
            message,
            reply,
            arrived: Instant::now(),
        };
        self.inner.metrics.queued.inc();
        self.inner.clone().route(app, ca, envelope).await;
        let answer = rx
            .await
            .unwrap_or_else(|_| Err(CaError::shut_down("the CA's activation ended; call again")));
        self.inner.metrics.queued.dec();
        answer
    }
}

/// The host as plugins see it: it delivers their messages, while the host lives.
#[derive(Debug)]
pub(crate) struct HostCourier(std::sync::Weak<HostInner>);

impl HostCourier {
    pub(crate) fn of(host: &Arc<HostInner>) -> Self {
        Self(Arc::downgrade(host))
    }
}

impl Courier for HostCourier {
    fn deliver(
        &self,
        app: AppName,
        ca: CaName,
        message: Message,
    ) -> futures::future::BoxFuture<'static, Result<Reply, CaError>> {
        let inner = self.0.upgrade();
        Box::pin(async move {
            let inner = inner.ok_or_else(|| CaError::shut_down("the host is shutting down"))?;
            Host { inner }.send(app, ca, message).await
        })
    }
}

/// Parses a client's app and CA names.
pub fn parse_names(app: &str, ca: &str) -> Result<(AppName, CaName), CaError> {
    let app = AppName::parse(app).map_err(|e| CaError::invalid(e.to_string()))?;
    let ca = CaName::parse(ca).map_err(|e| CaError::invalid(e.to_string()))?;
    Ok((app, ca))
}

impl HostInner {
    /// Delivers `envelope` to the CA's activation, starting one if there is none.
    pub(crate) async fn route(self: Arc<Self>, app: AppName, ca: CaName, mut envelope: Envelope) {
        loop {
            let Some(tx) = self.slot(&app, &ca) else {
                if let Envelope::Call { reply, .. } = envelope {
                    let _ = reply.send(Err(CaError::not_found(format!("no app {app}"))));
                }
                return;
            };
            match tx.send(envelope).await {
                Ok(()) => return,
                // The activation ended meanwhile: it has left its slot; start another.
                Err(mpsc::error::SendError(back)) => envelope = back,
            }
        }
    }

    /// A CA's wake-up is due: activates it (unless it is active) when its partition is held
    /// here, settling the partition's lease first when it is due for renewal.
    pub(crate) fn wake(self: Arc<Self>, app: AppName, ca: CaName) {
        if !self.apps.contains_key(&app) {
            return;
        }
        if let Some(placement) = self.placement.clone() {
            let p = placement.partition(&app, &ca);
            match placement.known_route(p) {
                Some(Route::Local) => {}
                // Another live host holds the partition: the wake-up is in its index and its
                // schedule.
                Some(Route::Remote(_)) => return,
                // Our lease is due for renewal (or not known): the wake-up was taken from the
                // schedule, so it must not be dropped; settle the lease first, and if the
                // Spine cannot say now, try again shortly.
                None => {
                    tokio::spawn(async move {
                        match placement.claim(p).await {
                            Ok(Route::Local) => self.wake_local(app, ca),
                            Ok(Route::Remote(_)) => {}
                            Err(e) => {
                                tracing::debug!(%app, %ca, error = %e, "wake-up waits for the lease");
                                let again = crate::plugins::timers::now_ms() + WAKE_RETRY_MS;
                                self.wakeups.schedule_at(&app, &ca, Some(again));
                            }
                        }
                    });
                    return;
                }
            }
        }
        self.wake_local(app, ca);
    }

    /// Activates a CA of a partition held here for its wake-ups, unless it is active.
    fn wake_local(self: Arc<Self>, app: AppName, ca: CaName) {
        let active = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .get(&(app.clone(), ca.clone()))
                .is_some_and(|s| !s.tx.is_closed())
        };
        if !active {
            tokio::spawn(self.route(app, ca, Envelope::Wake));
        }
    }

    /// Routes an envelope from an activation that ended before running it.
    pub(crate) fn redispatch(self: Arc<Self>, app: AppName, ca: CaName, envelope: Envelope) {
        tokio::spawn(self.route(app, ca, envelope));
    }

    fn slot(self: &Arc<Self>, app: &AppName, ca: &CaName) -> Option<mpsc::Sender<Envelope>> {
        let code = match self.apps.get(app) {
            Some(code) => code.clone(),
            None => self.resolver.get()?.cached(app)?,
        };
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let key = (app.clone(), ca.clone());
        if let Some(slot) = slots.get(&key)
            && !slot.tx.is_closed()
        {
            return Some(slot.tx.clone());
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.config.mailbox.max(1));
        let activation = Activation::new(
            self.clone(),
            app.clone(),
            ca.clone(),
            generation,
            code,
            tx.downgrade(),
        );
        tokio::spawn(activation.run(rx));
        slots.insert(
            key,
            Slot {
                tx: tx.clone(),
                generation,
            },
        );
        Some(tx)
    }

    /// Ends the activations of partition `p` (the lease was lost): their queues close.
    fn evict_partition(&self, placement: &Placement, p: u32) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let before = slots.len();
        slots.retain(|(app, ca), _| placement.partition(app, ca) != p);
        self.wakeups.forget_partition(p);
        tracing::warn!(
            partition = p,
            ended = before - slots.len(),
            "lost the partition's lease"
        );
    }

    /// An activation that ends leaves its slot (unless a newer one took it).
    pub(crate) fn remove_slot(&self, app: &AppName, ca: &CaName, generation: u64) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let key = (app.clone(), ca.clone());
        if slots.get(&key).is_some_and(|s| s.generation == generation) {
            slots.remove(&key);
        }
    }
}

/// How long a wake-up whose partition's lease could not be settled waits before it is tried
/// again.
const WAKE_RETRY_MS: u64 = 500;

/// Renews this host's leases a few times per lease period; ends the activations of partitions
/// it lost. Stops with the host.
async fn renew_leases(host: std::sync::Weak<HostInner>, placement: Arc<Placement>) {
    let period = placement.config().lease / 4;
    loop {
        tokio::time::sleep(period).await;
        let lost = placement.renew().await;
        let Some(host) = host.upgrade() else { return };
        for p in lost {
            host.evict_partition(&placement, p);
        }
    }
}
