//! The `spine-agent` daemon: the agent API served over gRPC on a Unix socket, so readers in other
//! processes (and languages) share one agent per machine.
//!
//! ```text
//!  reader process ── Pin(app, map) ──▶ NodeAgentService ── agent.replica().pin() ──▶ Agent
//!        │         ◀── pin_id, version ──┤  PinTable: pin_id → Pinned (limit, max age)
//!        ├── Get(pin_id, keys) / Invoke(pin_id, method, args) ──▶ reads the pinned snapshot
//!        ├── Release(pin_id)
//!        └── Watch(app, map) ◀── stream of versions ── Replica::changed()
//! ```
//!
//! Pins are not tied to the connection that made them (a reader may pin over one connection and
//! read over another), so a client that dies without releasing leaves its pins held until they
//! reach [`DaemonConfig::pin_max_age`]. Clients must release what they pin.
//!
//! The socket file is created with mode `0600`: only processes of the daemon's user can use it.
//!
//! A reader in Rust (other languages generate a client from `proto/proto/agent.proto`):
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use spine_proto::agent_v1::{GetRequest, PinRequest, ReleaseRequest};
//!
//! let mut agent = node_agent::daemon::connect("/tmp/spine-agent.sock".as_ref()).await?;
//! let pin = agent
//!     .pin(PinRequest { app: "dev-app".into(), map: "alice-phone-prices".into() })
//!     .await?
//!     .into_inner();
//! // Every read for this message comes from version `pin.version`...
//! let read = agent
//!     .get(GetRequest { pin_id: pin.pin_id, keys: vec!["apple".into()] })
//!     .await?
//!     .into_inner();
//! println!("{:?} at version {}", read.entries, read.version);
//! // ...and the pin is released when the message is handled.
//! agent.release(ReleaseRequest { pin_id: pin.pin_id }).await?;
//! # Ok(())
//! # }
//! ```

mod pins;

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use sharing_map::{AppName, MapName, MethodError, Snapshot};
use spine_client::convert::entry_to_pb;
use spine_proto::agent_v1 as pb;
use spine_proto::agent_v1::node_agent_client::NodeAgentClient;
use spine_proto::agent_v1::node_agent_server::{NodeAgent, NodeAgentServer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::{Agent, AgentError, Pinned};

pub use pins::{Full, PinTable};

/// Largest request or response on the socket (a `Get` of a whole large map).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Settings of the daemon (the agent's own are in [`crate::AgentConfig`]).
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Most pins held for clients at once; `Pin` fails with RESOURCE_EXHAUSTED beyond it.
    pub max_pins: usize,
    /// Pins older than this are dropped as if released (`None`: held until released).
    pub pin_max_age: Option<Duration>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            max_pins: 100_000,
            pin_max_age: Some(Duration::from_secs(600)),
        }
    }
}

/// Why the daemon could not serve, or a client could not reach it.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another process answers on the socket.
    #[error(
        "another process is serving on {0} (is a spine-agent already running? stop it or pick another --socket)"
    )]
    InUse(PathBuf),
    /// The socket could not be created, secured or moved into place.
    #[error("cannot create the socket {path}: {source}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("serving on {path}: {source}")]
    Serve {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The reflection service could not read the API's descriptors (a build defect).
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    /// A client could not connect to the daemon.
    #[error("cannot connect to the node agent at {path} (is spine-agent running?): {source}")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// A daemon bound to its socket, ready to serve.
#[derive(Debug)]
pub struct Daemon {
    agent: Agent,
    cfg: DaemonConfig,
    path: PathBuf,
    listener: UnixListener,
    pins: Arc<Mutex<PinTable<Pinned>>>,
}

/// Reads how many pins a daemon holds for its clients (for metrics); see [`Daemon::pin_count`].
#[derive(Clone, Debug)]
pub struct PinCount(Weak<Mutex<PinTable<Pinned>>>);

impl PinCount {
    /// Pins held right now; `None` once the daemon has stopped.
    pub fn get(&self) -> Option<usize> {
        self.0.upgrade().map(|pins| lock(&pins).len())
    }
}

impl Daemon {
    /// Creates the socket at `socket` (mode `0600`), replacing a stale socket file left by a
    /// daemon that did not stop cleanly, but not one another process still answers on.
    pub async fn bind(agent: Agent, socket: &Path, cfg: DaemonConfig) -> Result<Self, DaemonError> {
        let path = socket.to_path_buf();
        let fail = |source| DaemonError::Socket {
            path: path.clone(),
            source,
        };
        if UnixStream::connect(&path).await.is_ok() {
            return Err(DaemonError::InUse(path));
        }
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(fail(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way; remove it or pick another --socket",
                )));
            }
        }
        // Bind under a temporary name and secure it before it appears under the real one, so no
        // other user can connect in between.
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        remove_if_present(&tmp).map_err(fail)?;
        let listener = UnixListener::bind(&tmp).map_err(fail)?;
        let secured = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = secured {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(e));
        }
        let pins = Arc::new(Mutex::new(PinTable::new(cfg.max_pins, cfg.pin_max_age)));
        Ok(Self {
            agent,
            cfg,
            path,
            listener,
            pins,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle reading how many pins this daemon holds, while it serves.
    pub fn pin_count(&self) -> PinCount {
        PinCount(Arc::downgrade(&self.pins))
    }

    /// Serves until `shutdown` completes, then ends open `Watch` streams, waits for requests in
    /// flight and removes the socket file.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let Self {
            agent,
            cfg,
            path,
            listener,
            pins,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let sweeper = cfg.pin_max_age.map(|age| {
            let pins = Arc::downgrade(&pins);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval((age / 4).max(Duration::from_millis(100)));
                loop {
                    tick.tick().await;
                    let Some(pins) = pins.upgrade() else { break };
                    let expired = lock(&pins).expire(Instant::now());
                    if !expired.is_empty() {
                        tracing::info!(count = expired.len(), "expired pins nobody released");
                    }
                }
            })
        });
        let service = NodeAgentService {
            agent,
            pins,
            stop: stop_rx,
        };
        tracing::info!(socket = %path.display(), "serving the node agent API");
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<NodeAgentServer<NodeAgentService>>()
            .await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(spine_proto::AGENT_FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| DaemonError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| DaemonError::Reflection(e.to_string()))?;
        let result = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                NodeAgentServer::new(service)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                shutdown.await;
                // Watch streams never end by themselves; graceful shutdown would wait forever.
                let _ = stop_tx.send(true);
            })
            .await;
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
        if let Err(e) = remove_if_present(&path) {
            tracing::warn!(socket = %path.display(), error = %e, "could not remove the socket");
        }
        result.map_err(|source| DaemonError::Serve { path, source })
    }
}

