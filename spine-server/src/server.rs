//! Wiring of one Spine node: storage, the Raft loop, the peer transport, the gRPC services
//! (client API, peer transport, health, reflection) and the metrics endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use spine_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

use authz_aggregate::Token;

use crate::auth::Auth;
use crate::credentials::TlsFiles;
use crate::metrics::Metrics;
use crate::network::PeerInbox;
use crate::node::{self, NodeConfig, NodeHandle};
use crate::peer_service::PeerService;
use crate::service::SpineService;
use crate::store::{Store, StoreError};
use crate::transport::{MAX_PEER_MESSAGE, Transport};

/// Largest client request or response.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024 * 1024;

/// Everything one node needs to start.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Node settings (id, Raft timing, history, limits).
    pub node: NodeConfig,
    /// Address to listen on for clients and peers.
    pub listen: SocketAddr,
    /// Founding members and their addresses (may include this node). Ignored for membership
    /// once the node has state on disk, but their addresses are still used to reach them.
    pub peers: BTreeMap<u64, String>,
    /// Start empty and wait to be added by an existing group (`cluster add`).
    pub join: bool,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Authentication, the token for peers, TLS.
    pub security: Security,
}

/// How a node authenticates requests and talks to its peers.
#[derive(Clone, Debug)]
pub struct Security {
    /// How requests are checked.
    pub auth: Auth,
    /// The admin token this node presents to its peers (required when `auth` checks tokens).
    pub peer_token: Option<Token>,
    /// Serve TLS with this certificate, and talk to peers with mutual TLS (both directions
    /// present certificates chaining to the CA). Clients need only trust the CA.
    pub tls: Option<TlsFiles>,
}

impl Security {
    /// No authentication (local experiments and embedding only).
    pub fn disabled() -> Self {
        Self {
            auth: Auth::Disabled,
            peer_token: None,
            tls: None,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node refused its configuration or stored state.
    #[error(transparent)]
    Start(#[from] node::StartError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A running node.
#[derive(Debug)]
pub struct Server {
    node: NodeHandle,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop_grpc: Option<oneshot::Sender<()>>,
    stop_metrics: Option<oneshot::Sender<()>>,
    grpc: JoinHandle<()>,
    metrics_task: Option<JoinHandle<()>>,
    node_task: JoinHandle<()>,
}

impl Server {
    /// The node.
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }
    /// The address clients and peers reach it at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops serving: open streams end, the Raft loop answers pending requests with
    /// "unavailable" and stops, and storage is flushed.
    pub async fn stop(mut self) {
        self.node.shutdown();
        if let Some(tx) = self.stop_grpc.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.stop_metrics.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.grpc)
            .await
            .is_err()
        {
            self.grpc.abort();
        }
        if let Some(t) = self.metrics_task.take() {
            t.abort();
        }
        let _ = (&mut self.node_task).await;
    }

    /// Waits until the node stops by itself (a storage failure).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.node_task).await;
    }
}

/// Starts a node.
pub async fn start(cfg: ServeConfig) -> Result<Server, ServeError> {
    let id = cfg.node.id;
    if id == 0 {
        return Err(ServeError::Config("node ids start at 1".into()));
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        ServeError::Config(format!(
            "cannot create data directory {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    if matches!(cfg.security.auth, Auth::Tokens(_)) && cfg.security.peer_token.is_none() {
        return Err(ServeError::Config(
            "with authentication on, a node needs an admin token to present to its peers (--peer-token-file)".into(),
        ));
    }
    let store = Store::open(&cfg.data_dir)?;
    let voters: Vec<u64> = if cfg.join {
        Vec::new()
    } else {
        let mut v: Vec<u64> = cfg.peers.keys().copied().collect();
        if !v.contains(&id) {
            v.push(id);
        }
        v.sort_unstable();
        v
    };
    let mut addrs = cfg.peers.clone();
    addrs.entry(id).or_insert_with(|| addr.to_string());
    let metrics = Arc::new(Metrics::new(id));
    let peer_tls = cfg.security.tls.as_ref().map(|t| {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&t.ca))
            .identity(tonic::transport::Identity::from_pem(&t.cert, &t.key))
    });
    // The node loop's inbox comes first: the transport reports into it, the peer service
    // delivers into it, and the loop reads it, so none of them needs another to exist.
    let (inbox, peer_events) = PeerInbox::channel();
    let transport = Transport::new(id, cfg.security.peer_token.clone(), peer_tls, inbox.clone());
    let limits = cfg.node.apply.limits;
    let (node, node_task) = node::start(
        cfg.node.clone(),
        store,
        &voters,
        addrs,
        transport,
        peer_events,
        metrics.clone(),
    )?;

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::spine_server::SpineServer<SpineService>>()
        .await;
    // Both reflection versions: grpcurl and current clients speak v1, Python's grpcio-reflection,
    // older grpcurl builds and several GUI clients only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(spine_proto::FILE_DESCRIPTOR_SET)
    };
    let reflection_error = |e| ServeError::Config(format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    // Everything but health goes through authentication.
    let authenticate = cfg.security.auth.interceptor();
    let reflection_v1 = InterceptedService::new(reflection_v1, authenticate.clone());
    let reflection_v1alpha = InterceptedService::new(reflection_v1alpha, authenticate.clone());
    let spine = InterceptedService::new(
        pb::spine_server::SpineServer::new(SpineService::new(
            node.clone(),
            limits,
            metrics.clone(),
        ))
        .max_decoding_message_size(MAX_CLIENT_MESSAGE)
        .max_encoding_message_size(MAX_CLIENT_MESSAGE),
        authenticate.clone(),
    );
    let peer = InterceptedService::new(
        pb::raft_peer_server::RaftPeerServer::new(PeerService::new(
            inbox,
            cfg.security.tls.is_some(),
        ))
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE),
        authenticate,
    );
    let (stop_grpc, grpc_stopped) = oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = &cfg.security.tls {
        // Client certificates are optional on the shared port (clients authenticate with
        // tokens); the peer service refuses connections that did not present one.
        builder = builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(&t.cert, &t.key))
                    .client_ca_root(tonic::transport::Certificate::from_pem(&t.ca))
                    .client_auth_optional(true),
            )
            .map_err(|e| ServeError::Config(format!("TLS: {e}")))?;
    }
    let grpc = tokio::spawn(async move {
        let result = builder
            .tcp_nodelay(true)
            .add_service(spine)
            .add_service(peer)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = grpc_stopped.await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });

    let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
    let mut metrics_addr = None;
    let mut metrics_task = None;
    if let Some(maddr) = cfg.metrics_listen {
        let l = TcpListener::bind(maddr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: maddr,
                source,
            })?;
        metrics_addr = l.local_addr().ok();
        let m = metrics.clone();
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move { m.render() }
            }),
        );
        metrics_task = Some(tokio::spawn(async move {
            let served = axum::serve(l, router)
                .with_graceful_shutdown(async {
                    let _ = metrics_stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics server failed");
            }
        }));
    }
    tracing::info!(id, %addr, ?metrics_addr, voters = ?voters, "spine node started");
    Ok(Server {
        node,
        addr,
        metrics_addr,
        stop_grpc: Some(stop_grpc),
        stop_metrics: Some(stop_metrics),
        grpc,
        metrics_task,
        node_task,
    })
}
