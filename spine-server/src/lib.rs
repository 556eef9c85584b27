//! The Spine: a Raft-replicated master store for Sharing Maps.
//!
//! ```text
//!        clients (spinectl, node agents)                       other Spine nodes
//!                  │ gRPC Spine                              ▲                 │ gRPC RaftPeer
//!                  ▼                                         │                 ▼
//!   service.rs ──Command──▶ node/ (RawNode loop) ──RaftNetwork──▶ transport.rs   peer_service.rs
//!       │  ▲                  │   ▲                                              │
//!       │  │                  │   └──────────────── PeerInbox ◀──────────────────┘
//!       │  └──Outcome─────────┤ append + fsync, apply
//!       │                     ├─▶ store/ (raft log, sled) ◀── state.rs (pure state machine)
//!       ▼                     ▼
//!   subscribe.rs ◀── broadcast<AppliedEvent>, watch<Arc<State>>
//! ```
//!
//! - [`state`]: the pure state machine (maps, bounded change-set history, last update ids).
//! - [`store`]: storage in two parts: the Raft log (spine-raft-log, behind [`store::RaftLog`])
//!   and the state machine's checkpoints (sled).
//! - [`node`]: the Raft node (pre-vote, check-quorum, group commit, ReadIndex, membership): its
//!   handle, the loop, and the pure rules it follows (pending requests, membership, checkpoints).
//! - [`network`]: the seam between the node loop and the network (out: [`network::RaftNetwork`],
//!   in: [`network::PeerInbox`]); [`transport`] sends batched Raft messages over gRPC,
//!   [`peer_service`] receives them.
//! - [`service`] and [`subscribe`]: the client API.
//! - [`auth`]: tokens checked on every request; who may write, read and administer.
//! - [`server`]: wiring; the `spine` binary (`spine serve`, `spine dev`) is in `main.rs`.
//!
//! A node can be embedded:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use spine_server::{node::NodeConfig, server::{start, ServeConfig}};
//! let server = start(ServeConfig {
//!     node: NodeConfig { id: 1, ..NodeConfig::default() },
//!     listen: "127.0.0.1:7401".parse()?,
//!     peers: Default::default(),
//!     join: false,
//!     data_dir: "/tmp/spine-node1".into(),
//!     metrics_listen: None,
//!     security: spine_server::server::Security::disabled(),
//! })
//! .await?;
//! server.stop().await;
//! # Ok(())
//! # }
//! ```

pub mod auth;
pub mod credentials;
pub mod dev;
pub mod logging;
pub mod metrics;
pub mod network;
pub mod node;
pub mod peer_service;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod subscribe;
pub mod transport;