/// Serves the agent on a Unix socket at `socket` with [`DaemonConfig::default`] until `shutdown`
/// completes.
pub async fn serve(
    agent: Agent,
    socket: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    Daemon::bind(agent, socket, DaemonConfig::default())
        .await?
        .serve(shutdown)
        .await
}

/// A gRPC client of the daemon listening on `socket`.
pub async fn connect(socket: &Path) -> Result<NodeAgentClient<Channel>, DaemonError> {
    Ok(NodeAgentClient::new(channel(socket).await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// A gRPC channel to the daemon listening on `socket`, for any of its services (the agent API,
/// health, reflection).
pub async fn channel(socket: &Path) -> Result<Channel, DaemonError> {
    let path = socket.to_path_buf();
    let dial = path.clone();
    // The URI is required by the API but unused: every connection goes to the socket.
    let channel = Endpoint::from_static("http://agent")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let dial = dial.clone();
            async move {
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(dial).await?,
                ))
            }
        }))
        .await
        .map_err(|source| DaemonError::Connect { path, source })?;
    Ok(channel)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The pin table is only locked for map operations that cannot panic halfway, so a poisoned
/// lock still holds a consistent table.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The gRPC service: a thin shell over [`Agent`] and the [`PinTable`].
#[derive(Debug)]
struct NodeAgentService {
    agent: Agent,
    // A std mutex: every critical section is a map operation, never held across an await.
    pins: Arc<Mutex<PinTable<Pinned>>>,
    stop: watch::Receiver<bool>,
}

impl NodeAgentService {
    /// A clone of the snapshot pinned under `id` (cheap: versions share structure).
    fn pinned(&self, id: u64) -> Result<Snapshot, Status> {
        let pins = lock(&self.pins);
        match pins.get(id, Instant::now()) {
            Some(p) => Ok(Snapshot::clone(p)),
            None => Err(not_held(id, pins.max_age())),
        }
    }
}

fn not_held(id: u64, max_age: Option<Duration>) -> Status {
    Status::not_found(match max_age {
        Some(age) => format!(
            "pin {id} is not held (released, expired after {}s, or never pinned)",
            age.as_secs()
        ),
        None => format!("pin {id} is not held (released or never pinned)"),
    })
}

fn names(app: &str, map: &str) -> Result<(AppName, MapName), Status> {
    let app = AppName::parse(app).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let map = MapName::parse(map).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok((app, map))
}

fn agent_status(e: AgentError) -> Status {
    match &e {
        AgentError::NoVersion { .. } => Status::not_found(e.to_string()),
        AgentError::Client(c) if c.code() == tonic::Code::InvalidArgument => {
            Status::invalid_argument(e.to_string())
        }
        AgentError::Client(_) | AgentError::Stopped => Status::unavailable(e.to_string()),
    }
}

fn method_status(e: MethodError) -> Status {
    match e {
        MethodError::Unknown { .. } | MethodError::Arity { .. } => {
            Status::invalid_argument(e.to_string())
        }
        MethodError::ExecDisabled { .. }
        | MethodError::Script { .. }
        | MethodError::LimitExceeded { .. } => Status::failed_precondition(e.to_string()),
    }
}

