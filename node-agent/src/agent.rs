//! The async shell: one task owns the subscription stream and the [`Registry`]; readers hold
//! [`Replica`] handles and pin snapshots without going through the task.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use sharing_map::{AppName, MapKey, MapName, MethodRuntime, Snapshot};
use spine_client::{Client, SubscriptionSpec};
use tokio::sync::{mpsc, oneshot, watch};

use crate::registry::{Applied, MapStatus, Registry, Shared};

/// Settings of an agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Versions kept per map (besides those readers still pin).
    pub versions_kept: usize,
    /// Maps no reader used for this long are unsubscribed and freed.
    pub idle_timeout: Duration,
    /// How long [`Agent::replica`] waits for a map's first version.
    pub first_version_timeout: Duration,
    /// Refuse to run map methods (`no_exec`).
    pub no_exec: bool,
    /// How often the agent asks the Spine for its versions, to report lag.
    pub lag_probe: Duration,
    /// How long the subscription keeps trying to resume on other nodes before it reports the
    /// Spine unavailable (it keeps trying after that; readers keep their snapshots).
    pub resume_deadline: Duration,
    /// The token the agent presents to the Spine (URL-safe base64); it must admit the apps whose
    /// maps the agent reads.
    pub token: Option<String>,
    /// Connect with TLS, trusting this CA certificate (PEM).
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            versions_kept: 4,
            idle_timeout: Duration::from_secs(60),
            first_version_timeout: Duration::from_secs(10),
            no_exec: false,
            lag_probe: Duration::from_secs(5),
            resume_deadline: Duration::from_secs(30),
            token: None,
            tls_ca_pem: None,
        }
    }
}

/// Why the agent could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The Spine could not be reached or refused the subscription.
    #[error(transparent)]
    Client(#[from] spine_client::ClientError),
    /// No version of the map arrived in time.
    #[error(
        "no version of map {map} in app {app} arrived within {waited:?}; does the map exist? (create it with `spinectl map create`)"
    )]
    NoVersion {
        /// The app.
        app: String,
        /// The map.
        map: String,
        /// How long the agent waited.
        waited: Duration,
    },
    /// The agent has stopped.
    #[error("the node agent has stopped")]
    Stopped,
}

/// Figures of the whole agent.
#[derive(Clone, Debug, Serialize)]
pub struct AgentStatus {
    /// Maps followed.
    pub maps: usize,
    /// Snapshots pinned by readers.
    pub pinned: usize,
    /// Versions retained in windows.
    pub retained: usize,
    /// Milliseconds since the last event (update or progress) from the Spine.
    pub since_last_event_ms: u64,
    /// Highest Raft index the agent has seen applied.
    pub applied_index: u64,
    /// Times the subscription reported the Spine unavailable.
    pub outages: u64,
    /// Per map.
    pub per_map: Vec<MapStatus>,
}

enum Cmd {
    Open(MapKey, oneshot::Sender<Shared>),
    Release(MapKey),
    Status(oneshot::Sender<AgentStatus>),
    Spine(Vec<(MapKey, u64)>),
}

/// A handle to the node agent. Clone it freely.
#[derive(Clone, Debug)]
pub struct Agent {
    tx: mpsc::UnboundedSender<Cmd>,
    cfg: AgentConfig,
    stop: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Open(..) => "Open",
            Cmd::Release(..) => "Release",
            Cmd::Status(..) => "Status",
            Cmd::Spine(..) => "Spine",
        })
    }
}

