//! The development cluster in one process: `spine dev`, and `ca-host dev`, which embeds it.
//! Three nodes on consecutive ports of 127.0.0.1 (real Raft between them over gRPC), the
//! deployment's credentials made in the data directory on first run, data resumed when run
//! again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use authz_aggregate::Verifier;

use crate::auth::Auth;
use crate::credentials::{self, CredentialsError, Paths, TlsFiles, TlsPaths};
use crate::node::NodeConfig;
use crate::server::{self, Security, ServeConfig, ServeError, Server};

/// Where and how the dev cluster runs.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// The cluster's data; node N uses `node<N>/` in it, the credentials sit at its top.
    pub data_dir: PathBuf,
    /// Port of node 1; nodes 2 and 3 use the next two, their metrics the ports 10 above.
    pub base_port: u16,
    /// Serve TLS (a CA and a node certificate are made in `tls/` on first use), with mutual TLS
    /// between the nodes.
    pub tls: bool,
}

/// Why the dev cluster did not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The credentials could not be made or read.
    #[error("the dev credentials in {dir}: {source}")]
    Credentials {
        /// The data directory.
        dir: PathBuf,
        /// What failed.
        source: CredentialsError,
    },
    /// The admin token is not one of the root key's (files from another deployment).
    #[error("{path}: not a token of this root key: {reason}")]
    Mismatch {
        /// The token file.
        path: PathBuf,
        /// What the check said.
        reason: String,
    },
    /// A node did not start.
    #[error("starting dev node {id} on port {port} (is another `spine dev` running?): {source}")]
    Node {
        /// The node.
        id: u64,
        /// Its port.
        port: u16,
        /// What failed.
        source: ServeError,
    },
}

/// A running dev cluster.
#[derive(Debug)]
pub struct DevCluster {
    /// The nodes, 1 to 3.
    pub servers: Vec<Server>,
    /// The deployment's credentials (root key pair, admin token).
    pub credentials: Paths,
    /// The TLS files, with TLS on.
    pub tls: Option<TlsPaths>,
    /// Whether it resumed from an existing data directory.
    pub resumed: bool,
}

impl DevCluster {
    /// Starts the three nodes, each with `node_config(id)`.
    pub async fn start(
        options: &DevOptions,
        node_config: impl Fn(u64) -> NodeConfig,
    ) -> Result<Self, DevError> {
        let dir = &options.data_dir;
        let creds_error = |source| DevError::Credentials {
            dir: dir.clone(),
            source,
        };
        let ports: Vec<u16> = (0..3).map(|i| options.base_port + i).collect();
        let peers: BTreeMap<u64, String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}")))
            .collect();
        let resumed = dir.exists();
        let (paths, _) = credentials::init(dir).map_err(creds_error)?;
        let tls = if options.tls {
            Some(credentials::init_tls(dir, &[]).map_err(creds_error)?.0)
        } else {
            None
        };
        let root = credentials::read_root_public(&paths.root_pub).map_err(creds_error)?;
        let peer_token = credentials::read_token(&paths.admin_token).map_err(creds_error)?;
        let verifier = Verifier::new(root);
        verifier
            .authenticate(&peer_token)
            .map_err(|e| DevError::Mismatch {
                path: paths.admin_token.clone(),
                reason: e.to_string(),
            })?;
        let tls_files = match &tls {
            Some(t) => {
                Some(TlsFiles::read(&t.node_cert, &t.node_key, &t.ca_cert).map_err(creds_error)?)
            }
            None => None,
        };
        let security = Security {
            auth: Auth::Tokens(Arc::new(verifier)),
            peer_token: Some(peer_token),
            tls: tls_files,
        };
        let mut servers = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let started = server::start(ServeConfig {
                node: node_config(id),
                listen: SocketAddr::from(([127, 0, 0, 1], *port)),
                peers: peers.clone(),
                join: false,
                data_dir: dir.join(format!("node{id}")),
                metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], port + 10))),
                security: security.clone(),
            })
            .await;
            match started {
                Ok(s) => servers.push(s),
                Err(source) => {
                    for s in servers {
                        s.stop().await;
                    }
                    return Err(DevError::Node {
                        id,
                        port: *port,
                        source,
                    });
                }
            }
        }
        Ok(Self {
            servers,
            credentials: paths,
            tls,
            resumed,
        })
    }

    /// The nodes' client endpoints (`127.0.0.1:7401`, ...).
    pub fn endpoints(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.addr().to_string()).collect()
    }

    /// Stops every node, flushing what it holds.
    pub async fn stop(self) {
        for s in self.servers {
            s.stop().await;
        }
    }
}