/// At most this much of a malformed argument is quoted back.
const QUOTE_CHARS: usize = 80;

fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[tonic::async_trait]
impl NodeAgent for NodeAgentService {
    async fn pin(
        &self,
        request: Request<pb::PinRequest>,
    ) -> Result<Response<pb::PinResponse>, Status> {
        let req = request.into_inner();
        let (app, map) = names(&req.app, &req.map)?;
        let full = |f: Full| {
            Status::resource_exhausted(format!(
                "the node agent holds {} pins, its limit (--max-pins); release pins no longer read before pinning more",
                f.max_pins
            ))
        };
        // Fail fast, before waiting for a map's first version.
        lock(&self.pins).check_room(Instant::now()).map_err(full)?;
        let replica = self.agent.replica(&app, &map).await.map_err(agent_status)?;
        // The pin keeps the map followed; the replica handle itself is not needed after this.
        let pinned = replica.pin();
        let version = pinned.version();
        let pin_id = lock(&self.pins)
            .insert(pinned, Instant::now())
            .map_err(full)?;
        Ok(Response::new(pb::PinResponse { pin_id, version }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let req = request.into_inner();
        let snapshot = self.pinned(req.pin_id)?;
        let entries = if req.keys.is_empty() {
            snapshot
                .map()
                .sorted()
                .into_iter()
                .map(|(key, entry)| pb::KeyValue {
                    key: key.to_string(),
                    found: true,
                    entry: Some(entry_to_pb(entry)),
                })
                .collect()
        } else {
            req.keys
                .into_iter()
                .map(|key| {
                    let entry = snapshot.map().get(&key).map(entry_to_pb);
                    pb::KeyValue {
                        key,
                        found: entry.is_some(),
                        entry,
                    }
                })
                .collect()
        };
        Ok(Response::new(pb::GetResponse {
            version: snapshot.version(),
            entries,
        }))
    }

    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        let req = request.into_inner();
        let snapshot = self.pinned(req.pin_id)?;
        let args = req
            .args_json
            .iter()
            .enumerate()
            .map(|(i, text)| {
                serde_json::from_str(text).map_err(|e| {
                    Status::invalid_argument(format!(
                        "argument {} of method {:?} is not JSON ({e}): {}",
                        i + 1,
                        req.method,
                        quote(text)
                    ))
                })
            })
            .collect::<Result<Vec<serde_json::Value>, Status>>()?;
        let version = snapshot.version();
        let method = req.method;
        // A method may run up to its operation limit; keep it off the async workers.
        let result = tokio::task::spawn_blocking(move || snapshot.invoke(&method, &args))
            .await
            .map_err(|e| Status::internal(format!("the method's task failed: {e}")))?
            .map_err(method_status)?;
        Ok(Response::new(pb::InvokeResponse {
            result_json: result.to_string(),
            version,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let id = request.into_inner().pin_id;
        let released = {
            let mut pins = lock(&self.pins);
            let max_age = pins.max_age();
            pins.remove(id, Instant::now())
                .ok_or_else(|| not_held(id, max_age))?
        };
        drop(released);
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    type WatchStream = ReceiverStream<Result<pb::VersionEvent, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let (app, map) = names(&req.app, &req.map)?;
        let mut replica = self.agent.replica(&app, &map).await.map_err(agent_status)?;
        let mut stop = self.stop.clone();
        // Capacity 1: while the client is slow, versions coalesce in the replica's watch.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let event = |version| pb::VersionEvent {
                app: req.app.clone(),
                map: req.map.clone(),
                version,
            };
            let mut version = replica.version();
            let mut sent = None;
            loop {
                if sent < Some(version) {
                    if tx.send(Ok(event(version))).await.is_err() {
                        break;
                    }
                    sent = Some(version);
                }
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = stop.changed() => break,
                    changed = replica.changed() => match changed {
                        Ok(v) => version = v,
                        Err(e) => {
                            let _ = tx.send(Err(agent_status(e))).await;
                            break;
                        }
                    },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.agent.status().await.map_err(agent_status)?;
        let json = serde_json::to_string(&status)
            .map_err(|e| Status::internal(format!("encoding the status: {e}")))?;
        let daemon_pins = lock(&self.pins).len() as u64;
        Ok(Response::new(pb::StatusResponse {
            maps: status.maps as u64,
            daemon_pins,
            since_last_event_ms: status.since_last_event_ms,
            outages: status.outages,
            per_map: status
                .per_map
                .into_iter()
                .map(|m| pb::MapStatus {
                    app: m.app,
                    map: m.map,
                    version: m.version.unwrap_or(0),
                    retained: m.retained as u64,
                    pinned: m.pinned as u64,
                    versions_behind: m.versions_behind,
                    behind_ms: m.behind_ms,
                })
                .collect(),
            json,
        }))
    }
}