impl Agent {
    /// Connects to the Spine at `endpoints` (any nodes; it fails over between them).
    pub async fn connect(endpoints: Vec<String>, cfg: AgentConfig) -> Result<Agent, AgentError> {
        let mut builder = Client::builder(endpoints).resume_deadline(cfg.resume_deadline);
        if let Some(token) = &cfg.token {
            builder = builder.token(token.clone());
        }
        if let Some(ca) = &cfg.tls_ca_pem {
            builder = builder.tls_ca(ca);
        }
        let client = builder.build()?;
        let subscription = client.subscribe(Vec::new()).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let runtime = (!cfg.no_exec).then(MethodRuntime::shared_default);
        let registry = Registry::new(cfg.versions_kept, cfg.idle_timeout, runtime);
        tokio::spawn(run(
            client,
            subscription,
            registry,
            rx,
            tx.clone(),
            stop_rx,
            cfg.clone(),
        ));
        Ok(Agent {
            tx,
            cfg,
            stop: Arc::new(stop),
        })
    }

    /// A replica of `map`: subscribes on first use (or shares the existing subscription) and
    /// waits for its first version.
    pub async fn replica(&self, app: &AppName, map: &MapName) -> Result<Replica, AgentError> {
        let key = MapKey {
            app: app.clone(),
            map: map.clone(),
        };
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Open(key.clone(), tx))
            .map_err(|_| AgentError::Stopped)?;
        let shared = rx.await.map_err(|_| AgentError::Stopped)?;
        let lease = Arc::new(Lease {
            key: key.clone(),
            tx: self.tx.clone(),
        });
        let mut newest = shared.newest.clone();
        let waited = self.cfg.first_version_timeout;
        let arrived = tokio::time::timeout(waited, newest.wait_for(Option::is_some))
            .await
            .map(|r| r.map(|_| ()));
        match arrived {
            Ok(Ok(())) => Ok(Replica {
                key,
                newest,
                pins: shared.pins,
                _lease: lease,
            }),
            Ok(Err(_)) => Err(AgentError::Stopped),
            Err(_) => Err(AgentError::NoVersion {
                app: app.to_string(),
                map: map.to_string(),
                waited,
            }),
        }
    }

    /// Figures of the agent and every followed map.
    pub async fn status(&self) -> Result<AgentStatus, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Status(tx))
            .map_err(|_| AgentError::Stopped)?;
        rx.await.map_err(|_| AgentError::Stopped)
    }

    /// Stops the agent; replicas keep their last snapshots.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

/// Returns the lease when the last clone of a [`Replica`] is dropped.
#[derive(Debug)]
struct Lease {
    key: MapKey,
    tx: mpsc::UnboundedSender<Cmd>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Release(self.key.clone()));
    }
}

/// A reader's handle on one map. Cloning shares it; the map stays followed while any clone (or
/// any pinned snapshot) lives, and for the idle timeout after.
#[derive(Clone, Debug)]
pub struct Replica {
    key: MapKey,
    newest: watch::Receiver<Option<Snapshot>>,
    pins: Arc<AtomicUsize>,
    _lease: Arc<Lease>,
}

impl Replica {
    /// The map's app.
    pub fn app(&self) -> &AppName {
        &self.key.app
    }

    /// The map's name.
    pub fn map(&self) -> &MapName {
        &self.key.map
    }

    /// The newest local version, immutable while held. Pin once per message for isolation; pin
    /// again at the next message for fairness.
    pub fn pin(&self) -> Pinned {
        // `replica()` returned only after a first version arrived, and versions are never
        // withdrawn, so the snapshot is always there.
        let snapshot = self.newest.borrow().clone();
        self.pins.fetch_add(1, Ordering::SeqCst);
        Pinned {
            snapshot: snapshot.unwrap_or_else(|| {
                Snapshot::new(sharing_map::SharingMap::new(self.key.map.clone()), None)
            }),
            pins: self.pins.clone(),
        }
    }

    /// The newest local version number.
    pub fn version(&self) -> u64 {
        self.newest.borrow().as_ref().map_or(0, Snapshot::version)
    }

    /// Waits until a version newer than the last one seen through this handle arrives; returns
    /// it.
    pub async fn changed(&mut self) -> Result<u64, AgentError> {
        self.newest
            .changed()
            .await
            .map_err(|_| AgentError::Stopped)?;
        Ok(self.version())
    }
}

/// A pinned snapshot. Dereferences to [`Snapshot`] (`get`, `invoke`, ...).
#[derive(Debug)]
pub struct Pinned {
    snapshot: Snapshot,
    pins: Arc<AtomicUsize>,
}

impl std::ops::Deref for Pinned {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        &self.snapshot
    }
}

impl Clone for Pinned {
    fn clone(&self) -> Self {
        self.pins.fetch_add(1, Ordering::SeqCst);
        Self {
            snapshot: self.snapshot.clone(),
            pins: self.pins.clone(),
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.pins.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn run(
    client: Client,
    mut subscription: spine_client::Subscription,
    mut registry: Registry,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    tx: mpsc::UnboundedSender<Cmd>,
    mut stop: watch::Receiver<bool>,
    cfg: AgentConfig,
) {
    let mut sweep = tokio::time::interval((cfg.idle_timeout / 4).max(Duration::from_millis(50)));
    let mut probe = tokio::time::interval(cfg.lag_probe.max(Duration::from_millis(100)));
    let mut last_event = Instant::now();
    let mut outages = 0u64;
    let mut probing = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Cmd::Open(key, reply) => {
                        let (new, shared) = registry.open(&key);
                        if new {
                            let spec = SubscriptionSpec::map(key.app.clone(), &key.map);
                            if let Err(e) = subscription.add(spec) {
                                tracing::warn!(map = %key.map, error = %e, "subscribe refused");
                            }
                        }
                        let _ = reply.send(shared);
                    }
                    Cmd::Release(key) => registry.release(&key, Instant::now()),
                    Cmd::Status(reply) => {
                        let per_map = registry.status(Instant::now());
                        let _ = reply.send(AgentStatus {
                            maps: per_map.len(),
                            pinned: per_map.iter().map(|m| m.pinned).sum(),
                            retained: per_map.iter().map(|m| m.retained).sum(),
                            since_last_event_ms: last_event.elapsed().as_millis() as u64,
                            applied_index: subscription.applied_index(),
                            outages,
                            per_map,
                        });
                    }
                    Cmd::Spine(versions) => {
                        probing = false;
                        let now = Instant::now();
                        for (key, v) in versions {
                            registry.observe_spine(&key, v, now);
                        }
                    }
                }
            }
            event = subscription.next() => match event {
                Ok(event) => {
                    last_event = Instant::now();
                    for update in &event.updates {
                        if registry.apply(update, last_event) == Applied::Gap {
                            // The subscription guarantees contiguity; a gap means the stream is
                            // out of step, so start it over from the versions we hold.
                            tracing::warn!(map = %update.map(), "gap in the update stream; resubscribing");
                            subscription.reconnect();
                        }
                    }
                }
                Err(e) => {
                    outages += 1;
                    tracing::warn!(error = %e, "the Spine is unavailable; readers keep their snapshots");
                }
            },
            _ = sweep.tick() => {
                for key in registry.sweep(Instant::now()) {
                    subscription.remove(&SubscriptionSpec::map(key.app.clone(), &key.map));
                }
            }
            _ = probe.tick(), if !probing && !registry.is_empty() => {
                probing = true;
                // Asks for the followed maps by name: one lookup each on the server, however
                // many maps their apps have.
                let followed: Vec<(AppName, Vec<MapName>)> = registry
                    .apps()
                    .into_iter()
                    .map(|app| { let maps = registry.maps_of(&app); (app, maps) })
                    .collect();
                let (client, tx) = (client.clone(), tx.clone());
                tokio::spawn(async move {
                    let mut versions = Vec::new();
                    for (app, names) in followed {
                        if let Ok(maps) = client.map_versions(&app, &names, true).await {
                            versions.extend(maps.into_iter().map(|m| {
                                (MapKey { app: app.clone(), map: m.name }, m.version)
                            }));
                        }
                    }
                    let _ = tx.send(Cmd::Spine(versions));
                });
            }
        }
    }
}
